import { useId, type ReactNode } from 'react';
import type { JsonObject } from '../../services/api/devices';
import { validatePatch } from './desiredPatch';

interface DesiredEditorProps {
  text: string;
  onTextChange: (text: string) => void;
  onSave: (patch: JsonObject) => void;
  saving: boolean;
  /** Why saving is impossible regardless of the text (e.g. the twin is not loaded yet). */
  blockedReason?: string;
  /** The desired version the patch will be checked against (If-Match). */
  baseVersion: number | null;
  /** The role may not write desired state: the text area is read-only too. */
  readOnly?: boolean;
  /** What the server refused about the last save (e.g. schema errors), shown by the editor. */
  serverErrors?: ReactNode;
}

/** A plain textarea with inline JSON validation; Save stays disabled, with the reason shown, until the patch is valid. */
export function DesiredEditor({ text, onTextChange, onSave, saving, blockedReason, readOnly = false, baseVersion, serverErrors }: DesiredEditorProps) {
  const id = useId();
  const validation = validatePatch(text);
  const reason = blockedReason ?? (saving ? 'Saving…' : validation.ok ? null : validation.reason);
  const showAsError = !validation.ok && validation.isSyntaxError;

  return (
    <form
      className="desired-editor"
      onSubmit={(event) => {
        event.preventDefault();
        if (validation.ok && reason === null) onSave(validation.patch);
      }}
    >
      <label htmlFor={`${id}-patch`}>Desired patch (JSON merge patch)</label>
      <p className="hint" id={`${id}-help`}>
        Objects merge, <code>null</code> deletes a key, arrays and values replace.
        {baseVersion !== null && <> Checked against desired version {baseVersion}.</>}
      </p>
      <textarea
        id={`${id}-patch`}
        className={showAsError ? 'invalid' : undefined}
        value={text}
        onChange={(event) => onTextChange(event.target.value)}
        placeholder='{"led": "green"}'
        spellCheck={false}
        rows={8}
        readOnly={readOnly}
        aria-invalid={showAsError}
        aria-describedby={`${id}-help ${id}-status`}
      />
      <div className="editor-actions">
        <button
          type="submit"
          className="primary"
          disabled={reason !== null}
          title={blockedReason}
          aria-describedby={`${id}-status`}
        >
          {saving ? 'Saving…' : 'Save desired'}
        </button>
        <p id={`${id}-status`} className={showAsError ? 'field-error' : 'hint'} aria-live="polite">
          {reason === null ? (
            'Ready to save.'
          ) : showAsError ? (
            <>
              <strong>Cannot save.</strong> {reason}
            </>
          ) : (
            `Save is disabled: ${reason}`
          )}
        </p>
      </div>
      {serverErrors}
    </form>
  );
}
