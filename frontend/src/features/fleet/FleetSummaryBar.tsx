import { SYNC_STATUSES, type FleetSummary, type SyncStatus } from '../../services/api/devices';
import { OnlineDot } from '../devices/OnlineDot';
import { SyncBadge } from '../devices/SyncBadge';

interface FleetSummaryBarProps {
  summary: FleetSummary;
  /** Clicking a status count filters the list by it. */
  onPick?: (status: SyncStatus) => void;
}

const percent = (part: number, total: number): number => (total > 0 ? (part / total) * 100 : 0);

/** Device counts by sync status, with a bar of their shares, and how many are connected. */
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
                <span className="summary-count">{summary[status] ?? 0}</span> <SyncBadge status={status} />
              </button>
            ) : (
              <>
                <span className="summary-count">{summary[status] ?? 0}</span> <SyncBadge status={status} />
              </>
            )}
          </li>
        ))}
        {typeof summary.connected === 'number' && (
          <li data-count="connected">
            <span className="summary-count">{summary.connected}</span>{' '}
            <span className="summary-connected">
              <OnlineDot presence={{ connected: true, connected_at: null, disconnected_at: null }} decorative />
              connected
            </span>
          </li>
        )}
      </ul>
      {summary.total > 0 && (
        <div className="summary-bar" aria-hidden="true">
          {SYNC_STATUSES.map((status) => (
            <span key={status} className={`summary-bar__part summary-bar__part--${status}`} style={{ width: `${percent(summary[status] ?? 0, summary.total)}%` }} />
          ))}
        </div>
      )}
    </div>
  );
}
