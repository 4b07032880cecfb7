import { targetText, type RolloutStage } from './api';

const share = (part: number, total: number): number => (total > 0 ? (part / total) * 100 : 0);

/** One stage: a bar of its devices (synced, rejected or unhealthy, written, still to write) and the counts. */
export function StageBar({ stage }: { stage: RolloutStage }) {
  const healthy = Math.max(stage.synced - stage.unhealthy, 0);
  const waiting = Math.max(stage.written - healthy - stage.rejected - stage.unhealthy, 0);
  return (
    <li className={`rollout-stage rollout-stage--${stage.status}`} data-stage={stage.stage}>
      <div className="rollout-stage__head">
        <strong>Stage {stage.stage + 1}</strong>
        <span className="muted">up to {targetText(stage.target)}</span>
        <span className={`rollout-stage__status rollout-stage__status--${stage.status}`}>{stage.status}</span>
      </div>
      <div
        className="rollout-bar"
        role="progressbar"
        aria-label={`Stage ${stage.stage + 1} written`}
        aria-valuemin={0}
        aria-valuemax={Math.max(stage.devices, 1)}
        aria-valuenow={stage.written}
      >
        <span className="rollout-bar__part rollout-bar__part--synced" style={{ width: `${share(healthy, stage.devices)}%` }} />
        <span className="rollout-bar__part rollout-bar__part--failed" style={{ width: `${share(stage.rejected + stage.unhealthy, stage.devices)}%` }} />
        <span className="rollout-bar__part rollout-bar__part--written" style={{ width: `${share(waiting, stage.devices)}%` }} />
      </div>
      <dl className="rollout-counts">
        <div>
          <dt>Written</dt>
          <dd data-count="written">
            {stage.written} / {stage.devices}
          </dd>
        </div>
        <div>
          <dt>Synced</dt>
          <dd data-count="synced">{stage.synced}</dd>
        </div>
        <div>
          <dt>Rejected</dt>
          <dd data-count="rejected">{stage.rejected}</dd>
        </div>
        <div>
          <dt>Unhealthy</dt>
          <dd data-count="unhealthy">{stage.unhealthy}</dd>
        </div>
        {stage.reverted > 0 && (
          <div>
            <dt>Reverted</dt>
            <dd data-count="reverted">{stage.reverted}</dd>
          </div>
        )}
      </dl>
    </li>
  );
}
