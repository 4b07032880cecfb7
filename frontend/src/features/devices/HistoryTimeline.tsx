import { Fragment, useCallback, useMemo, useRef, useState } from 'react';
import { LIVE_SAFETY_INTERVAL_MS, useLiveEvents } from '../../app/useLiveEvents';
import { useRefresh } from '../../app/useRefresh';
import { useShadowEvents } from '../../app/useShadowEvents';
import { ApiError, getHistory, type HistoryItem } from '../../services/api/devices';
import { actorName } from './historyDiff';
import { changeText, leafChanges, type LeafChange } from './historyChanges';
import { absoluteTime, relativeTime } from './relativeTime';

const PAGE_SIZE = 20;

const isAbort = (error: unknown): boolean => error instanceof DOMException && error.name === 'AbortError';
const messageOf = (error: unknown, fallback: string): string =>
  error instanceof ApiError ? error.message : error instanceof Error ? error.message : fallback;

/** One history entry: when, who, which version, and per leaf what it was and what it became. */
export function HistoryEntry({ item, changes }: { item: HistoryItem; changes?: LeafChange[] }) {
  const lines = changes ?? leafChanges([item]).get(item.id) ?? [];
  const who = actorName(item.actor);
  return (
    <li className={`history-entry history-entry--${item.kind}`} data-history-id={item.id}>
      <div className="history-meta">
        <time dateTime={item.at} title={absoluteTime(item.at)}>
          {absoluteTime(item.at)}
        </time>
        <span className="muted">({relativeTime(item.at)})</span>
        <span className={`history-kind history-kind--${item.kind}`}>{item.kind}</span>
        <span className="history-actor">
          by <strong>{who}</strong>
        </span>
        <span className="history-version">version {item.version}</span>
      </div>
      {lines.length === 0 ? (
        <p className="hint history-empty">No changes (empty {item.kind === 'desired' ? 'patch' : 'report'}).</p>
      ) : (
        <pre className="history-diff" aria-label={`Changes in ${item.kind} version ${item.version}`}>
          {lines.map((line, index) => (
            <span
              key={index}
              className={line.op === 'remove' ? 'diff-remove' : line.old !== undefined ? 'diff-change' : 'diff-add'}
              title={line.oldKnown ? undefined : 'The value before is older than the history shown'}
            >
              {changeText(line)}
              {'\n'}
            </span>
          ))}
        </pre>
      )}
    </li>
  );
}

type KindFilter = 'all' | 'desired' | 'reported';

/** Runs of consecutive device reports, for collapsing telemetry noise. */
function groupReports(items: HistoryItem[], collapse: boolean): (HistoryItem | HistoryItem[])[] {
  if (!collapse) return items;
  const groups: (HistoryItem | HistoryItem[])[] = [];
  for (const item of items) {
    const last = groups[groups.length - 1];
    if (item.kind === 'reported' && Array.isArray(last)) last.push(item);
    else if (item.kind === 'reported') groups.push([item]);
    else groups.push(item);
  }
  // A single report is shown as it is.
  return groups.map((group) => (Array.isArray(group) && group.length === 1 ? group[0]! : group));
}

function ReportGroup({ items, changes }: { items: HistoryItem[]; changes: Map<number, LeafChange[]> }) {
  const [open, setOpen] = useState(false);
  const newest = items[0]!;
  const oldest = items[items.length - 1]!;
  return (
    <>
      <li className="history-entry history-entry--reported history-group" data-history-group={items.length}>
        <div className="history-meta">
          <span className="history-kind history-kind--reported">reported</span>
          <span>
            <strong>{items.length} reports</strong> from the device, {absoluteTime(oldest.at)} to {absoluteTime(newest.at)}
          </span>
          <button type="button" onClick={() => setOpen((value) => !value)} aria-expanded={open}>
            {open ? 'Collapse' : `Show ${items.length} reports`}
          </button>
        </div>
      </li>
      {open && items.map((item) => <HistoryEntry key={item.id} item={item} changes={changes.get(item.id)} />)}
    </>
  );
}

interface HistoryTimelineProps {
  deviceId: string;
  /** Re-read interval while the live stream is down. */
  pollIntervalMs?: number;
  /** Bump to re-read the newest entries now (e.g. after this page saved desired). */
  refreshToken?: number;
  /** A named shadow (SPEC §9); absent for the classic shadow. */
  shadow?: string;
}

/** The twin's history, newest first, following new entries live, with "Load more" paging. */
export function HistoryTimeline({ deviceId, pollIntervalMs = 3000, refreshToken = 0, shadow }: HistoryTimelineProps) {
  const [items, setItems] = useState<HistoryItem[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [missing, setMissing] = useState(false);
  const [moreError, setMoreError] = useState<string | null>(null);
  const [loadingMore, setLoadingMore] = useState(false);
  const itemsRef = useRef<HistoryItem[] | null>(null);
  itemsRef.current = items;
  const [kind, setKind] = useState<KindFilter>('all');
  const [actor, setActor] = useState('all');
  const [collapse, setCollapse] = useState(true);
  const changes = useMemo(() => leafChanges(items ?? []), [items]);
  const actors = useMemo(
    () => [...new Set((items ?? []).map((item) => actorName(item.actor)))].sort((a, b) => (a === 'device' ? -1 : b === 'device' ? 1 : a.localeCompare(b))),
    [items],
  );
  const shown = (items ?? []).filter(
    (item) => (kind === 'all' || item.kind === kind) && (actor === 'all' || actorName(item.actor) === actor),
  );

  const loadNewest = useCallback(
    async (signal: AbortSignal) => {
      try {
        const page = await getHistory(deviceId, { limit: PAGE_SIZE }, signal, shadow);
        const current = itemsRef.current;
        const newestKnown = current && current.length > 0 ? Math.max(...current.map((item) => item.id)) : null;
        const fresh = newestKnown === null ? page.items : page.items.filter((item) => item.id > newestKnown);
        // A whole page of new entries may leave a gap to what we have: start over from the top.
        if (current === null || newestKnown === null || (fresh.length === page.items.length && page.next !== null)) {
          setItems(page.items);
          setNext(page.next);
        } else if (fresh.length > 0) {
          setItems([...fresh, ...current]);
        }
        setError(null);
        setMissing(false);
      } catch (caught) {
        if (isAbort(caught)) return;
        setMissing(caught instanceof ApiError && caught.status === 404);
        setError(messageOf(caught, 'Loading the history failed.'));
      }
    },
    [deviceId, shadow],
  );

  const stream = useLiveEvents((event) => {
    if (event.device_id === deviceId) refresh();
  });
  // A named shadow's changes come as `event: shadow`.
  useShadowEvents((event) => {
    if (shadow !== undefined && event.device_id === deviceId && event.shadow === shadow) refresh();
  });
  const refresh = useRefresh(
    loadNewest,
    stream === 'live' ? LIVE_SAFETY_INTERVAL_MS : pollIntervalMs,
    [deviceId, refreshToken, shadow],
  );

  const loadMore = async () => {
    if (next === null) return;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const page = await getHistory(deviceId, { limit: PAGE_SIZE, cursor: next }, undefined, shadow);
      setItems((current) => {
        const known = new Set((current ?? []).map((item) => item.id));
        return [...(current ?? []), ...page.items.filter((item) => !known.has(item.id))];
      });
      setNext(page.next);
    } catch (caught) {
      setMoreError(messageOf(caught, 'Loading older history failed.'));
    } finally {
      setLoadingMore(false);
    }
  };

  // A missing device is explained once, by the twin panel.
  if (missing && items === null) return null;

  return (
    <section className="history" aria-labelledby={`history-${deviceId}`}>
      <h2 id={`history-${deviceId}`}>History</h2>
      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}
      {items !== null && items.length > 0 && (
        <form className="history-filters" aria-label="Filter history" onSubmit={(event) => event.preventDefault()}>
          <label>
            Kind{' '}
            <select value={kind} onChange={(event) => setKind(event.target.value as KindFilter)}>
              <option value="all">all</option>
              <option value="desired">desired writes</option>
              <option value="reported">device reports</option>
            </select>
          </label>
          <label>
            Actor{' '}
            <select value={actor} onChange={(event) => setActor(event.target.value)}>
              <option value="all">anyone</option>
              {actors.map((name) => (
                <option key={name} value={name}>
                  {name}
                </option>
              ))}
            </select>
          </label>
          <label>
            <input type="checkbox" checked={collapse} onChange={(event) => setCollapse(event.target.checked)} /> Collapse runs of
            reports
          </label>
        </form>
      )}
      {items === null ? (
        error === null && <p className="hint">Loading history…</p>
      ) : items.length === 0 ? (
        <p className="hint">No changes yet. Desired writes and device reports will appear here.</p>
      ) : shown.length === 0 ? (
        <p className="hint">No loaded entry matches these filters{next !== null ? '; "Load more" reads older ones' : ''}.</p>
      ) : (
        <ol className="history-list" aria-label="Twin history, newest first">
          {groupReports(shown, collapse).map((group) =>
            Array.isArray(group) ? (
              <Fragment key={`group-${group[0]!.id}`}>
                <ReportGroup items={group} changes={changes} />
              </Fragment>
            ) : (
              <HistoryEntry key={group.id} item={group} changes={changes.get(group.id)} />
            ),
          )}
        </ol>
      )}
      {moreError !== null && (
        <div role="alert" className="alert alert--error">
          {moreError}
        </div>
      )}
      {next !== null && items !== null && (
        <button type="button" onClick={() => void loadMore()} disabled={loadingMore}>
          {loadingMore ? 'Loading…' : 'Load more'}
        </button>
      )}
    </section>
  );
}
