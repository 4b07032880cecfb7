import { useEffect, useMemo, useState } from 'react';
import { getHistory, type HistoryItem } from '../../services/api/devices';
import { numericSeries } from '../devices/historyChanges';
import { TimeChart } from './TimeChart';

const COLORS = ['#2450c5', '#c2410c', '#15803d', '#7e22ce', '#0e7490'];
const MAX_SERIES = COLORS.length;
const HISTORY_LIMIT = 500;

/** A device's numeric reported values over time, from its twin history. */
export function DeviceValuesChart({ deviceId, refreshToken = 0 }: { deviceId: string; refreshToken?: number }) {
  const [items, setItems] = useState<HistoryItem[] | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    getHistory(deviceId, { limit: HISTORY_LIMIT }, controller.signal)
      .then((page) => setItems(Array.isArray(page?.items) ? page.items : null))
      .catch(() => undefined);
    return () => controller.abort();
  }, [deviceId, refreshToken]);

  const data = useMemo(() => {
    const points = numericSeries(items ?? []);
    // The keys reported most often, at most five.
    const seen = new Map<string, number>();
    for (const point of points) for (const key of Object.keys(point.values)) seen.set(key, (seen.get(key) ?? 0) + 1);
    const keys = [...seen.entries()].sort((a, b) => b[1] - a[1]).slice(0, MAX_SERIES).map(([key]) => key).sort();
    const used = points.filter((point) => keys.some((key) => key in point.values));
    return {
      times: used.map((point) => point.at),
      series: keys.map((key, index) => ({
        label: key,
        color: COLORS[index % COLORS.length]!,
        values: used.map((point) => point.values[key] ?? null),
      })),
    };
  }, [items]);

  if (data.times.length < 2 || data.series.length === 0) return null;
  return (
    <section className="chart-card" aria-label="Reported values">
      <h2>Reported values over time</h2>
      <TimeChart label="Reported values over time" times={data.times} series={data.series} />
    </section>
  );
}
