import { startTemporalDevServer } from '../infra/temporal';
import { freePort } from '../infra/cache';
import type { Logger } from '@temporalio/common';
import { clearScratchLeftovers, connectTemporal, createPipelineWorkers } from './pipeline-worker';
import { installRuntime } from './telemetry';
import { limitHeapGrowthFromSettings } from './heap';
import { openPipelineRuns, releaseOrphanedAttempts } from './interrupted';
import { devServerSearchAttributes } from './search-attributes';
import { superviseServer } from './supervise';

/**
 * Everything `npm start` needs in one process: a Temporal dev server with SQLite persistence in the state folder,
 * and workers for both queues. Stopping shuts the workers down first so no activity is orphaned mid-write.
 *
 * Runs an earlier process left open in the state (it was killed) are picked up by these workers as soon as they
 * poll; `interrupted` lists them, and the attempts the dead process held are released first so they retry now. A
 * server that ends unasked while the command runs is started again (workers/supervise.ts).
 *
 * `log` takes what a person following the run needs (interrupted runs released); `serverLog` the dev server's own
 * output and `logger` the workers' (the SDK's and the activities' entries), which belong in files unless asked for.
 */
export async function startEmbedded(opts: {
  stateDir: string;
  store: string;
  log?: (line: string) => void;
  /** The dev server's output, line by line (default `log`). */
  serverLog?: (line: string) => void;
  /** The workers' logger (default: warnings and errors on stderr); installed with the Runtime, once per process. */
  logger?: Logger;
}) {
  // The embedded workers run in this process: it sizes its heap as `stepwise worker` does.
  limitHeapGrowthFromSettings();
  installRuntime({ logger: opts.logger });
  const log = opts.log ?? (() => undefined);
  await clearScratchLeftovers(log);
  // The UI is the point of a local run: it shows every stage's inputs, outputs, retries and timings.
  const serverOptions = {
    stateDir: opts.stateDir,
    uiPort: await freePort(),
    searchAttributes: devServerSearchAttributes(),
    log: opts.serverLog ?? opts.log,
  };
  const server = await startTemporalDevServer(serverOptions);
  let connected: Awaited<ReturnType<typeof connectTemporal>> | undefined;
  try {
    const temporal = await connectTemporal({
      connectionOptions: { address: server.address },
      namespace: server.namespace,
    });
    connected = temporal;
    const interrupted = await openPipelineRuns(temporal.client);
    if (interrupted.length > 0) await releaseOrphanedAttempts(temporal.client, log);
    const pipeline = await createPipelineWorkers({
      connection: temporal.connection,
      client: temporal.client,
      namespace: server.namespace,
      queues: ['cpu', 'gpu'],
      store: opts.store,
    });
    const running = pipeline.run();
    // The SDK rides out a server's absence and most errors; a worker it gives up on is said at once, as the run then
    // waits (the same command again resumes it).
    running.catch((err: unknown) =>
      log(
        `stepwise: an embedded worker stopped (${err instanceof Error ? err.message : String(err)}); the run waits ` +
          'for a worker: stop this command and run it again to resume it'
      )
    );
    // No supervisor watches this process's server: it is started again on its own port if it ends unasked.
    const port = Number(server.address.split(':').at(-1));
    const supervised = superviseServer(server, () => startTemporalDevServer({ ...serverOptions, port }), log);
    return {
      client: temporal.client,
      address: server.address,
      uiUrl: server.uiUrl,
      namespace: server.namespace,
      store: pipeline.deps.store,
      interrupted,
      /** The server as supervised: which process serves now, and how many times it was started again. */
      server: supervised,
      async stop() {
        pipeline.shutdown();
        await running.catch(() => undefined);
        await pipeline.deps.close();
        await temporal.close();
        await supervised.stop();
      },
    };
  } catch (err) {
    await connected?.close().catch(() => undefined);
    await server.stop();
    throw err;
  }
}
