import type { FleetJob } from '../../services/api/devices';

const STATUS_TEXT: Record<FleetJob['status'], string> = {
  running: 'running',
  done: 'done',
  failed: 'failed',
};

function Meter({ label, value, max }: { label: string; value: number; max: number }) {
  const shown = Math.min(value, max);
  return (
    <div className="job-meter">
      <div className="job-meter__label">
        <span>{label}</span>
        <span className="job-meter__value">
          {value} / {max}
        </span>
      </div>
      <progress aria-label={label} value={shown} max={Math.max(max, 1)} />
    </div>
  );
}

/** Whether nothing more will change: the job ended and every written device has reported. */
export function jobSettled(job: FleetJob): boolean {
  return job.status === 'failed' || (job.status === 'done' && job.synced >= job.written);
}

interface JobProgressProps {
  job: FleetJob;
  onDismiss?: () => void;
}

/** A bulk desired job: status, and how many devices matched, were written and have synced. */
export function JobProgress({ job, onDismiss }: JobProgressProps) {
  const settled = jobSettled(job);
  return (
    <section className={`job-progress job-progress--${job.status}`} aria-label="Bulk job progress">
      <div className="job-progress__head">
        <h2>
          Bulk desired job <code title={job.job_id}>{job.job_id.slice(0, 8)}</code>
        </h2>
        <span className={`job-status job-status--${job.status}`} role="status" aria-label={`Job status: ${job.status}`}>
          {STATUS_TEXT[job.status]}
        </span>
        {onDismiss && settled && (
          <button type="button" onClick={onDismiss}>
            Dismiss
          </button>
        )}
      </div>
      <dl className="job-counts">
        <div>
          <dt>Matched</dt>
          <dd data-count="matched">{job.matched}</dd>
        </div>
        <div>
          <dt>Written</dt>
          <dd data-count="written">{job.written}</dd>
        </div>
        <div>
          <dt>Synced</dt>
          <dd data-count="synced">{job.synced}</dd>
        </div>
        {(job.skipped ?? 0) > 0 && (
          <div>
            <dt>Skipped</dt>
            <dd data-count="skipped">{job.skipped}</dd>
          </div>
        )}
        {(job.failed ?? 0) > 0 && (
          <div>
            <dt>Failed</dt>
            <dd data-count="failed">{job.failed}</dd>
          </div>
        )}
      </dl>
      <Meter label="Written" value={job.written} max={job.matched} />
      <Meter label="Synced" value={job.synced} max={job.written} />
      {job.desired && (
        <p className="hint">
          Patch <code>{JSON.stringify(job.desired)}</code>
          {job.created_by ? <> by {job.created_by}</> : null}
        </p>
      )}
      {job.status === 'failed' && (
        <div role="alert" className="alert alert--error">
          The job failed{job.error ? `: ${job.error}` : '.'}
        </div>
      )}
      {job.status === 'done' && job.synced < job.written && (
        <p className="hint">All matching devices were written; waiting for {job.written - job.synced} to report the new version.</p>
      )}
      {job.status === 'done' && job.matched === 0 && <p className="hint">No device matched the filter: nothing was written.</p>}
    </section>
  );
}
