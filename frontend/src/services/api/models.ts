import type { DeviceModel, JsonObject } from './devices';
import { request } from './client';

export interface DeviceModelWithCount extends DeviceModel {
  device_count: number;
}

/** A device whose current desired state breaks a changed desired schema (PUT's 409). */
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

export async function replaceModel(modelId: string, schemas: SchemaInput): Promise<DeviceModel> {
  const { body } = await request<DeviceModel>(modelPath(modelId), { method: 'PUT', json: schemas });
  return body;
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
