import { absoluteTime } from './relativeTime';

export interface Presence {
  connected: boolean;
  connected_at: string | null;
  disconnected_at: string | null;
}

/** "online since …", "offline since …", or "offline (never connected)". */
export function presenceText(presence: Presence): string {
  if (presence.connected) {
    const since = absoluteTime(presence.connected_at);
    return since ? `online since ${since}` : 'online';
  }
  const since = absoluteTime(presence.disconnected_at);
  return since ? `offline since ${since}` : 'offline (never connected)';
}

/** Whether the device is connected to the broker: a green or grey dot, with the words in its
 * title and accessible name, so it reads without colour vision and without hovering. */
export function OnlineDot({ presence, live = false, decorative = false }: { presence: Presence; live?: boolean; decorative?: boolean }) {
  if (decorative) {
    return <span className={`online-dot online-dot--${presence.connected ? 'online' : 'offline'}`} aria-hidden="true" />;
  }
  const text = presenceText(presence);
  return (
    <span
      className={`online-dot online-dot--${presence.connected ? 'online' : 'offline'}`}
      role={live ? 'status' : 'img'}
      aria-live={live ? 'polite' : undefined}
      aria-label={text}
      title={text}
    />
  );
}
