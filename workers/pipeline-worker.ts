import { Client } from '@temporalio/client';
import type { DataConverter, Logger, WorkerDeploymentVersion } from '@temporalio/common';
import { NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { createActivities } from '../activities';
import { taskQueueOf, type QueueKind } from '../contract';
import { createActivityDeps } from './deps';
import { dataConverterFromSettings, describePayloadEncryption } from './codec';
import { connectClient, type TemporalTarget } from './connection';
import { settings } from '../infra/config';
import { withCudaLibraryPath } from '../infra/cuda';
import { setup } from '../infra/setup';
import { ensureSearchAttributes } from './search-attributes';
import { workerLogger } from './logging';
import { cachedWorkflowBundle } from './workflow-bundle';
import { bootstrapCurrentVersion, versionedWorkerOptions, workerVersionFromSettings } from './versioning';
import { installRuntime } from './telemetry';
import { limitHeapGrowthFromSettings } from './heap';
import { sweepScratch } from '../lib/scratch';
import { shutdownTracing, tracingWorkflowModules, workerTracingOptions } from './tracing';

/**
 * Keep the SDK to warnings and errors: an interactive run or a test prints its own progress, and worker state
 * changes would bury it. Must run before the first worker or connection is created; later calls are no-ops.
 */
export function quietTemporalLogs(): void {
  installRuntime();
}

/** Heartbeats reach the server at most this often: short, so a cancelled run stops its training within seconds. */
const MAX_HEARTBEAT_THROTTLE = '2 seconds';

export interface PipelineWorkersOptions {
  connection: NativeConnection;
  /** A client for activities to signal progress back to their workflow. */
  client: Client;
  namespace: string;
  queues: QueueKind[];
  /** Artifact store location (`file:///…`, a folder, or `s3://bucket/prefix`). */
  store: string;
  /**
   * A prebuilt workflow bundle (tests build it once); otherwise the workflows are bundled at start. With encrypted
   * payloads it must have been bundled with the data converter's `failureConverterPath`.
   */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** The client's data converter (`connectTemporal(…).dataConverter`): both sides must encode payloads alike. */
  dataConverter?: DataConverter;
  /**
   * The Worker Deployment Version these workers belong to (workers/versioning.ts); unversioned when omitted. Every
   * queue's worker gets the same version, so a run pinned to a build reaches that build's GPU workers too. Only
   * `stepwise worker` sets it: the embedded mode and tests that call this directly run one local, unversioned worker
   * set, where pinning would strand the runs of an older checkout after an upgrade (no worker of their build is
   * left to finish them).
   */
  versioning?: WorkerDeploymentVersion;
}

/**
 * Workers for the requested queues. The CPU queue hosts the workflow and the cheap and teacher stages; the GPU
 * queue hosts training and evaluation, one activity at a time, because one job saturates a GPU (or the CPUs).
 */
export async function createPipelineWorkers(opts: PipelineWorkersOptions) {
  const deps = createActivityDeps({ store: opts.store, client: opts.client });
  const activities = createActivities(deps);
  // With traces exported (workers/telemetry.ts), activities and workflows are traced; a prebuilt bundle lacks the
  // workflow interceptors, so its workflows are not.
  const tracing = workerTracingOptions();
  const dataConverter = opts.dataConverter ?? dataConverterFromSettings();
  // Bundled as Worker.create would bundle it (the same interceptor modules and converters), but once per version of
  // the code on this machine rather than at every start (workers/workflow-bundle.ts).
  const workflowBundle =
    opts.workflowBundle ??
    (opts.queues.includes('cpu')
      ? await cachedWorkflowBundle({
          workflowsPath: require.resolve('../workflows'),
          workflowInterceptorModules: tracingWorkflowModules(),
          failureConverterPath: dataConverter?.failureConverterPath,
          payloadConverterPath: dataConverter?.payloadConverterPath,
          logger: Runtime.instance().logger,
        })
      : undefined);
  const workflowSource = { workflowBundle };
  const workers: Worker[] = [];
  for (const queue of opts.queues) {
    workers.push(
      await Worker.create({
        connection: opts.connection,
        namespace: opts.namespace,
        taskQueue: taskQueueOf(queue),
        activities,
        dataConverter,
        maxHeartbeatThrottleInterval: MAX_HEARTBEAT_THROTTLE,
        ...(opts.versioning ? versionedWorkerOptions(opts.versioning) : {}),
        ...tracing,
        ...(queue === 'cpu' ? workflowSource : { maxConcurrentActivityTaskExecutions: 1 }),
      })
    );
  }
  return {
    workers,
    deps,
    /** Run all workers until `shutdown()` (or a fatal worker error). */
    run: () => Promise.all(workers.map((w) => w.run())),
    shutdown: () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    },
  };
}

/**
 * Connect a worker process to Temporal: a native connection for workers and a client for progress signals. The
 * client encodes payloads with the target's data converter (default: encrypted when payload keys are configured);
 * pass the returned `dataConverter` to {@link createPipelineWorkers} so the workers match it.
 * @throws InputError naming the variable when the configured payload keys are malformed (before connecting).
 */
export async function connectTemporal(target: TemporalTarget) {
  const temporal = await connectClient(target);
  const connection = await NativeConnection.connect(target.connectionOptions);
  return {
    connection,
    client: temporal.client,
    dataConverter: temporal.dataConverter,
    async close() {
      await temporal.close();
      await connection.close();
    },
  };
}

/**
 * Removes the scratch folders (lib/scratch.ts) that killed workers left behind, a partial checkpoint in each, before
 * this one takes work; `STEPWISE_TMP_EXCLUSIVE=1` says every such folder not its own may go. Says what it removed.
 */
export async function clearScratchLeftovers(log: (line: string) => void): Promise<void> {
  const removed = await sweepScratch({ exclusive: settings().tmpExclusive });
  if (removed.length > 0) {
    log(
      `stepwise worker: removed ${removed.length} scratch folder(s) of processes that are gone: ${removed.join(', ')}`
    );
  }
}

/**
 * Long-running worker for a real cluster: `stepwise worker --queue cpu|gpu`, the one worker entry (tests and benches
 * start workers through it too). Stops gracefully on SIGINT/SIGTERM (the SDK's default shutdown signals), finishing
 * or cancelling in-flight activities first.
 *
 * Versioned by default (`STEPWISE_WORKER_VERSIONING`, workers/versioning.ts): the worker joins the Worker Deployment
 * `STEPWISE_DEPLOYMENT_NAME` as build `STEPWISE_BUILD_ID` (default: from the code version), and the first worker of a
 * deployment with no current version makes its own version current.
 */
export async function runWorker(opts: {
  queue: QueueKind;
  target: TemporalTarget;
  store: string;
  /** Serve Prometheus metrics on this port (workers/telemetry.ts), bound to `metricsHost` (default all interfaces). */
  metricsPort?: number;
  metricsHost?: string;
}): Promise<void> {
  // Checked before anything starts: a bad setting is the operator's to fix, not a crash after connecting.
  const versioning = workerVersionFromSettings();
  limitHeapGrowthFromSettings();
  // One JSON line per entry by default, its own lines included (workers/logging.ts): the run, stage and attempt are
  // fields a log collector filters on. INFO keeps worker state changes, which are an operator's to see.
  const logger = workerLogger();
  const { metricsAddress } = installRuntime({ metricsPort: opts.metricsPort, metricsHost: opts.metricsHost, logger });
  await clearScratchLeftovers((line) => logger.info(line));
  if (opts.queue === 'gpu') await prepareGpuWorker(logger);
  const temporal = await connectTemporal(opts.target);
  // Runs set these attributes; a cluster that lacks them and will not take them from us gets one line on how to add them.
  await ensureSearchAttributes(temporal.client.connection, opts.target.namespace, (line) => logger.info(line));
  const pipeline = await createPipelineWorkers({
    connection: temporal.connection,
    client: temporal.client,
    namespace: opts.target.namespace,
    queues: [opts.queue],
    store: opts.store,
    dataConverter: temporal.dataConverter,
    versioning,
  });
  logger.info(
    `stepwise worker: queue ${taskQueueOf(opts.queue)} on ${opts.target.connectionOptions.address ?? 'localhost:7233'} ` +
      `(namespace ${opts.target.namespace}), store ${pipeline.deps.store.location}, ` +
      `${versioning ? `deployment ${versioning.deploymentName} build ${versioning.buildId}` : 'unversioned'}, ` +
      describePayloadEncryption(temporal.dataConverter) +
      (metricsAddress ? `, metrics on http://${metricsAddress}/metrics` : '')
  );
  if (versioning?.buildId.endsWith('.dirty')) {
    logger.warn(
      `stepwise worker: build ${versioning.buildId} is from a working tree with uncommitted changes; two different ` +
        'edits would share this build id, so set STEPWISE_BUILD_ID (or commit) before deploying it'
    );
  }
  const memoryLog = memoryLogger(settings().workerMemoryLogSeconds, logger);
  const running = pipeline.run();
  // The version registers with the server on the first poll, so the bootstrap runs alongside the workers.
  const stopBootstrap = new AbortController();
  const bootstrap = versioning
    ? bootstrapCurrentVersion(temporal.client, versioning, { signal: stopBootstrap.signal }).then(
        (line) => logger.info(`stepwise worker: ${line}`),
        (err: unknown) => logger.error(`stepwise worker: could not check the deployment's current version: ${err}`)
      )
    : Promise.resolve();
  try {
    await running;
  } finally {
    stopBootstrap.abort();
    await bootstrap;
    if (memoryLog) clearInterval(memoryLog);
    await pipeline.deps.close();
    await temporal.close();
    await shutdownTracing();
  }
}

/**
 * A GPU worker trains with the native TensorFlow build (built once per machine from the PyPI wheel; without it
 * training falls back to wasm and says so). Training runs in child processes, whose dynamic loader reads
 * LD_LIBRARY_PATH at start: putting the cached CUDA libraries (`stepwise setup --cuda`) on it here lets every
 * student child find them.
 */
async function prepareGpuWorker(logger: Logger): Promise<void> {
  await setup({ tfjsNative: true, log: (line) => logger.info(line) });
  process.env.LD_LIBRARY_PATH = (await withCudaLibraryPath(process.env)).LD_LIBRARY_PATH;
}

/**
 * Every `seconds`, one line of the worker's memory: resident set and the JavaScript heap in use. Under
 * `node --expose-gc` a full collection runs first, so `heapLive` is what is really retained: the figure that tells a
 * leak (it climbs with work done) from a heap the collector simply has not shrunk yet (RSS alone cannot).
 */
function memoryLogger(seconds: number, logger: Logger): NodeJS.Timeout | undefined {
  if (!(seconds > 0)) return undefined;
  const gc = (globalThis as { gc?: () => void }).gc;
  const mib = (bytes: number) => Math.round(bytes / 1048576);
  const timer = setInterval(() => {
    gc?.();
    const m = process.memoryUsage();
    logger.info(
      `stepwise worker memory: rss ${mib(m.rss)} MiB, ${gc ? 'heapLive' : 'heapUsed'} ${mib(m.heapUsed)} MiB, ` +
        `heapTotal ${mib(m.heapTotal)} MiB`
    );
  }, seconds * 1000);
  timer.unref();
  return timer;
}
