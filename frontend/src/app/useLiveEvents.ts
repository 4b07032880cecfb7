import { useEffect, useRef, useState } from 'react';
import { liveEvents, type LiveEvent, type LiveEvents, type StreamState } from '../services/api/events';

/**
 * Listen to the tenant's live events (twin, deleted, presence) while mounted; returns the stream's state so a
 * page can fall back to polling while it is not "live".
 */
export function useLiveEvents(onEvent: (event: LiveEvent) => void, source: LiveEvents = liveEvents): StreamState {
  const handler = useRef(onEvent);
  handler.current = onEvent;
  const [state, setState] = useState<StreamState>(source.getState());

  useEffect(() => {
    const stopState = source.subscribeState(setState);
    const stop = source.subscribe((event) => handler.current(event));
    setState(source.getState());
    return () => {
      stop();
      stopState();
    };
  }, [source]);

  return state;
}

/** How often to re-read while the stream is live: a safety net only (e.g. devices going stale). */
export const LIVE_SAFETY_INTERVAL_MS = 30_000;
