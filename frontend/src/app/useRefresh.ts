import { useCallback, useEffect, useRef } from 'react';

/**
 * Run `task` now, again every `intervalMs` after the previous run finished (null: only when
 * asked), and whenever the returned `refresh()` is called. Never overlaps runs: a refresh
 * asked for while one is running runs once more afterwards, and bursts (a bulk job makes
 * thousands of events) are coalesced to at most one run per `minGapMs`.
 * Restarts when `deps` change; stops on unmount. The task's AbortSignal fires when abandoned.
 */
export function useRefresh(
  task: (signal: AbortSignal) => Promise<void>,
  intervalMs: number | null,
  deps: readonly unknown[],
  minGapMs = 250,
): () => void {
  const taskRef = useRef(task);
  taskRef.current = task;
  const intervalRef = useRef(intervalMs);
  intervalRef.current = intervalMs;
  const triggerRef = useRef<() => void>(() => undefined);

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let running = false;
    let again = false;
    let lastRun = 0;

    const schedule = (delay: number) => {
      clearTimeout(timer);
      timer = setTimeout(() => void run(), delay);
    };
    const run = async () => {
      if (controller.signal.aborted) return;
      if (running) {
        again = true;
        return;
      }
      clearTimeout(timer);
      running = true;
      lastRun = Date.now();
      try {
        await taskRef.current(controller.signal);
      } catch {
        // The task reports its own errors; refreshing carries on regardless.
      }
      running = false;
      if (controller.signal.aborted) return;
      if (again) {
        again = false;
        schedule(minGapMs);
      } else if (intervalRef.current !== null) {
        schedule(intervalRef.current);
      }
    };
    triggerRef.current = () => {
      if (controller.signal.aborted) return;
      if (running) {
        again = true;
        return;
      }
      schedule(Math.max(0, lastRun + minGapMs - Date.now()));
    };
    void run();

    return () => {
      controller.abort();
      clearTimeout(timer);
      triggerRef.current = () => undefined;
    };
    // The caller names what restarts the refresh; the latest task is read through a ref.
  }, [minGapMs, ...deps]);

  // A changed cadence (the live stream dropped or came back) takes effect with a refresh now.
  const firstInterval = useRef(true);
  useEffect(() => {
    if (firstInterval.current) {
      firstInterval.current = false;
      return;
    }
    triggerRef.current();
  }, [intervalMs]);

  return useCallback(() => triggerRef.current(), []);
}
