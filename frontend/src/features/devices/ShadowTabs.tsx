import { useState } from 'react';
import { LIVE_SAFETY_INTERVAL_MS } from '../../app/useLiveEvents';
import { useRefresh } from '../../app/useRefresh';
import { useShadowEvents } from '../../app/useShadowEvents';
import { listShadows } from '../../services/api/devices';
import { DeviceTwinPanel } from './DeviceTwinPanel';
import { HistoryTimeline } from './HistoryTimeline';
import { DeviceValuesChart } from '../charts/DeviceValuesChart';

interface ShadowTabsProps {
  deviceId: string;
  /**
   * How often to re-read the list of named shadows while the event stream is down (while it
   * is live, a shadow's creation or deletion comes as `event: shadow`).
   */
  pollIntervalMs?: number;
  /** Called when the device turns out not to exist (deleted meanwhile, or never was). */
  onMissing?: () => void;
}

const CLASSIC = '';

/**
 * A tab per shadow (SPEC §9): the classic shadow first, then the named ones by name; each tab
 * shows that shadow's live view, desired editor and history.
 */
export function ShadowTabs({ deviceId, pollIntervalMs = 10000, onMissing }: ShadowTabsProps) {
  const [names, setNames] = useState<string[]>([]);
  const [selected, setSelected] = useState(CLASSIC);
  // Bumped after each accepted save so the timeline re-reads at once, stream or not.
  const [saves, setSaves] = useState(0);

  const stream = useShadowEvents((event) => {
    // A shadow created or deleted meanwhile: the list of tabs changes.
    if (event.device_id === deviceId && (event.deleted || !names.includes(event.shadow))) refreshNames();
  });
  const refreshNames = useRefresh(
    async (signal) => {
      try {
        const shadows = await listShadows(deviceId, signal);
        setNames(shadows.map((shadow) => shadow.name));
      } catch {
        // An older server without named shadows, or a passing failure: the classic tab stays.
      }
    },
    stream === 'live' ? LIVE_SAFETY_INTERVAL_MS : pollIntervalMs,
    [deviceId],
  );

  // A deleted shadow's tab goes; its view falls back to the classic shadow.
  const current = selected === CLASSIC || names.includes(selected) ? selected : CLASSIC;
  const tabs = [CLASSIC, ...names];
  const shadow = current === CLASSIC ? undefined : current;

  return (
    <div className="shadow-tabs">
      {names.length > 0 && (
        <div role="tablist" aria-label="Shadows" className="tabs">
          {tabs.map((name) => (
            <button
              key={name || 'classic'}
              type="button"
              role="tab"
              id={`shadow-tab-${name || 'classic'}`}
              aria-selected={name === current}
              className={name === current ? 'tab tab--active' : 'tab'}
              onClick={() => setSelected(name)}
            >
              {name === CLASSIC ? 'Classic' : name}
            </button>
          ))}
        </div>
      )}
      <div role="tabpanel" aria-labelledby={names.length > 0 ? `shadow-tab-${current || 'classic'}` : undefined}>
        <DeviceTwinPanel
          key={`${deviceId}/${current}`}
          deviceId={deviceId}
          shadow={shadow}
          onSaved={() => setSaves((count) => count + 1)}
          onMissing={shadow === undefined ? onMissing : undefined}
        />
        {current === CLASSIC && (
          <DeviceValuesChart key={`chart-${deviceId}`} deviceId={deviceId} refreshToken={saves} />
        )}
        <HistoryTimeline
          key={`history-${deviceId}/${current}`}
          deviceId={deviceId}
          shadow={shadow}
          refreshToken={saves}
        />
      </div>
    </div>
  );
}
