import type { StreamState } from '../../services/api/events';

const LABELS: Record<StreamState, { text: string; title: string }> = {
  live: { text: 'Live', title: 'Following changes as they happen (Server-Sent Events)' },
  connecting: { text: 'Connecting…', title: 'Opening the live event stream; refreshing every few seconds meanwhile' },
  down: { text: 'Polling', title: 'The live event stream is unavailable; refreshing every few seconds and retrying' },
};

/** Whether the page follows the live stream or falls back to polling. */
export function LiveIndicator({ state }: { state: StreamState }) {
  const { text, title } = LABELS[state];
  return (
    <span className={`live-indicator live-indicator--${state}`} title={title} data-stream-state={state}>
      <span className="live-indicator__dot" aria-hidden="true" />
      {text}
    </span>
  );
}
