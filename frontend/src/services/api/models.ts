import type { DeviceModel, JsonObject } from './devices';
import { ApiError, request } from './client';

export interface DeviceModelWithCount extends DeviceModel {
  device_count: number;
}

/** A device whose current desired state breaks a changed desired schema (a refused change). */
export interface BreakingDevice {
  device_id: string;
  errors: { pointer: string; rule: string; message: string }[];
}

export interface SchemaInput {
  desired_schema: JsonObject;
  reported_schema: JsonObject | null;
}

const modelPath = (modelId: string): string => `/customer/models/${encodeURIComponent(modelId)}`;

export async function getModel(modelId: string, signal?: AbortSignal): Promise<DeviceModelWithCount> {
  const { body } = await request<DeviceModelWithCount>(modelPath(modelId), { signal });
  return body;
}

export async function createModel(modelId: string, schemas: SchemaInput): Promise<DeviceModel> {
  const { body } = await request<DeviceModel>('/customer/models', { method: 'POST', json: { model_id: modelId, ...schemas } });
  return body;
}

/** A change of a model's schemas, checked against its devices by a background job (202). */
export interface Revalidation {
  job_id: string;
  model_id: string;
  status: 'running' | 'applied' | 'refused';
  total: number;
  checked: number;
  invalid_count: number;
  devices: BreakingDevice[];
}

const REVALIDATION_POLL_MS = 300;
const REVALIDATION_WAIT_MS = 120_000;

/**
 * Change a model's schemas and wait for the check of its devices: the model as changed, or
 * an ApiError 409 naming the devices whose desired state breaks the new schema (nothing
 * changed then). `onProgress` sees each reading of the job.
 */
export async function replaceModel(
  modelId: string,
  schemas: SchemaInput,
  onProgress?: (job: Revalidation) => void,
): Promise<DeviceModel> {
  let { body: job } = await request<Revalidation>(modelPath(modelId), { method: 'PUT', json: schemas });
  const deadline = Date.now() + REVALIDATION_WAIT_MS;
  while (job.status === 'running') {
    onProgress?.(job);
    if (Date.now() > deadline) {
      throw new ApiError(0, `The change is still being checked (${job.checked} of ${job.total} devices); look again later.`);
    }
    await new Promise((resolve) => setTimeout(resolve, REVALIDATION_POLL_MS));
    ({ body: job } = await request<Revalidation>(
      `${modelPath(modelId)}/revalidations/${encodeURIComponent(job.job_id)}`,
    ));
  }
  onProgress?.(job);
  if (job.status === 'refused') {
    throw new ApiError(409, `${job.invalid_count} device(s) of model '${modelId}' break the new schema`, {
      message: `${job.invalid_count} device(s) of model '${modelId}' break the new schema`,
      invalid_count: job.invalid_count,
      devices: job.devices,
    });
  }
  return getModel(modelId);
}

/** The devices a refused schema change names, if the error is that refusal. */
export function breakingDevices(detail: unknown): { message: string; count: number; devices: BreakingDevice[] } | null {
  if (!detail || typeof detail !== 'object') return null;
  const record = detail as Record<string, unknown>;
  if (!Array.isArray(record.devices)) return null;
  const devices = record.devices
    .filter((item): item is Record<string, unknown> => !!item && typeof item === 'object' && typeof (item as { device_id?: unknown }).device_id === 'string')
    .map((item) => ({
      device_id: item.device_id as string,
      errors: Array.isArray(item.errors)
        ? item.errors.map((error: Record<string, unknown>) => ({
            pointer: String(error.pointer ?? ''),
            rule: String(error.rule ?? ''),
            message: String(error.message ?? ''),
          }))
        : [],
    }));
  return {
    message: typeof record.message === 'string' ? record.message : 'Some devices break the new schema',
    count: typeof record.invalid_count === 'number' ? record.invalid_count : devices.length,
    devices,
  };
}

/** A schema typed by a person: an object, or why not (in words). */
export function parseSchema(text: string, what: string, optional: boolean): { ok: true; value: JsonObject | null } | { ok: false; reason: string } {
  const trimmed = text.trim();
  if (trimmed === '') return optional ? { ok: true, value: null } : { ok: false, reason: `${what} is required.` };
  let value: unknown;
  try {
    value = JSON.parse(trimmed);
  } catch (error) {
    return { ok: false, reason: `${what} is not valid JSON: ${error instanceof Error ? error.message : String(error)}` };
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, reason: `${what} must be a JSON object (a JSON Schema), e.g. {"type": "object"}.` };
  }
  return { ok: true, value: value as JsonObject };
}
