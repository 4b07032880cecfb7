import { useEffect, useId, useRef, useState } from 'react';
import { devicePath, Link } from '../../app/router';
import { ApiError, createDevice, type CreatedDevice } from '../../services/api/devices';

// SPEC §3: the id becomes part of MQTT topics, so no '/', '+' or '#'.
const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function AddDeviceDialog({ onClose }: { onClose: () => void }) {
  const titleId = useId();
  const fieldId = useId();
  const [deviceId, setDeviceId] = useState('');
  const [name, setName] = useState('');
  const [submitting, setSubmitting] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<CreatedDevice | null>(null);
  const [copyState, setCopyState] = useState<'idle' | 'copied' | 'failed'>('idle');
  const firstField = useRef<HTMLInputElement>(null);

  useEffect(() => {
    firstField.current?.focus();
  }, []);

  useEffect(() => {
    // Once the token is on screen, closing must be deliberate: it cannot be shown again.
    if (created !== null) return;
    const onKey = (event: KeyboardEvent) => {
      if (event.key === 'Escape') onClose();
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [onClose, created]);

  const idInvalid = deviceId !== '' && !DEVICE_ID_PATTERN.test(deviceId);

  const submit = async () => {
    setSubmitting(true);
    setError(null);
    try {
      const device = await createDevice({ device_id: deviceId.trim() || undefined, name: name.trim() || undefined });
      setCreated(device);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.message : 'Creating the device failed.');
    } finally {
      setSubmitting(false);
    }
  };

  const copyToken = async () => {
    if (!created) return;
    try {
      await navigator.clipboard.writeText(created.provision_token);
      setCopyState('copied');
    } catch {
      setCopyState('failed');
    }
  };

  return (
    <div className="dialog-backdrop">
      <div role="dialog" aria-modal="true" aria-labelledby={titleId} className="dialog">
        <h2 id={titleId}>Add device</h2>
        {created === null ? (
          <form
            onSubmit={(event) => {
              event.preventDefault();
              if (!idInvalid) void submit();
            }}
          >
            <div className="field">
              <label htmlFor={`${fieldId}-id`}>Device ID (optional)</label>
              <input
                id={`${fieldId}-id`}
                ref={firstField}
                value={deviceId}
                onChange={(event) => setDeviceId(event.target.value)}
                placeholder="generated when empty"
                autoComplete="off"
                aria-invalid={idInvalid}
                aria-describedby={`${fieldId}-id-help`}
              />
              <p id={`${fieldId}-id-help`} className={idInvalid ? 'field-error' : 'hint'}>
                Letters, digits and . _ : - (up to 128, starting with a letter or digit).
              </p>
            </div>
            <div className="field">
              <label htmlFor={`${fieldId}-name`}>Name (optional)</label>
              <input
                id={`${fieldId}-name`}
                value={name}
                onChange={(event) => setName(event.target.value)}
                autoComplete="off"
              />
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
              <button type="submit" className="primary" disabled={submitting || idInvalid}>
                {submitting ? 'Creating…' : 'Create device'}
              </button>
            </div>
          </form>
        ) : (
          <div className="created-device">
            <p className="alert alert--success">Device created.</p>
            <div className="field">
              <label htmlFor={`${fieldId}-created-id`}>Device ID</label>
              <input id={`${fieldId}-created-id`} readOnly value={created.device_id} />
            </div>
            <div className="field">
              <label htmlFor={`${fieldId}-tenant`}>Tenant</label>
              <input id={`${fieldId}-tenant`} readOnly value={created.tenant_id} />
            </div>
            <div className="field">
              <label htmlFor={`${fieldId}-token`}>Provision token</label>
              <div className="token-row">
                <input
                  id={`${fieldId}-token`}
                  readOnly
                  value={created.provision_token}
                  className="token"
                  onFocus={(event) => event.target.select()}
                />
                <button type="button" onClick={() => void copyToken()}>
                  Copy
                </button>
              </div>
              <p className="hint" aria-live="polite">
                {copyState === 'copied' && 'Copied to the clipboard.'}
                {copyState === 'failed' && 'Copying failed: select the token and copy it yourself.'}
              </p>
            </div>
            <p role="note" className="alert alert--warning">
              This token will not be shown again. Store it now: the device uses it as its MQTT password
              (username = device ID) and as the <code>X-Provision-Token</code> header.
            </p>
            <div className="dialog-actions">
              <Link to={devicePath(created.device_id)} className="button-link" onClick={onClose}>
                Open device
              </Link>
              <button type="button" className="primary" onClick={onClose}>
                Done
              </button>
            </div>
          </div>
        )}
      </div>
    </div>
  );
}
