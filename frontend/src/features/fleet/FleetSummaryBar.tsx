import { SYNC_STATUSES, type FleetSummary, type SyncStatus } from '../../services/api/devices';
import { SyncBadge } from '../devices/SyncBadge';

interface FleetSummaryBarProps {
  summary: FleetSummary;
  /** Clicking a status count filters the list by it. */
  onPick?: (status: SyncStatus) => void;
}

const percent = (part: number, total: number): number => (total > 0 ? (part / total) * 100 : 0);

/** Device counts by sync status, with a bar of their shares. */
export function FleetSummaryBar({ summary, onPick }: FleetSummaryBarProps) {
  return (
    <div className="fleet-summary-box">
      <ul className="fleet-summary" aria-label="Fleet summary">
        <li data-count="total">
          <span className="summary-count">{summary.total}</span> {summary.total === 1 ? 'device' : 'devices'}
        </li>
        {SYNC_STATUSES.map((status) => (
          <li key={status} data-count={status}>
            {onPick ? (
              <button type="button" className="summary-pick" onClick={() => onPick(status)} title={`Show only ${status} devices`}>
                <span className="summary-count">{summary[status]}</span> <SyncBadge status={status} />
              </button>
            ) : (
              <>
                <span className="summary-count">{summary[status]}</span> <SyncBadge status={status} />
              </>
            )}
          </li>
        ))}
      </ul>
      {summary.total > 0 && (
        <div className="summary-bar" aria-hidden="true">
          {SYNC_STATUSES.map((status) => (
            <span key={status} className={`summary-bar__part summary-bar__part--${status}`} style={{ width: `${percent(summary[status], summary.total)}%` }} />
          ))}
        </div>
      )}
    </div>
  );
}
