/**
 * A time-series line chart on uPlot (a small canvas chart library: docs/dependencies.md).
 * The figure carries its name and point count for people and tests; the legend names each
 * series. jsdom (unit tests) has no canvas: there only the figure is rendered. uPlot is
 * loaded when a chart is first drawn (it touches the window when imported).
 */
import { useEffect, useRef } from 'react';
import type uPlot from 'uplot';

export interface ChartSeries {
  label: string;
  color: string;
  values: (number | null)[];
}

interface TimeChartProps {
  label: string;
  /** Unix seconds, ascending. */
  times: number[];
  series: ChartSeries[];
  height?: number;
  /** Stepped lines (counts between samples) instead of straight ones. */
  stepped?: boolean;
}

const canDraw = (): boolean => typeof navigator !== 'undefined' && !/jsdom/i.test(navigator.userAgent);

export function TimeChart({ label, times, series, height = 200, stepped = false }: TimeChartProps) {
  const host = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const element = host.current;
    if (!element || !canDraw() || times.length === 0) return undefined;
    let chart: uPlot | null = null;
    let observer: ResizeObserver | null = null;
    let cancelled = false;
    const width = () => Math.max(240, element.clientWidth || 600);
    void Promise.all([import('uplot'), import('uplot/dist/uPlot.min.css')]).then(([{ default: UPlot }]) => {
      if (cancelled) return;
      const paths = stepped ? UPlot.paths.stepped?.({ align: 1 }) : undefined;
      chart = new UPlot(
      {
        width: width(),
        height,
        series: [
          {},
          ...series.map((item) => ({ label: item.label, stroke: item.color, width: 2, paths, points: { show: times.length < 60 } })),
        ],
        axes: [{}, { size: 50 }],
        scales: { x: { time: true } },
        cursor: { drag: { x: false, y: false } },
      },
      [times, ...series.map((item) => item.values)] as uPlot.AlignedData,
      element,
    );
      const drawn = chart;
      observer = new ResizeObserver(() => drawn.setSize({ width: width(), height }));
      observer.observe(element);
    });
    return () => {
      cancelled = true;
      observer?.disconnect();
      chart?.destroy();
    };
  }, [times, series, height, stepped]);

  return (
    <figure className="chart-figure" role="figure" aria-label={label} data-points={times.length}>
      <div ref={host} className="chart-host" />
      {!canDraw() && (
        <figcaption className="hint">
          {series.map((item) => item.label).join(', ')}: {times.length} points
        </figcaption>
      )}
    </figure>
  );
}
