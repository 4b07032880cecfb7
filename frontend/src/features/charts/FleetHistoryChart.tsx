import { useEffect, useMemo, useState } from 'react';
import { request } from '../../services/api/client';
import { TimeChart } from './TimeChart';

interface Sample {
  at: string;
  total: number;
  synced: number;
  pending: number;
  stale: number;
}

const REFRESH_MS = 60_000;

/** Synced / pending / stale over the last 24 hours, from the samples the service keeps. */
export function FleetHistoryChart({ hours = 24 }: { hours?: number }) {
  const [samples, setSamples] = useState<Sample[] | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    const load = () =>
      request<{ items?: unknown }>('/customer/fleet/history', { query: { hours }, signal: controller.signal })
        .then(({ body }) => setSamples(Array.isArray(body?.items) ? (body.items as Sample[]) : null))
        .catch(() => undefined); // a nice-to-have: an older server has no history
    void load();
    const timer = setInterval(() => void load(), REFRESH_MS);
    return () => {
      clearInterval(timer);
      controller.abort();
    };
  }, [hours]);

  const data = useMemo(() => {
    const points = (samples ?? []).filter((sample) => Number.isFinite(Date.parse(sample.at)));
    return {
      times: points.map((sample) => Date.parse(sample.at) / 1000),
      series: [
        { label: 'synced', color: '#1f8a4c', values: points.map((sample) => sample.synced) },
        { label: 'pending', color: '#c98a00', values: points.map((sample) => sample.pending) },
        { label: 'stale', color: '#7b8496', values: points.map((sample) => sample.stale) },
      ],
    };
  }, [samples]);

  if (samples === null || samples.length === 0) return null;
  return (
    <section className="chart-card" aria-label="Fleet over time">
      <h2>Sync status, last {hours} hours</h2>
      <TimeChart label={`Fleet sync status over ${hours} hours`} times={data.times} series={data.series} stepped />
    </section>
  );
}
