import type { FleetJob } from '../../services/api/devices';

/**
 * The job's state in words that keep "written" (the desired state is stored and on its way
 * to the device) apart from "applied" (the device reported that version).
 */
export function jobPhase(job: FleetJob): 'writing' | 'written' | 'applied' | 'failed' {
  if (job.status === 'running') return 'writing';
  if (job.status === 'failed') return 'failed';
  return job.synced >= job.written ? 'applied' : 'written';
}

const PHASE_TEXT: Record<ReturnType<typeof jobPhase>, string> = {
  writing: 'writing',
  written: 'written, not all applied',
  applied: 'applied',
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
  const phase = jobPhase(job);
  return (
    <section className={`job-progress job-progress--${job.status}`} aria-label="Bulk job progress">
      <div className="job-progress__head">
        <h2>
          Bulk desired job <code title={job.job_id}>{job.job_id.slice(0, 8)}</code>
        </h2>
        <span className={`job-status job-status--${job.status}`} role="status" aria-label={`Job status: ${phase}`}>
          {PHASE_TEXT[phase]}
        </span>
        {onDismiss && phase !== 'writing' && (
          <button type="button" onClick={onDismiss} title="Hide this card; the devices keep applying the patch">
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
          <dt title="the new desired state is stored and sent to the device">Written</dt>
          <dd data-count="written">{job.written}</dd>
        </div>
        <div>
          <dt title="the device reported the new desired version">Applied</dt>
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
      <Meter label="Applied" value={job.synced} max={job.written} />
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
        <p className="hint">
          Written to all {job.written} matching devices; {job.synced} of {job.written} applied so far, waiting for{' '}
          {job.written - job.synced} to report the new version. You can dismiss this card: they keep applying it.
        </p>
      )}
      {job.status === 'done' && job.matched === 0 && <p className="hint">No device matched the filter: nothing was written.</p>}
    </section>
  );
}
