/**
 * The Temporal server itself SIGKILLed mid-run (during training) and started again on the same SQLite file and port:
 * the run completes with one registry version. The worker processes are left running across the outage and must
 * ride it out (the SDK reconnects them); one that gave up would be replaced, as a supervisor would, so the run's
 * outcome and the workers' are reported apart.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import test from 'ava';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import type { TrainHeartbeat } from '../../activities/train-student';
import { CPU_TASK_QUEUE, type PipelineResult } from '../../contract';
import { distillationPipeline } from '../../workflows';
import { freePort } from '../../infra/cache';
import { startTemporalDevServer, type TemporalDevServer } from '../../infra/temporal';
import type { PipelineSpecInput } from '../../lib/pipeline/spec';
import { recordFigures } from '../helpers/figures';
import { isAlive } from '../helpers/processes';
import { servicesForFile, type Services } from '../helpers/services';
import { heartbeatOf, runFigures, runHistory, sleep, waitFor, WorkerProcesses } from './harness';

const CHECKPOINT_EVERY = 20;
const STEPS = 80;

const workers = new WorkerProcesses(() => services());
// Registered first, so it runs first: the worker processes go before the servers they are connected to.
test.after.always(() => workers.killAll());
// The S3 server and store of the file; the Temporal server under test is the test's own, on a known port and folder.
const services = servicesForFile({ workers: [] });

/** The run's result, asked again while the server is away: a client call fails fast when nothing answers. */
async function resultAcrossOutage(handle: WorkflowHandle, timeoutMs: number): Promise<PipelineResult> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return (await handle.result()) as PipelineResult;
    } catch (err) {
      // A failed run is an answer; a lost connection is not.
      if ((err as Error).name === 'WorkflowFailedError' || Date.now() > deadline) throw err;
      await sleep(500);
    }
  }
}

/** Replace a worker that gave up on the lost server, as a process supervisor would; report that it did. */
function superviseWorker(name: 'cpu' | 'gpu', on: Services, exits: string[]) {
  let current: ChildProcess | undefined;
  let stopped = false;
  const start = async (): Promise<void> => {
    const worker = await workers.start(name, {}, on);
    current = worker;
    worker.once('exit', (code, signal) => {
      if (stopped) return;
      exits.push(`${name} worker exited (${code ?? signal})`);
      start().catch((err: unknown) => exits.push(`${name} worker could not be replaced: ${String(err)}`));
    });
  };
  return {
    start,
    stop: () => {
      stopped = true;
      return current;
    },
  };
}

test('a Temporal server SIGKILLed mid-training and restarted on the same database: the run completes', async (t) => {
  t.timeout(6 * 60_000);
  const stateDir = join(services().tmp, 'temporal-under-test');
  const port = await freePort();
  let temporal: TemporalDevServer = await startTemporalDevServer({ stateDir, port });
  t.teardown(() => temporal.stop());
  const on: Services = { ...services(), temporal };
  const connection = await Connection.connect({ address: temporal.address });
  t.teardown(() => connection.close());
  const client = new Client({ connection, namespace: temporal.namespace });

  const exits: string[] = [];
  const cpu = superviseWorker('cpu', on, exits);
  const gpu = superviseWorker('gpu', on, exits);
  await Promise.all([cpu.start(), gpu.start()]);
  const spec: PipelineSpecInput = {
    name: 'temporal-restart',
    data: { kind: 'demo', size: 100, seed: 8 },
    teacher: { kind: 'scripted' },
    student: {
      preset: 'tiny',
      steps: STEPS,
      batchSize: 8,
      seed: 2,
      checkpointEvery: CHECKPOINT_EVERY,
      heartbeatTimeoutSeconds: 10,
    },
  };
  const handle = await client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `temporal-restart-${Date.now()}`,
    args: [spec],
  });
  const beat = await waitFor('a stored checkpoint', async () => {
    const b = await heartbeatOf<TrainHeartbeat>(handle, 'trainStudent');
    return (b?.checkpointStep ?? 0) >= CHECKPOINT_EVERY ? b : undefined;
  });

  // SIGKILL the server's whole process group: no shutdown, no flush beyond what SQLite already committed.
  process.kill(-temporal.pid, 'SIGKILL');
  await waitFor('the server to be gone', () => (isAlive(temporal.pid) ? undefined : true), 10_000);
  const killedAt = Date.now();
  t.log(`Temporal server killed at training step ${beat.step}`);
  await sleep(3000);
  temporal = await startTemporalDevServer({ stateDir, port });
  t.log(`restarted on the same database and port after ${((Date.now() - killedAt) / 1000).toFixed(1)} s`);

  let result: PipelineResult;
  try {
    result = await resultAcrossOutage(handle, 4 * 60_000);
  } catch (err) {
    t.log(`worker output:\n${workers.tail()}`);
    recordFigures('temporal-restart', { faultsTried: 1, faultsSurvived: 0 });
    throw err;
  }
  const survivors = [cpu.stop(), gpu.stop()];
  t.log(
    exits.length
      ? `workers that gave up during the outage and were replaced: ${exits.join('; ')}`
      : 'both workers rode out the outage and reconnected'
  );
  const { retriedAfterTimeout } = await runHistory(handle);
  t.log(`stages retried after a timeout: ${JSON.stringify(retriedAfterTimeout)}`);
  const figures = await runFigures(t, services().store, handle, spec.name);
  recordFigures('temporal-restart', {
    faultsTried: 1,
    faultsSurvived: 1,
    examplesLost: figures.examplesLost,
    registryDuplicates: figures.registryDuplicates,
  });
  t.is(result.name, spec.name);
  t.is(figures.versionsOfRun, 1, 'exactly one registry version for the run');
  t.is(figures.trainSteps, STEPS);
  t.is(figures.examplesLost, 0);
  // The SDK retries its polls while the server is away: no worker process had to be replaced.
  t.deepEqual(exits, [], 'the workers rode out the outage');
  t.true(
    survivors.every((w) => w && w.exitCode === null && w.signalCode === null),
    'the workers serving the run at the end are alive'
  );
});
