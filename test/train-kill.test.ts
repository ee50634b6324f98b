/**
 * The kill test: a GPU-queue worker is SIGKILLed mid-training (with its training child), a new worker process picks
 * the same trainStudent activity up from the last checkpoint it heartbeated, and the run ends as if nothing happened.
 * Real processes, the real Temporal dev server, the real S3 server.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import test from 'ava';
import { defaultPayloadConverter } from '@temporalio/common';
import type { WorkflowHandle } from '@temporalio/client';
import { CPU_TASK_QUEUE } from '../contract';
import type { PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { parseSpec, type PipelineSpecInput } from '../lib/pipeline/spec';
import { initBackend } from '../lib/student/backend';
import { studentOptionsOf } from '../lib/student/options';
import { train, type LossPoint } from '../lib/student/train';
import type { TrainHeartbeat } from '../activities/train-student';
import { toTrainRecord } from '../lib/student/train-stage';
import type { TrainStudentInput } from '../contract';
import type { RationaleRecord } from '../lib/data/rationales';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { isAlive, killGroup } from './helpers/processes';

const CHECKPOINT_EVERY = 20;
const STEPS = 200;
/** Same-backend runs are bit-identical in practice; this is the tolerance the test promises. */
const LOSS_TOLERANCE = 1e-5;

const workers = new Set<ChildProcess>();
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => {
  for (const w of workers) killGroup(w, 'SIGKILL');
});
// The workflow and the cheap stages run in this process; training runs in separate GPU-queue worker processes.
const services = servicesForFile({ workers: ['cpu'] });

/** The real GPU worker entrypoint, as its own process group (so its training child can be killed with it). */
async function startGpuWorker(log: string[]): Promise<ChildProcess> {
  const worker = await startWorkerProcess(services(), 'gpu', log, { detached: true });
  workers.add(worker);
  worker.on('exit', () => workers.delete(worker));
  return worker;
}

/** The training process a worker started (its child running lib/student/child-main.ts). */
function trainingChild(workerPid: number): number | undefined {
  const out = execFileSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' });
  const row = out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find(([, ppid, ...args]) => Number(ppid) === workerPid && args.join(' ').includes('child-main'));
  return row ? Number(row[0]) : undefined;
}

/** The trainStudent activity's latest heartbeat, as the server has it. */
async function heartbeat(handle: WorkflowHandle): Promise<TrainHeartbeat | undefined> {
  const { raw } = await handle.describe();
  const pending = raw.pendingActivities?.find((a) => a.activityType?.name === 'trainStudent');
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  return payload ? defaultPayloadConverter.fromPayload<TrainHeartbeat>(payload) : undefined;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a GPU worker killed mid-training is replaced and the run resumes from its last checkpoint, losing at most one interval', async (t) => {
  const spec: PipelineSpecInput = {
    name: 'kill-test',
    data: { kind: 'demo', size: 200, seed: 4 },
    teacher: { kind: 'scripted', errorRate: 0.1 },
    student: {
      preset: 'tiny',
      steps: STEPS,
      batchSize: 16,
      seed: 11,
      checkpointEvery: CHECKPOINT_EVERY,
      // A dead worker is noticed 5 s after its last heartbeat (the default 2 minutes would outlast the test).
      heartbeatTimeoutSeconds: 5,
    },
  };
  const logA: string[] = [];
  const logB: string[] = [];
  const workerA = await startGpuWorker(logA);
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `kill-${Date.now()}`,
    args: [spec],
  });

  // Mid-training: at least two checkpoints stored, far from the end.
  await waitFor(
    'a second checkpoint',
    async () => {
      const beat = await heartbeat(handle);
      return (beat?.checkpointStep ?? 0) >= 2 * CHECKPOINT_EVERY ? beat : undefined;
    },
    120_000
  );
  const child = trainingChild(workerA.pid!);
  t.truthy(child, 'worker A runs a training child');
  // Freeze the training child first so the steps it executed can be read exactly: its progress and any checkpoint
  // upload already under way reach the server with the worker's next heartbeats (throttled to one per 2 s). Then
  // SIGKILL the whole worker process group: the worker gets no chance to react, and the child dies with it.
  process.kill(child!, 'SIGSTOP');
  await sleep(3500);
  const last = (await heartbeat(handle))!;
  killGroup(workerA, 'SIGKILL');
  const killedAt = Date.now();
  t.true(last.step < STEPS, `killed at step ${last.step}`);
  await waitFor('the killed processes to be gone', async () => (isAlive(child!) ? undefined : true), 5000);

  await startGpuWorker(logB);
  const result = (await handle.result().catch((err: unknown) => {
    t.log(`worker A log:\n${logA.join('').slice(-3000)}\nworker B log:\n${logB.join('').slice(-3000)}`);
    throw err;
  })) as PipelineResult;
  t.log(`resumed and finished ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill`);
  t.is(result.name, 'kill-test');

  // The retried attempt is the second one, and the first ended by missing its heartbeats.
  const history = await handle.fetchHistory();
  const started = (history.events ?? [])
    .map((e) => e.activityTaskStartedEventAttributes)
    .filter((a) => a?.lastFailure?.timeoutFailureInfo);
  t.is(started.length, 1);
  t.is(started[0]!.attempt, 2);

  const manifest = JSON.parse((await services().store.getKey(`runs/${handle.workflowId}/manifest.json`))!.toString());
  const logRef = manifest.artifacts.find((a: { role: string }) => a.role === 'student/train-log');
  const trainLog = JSON.parse((await services().store.get(logRef)).toString()) as {
    steps: number;
    resumedFrom: number | null;
    attempt: number;
    lossHistory: LossPoint[];
    backend: string;
  };
  // Exactly the planned steps, every one of them on the curve.
  t.is(trainLog.steps, STEPS);
  t.is(trainLog.attempt, 2);
  t.deepEqual(
    trainLog.lossHistory.map((p) => p.step),
    Array.from({ length: STEPS }, (_, i) => i + 1)
  );
  // Resumed from the checkpoint worker A last heartbeated; recomputed: the steps A executed after it.
  t.is(trainLog.resumedFrom, last.checkpointStep ?? null);
  const recomputed = last.step - last.checkpointStep!;
  t.log(
    `worker A executed ${last.step} steps, last checkpoint at ${last.checkpointStep}; worker B ran ` +
      `${STEPS - last.checkpointStep!}: ${recomputed} step(s) recomputed (interval ${CHECKPOINT_EVERY})`
  );
  t.true(recomputed >= 0 && recomputed <= CHECKPOINT_EVERY, `recomputed ${recomputed}`);

  // The same training, uninterrupted, in this process: the same records and options the activity received.
  const scheduled = (history.events ?? []).find(
    (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'trainStudent'
  )!.activityTaskScheduledEventAttributes!;
  const input = defaultPayloadConverter.fromPayload<TrainStudentInput>(scheduled.input!.payloads![0]);
  const [records, valid] = await Promise.all([
    services().store.getJsonl<RationaleRecord>(input.train),
    services().store.getJsonl<RationaleRecord>(input.valid),
  ]);
  t.deepEqual(input.student, parseSpec(spec).student);
  await initBackend(trainLog.backend as 'tensorflow' | 'wasm' | 'cpu');
  const uninterrupted = await train(records.map(toTrainRecord), {
    ...studentOptionsOf(input.student),
    valid: valid.map(toTrainRecord),
  });
  const diffs = uninterrupted.lossHistory.map((p, i) => Math.abs(p.loss - trainLog.lossHistory[i].loss));
  const maxDiff = Math.max(...diffs);
  t.log(`loss curve vs an uninterrupted run on ${trainLog.backend}: max |Δ| = ${maxDiff} over ${diffs.length} steps`);
  t.is(diffs.length, STEPS);
  t.true(maxDiff <= LOSS_TOLERANCE, `max loss difference ${maxDiff}`);
});
