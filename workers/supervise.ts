/**
 * Keeps workers that live in a command's own process running. The SDK ends a worker on an error it gives up on (a
 * poll error it does not know to be transient fails the worker after a minute of retries). A `stepwise worker`
 * process then exits and its supervisor (systemd, Kubernetes) starts another; the embedded mode's workers live in
 * the CLI's process, which no supervisor watches, so without this the run would wait in silence for a worker that is
 * gone while the command follows it. A worker that stops on its own is created again, and the restart is said.
 */
import type { Worker } from '@temporalio/worker';
import type { TemporalDevServer } from '../infra/temporal';

export interface SupervisedWorkers<Q extends string> {
  /** Settles once `shutdown()` has stopped every worker. */
  running: Promise<void>;
  /** Stops the workers (each finishes or cancels its in-flight work, as `Worker.shutdown` does) and the restarts. */
  shutdown(): void;
  /** The worker now serving `queue`. */
  current(queue: Q): Worker | undefined;
  /** How many times a worker was created again. */
  restarts(): number;
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** A supervisor's stop: a flag, and the pauses between restarts, which it cuts short. */
function stopSwitch() {
  let on = false;
  let wake!: () => void;
  const woken = new Promise<void>((resolve) => (wake = resolve));
  return {
    get on() {
      return on;
    },
    set() {
      on = true;
      wake();
    },
    pause: (ms: number) => Promise.race([woken, new Promise<void>((resolve) => setTimeout(resolve, ms).unref())]),
  };
}

/**
 * Runs `initial` (a worker per queue), replacing each that stops without `shutdown()` by `create(queue)`. The first
 * replacement comes after `firstDelayMs`; one that cannot be created, or stops again at once, backs off to
 * `maxDelayMs`, so a server that is away costs a line per attempt, not a busy loop.
 */
export function superviseWorkers<Q extends string>(
  initial: ReadonlyMap<Q, Worker>,
  create: (queue: Q) => Promise<Worker>,
  log: (line: string) => void,
  opts: { firstDelayMs?: number; maxDelayMs?: number } = {}
): SupervisedWorkers<Q> {
  const firstDelayMs = opts.firstDelayMs ?? 1_000;
  const maxDelayMs = opts.maxDelayMs ?? 30_000;
  const current = new Map(initial);
  const stop = stopSwitch();
  let restarts = 0;

  const serve = async (queue: Q): Promise<void> => {
    let delay = firstDelayMs;
    for (;;) {
      const worker = current.get(queue)!;
      const since = Date.now();
      const error = await worker.run().then(
        () => undefined,
        (err: unknown) => err
      );
      if (stop.on) return;
      // One that served a while starts again at the first delay; one that stops at once backs off.
      if (Date.now() - since > maxDelayMs) delay = firstDelayMs;
      log(
        `stepwise: the embedded ${queue} worker stopped${error ? ` (${message(error)})` : ''}; ` +
          `starting another in ${delay / 1000} s`
      );
      for (;;) {
        await stop.pause(delay);
        delay = Math.min(delay * 2, maxDelayMs);
        if (stop.on) return;
        try {
          current.set(queue, await create(queue));
          restarts++;
          break;
        } catch (err) {
          log(
            `stepwise: the embedded ${queue} worker could not start (${message(err)}); ` +
              `trying again in ${delay / 1000} s`
          );
        }
      }
      if (stop.on) {
        // Created while shutting down: run it only to stop it, which releases what it holds.
        const late = current.get(queue)!;
        const ran = late.run().catch(() => undefined);
        late.shutdown();
        await ran;
        return;
      }
    }
  };

  const running = Promise.all([...initial.keys()].map(serve)).then(() => undefined);
  return {
    running,
    shutdown() {
      stop.set();
      for (const worker of current.values()) if (worker.getState() === 'RUNNING') worker.shutdown();
    },
    current: (queue) => current.get(queue),
    restarts: () => restarts,
  };
}

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
 * Keeps the embedded Temporal dev server running while the command serves its state. One that ends unasked (a
 * crash, the OOM killer, a stray kill) is started again by `restart` (on the same database and port), where the
 * workers and clients connected to it find it again: they retry through the outage, as
 * test/faults/temporal-restart.test.ts shows. The end and the return are each said.
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
  const stop = stopSwitch();
  let restarts = 0;

  const watch = async (): Promise<void> => {
    for (;;) {
      const server = current;
      const { reason, stopRequested } = await server.exited;
      // Stopped on purpose: by stop() here, or by the exit hooks as this process ends on a signal
      // (infra/service-process.ts).
      if (stop.on || stopRequested) return;
      // Its process is gone: this releases the database's lock, which the restart takes again.
      await server.stop();
      // Its output went to the server's log as it came (temporal.log, embedded), a Go panic's cause included.
      log(`stepwise: the embedded Temporal server stopped (${reason}); starting it again on the same state`);
      let delay = firstDelayMs;
      for (;;) {
        await stop.pause(delay);
        if (stop.on) return;
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
      if (stop.on) {
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
      stop.set();
      await current.stop();
      await watching;
    },
  };
}
