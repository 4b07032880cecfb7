import { useCallback, useRef, useState } from 'react';
import { devicePath, Link, navigate } from '../../app/router';
import { usePolling } from '../../app/usePolling';
import {
  ApiError,
  getSummary,
  listDevices,
  SYNC_STATUSES,
  type DevicePage,
  type FleetSummary,
  type SyncStatus,
} from '../../services/api/devices';
import { AddDeviceDialog } from './AddDeviceDialog';
import { SyncBadge } from './SyncBadge';
import { absoluteTime, relativeTime } from './relativeTime';

const PAGE_SIZE = 20;

interface FleetPageProps {
  /** How often to refresh the list (until Server-Sent Events replace polling). */
  pollIntervalMs?: number;
}

const isAbort = (error: unknown): boolean => error instanceof DOMException && error.name === 'AbortError';

export function FleetPage({ pollIntervalMs = 2000 }: FleetPageProps) {
  const [statusFilter, setStatusFilter] = useState<SyncStatus | 'all'>('all');
  // cursors[i] is the cursor that fetches page i; page 0 needs none.
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const [page, setPage] = useState<DevicePage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [summary, setSummary] = useState<FleetSummary | null>(null);
  const [adding, setAdding] = useState(false);
  // Once the server says it has no summary (404), stop asking every poll.
  const summaryOffered = useRef(true);

  const cursor = cursors[cursors.length - 1] ?? null;
  const syncStatus = statusFilter === 'all' ? null : statusFilter;

  usePolling(
    async (signal) => {
      try {
        const [devices, counters] = await Promise.all([
          listDevices({ limit: PAGE_SIZE, cursor, sync_status: syncStatus }, signal),
          // The summary is a nice-to-have: any failure just hides it.
          summaryOffered.current
            ? getSummary(signal).catch((summaryError: unknown) => {
                if (isAbort(summaryError)) throw summaryError;
                return undefined;
              })
            : Promise.resolve(null),
        ]);
        if (counters === null) summaryOffered.current = false;
        setPage(devices);
        setSummary(counters ?? null);
        setError(null);
      } catch (caught) {
        if (isAbort(caught)) return;
        setError(caught instanceof ApiError ? caught.message : 'Loading devices failed.');
      }
    },
    pollIntervalMs,
    [cursor, syncStatus],
  );

  const closeDialog = useCallback(() => setAdding(false), []);

  const changeFilter = (value: string) => {
    setStatusFilter(value as SyncStatus | 'all');
    setCursors([null]);
    setPage(null);
  };

  const pageNumber = cursors.length;
  const nextCursor = page?.next ?? null;

  return (
    <main className="page">
      <div className="page-heading">
        <h1>Fleet</h1>
        <div className="page-actions">
          <button type="button" className="primary" onClick={() => setAdding(true)}>
            Add device
          </button>
        </div>
      </div>

      {summary !== null && (
        <ul className="fleet-summary" aria-label="Fleet summary">
          <li>
            <span className="summary-count">{summary.total}</span> devices
          </li>
          {SYNC_STATUSES.map((status) => (
            <li key={status}>
              <span className="summary-count">{summary[status]}</span> <SyncBadge status={status} />
            </li>
          ))}
        </ul>
      )}

      <div className="toolbar">
        <label>
          Sync status{' '}
          <select value={statusFilter} onChange={(event) => changeFilter(event.target.value)}>
            <option value="all">all</option>
            {SYNC_STATUSES.map((status) => (
              <option key={status} value={status}>
                {status}
              </option>
            ))}
          </select>
        </label>
      </div>

      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}

      {page === null ? (
        error === null && <p className="hint">Loading devices…</p>
      ) : page.items.length === 0 ? (
        <p className="empty">
          {statusFilter === 'all' ? 'No devices yet. Use "Add device" to register one.' : `No ${statusFilter} devices.`}
        </p>
      ) : (
        <table className="device-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Device ID</th>
              <th scope="col">Sync</th>
              <th scope="col" className="num">
                Desired
              </th>
              <th scope="col" className="num">
                Reported
              </th>
              <th scope="col">Last seen</th>
            </tr>
          </thead>
          <tbody>
            {page.items.map((device) => (
              <tr
                key={device.device_id}
                className="clickable"
                onClick={(event) => {
                  // The id cell is a real link; the rest of the row is a convenience for the mouse.
                  if (!(event.target instanceof HTMLAnchorElement)) navigate(devicePath(device.device_id));
                }}
              >
                <td>{device.name || <span className="muted">unnamed</span>}</td>
                <td>
                  <Link to={devicePath(device.device_id)} className="device-link">
                    {device.device_id}
                  </Link>
                </td>
                <td>
                  <SyncBadge status={device.sync_status} />
                </td>
                <td className="num">{device.desired_version}</td>
                <td className="num">{device.reported_version}</td>
                <td title={absoluteTime(device.last_seen)}>{relativeTime(device.last_seen)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <nav className="pager" aria-label="Pages">
        <button type="button" disabled={pageNumber === 1} onClick={() => setCursors((stack) => stack.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {pageNumber}</span>
        <button
          type="button"
          disabled={nextCursor === null}
          onClick={() => nextCursor !== null && setCursors((stack) => [...stack, nextCursor])}
        >
          Next page
        </button>
      </nav>

      {adding && <AddDeviceDialog onClose={closeDialog} />}
    </main>
  );
}
