/**
 * Old → new per leaf for the twin history. The history holds each accepted merge patch
 * (desired) or report (reported), not the state before it, so the old value of a leaf is the
 * value the most recent older entry of the same kind left there. It is known when an older
 * loaded entry set or removed that leaf (or a parent of it), and for desired state when the
 * loaded history reaches back to version 1 (desired starts as {}).
 */
import type { HistoryItem, JsonObject, JsonValue } from '../../services/api/devices';

export interface LeafChange {
  op: 'set' | 'remove';
  /** Dotted path, keys with dots quoted, as patchLines writes it. */
  path: string;
  /** The new value as JSON (for "set"). */
  value?: string;
  /** Whether the value before this entry is known from the loaded history. */
  oldKnown: boolean;
  /** The value before, as JSON; undefined when the key was absent (or is unknown). */
  old?: string;
}

const isObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value);
const SIMPLE_KEY = /^[A-Za-z_$][\w$-]*$/;

export const displayPath = (segments: string[]): string =>
  segments.map((key) => (SIMPLE_KEY.test(key) ? key : JSON.stringify(key))).join('.');

/** The leaves a merge patch sets or removes, as key paths. */
export function patchLeaves(patch: JsonObject, parent: string[] = []): { path: string[]; value: JsonValue }[] {
  const leaves: { path: string[]; value: JsonValue }[] = [];
  for (const [key, value] of Object.entries(patch)) {
    const path = [...parent, key];
    if (isObject(value) && Object.keys(value).length > 0) leaves.push(...patchLeaves(value, path));
    else leaves.push({ path, value: value as JsonValue });
  }
  return leaves;
}

function lookup(state: JsonValue | undefined, path: string[]): JsonValue | undefined {
  let current: JsonValue | undefined = state;
  for (const key of path) {
    if (!isObject(current) || !(key in current)) return undefined;
    current = current[key];
  }
  return current;
}

/** RFC 7396 merge patch (a copy; the input is left alone). */
export function mergePatch(target: JsonValue | undefined, patch: JsonValue): JsonValue {
  if (!isObject(patch)) return patch;
  const result: JsonObject = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/** The changes of every loaded entry, by entry id. */
export function leafChanges(items: HistoryItem[]): Map<number, LeafChange[]> {
  const changes = new Map<number, LeafChange[]>();
  for (const kind of ['desired', 'reported'] as const) {
    const entries = items.filter((item) => item.kind === kind).sort((a, b) => a.id - b.id);
    // Desired state starts as {}: with version 1 loaded, every old value is known.
    const knownFromStart = kind === 'desired' && entries.length > 0 && entries[0]!.version <= 1;
    let state: JsonValue = {};
    const knownPaths = new Set<string>();
    const isKnown = (path: string[]): boolean =>
      knownFromStart || path.some((_, index) => knownPaths.has(JSON.stringify(path.slice(0, index + 1))));
    for (const entry of entries) {
      const patch = isObject(entry.patch) ? entry.patch : {};
      const lines: LeafChange[] = [];
      for (const leaf of patchLeaves(patch)) {
        const oldKnown = isKnown(leaf.path);
        const before = oldKnown ? lookup(state, leaf.path) : undefined;
        const old = before === undefined ? undefined : JSON.stringify(before);
        lines.push(
          leaf.value === null
            ? { op: 'remove', path: displayPath(leaf.path), oldKnown, old }
            : { op: 'set', path: displayPath(leaf.path), value: JSON.stringify(leaf.value), oldKnown, old },
        );
      }
      state = mergePatch(state, patch);
      for (const leaf of patchLeaves(patch)) knownPaths.add(JSON.stringify(leaf.path));
      changes.set(entry.id, lines);
    }
  }
  return changes;
}

/** A change as one line of text: "+ a: 1", "~ a: 1 → 2", "- a (was 1)". */
export function changeText(change: LeafChange): string {
  if (change.op === 'remove') return change.old !== undefined ? `- ${change.path} (was ${change.old})` : `- ${change.path}`;
  if (change.old !== undefined) return `~ ${change.path}: ${change.old} → ${change.value ?? ''}`;
  return `+ ${change.path}: ${change.value ?? ''}`;
}

/** The numeric leaves of each report, oldest first: what the device chart plots. */
export function numericSeries(items: HistoryItem[]): { at: number; values: Record<string, number> }[] {
  return items
    .filter((item) => item.kind === 'reported')
    .sort((a, b) => a.id - b.id)
    .map((item) => {
      const values: Record<string, number> = {};
      for (const leaf of patchLeaves(isObject(item.patch) ? item.patch : {})) {
        if (typeof leaf.value === 'number' && Number.isFinite(leaf.value)) values[displayPath(leaf.path)] = leaf.value;
      }
      return { at: Date.parse(item.at) / 1000, values };
    })
    .filter((point) => Object.keys(point.values).length > 0 && Number.isFinite(point.at));
}
