/**
 * Typed client for the operator API of ui_iot (SPEC §5 and §8). Hand-written so that
 * the types say exactly what the console relies on.
 */
import { ApiError, request, storeToken } from './client';

export { ApiError, clearToken, getToken, subscribeToAuth } from './client';

export type SyncStatus = 'synced' | 'pending' | 'stale';
export const SYNC_STATUSES: readonly SyncStatus[] = ['synced', 'pending', 'stale'];

export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
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
  metadata?: { desired: unknown; reported: unknown };
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
}

export interface ListDevicesParams {
  limit?: number;
  cursor?: string | null;
  sync_status?: SyncStatus | null;
}

const devicePath = (deviceId: string): string => `/customer/devices/${encodeURIComponent(deviceId)}`;

/** Exchange email and password for a bearer token (OAuth2 password form) and keep it. */
export async function login(email: string, password: string): Promise<TokenResponse> {
  try {
    const { body } = await request<TokenResponse>('/auth/token', {
      method: 'POST',
      form: { username: email, password },
      auth: false,
    });
    storeToken(body.access_token, body.expires_in ?? null);
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
    query: { limit: params.limit, cursor: params.cursor, sync_status: params.sync_status },
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

export async function getTwin(deviceId: string, signal?: AbortSignal): Promise<TwinResult> {
  const { body, headers } = await request<Twin>(`${devicePath(deviceId)}/twin`, { signal });
  return { twin: body, etagVersion: parseEtagVersion(headers.get('ETag')) };
}

/**
 * Merge-patch the desired state. With `ifMatch`, the server writes only when the
 * desired version is still that number and answers 412 otherwise.
 */
export async function patchDesired(deviceId: string, desired: JsonObject, ifMatch?: number): Promise<Twin> {
  const headers: Record<string, string> = {};
  if (ifMatch !== undefined) headers['If-Match'] = `"${ifMatch}"`;
  const { body } = await request<Twin>(`${devicePath(deviceId)}/twin/desired`, {
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
