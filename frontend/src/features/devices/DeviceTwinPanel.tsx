import { useCallback, useRef, useState } from 'react';
import { LIVE_SAFETY_INTERVAL_MS, useLiveEvents } from '../../app/useLiveEvents';
import { useRefresh } from '../../app/useRefresh';
import { useShadowEvents } from '../../app/useShadowEvents';
import { useCan } from '../../app/me';
import {
  ApiError,
  getTwin,
  patchDesired,
  schemaErrorDetail,
  type JsonObject,
  type SchemaErrorDetail,
  type Twin,
} from '../../services/api/devices';
import { DesiredEditor } from './DesiredEditor';
import { JsonView } from './JsonView';
import { LiveIndicator } from './LiveIndicator';
import { SchemaErrors } from './SchemaErrors';
import { SyncBadge } from './SyncBadge';
import { absoluteTime, relativeTime } from './relativeTime';

interface DeviceTwinPanelProps {
  deviceId: string;
  /**
   * How often to re-read the twin while the live event stream is down (fallback polling);
   * while it is up, a twin event for this device triggers the re-read.
   */
  pollIntervalMs?: number;
  /** Called after every accepted desired write (the history timeline refreshes). */
  onSaved?: () => void;
  /** A named shadow (SPEC §9); absent for the classic shadow. */
  shadow?: string;
  /** Called when the device turns out not to exist (deleted meanwhile, or never was). */
  onMissing?: () => void;
}

const isAbort = (error: unknown): boolean => error instanceof DOMException && error.name === 'AbortError';

function describeLoadError(error: unknown): string {
  if (error instanceof ApiError && error.status === 404) {
    return 'This device does not exist, or it belongs to another tenant.';
  }
  return error instanceof Error ? error.message : 'Something went wrong while loading the twin.';
}

/** Desired, reported and delta side by side, with an editor for desired merge patches. */
export function DeviceTwinPanel({ deviceId, pollIntervalMs = 3000, onSaved, shadow, onMissing }: DeviceTwinPanelProps) {
  const [twin, setTwin] = useState<Twin | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [editorText, setEditorText] = useState('');
  // The desired version the person was looking at when they started this patch: the If-Match.
  const [baseVersion, setBaseVersion] = useState<number | null>(null);
  const [saving, setSaving] = useState(false);
  const [saveError, setSaveError] = useState<string | null>(null);
  const [schemaError, setSchemaError] = useState<SchemaErrorDetail | null>(null);
  const [conflict, setConflict] = useState(false);
  const [savedVersion, setSavedVersion] = useState<number | null>(null);
  // Bumped on every write we make, so a poll that started before it cannot show older state.
  const generation = useRef(0);
  const canWrite = useCan('write_desired');

  const loadTwin = useCallback(
    async (signal?: AbortSignal): Promise<Twin | null> => {
      const started = generation.current;
      try {
        const { twin: fresh } = await getTwin(deviceId, signal, shadow);
        if (started !== generation.current) return null;
        setTwin(fresh);
        setLoadError(null);
        return fresh;
      } catch (error) {
        if (!isAbort(error)) setLoadError(error);
        if (error instanceof ApiError && error.status === 404) onMissing?.();
        return null;
      }
    },
    [deviceId, shadow, onMissing],
  );

  const stream = useLiveEvents((event) => {
    if (event.device_id === deviceId) refresh();
  });
  // A named shadow's changes come as `event: shadow`.
  useShadowEvents((event) => {
    if (shadow !== undefined && event.device_id === deviceId && event.shadow === shadow) refresh();
  });
  const refresh = useRefresh(
    async (signal) => {
      await loadTwin(signal);
    },
    stream === 'live' ? LIVE_SAFETY_INTERVAL_MS : pollIntervalMs,
    [deviceId, shadow],
  );

  const handleTextChange = (text: string) => {
    setEditorText(text);
    setSavedVersion(null);
    setSchemaError(null);
    if (baseVersion === null && twin) setBaseVersion(twin.desired_version);
  };

  const save = async (patch: JsonObject) => {
    if (!twin) return;
    const ifMatch = baseVersion ?? twin.desired_version;
    setSaving(true);
    setSaveError(null);
    setSchemaError(null);
    setSavedVersion(null);
    generation.current += 1;
    try {
      const updated = await patchDesired(deviceId, patch, ifMatch, shadow);
      generation.current += 1;
      setTwin(updated);
      setBaseVersion(updated.desired_version);
      setConflict(false);
      setSavedVersion(updated.desired_version);
      onSaved?.();
    } catch (error) {
      if (error instanceof ApiError && error.status === 412) {
        generation.current += 1;
        const fresh = await loadTwin();
        setConflict(true);
        setBaseVersion(fresh ? fresh.desired_version : null);
      } else if (schemaErrorDetail(error)) {
        setSchemaError(schemaErrorDetail(error));
      } else {
        setSaveError(error instanceof Error ? error.message : 'Saving failed.');
      }
    } finally {
      setSaving(false);
    }
  };

  if (!twin) {
    if (loadError) {
      return (
        <section className="twin-panel" aria-label="Device twin">
          <div role="alert" className="alert alert--error">
            {describeLoadError(loadError)}
          </div>
        </section>
      );
    }
    return (
      <section className="twin-panel" aria-label="Device twin" aria-busy="true">
        <p className="hint">Loading twin…</p>
      </section>
    );
  }

  const deltaKeys = Object.keys(twin.delta);
  const conflictPatch = conflict ? (() => {
    try {
      return JSON.parse(editorText) as JsonObject;
    } catch {
      return null;
    }
  })() : null;

  return (
    <section className="twin-panel" aria-label="Device twin">
      {loadError !== null && (
        <div role="alert" className="alert alert--warning">
          Could not refresh the twin: {describeLoadError(loadError)} Showing the last known state.
        </div>
      )}

      <div className="panel-heading">
        <h2>{shadow ? <>Shadow <code>{shadow}</code></> : 'Twin'}</h2>
        <LiveIndicator state={stream} />
      </div>
      <dl className="twin-facts">
        <div>
          <dt>Sync status</dt>
          <dd>
            <SyncBadge
              status={twin.sync_status}
              live
              message={twin.rejected ? `version ${twin.rejected.version} (${String(twin.rejected.code)}): ${twin.rejected.message}` : null}
            />
          </dd>
        </div>
        <div>
          <dt>Desired version</dt>
          <dd>{twin.desired_version}</dd>
        </div>
        <div>
          <dt>Reported version</dt>
          <dd>{twin.reported_version}</dd>
        </div>
        <div>
          <dt>Last seen</dt>
          <dd title={absoluteTime(twin.last_seen)}>{relativeTime(twin.last_seen)}</dd>
        </div>
        <div>
          <dt>Tenant</dt>
          <dd>
            <code>{twin.tenant_id}</code>
          </dd>
        </div>
        <div>
          <dt>Shadow updated</dt>
          <dd title={absoluteTime(twin.shadow_updated_at)}>
            {twin.shadow_updated_at ? relativeTime(twin.shadow_updated_at) : '—'}
          </dd>
        </div>
      </dl>

      <div className="twin-columns">
        <div className="twin-column">
          <h3>Desired</h3>
          <JsonView value={twin.desired} highlight={twin.delta} label="Desired state" />
          {deltaKeys.length > 0 && (
            <p className="hint">
              <mark className="delta-key legend">key</mark> = not yet applied by the device
            </p>
          )}
        </div>
        <div className="twin-column">
          <h3>Reported</h3>
          <JsonView value={twin.reported} label="Reported state" />
        </div>
        <div className="twin-column">
          <h3>Delta</h3>
          {deltaKeys.length === 0 ? (
            <p className="hint empty-delta">No difference: the device has everything desired.</p>
          ) : (
            <JsonView value={twin.delta} label="Delta" />
          )}
        </div>
      </div>

      {conflict && (
        <div role="alert" className="alert alert--warning conflict">
          <p>
            <strong>Someone else changed the desired state.</strong> The newest desired state (version{' '}
            {twin.desired_version}) is shown above. Review it, then re-apply your patch on top of it.
          </p>
          <div className="alert-actions">
            <button
              type="button"
              className="primary"
              disabled={saving || conflictPatch === null}
              onClick={() => conflictPatch && void save(conflictPatch)}
            >
              Re-apply
            </button>
            <button type="button" onClick={() => setConflict(false)}>
              Dismiss
            </button>
          </div>
        </div>
      )}
      {saveError !== null && (
        <div role="alert" className="alert alert--error">
          {saveError}
        </div>
      )}
      {savedVersion !== null && (
        <p role="status" className="alert alert--success">
          Saved as desired version {savedVersion}.{' '}
          {twin.reported_version >= savedVersion
            ? 'The device has applied it.'
            : 'Waiting for the device to apply it.'}
        </p>
      )}

      <DesiredEditor
        text={editorText}
        onTextChange={handleTextChange}
        onSave={(patch) => void save(patch)}
        saving={saving}
        blockedReason={canWrite.allowed ? undefined : canWrite.reason}
        readOnly={!canWrite.allowed}
        baseVersion={baseVersion}
        serverErrors={schemaError && <SchemaErrors detail={schemaError} />}
      />
    </section>
  );
}
