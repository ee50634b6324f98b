/**
 * Keeps the embedded Temporal dev server running while a command serves its state. A `stepwise worker` process
 * reaches a cluster that its operators keep up; the embedded mode's server is a child of the CLI that no supervisor
 * watches, so one that died under a run (a crash, the OOM killer, a stray kill) would leave the command following a
 * run that can no longer move.
 */
import type { TemporalDevServer } from '../infra/temporal';
import { settledWithin } from '../lib/wait';

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** A Temporal dev server kept running by {@link superviseServer}. */
export interface SupervisedServer {
  /** The server now running (after a restart, another process on the same state and port). */
  current(): TemporalDevServer;
  /** How many times it was started again. */
  restarts(): number;
  /** Stops the server, and the restarts. */
  stop(): Promise<void>;
}

/**
 * Runs `first` until `stop()`: when it ends unasked, `restart` starts another (on the same database and port), where
 * the workers and clients connected to it find it again: they retry through the outage, as
 * test/faults/temporal-restart.test.ts shows. The end and the return are each said; a start that fails is tried again
 * after a pause that doubles up to `maxDelayMs`.
 */
export function superviseServer(
  first: TemporalDevServer,
  restart: () => Promise<TemporalDevServer>,
  log: (line: string) => void,
  opts: { firstDelayMs?: number; maxDelayMs?: number } = {}
): SupervisedServer {
  const firstDelayMs = opts.firstDelayMs ?? 500;
  const maxDelayMs = opts.maxDelayMs ?? 30_000;
  let current = first;
  let restarts = 0;
  // stop() aborts: the flag the loop reads, and the end of any pause between restarts.
  const stop = new AbortController();
  const stopped = new Promise<void>((resolve) =>
    stop.signal.addEventListener('abort', () => resolve(), { once: true })
  );

  const watch = async (): Promise<void> => {
    for (;;) {
      const server = current;
      const { reason, stopRequested } = await server.exited;
      // Stopped on purpose: by stop() here, or by the exit hooks as this process ends on a signal
      // (infra/service-process.ts).
      if (stop.signal.aborted || stopRequested) return;
      // Its process is gone: this releases the database's lock, which the restart takes again.
      await server.stop();
      // Its output went to the server's log as it came (temporal.log, embedded), a Go panic's cause included.
      log(`stepwise: the embedded Temporal server stopped (${reason}); starting it again on the same state`);
      let delay = firstDelayMs;
      for (;;) {
        await settledWithin(stopped, delay);
        if (stop.signal.aborted) return;
        try {
          current = await restart();
          restarts++;
          break;
        } catch (err) {
          delay = Math.min(delay * 2, maxDelayMs);
          log(
            `stepwise: the embedded Temporal server did not start (${message(err)}); trying again in ${delay / 1000} s`
          );
        }
      }
      if (stop.signal.aborted) {
        await current.stop();
        return;
      }
      log(`stepwise: the embedded Temporal server is back at ${current.address}`);
    }
  };
  const watching = watch();
  return {
    current: () => current,
    restarts: () => restarts,
    async stop() {
      stop.abort();
      await current.stop();
      await watching;
    },
  };
}
