/**
 * Typed client for the operator API of ui_iot (SPEC §5 and §8). Hand-written so that
 * the types say exactly what the console relies on.
 */
import { ApiError, request, storeToken } from './client';

export { ApiError, clearToken, getToken, subscribeToAuth } from './client';

export type SyncStatus = 'synced' | 'pending' | 'stale' | 'rejected';
export const SYNC_STATUSES: readonly SyncStatus[] = ['synced', 'pending', 'stale', 'rejected'];

/** A device's refusal of a desired version, while in effect (SPEC §11). */
export interface Rejection {
  version: number;
  code: number | string;
  message: string;
  at: string;
}

export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/** The signed-in operator, as POST/GET /auth/session answer. */
export interface SessionResponse {
  user_id: number;
  email: string;
  tenant_id: string;
  role: 'viewer' | 'operator' | 'admin';
  csrf_token: string;
  expires_in?: number;
}

export interface TokenResponse {
  access_token: string;
  token_type: string;
  expires_in: number;
}

export interface DeviceSummary {
  device_id: string;
  name: string | null;
  tags: Record<string, string>;
  sync_status: SyncStatus;
  desired_version: number;
  reported_version: number;
  /** ISO 8601, or null when the device has never made contact. */
  last_seen: string | null;
  /** Connected to the broker now (SPEC §7 presence). */
  connected: boolean;
  /** When it last connected / disconnected (ISO 8601), or null if it never has. */
  connected_at: string | null;
  disconnected_at: string | null;
}

export interface DevicePage {
  items: DeviceSummary[];
  /** Opaque cursor for the next page, or null on the last page. */
  next: string | null;
}

export interface CreatedDevice {
  device_id: string;
  tenant_id: string;
  /** Shown once; only its hash is stored on the server. */
  provision_token: string;
}

export interface Twin {
  device_id: string;
  tenant_id: string;
  desired: JsonObject;
  reported: JsonObject;
  delta: JsonObject;
  desired_version: number;
  reported_version: number;
  sync_status: SyncStatus;
  shadow_updated_at: string | null;
  last_seen: string | null;
  connected: boolean;
  connected_at: string | null;
  disconnected_at: string | null;
  metadata?: { desired: unknown; reported: unknown };
  /** The refusal in effect, or null (SPEC §11). */
  rejected?: Rejection | null;
}

export interface TwinDelta {
  device_id: string;
  delta: JsonObject;
  in_sync: boolean;
  desired_version: number;
  reported_version: number;
  sync_status: SyncStatus;
}

export interface FleetSummary {
  total: number;
  synced: number;
  pending: number;
  stale: number;
  /** Devices refusing a desired version (SPEC §11). */
  rejected?: number;
  /** Devices connected to the broker now. */
  connected: number;
}

export interface ListDevicesParams {
  limit?: number;
  cursor?: string | null;
  sync_status?: SyncStatus | null;
  /** `key:value`: only devices carrying that tag. */
  tag?: string | null;
  model_id?: string | null;
  /** Text in the device id or name. */
  q?: string | null;
  /** Only devices connected (true) or not connected (false) to the broker now. */
  connected?: boolean | null;
}

/** GET/PATCH /customer/devices/{id}: the device summary plus its model. */
export interface DeviceProfile extends DeviceSummary {
  model_id: string | null;
  created_at?: string;
}

export interface DeviceProfilePatch {
  name?: string;
  /** Merge patch: a string sets a tag, null removes it. */
  tags?: Record<string, string | null>;
  /** null detaches the device from its model. */
  model_id?: string | null;
}

export interface DeviceModel {
  model_id: string;
  desired_schema: JsonObject;
  reported_schema: JsonObject | null;
  created_at: string;
  updated_at: string;
}

export interface ModelPage {
  items: DeviceModel[];
  next: string | null;
}

export type HistoryActor = { type: 'user'; email: string } | { type: 'device' } | { type: 'rollout'; rollout_id: string };

export interface HistoryItem {
  id: number;
  /** ISO 8601. */
  at: string;
  kind: 'desired' | 'reported' | 'rejected';
  actor: HistoryActor;
  version: number;
  /** The merge patch (desired) or the report (reported) that was accepted. */
  patch: JsonObject;
}

export interface HistoryPage {
  items: HistoryItem[];
  next: string | null;
}

/** The filter of a bulk job: every key set must hold; {} matches every device. */
export interface FleetFilter {
  device_ids?: string[];
  tag?: string;
  sync_status?: SyncStatus;
  model_id?: string;
  q?: string;
}

export type JobStatus = 'running' | 'done' | 'failed';

export interface FleetJob {
  job_id: string;
  status: JobStatus;
  matched: number;
  written: number;
  synced: number;
  skipped?: number;
  failed?: number;
  error?: string | null;
  filter?: FleetFilter;
  desired?: JsonObject;
  created_by?: string;
  created_at?: string | null;
  finished_at?: string | null;
}

/** One failed JSON Schema rule (422 of a desired write that breaks the device's model). */
export interface SchemaViolation {
  /** RFC 6901 pointer into the desired document; "" is the whole document. */
  pointer: string;
  /** The JSON Schema keyword that failed, e.g. "type", "enum", "maximum". */
  rule: string;
  message: string;
}

export interface SchemaErrorDetail {
  message: string;
  model_id?: string;
  errors: SchemaViolation[];
}

/** The schema violations of an error, when it is the model-schema 422; otherwise null. */
export function schemaErrorDetail(error: unknown): SchemaErrorDetail | null {
  if (!(error instanceof ApiError) || error.status !== 422) return null;
  const detail = error.detail;
  if (!detail || typeof detail !== 'object' || Array.isArray(detail)) return null;
  const record = detail as Record<string, unknown>;
  if (!Array.isArray(record.errors)) return null;
  const errors: SchemaViolation[] = [];
  for (const item of record.errors) {
    if (item && typeof item === 'object' && typeof (item as SchemaViolation).pointer === 'string') {
      const violation = item as Partial<SchemaViolation>;
      errors.push({
        pointer: violation.pointer ?? '',
        rule: typeof violation.rule === 'string' ? violation.rule : '',
        message: typeof violation.message === 'string' ? violation.message : '',
      });
    }
  }
  if (errors.length === 0) return null;
  return {
    message: typeof record.message === 'string' ? record.message : 'The desired state does not match the device model',
    model_id: typeof record.model_id === 'string' ? record.model_id : undefined,
    errors,
  };
}

const devicePath = (deviceId: string): string => `/customer/devices/${encodeURIComponent(deviceId)}`;

/** Sign in to a cookie session (OAuth2 password form) and keep its CSRF token. */
export async function login(email: string, password: string): Promise<SessionResponse> {
  try {
    const { body } = await request<SessionResponse>('/auth/session', {
      method: 'POST',
      form: { username: email, password },
      auth: false,
    });
    storeToken(body.csrf_token, body.expires_in ?? null);
    return body;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 400 || error.status === 401)) {
      throw new ApiError(error.status, 'Wrong email or password.', error.detail);
    }
    throw error;
  }
}

export async function listDevices(params: ListDevicesParams = {}, signal?: AbortSignal): Promise<DevicePage> {
  const { body } = await request<DevicePage>('/customer/devices', {
    query: {
      limit: params.limit,
      cursor: params.cursor,
      sync_status: params.sync_status,
      tag: params.tag,
      model_id: params.model_id,
      q: params.q,
      connected: params.connected == null ? undefined : String(params.connected),
    },
    signal,
  });
  return body;
}

export async function createDevice(input: { device_id?: string; name?: string } = {}): Promise<CreatedDevice> {
  const json: Record<string, string> = {};
  if (input.device_id) json.device_id = input.device_id;
  if (input.name) json.name = input.name;
  const { body } = await request<CreatedDevice>('/customer/devices', { method: 'POST', json });
  return body;
}

export async function deleteDevice(deviceId: string): Promise<void> {
  await request<null>(devicePath(deviceId), { method: 'DELETE' });
}

export interface TwinResult {
  twin: Twin;
  /** The desired version the server's `ETag: "<n>"` names, or null without one. */
  etagVersion: number | null;
}

/** Parse `"7"` or `W/"7"` into 7. */
export function parseEtagVersion(etag: string | null): number | null {
  if (!etag) return null;
  const match = /^(?:W\/)?"?(\d+)"?$/.exec(etag.trim());
  return match ? Number(match[1]) : null;
}

/** The twin's path: the classic shadow's (no name) or a named shadow's (SPEC §9). */
export function twinPath(deviceId: string, shadow?: string): string {
  return shadow ? `${devicePath(deviceId)}/shadows/${encodeURIComponent(shadow)}/twin` : `${devicePath(deviceId)}/twin`;
}

export interface ShadowSummary {
  name: string;
  desired_version: number;
  reported_version: number;
  version: number;
  shadow_updated_at: string;
}

/** The device's named shadows (the classic one is not listed). */
export async function listShadows(deviceId: string, signal?: AbortSignal): Promise<ShadowSummary[]> {
  const { body } = await request<{ items: ShadowSummary[] }>(`${devicePath(deviceId)}/shadows`, { signal });
  return body.items;
}

export async function getTwin(deviceId: string, signal?: AbortSignal, shadow?: string): Promise<TwinResult> {
  const { body, headers } = await request<Twin>(twinPath(deviceId, shadow), { signal });
  return { twin: body, etagVersion: parseEtagVersion(headers.get('ETag')) };
}

/**
 * Merge-patch the desired state. With `ifMatch`, the server writes only when the
 * desired version is still that number and answers 412 otherwise.
 */
export async function patchDesired(
  deviceId: string,
  desired: JsonObject,
  ifMatch?: number,
  shadow?: string,
): Promise<Twin> {
  const headers: Record<string, string> = {};
  if (ifMatch !== undefined) headers['If-Match'] = `"${ifMatch}"`;
  const { body } = await request<Twin>(`${twinPath(deviceId, shadow)}/desired`, {
    method: 'PATCH',
    json: { desired },
    headers,
  });
  return body;
}

export async function getDelta(deviceId: string): Promise<TwinDelta> {
  const { body } = await request<TwinDelta>(`${devicePath(deviceId)}/twin/delta`);
  return body;
}

/** The fleet counters, or null when this server does not offer them (404). */
export async function getSummary(signal?: AbortSignal): Promise<FleetSummary | null> {
  try {
    const { body } = await request<FleetSummary>('/customer/fleet/summary', { signal });
    return body;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

export async function getDevice(deviceId: string, signal?: AbortSignal): Promise<DeviceProfile> {
  const { body } = await request<DeviceProfile>(devicePath(deviceId), { signal });
  return body;
}

/** Rename, merge tags (null removes one), set or clear the model. Needs the admin role. */
export async function updateDevice(deviceId: string, patch: DeviceProfilePatch): Promise<DeviceProfile> {
  const { body } = await request<DeviceProfile>(devicePath(deviceId), { method: 'PATCH', json: patch });
  return body;
}

export async function listModels(signal?: AbortSignal): Promise<ModelPage> {
  const { body } = await request<ModelPage>('/customer/models', { query: { limit: 500 }, signal });
  return body;
}

/** The twin's history, newest first; pass `next` as `cursor` for older entries. */
export async function getHistory(
  deviceId: string,
  params: { limit?: number; cursor?: string | null } = {},
  signal?: AbortSignal,
  shadow?: string,
): Promise<HistoryPage> {
  const { body } = await request<HistoryPage>(`${twinPath(deviceId, shadow)}/history`, {
    query: { limit: params.limit, cursor: params.cursor },
    signal,
  });
  return body;
}

/** Queue one merge patch for every device the filter matches (202 with the job id). */
export async function createFleetJob(filter: FleetFilter, desired: JsonObject): Promise<{ job_id: string }> {
  const { body } = await request<{ job_id: string }>('/customer/fleet/desired', {
    method: 'POST',
    json: { filter, desired },
  });
  return body;
}

export async function getFleetJob(jobId: string, signal?: AbortSignal): Promise<FleetJob> {
  const { body } = await request<FleetJob>(`/customer/fleet/jobs/${encodeURIComponent(jobId)}`, { signal });
  return body;
}

/** The tenant's latest bulk jobs, newest first. */
export async function listFleetJobs(limit = 5, signal?: AbortSignal): Promise<FleetJob[]> {
  const { body } = await request<{ items: FleetJob[] }>('/customer/fleet/jobs', { query: { limit }, signal });
  return body.items;
}
