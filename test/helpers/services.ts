/**
 * Real services for end-to-end tests: a Temporal dev server (SQLite in a temp folder), a versitygw S3 server with a
 * fresh bucket, and pipeline workers for both queues against them. One set per test file (ava runs files in
 * separate processes); everything is stopped in `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { DataConverter } from '@temporalio/common';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { cachedWorkflowBundle } from '../../workers/workflow-bundle';
import { startTemporalDevServer, type TemporalDevServer } from '../../infra/temporal';
import { ensureBucket, startS3Server, type S3Server } from '../../infra/s3-server';
import { connectTemporal, createPipelineWorkers, quietTemporalLogs } from '../../workers/pipeline-worker';
import type { QueueKind } from '../../contract';
import { devServerSearchAttributes } from '../../workers/search-attributes';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';

export interface Services {
  temporal: TemporalDevServer;
  s3: S3Server;
  bucket: string;
  storeLocation: string;
  store: ArtifactStore;
  client: Awaited<ReturnType<typeof connectTemporal>>['client'];
  workflowBundle: WorkflowBundleWithSourceMap;
  tmp: string;
  /** Start (or restart) workers for both queues, or the ones named; returns a stopper. */
  startWorkers(queues?: QueueKind[]): Promise<() => Promise<void>>;
  stop(): Promise<void>;
}

const bundles = new Map<string, Promise<WorkflowBundleWithSourceMap>>();
/**
 * The workflow bundle, built once per version of the code and cached on disk (webpack takes seconds, and some 30 test
 * processes need it); with a failure converter (encrypted
 * payloads, workers/codec.ts) bundled in when its path is given, as a worker bundling at start would.
 */
export function workflowBundle(failureConverterPath?: string): Promise<WorkflowBundleWithSourceMap> {
  const key = failureConverterPath ?? '';
  let bundle = bundles.get(key);
  if (!bundle) {
    const workflowsPath = require.resolve('../../workflows');
    bundle = cachedWorkflowBundle({ workflowsPath, failureConverterPath, logger: quietLogger });
    bundles.set(key, bundle);
  }
  return bundle;
}

const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (m: string) => console.warn(m),
  error: (m: string) => console.error(m),
};

export interface ServicesOptions {
  /** false: a filesystem store instead of the S3 server. */
  s3?: boolean;
  /** The client's and in-process workers' data converter (e.g. workers/codec.ts's, to encrypt payloads). */
  dataConverter?: DataConverter;
  /** The S3 server's root credentials (default: its fixed dev pair), e.g. canaries to look for afterwards. */
  s3Credentials?: { accessKey: string; secretKey: string };
}

export async function startServices(opts: ServicesOptions = {}): Promise<Services> {
  quietTemporalLogs();
  const tmp = await mkdtemp(join(tmpdir(), 'stepwise-e2e-'));
  const started = await Promise.allSettled([
    startTemporalDevServer({ stateDir: join(tmp, 'temporal'), searchAttributes: devServerSearchAttributes() }),
    startS3Server({ dataDir: join(tmp, 's3'), ...opts.s3Credentials }),
    workflowBundle(opts.dataConverter?.failureConverterPath),
  ]);
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    // Whatever did start is stopped, or its process would keep this test file's process alive until ava kills it.
    await Promise.all(
      started.slice(0, 2).map((r) => (r.status === 'fulfilled' ? (r.value as { stop(): Promise<void> }).stop() : null))
    );
    throw failed.reason;
  }
  const [temporal, s3, wb] = started.map((r) => (r as PromiseFulfilledResult<unknown>).value) as [
    TemporalDevServer,
    S3Server,
    WorkflowBundleWithSourceMap,
  ];
  const bucket = 'stepwise-test';
  await ensureBucket(s3, bucket);
  // The S3 backend takes credentials and endpoint from the standard AWS variables, as it does in production.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
  process.env.AWS_REGION = s3.region;
  // Workers confine spec paths to STEPWISE_DATA_ROOTS (default: their cwd, the repo); tests keep their data in temp
  // folders and the shared datasets, so those are roots too unless a test sets its own.
  process.env.STEPWISE_DATA_ROOTS ??= [process.cwd(), tmpdir(), join(__dirname, '..', '..', '..', 'shared')].join(
    delimiter
  );
  const storeLocation = opts.s3 === false ? `file://${join(tmp, 'artifacts')}` : `s3://${bucket}/e2e`;
  const store = openStore(storeLocation);
  const conn = await connectTemporal({
    connectionOptions: { address: temporal.address },
    namespace: temporal.namespace,
    dataConverter: opts.dataConverter,
  });
  const stoppers = new Set<() => Promise<void>>();

  async function startWorkers(queues: QueueKind[] = ['cpu', 'gpu']) {
    const pipeline = await createPipelineWorkers({
      connection: conn.connection,
      client: conn.client,
      namespace: temporal.namespace,
      queues,
      store: storeLocation,
      workflowBundle: wb,
      dataConverter: conn.dataConverter,
    });
    const running = pipeline.run();
    const stopper = async () => {
      stoppers.delete(stopper);
      pipeline.shutdown();
      await running.catch(() => undefined);
      await pipeline.deps.close();
    };
    stoppers.add(stopper);
    return stopper;
  }

  return {
    temporal,
    s3,
    bucket,
    storeLocation,
    store,
    client: conn.client,
    workflowBundle: wb,
    tmp,
    startWorkers,
    async stop() {
      await Promise.all([...stoppers].map((s) => s()));
      await conn.close();
      await store.close();
      await Promise.all([temporal.stop(), s3.stop()]);
      await rm(tmp, { recursive: true, force: true });
    },
  };
}

/**
 * The services for this test file: started before its tests, with in-process workers for `workers` (both queues
 * unless told; none with `[]`), and stopped after them. A getter, because they exist only once `test.before` ran.
 */
export function servicesForFile(opts: ServicesOptions & { workers?: QueueKind[] } = {}): () => Services {
  let services: Services | undefined;
  test.before(async () => {
    services = await startServices(opts);
    if (opts.workers?.length !== 0) await services.startWorkers(opts.workers);
  });
  test.after.always(async () => {
    await services?.stop();
  });
  return () => {
    if (!services) throw new Error('the services start in test.before: use them inside a test');
    return services;
  };
}

/**
 * A real worker (`stepwise worker --queue <queue>`, the entry users run) as its own process against the services, resolved once it
 * says it is polling. `detached` makes it a process group leader, so a test can kill it with its children.
 */
export async function startWorkerProcess(
  services: Services,
  queue: 'cpu' | 'gpu',
  log: string[],
  opts: { detached?: boolean; env?: Record<string, string>; args?: string[] } = {}
): Promise<ChildProcess> {
  const root = join(__dirname, '..', '..');
  const args = [join(root, 'bin', 'stepwise.js'), 'worker', '--queue', queue, ...(opts.args ?? [])];
  const worker = spawn(process.execPath, args, {
    cwd: root,
    detached: opts.detached ?? false,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: services.temporal.address,
      TEMPORAL_NAMESPACE: services.temporal.namespace,
      STEPWISE_STORE: services.storeLocation,
      // Unversioned unless a test asks (test/worker-versioning.test.ts): these processes share queues with the
      // in-process workers, which are unversioned, and a deployment's current version would take the queues over.
      STEPWISE_WORKER_VERSIONING: 'off',
      ...opts.env,
    },
  });
  worker.stderr!.on('data', (chunk: Buffer) => log.push(chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    worker.stdout!.on('data', (chunk: Buffer) => {
      log.push(chunk.toString());
      if (chunk.toString().includes('stepwise worker:')) resolve();
    });
    worker.once('exit', (code, signal) =>
      reject(new Error(`${queue} worker exited (${code ?? signal}): ${log.join('')}`))
    );
  });
  return worker;
}
