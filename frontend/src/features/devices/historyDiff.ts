import type { HistoryActor, JsonObject, JsonValue } from '../../services/api/devices';

export interface DiffLine {
  /** "+" a key set (added or changed), "-" a key removed (null in the merge patch). */
  op: '+' | '-';
  /** Dotted path of the key, e.g. "fan.speed"; keys with dots are quoted. */
  path: string;
  /** The new value as JSON (absent for removals). */
  value?: string;
}

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

const SIMPLE_KEY = /^[A-Za-z_$][\w$-]*$/;

function joinPath(parent: string, key: string): string {
  const part = SIMPLE_KEY.test(key) ? key : JSON.stringify(key);
  return parent ? `${parent}.${part}` : part;
}

/**
 * A JSON merge patch (RFC 7396) as readable lines: nested objects are followed down to the
 * leaves they set (`+ fan.speed: 3`), `null` removes a key (`- led`), arrays and scalars
 * replace. An empty nested object sets the key to `{}`.
 */
export function patchLines(patch: JsonObject, parent = ''): DiffLine[] {
  const lines: DiffLine[] = [];
  for (const [key, value] of Object.entries(patch)) {
    const path = joinPath(parent, key);
    if (value === null) {
      lines.push({ op: '-', path });
    } else if (isObject(value) && Object.keys(value).length > 0) {
      lines.push(...patchLines(value, path));
    } else {
      lines.push({ op: '+', path, value: JSON.stringify(value as JsonValue) });
    }
  }
  return lines;
}

export function actorName(actor: HistoryActor | null | undefined): string {
  if (!actor) return 'unknown';
  if (actor.type === 'device') return 'device';
  if (actor.type === 'rollout') return `rollout ${actor.rollout_id.slice(0, 8)}`;
  return actor.email || 'an operator';
}
