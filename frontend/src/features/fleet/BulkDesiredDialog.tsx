import { useEffect, useId, useRef, useState } from 'react';
import { ApiError, createFleetJob, type FleetFilter } from '../../services/api/devices';
import { validatePatch } from '../devices/desiredPatch';

/** A filter in words: "devices with status pending, tag site:berlin, matching "pump"". */
export function describeFilter(filter: FleetFilter): string {
  const parts: string[] = [];
  if (filter.sync_status) parts.push(`sync status ${filter.sync_status}`);
  if (filter.tag) parts.push(`tag ${filter.tag}`);
  if (filter.model_id) parts.push(`model ${filter.model_id}`);
  if (filter.q) parts.push(`id or name containing "${filter.q}"`);
  if (filter.device_ids) parts.push(`${filter.device_ids.length} chosen devices`);
  return parts.length === 0 ? 'every device in the fleet' : `devices with ${parts.join(', ')}`;
}

interface BulkDesiredDialogProps {
  filter: FleetFilter;
  /** How many devices the filter matches, when known (e.g. from the fleet summary). */
  matchingCount?: number | null;
  onClose: () => void;
  onCreated: (jobId: string) => void;
}

/** Write one desired merge patch to every device the current filter matches (a bulk job). */
export function BulkDesiredDialog({ filter, matchingCount, onClose, onCreated }: BulkDesiredDialogProps) {
  const titleId = useId();
  const fieldId = useId();
  const [text, setText] = useState('');
  const [submitting, setSubmitting] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const field = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    field.current?.focus();
    const onKey = (event: KeyboardEvent) => {
      if (event.key === 'Escape') onClose();
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [onClose]);

  const validation = validatePatch(text);
  const everything = Object.keys(filter).length === 0;

  const submit = async () => {
    if (!validation.ok) return;
    setSubmitting(true);
    setError(null);
    try {
      const { job_id } = await createFleetJob(filter, validation.patch);
      onCreated(job_id);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.message : 'Starting the bulk job failed.');
      setSubmitting(false);
    }
  };

  return (
    <div className="dialog-backdrop">
      <div role="dialog" aria-modal="true" aria-labelledby={titleId} className="dialog">
        <h2 id={titleId}>Set desired for matching devices</h2>
        <p>
          Applies to <strong>{describeFilter(filter)}</strong>
          {matchingCount != null ? ` (${matchingCount} now)` : ''}. Each device gets the patch as its next desired
          version, with history, exactly as a single write.
        </p>
        {everything && (
          <div className="alert alert--warning" role="note">
            No filter is set: this changes <strong>every</strong> device of the fleet.
          </div>
        )}
        <form
          onSubmit={(event) => {
            event.preventDefault();
            void submit();
          }}
        >
          <div className="field">
            <label htmlFor={`${fieldId}-patch`}>Desired patch for matching devices</label>
            <textarea
              id={`${fieldId}-patch`}
              ref={field}
              rows={6}
              value={text}
              spellCheck={false}
              placeholder='{"firmware": "2.1.0"}'
              aria-invalid={!validation.ok && validation.isSyntaxError}
              aria-describedby={`${fieldId}-status`}
              onChange={(event) => setText(event.target.value)}
            />
            <p id={`${fieldId}-status`} className={!validation.ok && validation.isSyntaxError ? 'field-error' : 'hint'}>
              {validation.ok ? 'Ready.' : validation.reason}
            </p>
          </div>
          {error !== null && (
            <div role="alert" className="alert alert--error">
              {error}
            </div>
          )}
          <div className="dialog-actions">
            <button type="button" onClick={onClose}>
              Cancel
            </button>
            <button type="submit" className="primary" disabled={!validation.ok || submitting}>
              {submitting ? 'Starting…' : 'Start bulk job'}
            </button>
          </div>
        </form>
      </div>
    </div>
  );
}
