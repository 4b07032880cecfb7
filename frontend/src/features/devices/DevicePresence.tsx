import { useEffect, useState } from 'react';
import { useLiveEvents } from '../../app/useLiveEvents';
import { getDevice } from '../../services/api/devices';
import type { LiveEvents } from '../../services/api/events';
import { OnlineDot, presenceText, type Presence } from './OnlineDot';

/** The device page's online dot: read once, then kept current by `event: presence`. */
export function DevicePresence({ deviceId, source }: { deviceId: string; source?: LiveEvents }) {
  const [presence, setPresence] = useState<Presence | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    getDevice(deviceId, controller.signal)
      .then(({ connected, connected_at, disconnected_at }) => setPresence({ connected, connected_at, disconnected_at }))
      .catch(() => {
        // The profile card shows load errors; the dot just stays hidden.
      });
    return () => controller.abort();
  }, [deviceId]);

  useLiveEvents((event) => {
    if (event.type !== 'presence' || event.device_id !== deviceId) return;
    const { connected, connected_at, disconnected_at } = event;
    setPresence({ connected, connected_at, disconnected_at });
  }, source);

  if (presence === null) return null;
  return (
    <span className="device-presence">
      <OnlineDot presence={presence} live />
      <span className="muted">{presenceText(presence)}</span>
    </span>
  );
}
