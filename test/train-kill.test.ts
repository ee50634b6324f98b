/**
 * The kill test: a GPU-queue worker is SIGKILLed mid-training (with its training child), a new worker process picks
 * the same trainStudent activity up from the last checkpoint it heartbeated, and the run ends as if nothing happened:
 * the loss curve and the trained weights are bit for bit those of an uninterrupted run on the same backend, as the
 * README promises. Real processes, the real Temporal dev server, the real S3 server.
 */
import { createHash } from 'node:crypto';
import type { ExecutionContext } from 'ava';
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
import { train, type LossPoint, type TrainResult } from '../lib/student/train';
import { decodeSafetensors } from '../lib/student/checkpoint';
import { objectKey } from '../lib/store/artifact-store';
import { faultMode, recordFigures } from './helpers/figures';
import type { TrainHeartbeat } from '../activities/train-student';
import { toTrainRecord } from '../lib/student/train-stage';
import type { TrainStudentInput } from '../contract';
import type { RationaleRecord } from '../lib/data/rationales';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { isAlive, killGroup } from './helpers/processes';
import { waitFor } from './helpers/wait';

const CHECKPOINT_EVERY = 20;
const STEPS = 200;

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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

interface TrainLog {
  steps: number;
  resumedFrom: number | null;
  attempt: number;
  checkpointsRejected: { step: number; reason: string }[];
  lossHistory: LossPoint[];
  backend: string;
}

/**
 * A pipeline whose GPU worker is SIGKILLed mid-training and replaced; `beforeRestart` runs between the kill and the
 * new worker's start (with the dead worker's last heartbeat). Returns that heartbeat and what the run stored.
 */
async function killedRun(t: ExecutionContext, beforeRestart?: (last: TrainHeartbeat) => Promise<void>) {
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
  await beforeRestart?.(last);

  const workerB = await startGpuWorker(logB);
  const result = (await handle.result().catch((err: unknown) => {
    t.log(`worker A log:\n${logA.join('').slice(-3000)}\nworker B log:\n${logB.join('').slice(-3000)}`);
    throw err;
  })) as PipelineResult;
  // Gone before the next run starts: a worker left polling would take that run's training from its worker A.
  const gone = new Promise((resolve) => workerB.once('exit', resolve));
  killGroup(workerB, 'SIGKILL');
  await gone;
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
  const stored = (role: string) => manifest.artifacts.find((a: { role: string }) => a.role === role);
  const trainLog = JSON.parse((await services().store.get(stored('student/train-log'))).toString()) as TrainLog;
  const checkpoint = await services().store.get(stored('student/checkpoint'));
  // Exactly the planned steps, every one of them on the curve.
  t.is(trainLog.steps, STEPS);
  t.is(trainLog.attempt, 2);
  t.deepEqual(
    trainLog.lossHistory.map((p) => p.step),
    Array.from({ length: STEPS }, (_, i) => i + 1)
  );
  return { last, history, trainLog, checkpoint };
}

/** The same training, uninterrupted, in this process: the same records and options the activity received. */
async function uninterruptedTwin(
  t: ExecutionContext,
  history: Awaited<ReturnType<typeof killedRun>>['history'],
  backend: string
): Promise<TrainResult> {
  const scheduled = (history.events ?? []).find(
    (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'trainStudent'
  )!.activityTaskScheduledEventAttributes!;
  const input = defaultPayloadConverter.fromPayload<TrainStudentInput>(scheduled.input!.payloads![0]);
  const [records, valid] = await Promise.all([
    services().store.getJsonl<RationaleRecord>(input.train),
    services().store.getJsonl<RationaleRecord>(input.valid),
  ]);
  t.deepEqual(input.student, parseSpec(spec).student);
  await initBackend(backend as 'tensorflow' | 'wasm' | 'cpu');
  return train(records.map(toTrainRecord), { ...studentOptionsOf(input.student), valid: valid.map(toTrainRecord) });
}

/**
 * Bit for bit: every step's losses, and the trained weights (the checkpoints' metadata differs: wall time, where the
 * run resumed). Nothing in a step depends on the process it runs in: the batches and dropout masks come from the seed
 * and the step, and the sampler's and optimiser's state travel in the checkpoint (lib/student/train.ts).
 * @returns whether the weights are identical.
 */
function assertIdentical(t: ExecutionContext, run: Awaited<ReturnType<typeof killedRun>>, twin: TrainResult): boolean {
  const backend = run.trainLog.backend;
  t.is(twin.lossHistory.length, STEPS);
  t.deepEqual(run.trainLog.lossHistory, twin.lossHistory, `loss curve vs an uninterrupted run on ${backend}`);
  const weights = weightsDigest(run.checkpoint);
  t.is(weights, weightsDigest(twin.checkpoint), 'the trained weights, bit for bit');
  t.log(`resumed run on ${backend}: loss curve and weights (sha256 ${weights.slice(0, 12)}) identical`);
  return weights === weightsDigest(twin.checkpoint);
}

test.serial(
  'a GPU worker killed mid-training is replaced and the run resumes from its last checkpoint, losing at most one interval',
  async (t) => {
    const run = await killedRun(t);
    const { last, trainLog } = run;
    // Resumed from the checkpoint worker A last heartbeated; recomputed: the steps A executed after it.
    t.is(trainLog.resumedFrom, last.checkpointStep ?? null);
    t.deepEqual(trainLog.checkpointsRejected, []);
    const recomputed = last.step - last.checkpointStep!;
    t.log(
      `worker A executed ${last.step} steps, last checkpoint at ${last.checkpointStep}; worker B ran ` +
        `${STEPS - last.checkpointStep!}: ${recomputed} step(s) recomputed (interval ${CHECKPOINT_EVERY})`
    );
    t.true(recomputed >= 0 && recomputed <= CHECKPOINT_EVERY, `recomputed ${recomputed}`);
    const identical = assertIdentical(t, run, await uninterruptedTwin(t, run.history, trainLog.backend));
    const survived = identical && recomputed <= CHECKPOINT_EVERY;
    recordFigures('kill-train', { faultsTried: 1, faultsSurvived: survived ? 1 : 0, examplesLost: 0 });
  }
);

// Full mode: the same kill, with the newest stored checkpoint corrupted while no worker runs (a disk fault under the
// store). The new worker passes it over for the one before: one interval more recomputed, the same weights.
if (faultMode() === 'full') {
  test.serial(
    'killed mid-training with its newest checkpoint corrupted, the run resumes from the one before',
    async (t) => {
      let corrupted: number | undefined;
      const run = await killedRun(t, async (last) => {
        t.is(last.checkpoints?.length, 2, 'the heartbeat names the newest checkpoint and the one before');
        const key = objectKey(last.checkpoints![0].ref.sha256);
        const bytes = await services().store.backend.get(key);
        bytes[bytes.length - 1000] ^= 0xff;
        await services().store.backend.put(key, bytes);
        corrupted = last.checkpoints![0].step;
      });
      const { last, trainLog } = run;
      const previous = last.checkpoints![1].step;
      t.is(trainLog.resumedFrom, previous);
      t.deepEqual(
        trainLog.checkpointsRejected.map((r) => r.step),
        [corrupted]
      );
      t.regex(trainLog.checkpointsRejected[0].reason, /is corrupt: its bytes hash to sha256 /);
      const recomputed = last.step - previous;
      t.log(`worker A executed ${last.step} steps; checkpoint ${corrupted} corrupted, resumed after ${previous}`);
      t.true(recomputed <= 2 * CHECKPOINT_EVERY, `recomputed ${recomputed}`);
      const identical = assertIdentical(t, run, await uninterruptedTwin(t, run.history, trainLog.backend));
      recordFigures('kill-train-corrupt-checkpoint', { faultsTried: 1, faultsSurvived: identical ? 1 : 0 });
    }
  );
}

/** sha256 of a checkpoint's tensors, names and shapes included: equal exactly when the weights are. */
function weightsDigest(checkpoint: Uint8Array): string {
  const hash = createHash('sha256');
  for (const w of decodeSafetensors(checkpoint).weights) {
    hash.update(`${w.name}:${w.shape.join('x')}:`).update(new Uint8Array(w.data.buffer));
  }
  return hash.digest('hex');
}
