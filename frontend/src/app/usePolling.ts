import { useEffect, useRef } from 'react';

/**
 * Run `task` now and then every `intervalMs` after the previous run finished, so a slow
 * server never gets overlapping requests. Restarts when `deps` change; stops on unmount.
 * The task receives an AbortSignal that fires when the poll is abandoned.
 */
export function usePolling(task: (signal: AbortSignal) => Promise<void>, intervalMs: number, deps: readonly unknown[]): void {
  const taskRef = useRef(task);
  taskRef.current = task;

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;

    const run = async () => {
      try {
        await taskRef.current(controller.signal);
      } catch {
        // The task reports its own errors; polling carries on regardless.
      }
      if (!controller.signal.aborted) timer = setTimeout(run, intervalMs);
    };
    void run();

    return () => {
      controller.abort();
      clearTimeout(timer);
    };
    // The caller names what restarts the poll; the latest task is read through a ref.
  }, [intervalMs, ...deps]);
}
