import { useCallback, useEffect, useRef, useState } from 'react';
import { useLiveEvents } from '../../app/useLiveEvents';
import { Link } from '../../app/router';
import { ApiError } from '../../services/api/client';
import { LiveIndicator } from '../devices/LiveIndicator';
import { actOnRollout, actionsFor, getRollout, listRollouts, type Rollout, type RolloutAction } from './api';
import { StageBar } from './StageBar';

export const rolloutPath = (rolloutId: string): string => `/rollouts/${encodeURIComponent(rolloutId)}`;

const ACTION_LABELS: Record<RolloutAction, string> = { pause: 'Pause', resume: 'Resume', abort: 'Abort' };
/** Re-read at most this often while events arrive, and this often anyway (gates open on time). */
const EVENT_REFRESH_MS = 300;
const POLL_MS = 2_000;

/** Calls `load` now, on live events (throttled) and on a timer, while mounted. */
function useLiveReload(load: () => Promise<void>): ReturnType<typeof useLiveEvents> {
  const timer = useRef<number | null>(null);
  const onEvent = useCallback(() => {
    if (timer.current !== null) return;
    timer.current = window.setTimeout(() => {
      timer.current = null;
      void load();
    }, EVENT_REFRESH_MS);
  }, [load]);
  const stream = useLiveEvents(onEvent);
  useEffect(() => {
    void load();
    const interval = window.setInterval(() => void load(), POLL_MS);
    return () => {
      window.clearInterval(interval);
      if (timer.current !== null) window.clearTimeout(timer.current);
      timer.current = null;
    };
  }, [load]);
  return stream;
}

function errorText(error: unknown): string {
  return error instanceof ApiError || error instanceof Error ? error.message : String(error);
}

/** One rollout: its stages as progress bars with counts, live, with pause, resume and abort. */
export function RolloutPage({ rolloutId }: { rolloutId: string }) {
  const [rollout, setRollout] = useState<Rollout | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const load = useCallback(async () => {
    try {
      setRollout(await getRollout(rolloutId));
      setError(null);
    } catch (caught) {
      setError(errorText(caught));
    }
  }, [rolloutId]);
  const stream = useLiveReload(load);

  const act = async (action: RolloutAction) => {
    if (action === 'abort' && !window.confirm('Abort this rollout? Devices already written keep the new values.')) return;
    setBusy(true);
    try {
      setRollout(await actOnRollout(rolloutId, action));
      setError(null);
    } catch (caught) {
      setError(errorText(caught));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="page rollout-page">
      <p>
        <Link to="/rollouts">← Rollouts</Link>
      </p>
      <div className="panel-heading">
        <h1>
          Rollout <code title={rolloutId}>{rolloutId.slice(0, 8)}</code>
        </h1>
        <LiveIndicator state={stream} />
      </div>
      {error !== null && (
        <div role="alert" className="alert alert--warning">
          {error}
        </div>
      )}
      {rollout === null ? (
        error === null && <p className="muted">Loading…</p>
      ) : (
        <>
          <div className="rollout-summary">
            <span className={`rollout-state rollout-state--${rollout.state}`} role="status" aria-label={`Rollout state: ${rollout.state}`}>
              {rollout.state}
            </span>
            <span>
              {rollout.matched} devices; success: {Math.round(rollout.success.synced_ratio * 100)} % synced within {rollout.success.within_s} s
              {rollout.success.health ? ` and ${rollout.success.health.pointer} ${rollout.success.health.op} ${JSON.stringify(rollout.success.health.value)}` : ''}; on failure{' '}
              {rollout.on_failure}
            </span>
            <div className="rollout-actions">
              {actionsFor(rollout.state).map((action) => (
                <button key={action} type="button" disabled={busy} className={action === 'abort' ? 'danger' : undefined} onClick={() => void act(action)}>
                  {ACTION_LABELS[action]}
                </button>
              ))}
            </div>
          </div>
          {rollout.reason && <p className="rollout-reason">{rollout.reason}</p>}
          <pre className="rollout-desired" aria-label="Desired patch">
            {JSON.stringify(rollout.desired, null, 2)}
          </pre>
          <ol className="rollout-stages" aria-label="Stages">
            {rollout.stages.map((stage) => (
              <StageBar key={stage.stage} stage={stage} />
            ))}
          </ol>
        </>
      )}
    </main>
  );
}

/** The tenant's recent rollouts. */
export function RolloutsPage() {
  const [rollouts, setRollouts] = useState<Rollout[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = useCallback(async () => {
    try {
      setRollouts(await listRollouts());
      setError(null);
    } catch (caught) {
      setError(errorText(caught));
    }
  }, []);
  const stream = useLiveReload(load);
  return (
    <main className="page rollouts-page">
      <div className="panel-heading">
        <h1>Rollouts</h1>
        <LiveIndicator state={stream} />
      </div>
      <p className="hint">
        Start one with <code>POST /customer/fleet/rollouts</code> or <code>iotcloud fleet rollout</code>.
      </p>
      {error !== null && (
        <div role="alert" className="alert alert--warning">
          {error}
        </div>
      )}
      {rollouts !== null && rollouts.length === 0 && <p className="muted">No rollouts yet.</p>}
      {rollouts !== null && rollouts.length > 0 && (
        <table className="rollouts-table">
          <thead>
            <tr>
              <th>Rollout</th>
              <th>State</th>
              <th>Stage</th>
              <th>Devices</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {rollouts.map((rollout) => (
              <tr key={rollout.rollout_id}>
                <td>
                  <Link to={rolloutPath(rollout.rollout_id)}>
                    <code>{rollout.rollout_id.slice(0, 8)}</code>
                  </Link>
                </td>
                <td>
                  <span className={`rollout-state rollout-state--${rollout.state}`}>{rollout.state}</span>
                </td>
                <td>
                  {Math.min(rollout.stage + 1, rollout.stages.length)} / {rollout.stages.length}
                </td>
                <td>{rollout.matched}</td>
                <td>{new Date(rollout.created_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
