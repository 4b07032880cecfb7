import { useCallback, useEffect, useRef, useState } from 'react';
import { devicePath, Link, navigate } from '../../app/router';
import { LIVE_SAFETY_INTERVAL_MS, useLiveEvents } from '../../app/useLiveEvents';
import { useRefresh } from '../../app/useRefresh';
import { useCan } from '../../app/me';
import {
  ApiError,
  getFleetJob,
  getSummary,
  listDevices,
  listFleetJobs,
  SYNC_STATUSES,
  type DevicePage,
  type FleetFilter,
  type FleetJob,
  type FleetSummary,
  type SyncStatus,
} from '../../services/api/devices';
import type { LiveEvent } from '../../services/api/events';
import { BulkDesiredDialog } from '../fleet/BulkDesiredDialog';
import { FleetSummaryBar } from '../fleet/FleetSummaryBar';
import { FleetHistoryChart } from '../charts/FleetHistoryChart';
import { JobProgress, jobSettled } from '../fleet/JobProgress';
import { LiveIndicator } from './LiveIndicator';
import { AddDeviceDialog } from './AddDeviceDialog';
import { OnlineDot } from './OnlineDot';
import { SyncBadge } from './SyncBadge';
import { absoluteTime, relativeTime } from './relativeTime';

const PAGE_SIZE = 20;
const FILTER_DEBOUNCE_MS = 300;

interface FleetPageProps {
  /** How often to refresh while the live event stream is down (fallback polling). */
  pollIntervalMs?: number;
  /** How often to re-read a running bulk job. */
  jobPollIntervalMs?: number;
}

const isAbort = (error: unknown): boolean => error instanceof DOMException && error.name === 'AbortError';

/** "key:value" as the list filter wants it, or why not. */
export function checkTagFilter(text: string): { ok: true; tag: string | null } | { ok: false; reason: string } {
  const trimmed = text.trim();
  if (trimmed === '') return { ok: true, tag: null };
  const colon = trimmed.indexOf(':');
  if (colon <= 0) return { ok: false, reason: 'Write the tag as key:value, e.g. site:berlin.' };
  return { ok: true, tag: trimmed };
}

function useDebounced<T>(value: T, delayMs: number): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setDebounced(value), delayMs);
    return () => clearTimeout(timer);
  }, [value, delayMs]);
  return debounced;
}

/** Follow one bulk job until it has settled: polled, and re-read on twin events. */
function useFleetJob(jobId: string | null, intervalMs: number): { job: FleetJob | null; error: string | null; poke: () => void } {
  const [job, setJob] = useState<FleetJob | null>(null);
  const [error, setError] = useState<string | null>(null);
  const settled = job !== null && job.job_id === jobId && jobSettled(job);

  useEffect(() => {
    setJob(null);
    setError(null);
  }, [jobId]);

  const poke = useRefresh(
    async (signal) => {
      if (jobId === null) return;
      try {
        setJob(await getFleetJob(jobId, signal));
        setError(null);
      } catch (caught) {
        if (!isAbort(caught)) setError(caught instanceof ApiError ? caught.message : 'Reading the bulk job failed.');
      }
    },
    // Once written, only late reports move "synced": ask less often (twin events poke it too).
    jobId === null || settled ? null : job?.status === 'done' ? intervalMs * 5 : intervalMs,
    [jobId],
    500,
  );
  return { job: job !== null && job.job_id === jobId ? job : null, error, poke };
}

export function FleetPage({ pollIntervalMs = 3000, jobPollIntervalMs = 1000 }: FleetPageProps) {
  const [statusFilter, setStatusFilter] = useState<SyncStatus | 'all'>('all');
  const [tagText, setTagText] = useState('');
  const [searchText, setSearchText] = useState('');
  // cursors[i] is the cursor that fetches page i; page 0 needs none.
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const [page, setPage] = useState<DevicePage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [summary, setSummary] = useState<FleetSummary | null>(null);
  const [adding, setAdding] = useState(false);
  const canBulk = useCan('run_bulk_jobs');
  const canAdd = useCan('manage_devices');
  const [bulkOpen, setBulkOpen] = useState(false);
  const [jobId, setJobId] = useState<string | null>(null);
  // Once the server says it has no summary (404), stop asking.
  const summaryOffered = useRef(true);

  const tagCheck = checkTagFilter(tagText);
  const debouncedTag = useDebounced(tagCheck.ok ? tagCheck.tag : null, FILTER_DEBOUNCE_MS);
  const debouncedSearch = useDebounced(searchText.trim(), FILTER_DEBOUNCE_MS);

  const cursor = cursors[cursors.length - 1] ?? null;
  const syncStatus = statusFilter === 'all' ? null : statusFilter;
  const tag = debouncedTag;
  const q = debouncedSearch === '' ? null : debouncedSearch;

  // Filters changed: back to the first page.
  const filterKey = `${syncStatus ?? ''}|${tag ?? ''}|${q ?? ''}`;
  const shownFilterKey = useRef(filterKey);
  useEffect(() => {
    if (shownFilterKey.current === filterKey) return;
    shownFilterKey.current = filterKey;
    setCursors([null]);
    setPage(null);
  }, [filterKey]);

  const { job, error: jobError, poke: pokeJob } = useFleetJob(jobId, jobPollIntervalMs);

  const onEvent = (event: LiveEvent) => {
    // Show the change in its row at once; the re-read then settles membership and counts.
    setPage((current) => {
      if (current === null || !current.items.some((item) => item.device_id === event.device_id)) return current;
      if (event.type === 'deleted') return { ...current, items: current.items.filter((item) => item.device_id !== event.device_id) };
      if (event.type === 'presence') {
        const { connected, connected_at, disconnected_at } = event;
        return {
          ...current,
          items: current.items.map((item) => (item.device_id === event.device_id ? { ...item, connected, connected_at, disconnected_at } : item)),
        };
      }
      return {
        ...current,
        items: current.items.map((item) =>
          item.device_id === event.device_id
            ? {
                ...item,
                sync_status: event.sync_status,
                desired_version: event.desired_version,
                reported_version: event.reported_version,
                last_seen: event.reported_version !== item.reported_version && event.at ? event.at : item.last_seen,
              }
            : item,
        ),
      };
    });
    refresh();
    if (jobId !== null) pokeJob();
  };
  const stream = useLiveEvents(onEvent);

  const refresh = useRefresh(
    async (signal) => {
      try {
        const [devices, counters] = await Promise.all([
          listDevices({ limit: PAGE_SIZE, cursor, sync_status: syncStatus, tag, q }, signal),
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
    stream === 'live' ? LIVE_SAFETY_INTERVAL_MS : pollIntervalMs,
    [cursor, syncStatus, tag, q],
    // A bulk job makes an event per device: re-read at most once a second meanwhile.
    1000,
  );

  // Pick up a bulk job that is still running (started elsewhere, or before a reload).
  useEffect(() => {
    const controller = new AbortController();
    listFleetJobs(5, controller.signal)
      .then((jobs) => {
        const running = jobs.find((candidate) => candidate.status === 'running');
        if (running) setJobId((current) => current ?? running.job_id);
      })
      .catch(() => undefined); // optional: older servers have no job list
    return () => controller.abort();
  }, []);

  const closeDialog = useCallback(() => setAdding(false), []);
  const closeBulk = useCallback(() => setBulkOpen(false), []);

  const pageNumber = cursors.length;
  const nextCursor = page?.next ?? null;
  const filtered = syncStatus !== null || tag !== null || q !== null;

  const currentFilter: FleetFilter = {};
  if (syncStatus !== null) currentFilter.sync_status = syncStatus;
  if (tag !== null) currentFilter.tag = tag;
  if (q !== null) currentFilter.q = q;
  const matchingCount =
    summary === null ? null : !filtered ? summary.total : tag === null && q === null && syncStatus !== null ? summary[syncStatus] : null;

  const clearFilters = () => {
    setStatusFilter('all');
    setTagText('');
    setSearchText('');
  };

  return (
    <main className="page">
      <div className="page-heading">
        <h1>Fleet</h1>
        <div className="page-actions">
          <LiveIndicator state={stream} />
          <button
            type="button"
            onClick={() => setBulkOpen(true)}
            disabled={!tagCheck.ok || !canBulk.allowed}
            title={canBulk.reason || undefined}
          >
            Set desired for matching devices
          </button>
          <button
            type="button"
            className="primary"
            onClick={() => setAdding(true)}
            disabled={!canAdd.allowed}
            title={canAdd.reason || undefined}
          >
            Add device
          </button>
        </div>
      </div>

      {summary !== null && <FleetSummaryBar summary={summary} onPick={(status) => setStatusFilter(status)} />}
      <FleetHistoryChart />

      {jobId !== null && job === null && jobError === null && <p className="hint">Starting bulk job…</p>}
      {jobError !== null && (
        <div role="alert" className="alert alert--error">
          {jobError}
        </div>
      )}
      {job !== null && <JobProgress job={job} onDismiss={() => setJobId(null)} />}

      <form className="toolbar" role="search" aria-label="Filter devices" onSubmit={(event) => event.preventDefault()}>
        <label>
          Sync status{' '}
          <select value={statusFilter} onChange={(event) => setStatusFilter(event.target.value as SyncStatus | 'all')}>
            <option value="all">all</option>
            {SYNC_STATUSES.map((status) => (
              <option key={status} value={status}>
                {status}
              </option>
            ))}
          </select>
        </label>
        <label>
          Tag{' '}
          <input
            value={tagText}
            onChange={(event) => setTagText(event.target.value)}
            placeholder="key:value"
            aria-invalid={!tagCheck.ok}
            size={16}
          />
        </label>
        <label>
          Search{' '}
          <input type="search" value={searchText} onChange={(event) => setSearchText(event.target.value)} placeholder="id or name" size={18} />
        </label>
        {(statusFilter !== 'all' || tagText !== '' || searchText !== '') && (
          <button type="button" onClick={clearFilters}>
            Clear filters
          </button>
        )}
        {!tagCheck.ok && <span className="field-error">{tagCheck.reason}</span>}
      </form>

      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}

      {page === null ? (
        error === null && <p className="hint">Loading devices…</p>
      ) : page.items.length === 0 ? (
        <p className="empty">
          {!filtered
            ? 'No devices yet. Use "Add device" to register one.'
            : tag === null && q === null
              ? `No ${statusFilter} devices.`
              : 'No devices match these filters.'}
        </p>
      ) : (
        <table className="device-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Device ID</th>
              <th scope="col">Sync</th>
              <th scope="col">Tags</th>
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
                  <OnlineDot presence={device} />
                  <Link to={devicePath(device.device_id)} className="device-link">
                    {device.device_id}
                  </Link>
                </td>
                <td>
                  <SyncBadge status={device.sync_status} />
                </td>
                <td className="tags-cell">
                  {Object.entries(device.tags ?? {}).map(([key, value]) => (
                    <code key={key} className="tag-chip tag-chip--small">
                      {key}:{value}
                    </code>
                  ))}
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
      {bulkOpen && (
        <BulkDesiredDialog
          filter={currentFilter}
          matchingCount={matchingCount}
          onClose={closeBulk}
          onCreated={(created) => {
            setBulkOpen(false);
            setJobId(created);
          }}
        />
      )}
    </main>
  );
}
