import { useCallback, useRef, useState } from 'react';
import { LIVE_SAFETY_INTERVAL_MS, useLiveEvents } from '../../app/useLiveEvents';
import { useRefresh } from '../../app/useRefresh';
import { ApiError, getHistory, type HistoryItem } from '../../services/api/devices';
import { actorName, patchLines } from './historyDiff';
import { absoluteTime, relativeTime } from './relativeTime';

const PAGE_SIZE = 20;

const isAbort = (error: unknown): boolean => error instanceof DOMException && error.name === 'AbortError';
const messageOf = (error: unknown, fallback: string): string =>
  error instanceof ApiError ? error.message : error instanceof Error ? error.message : fallback;

/** One history entry: when, who, which version, and the patch as +/- lines. */
export function HistoryEntry({ item }: { item: HistoryItem }) {
  const lines = patchLines(item.patch ?? {});
  const who = actorName(item.actor);
  return (
    <li className={`history-entry history-entry--${item.kind}`} data-history-id={item.id}>
      <div className="history-meta">
        <time dateTime={item.at} title={absoluteTime(item.at)}>
          {absoluteTime(item.at)}
        </time>
        <span className="muted">({relativeTime(item.at)})</span>
        <span className={`history-kind history-kind--${item.kind}`}>{item.kind === 'desired' ? 'desired' : 'reported'}</span>
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
            <span key={index} className={line.op === '+' ? 'diff-add' : 'diff-remove'}>
              {line.op === '+' ? `+ ${line.path}: ${line.value ?? ''}` : `- ${line.path}`}
              {'\n'}
            </span>
          ))}
        </pre>
      )}
    </li>
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
  const refresh = useRefresh(
    loadNewest,
    stream === 'live' && !shadow ? LIVE_SAFETY_INTERVAL_MS : pollIntervalMs,
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
      {items === null ? (
        error === null && <p className="hint">Loading history…</p>
      ) : items.length === 0 ? (
        <p className="hint">No changes yet. Desired writes and device reports will appear here.</p>
      ) : (
        <ol className="history-list" aria-label="Twin history, newest first">
          {items.map((item) => (
            <HistoryEntry key={item.id} item={item} />
          ))}
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
