import { useEffect, useRef, useState } from 'react';
import { liveEvents, type LiveEvents, type ShadowEvent, type StreamState } from '../services/api/events';

/**
 * Listen to named shadows' changes (`event: shadow`, SPEC §9) on the console's one stream
 * while mounted; returns the stream's state so a view can fall back to polling while it is
 * not "live".
 */
export function useShadowEvents(onEvent: (event: ShadowEvent) => void, source: LiveEvents = liveEvents): StreamState {
  const handler = useRef(onEvent);
  handler.current = onEvent;
  const [state, setState] = useState<StreamState>(source.getState());

  useEffect(() => {
    const stopState = source.subscribeState(setState);
    const stop = source.subscribeShadows((event) => handler.current(event));
    setState(source.getState());
    return () => {
      stop();
      stopState();
    };
  }, [source]);

  return state;
}
