import { describe, expect, it } from 'vitest';
import { validatePatch } from './desiredPatch';

describe('validatePatch', () => {
  it('accepts a JSON object', () => {
    expect(validatePatch('{"led": "green", "fan": {"speed": null}}')).toEqual({
      ok: true,
      patch: { led: 'green', fan: { speed: null } },
    });
  });

  it.each([
    ['{"led": ', /^Invalid JSON: /],
    ['[1, 2]', /must be a JSON object, not an array/],
    ['"green"', /must be a JSON object, not a string/],
    ['null', /must be a JSON object, not null/],
    ['', /Enter a JSON object/],
    ['{}', /patch is empty/],
  ])('rejects %j with a reason', (text, reason) => {
    const result = validatePatch(text);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(reason);
  });
});
