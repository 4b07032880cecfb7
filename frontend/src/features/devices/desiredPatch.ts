import type { JsonObject } from '../../services/api/devices';

export type PatchValidation = { ok: true; patch: JsonObject } | { ok: false; reason: string; isSyntaxError: boolean };

/** Decide whether editor text is a usable desired merge patch, and if not, say why. */
export function validatePatch(text: string): PatchValidation {
  if (text.trim() === '') {
    return { ok: false, reason: 'Enter a JSON object, for example {"led": "green"}.', isSyntaxError: false };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { ok: false, reason: `Invalid JSON: ${describeSyntaxError(error, text)}`, isSyntaxError: true };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    const kind = parsed === null ? 'null' : Array.isArray(parsed) ? 'an array' : `a ${typeof parsed}`;
    return { ok: false, reason: `The patch must be a JSON object, not ${kind}.`, isSyntaxError: true };
  }
  if (Object.keys(parsed).length === 0) {
    return { ok: false, reason: 'The patch is empty: add at least one key.', isSyntaxError: false };
  }
  return { ok: true, patch: parsed as JsonObject };
}

function describeSyntaxError(error: unknown, text: string): string {
  const message = error instanceof Error ? error.message : String(error);
  // Older engines only give an offset; people think in lines and columns.
  const position = /at position (\d+)/.exec(message);
  if (position?.[1] && !/line \d+/.test(message)) {
    const before = text.slice(0, Number(position[1]));
    const line = before.split('\n').length;
    const column = before.length - before.lastIndexOf('\n');
    return `${message} (line ${line}, column ${column})`;
  }
  return message;
}
