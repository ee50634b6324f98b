/**
 * The kill suite: one distillation run, whose workers are SIGKILLed in turn while each stage runs on them (and the
 * workflow worker between stages), each replaced by a fresh process. The run must complete with nothing lost: no
 * teacher call answered twice (counted by the teacher server), every example accounted for, at most one checkpoint
 * interval of training recomputed, and exactly one registry version for the run. Quick mode kills on the CPU queue
 * (a teacher shard), on the GPU queue (training) and the workflow worker; full mode kills at every stage.
 */
import type { ChildProcess } from 'node:child_process';
import test, { type ExecutionContext } from 'ava';
import type { WorkflowHandle } from '@temporalio/client';
import type { TrainHeartbeat } from '../../activities/train-student';
import { CPU_TASK_QUEUE, type PipelineResult, type SampleResult, type TrainStudentResult } from '../../contract';
import { distillationPipeline } from '../../workflows';
import type { PipelineSpecInput } from '../../lib/pipeline/spec';
import { startLocalTeacherServer } from '../../lib/teacher';
import { faultMode, recordFigures } from '../helpers/figures';
import { trainingChildren } from '../helpers/processes';
import { servicesForFile } from '../helpers/services';
import {
  heartbeatOf,
  journalledCalls,
  runFigures,
  runHistory,
  runningActivity,
  sleep,
  waitFor,
  within,
  WorkerProcesses,
} from './harness';
import { startStoreProxy, type StoreProxy } from './store-proxy';

const CHECKPOINT_EVERY = 20;
const STEPS = 60;
/** A store request held this long keeps a cheap stage in flight for seconds: long enough to be seen and killed. */
const SLOW_STORE_MS = 1000;

const workers = new WorkerProcesses(() => services());
// Registered first, so it runs first: the worker processes go before the services they are connected to.
test.after.always(() => workers.killAll());
// No worker in this process: the workflow and every activity run in the worker processes the test kills.
const services = servicesForFile({ workers: [] });

/** One run under attack: its handle, the processes serving it now, and what the kill points learnt. */
interface Target {
  t: ExecutionContext;
  handle: WorkflowHandle;
  teacher: Awaited<ReturnType<typeof startLocalTeacherServer>>;
  proxy: StoreProxy;
  cpu: ChildProcess;
  gpu: ChildProcess;
  /** In front of the GPU workers' store: it sees their first checkpoint upload (see killDuringTraining). */
  gpuProxy: StoreProxy;
  /** Settles when a GPU worker begins uploading a checkpoint, its training child just frozen. */
  checkpointUpload: Promise<void>;
  /** Stages whose worker was killed mid-attempt: their retried attempt must follow a timeout. */
  killedMidStage: string[];
  /** trainStudent's last heartbeat before its worker died. */
  trainAtKill?: TrainHeartbeat;
  /** The teacher stage's child workflow, where its shards run, once a kill point looked there. */
  teacherHandle?: WorkflowHandle;
  /** When the run started, for the log's timeline. */
  startedAt: number;
}

const at = (target: Target) => `${((Date.now() - target.startedAt) / 1000).toFixed(1)} s`;

/** CPU workers reach the store through the proxy, so a test can slow their stages down enough to catch them. */
const startCpu = (target: Pick<Target, 'proxy'>) =>
  workers.start('cpu', { AWS_ENDPOINT_URL_S3: target.proxy.endpoint });

/** GPU workers reach the store through their own proxy, which watches for the first checkpoint upload. */
const startGpu = (target: Pick<Target, 'gpuProxy'>) =>
  workers.start('gpu', { AWS_ENDPOINT_URL_S3: target.gpuProxy.endpoint });

/** A checkpoint (megabytes) is the first large object a GPU worker writes; the dataset it only reads. */
const CHECKPOINT_MIN_BYTES = 1 << 20;

/**
 * A store proxy for the GPU workers that, at the first checkpoint upload, freezes the uploading worker's training
 * child (SIGSTOP) and then forwards the upload: the child stops a step or two past the checkpoint, whatever the
 * machine's speed, while the worker's own process goes on to store the checkpoint and heartbeat it.
 */
async function startGpuProxy(endpoint: string, gpu: () => ChildProcess | undefined) {
  let frozen!: () => void;
  const checkpointUpload = new Promise<void>((resolve) => (frozen = resolve));
  let armed = true;
  const proxy = await startStoreProxy(endpoint, {
    hold: (req) => {
      const bytes = Number(req.headers['x-amz-decoded-content-length'] ?? req.headers['content-length'] ?? 0);
      const worker = gpu();
      if (armed && req.method === 'PUT' && bytes >= CHECKPOINT_MIN_BYTES && worker) {
        const children = trainingChildren(worker.pid!);
        if (children.length > 0) {
          armed = false;
          for (const child of children) process.kill(child, 'SIGSTOP');
          frozen();
        }
      }
      return 0;
    },
  });
  return { proxy, checkpointUpload };
}

/** Teacher calls journalled so far, over every shard. */
const journalled = () => journalledCalls(services().store);

/** Wait until `type` runs on a worker, kill that worker, and start a replacement. */
async function killWhileRunning(target: Target, type: string, queue: 'cpu' | 'gpu', workflow = target.handle) {
  const running = await waitFor(`${type} to run`, () => runningActivity(workflow, type));
  await workers.kill(target[queue]);
  target.t.log(`${at(target)}: killed the ${queue} worker running ${type} (attempt ${running.attempt})`);
  target.killedMidStage.push(type);
}

/** The ways to kill a worker, in the order of the stages they hit; each leaves a replacement running. */
const KILL_POINTS: Record<string, (target: Target) => Promise<void>> = {
  // The store is slow from the start, so the first stage is in flight for seconds when its worker dies.
  sample: async (target) => {
    target.proxy.setDelay(SLOW_STORE_MS);
    await killWhileRunning(target, 'sample', 'cpu');
    target.proxy.setDelay(0);
    target.cpu = await startCpu(target);
  },
  // The teacher server holds every request after the 40th: the shard's worker dies with calls in flight and the
  // answered ones in its journal. The kill waits for the journal to hold every answer (one group commit, a store
  // round-trip): an answer that reached a worker killed before writing it down is asked again, and no client can
  // avoid that; the claim is that nothing written down is ever asked again.
  teacherShard: async (target) => {
    target.teacher.setFaults({ holdAfter: 40 });
    target.teacherHandle = services().client.workflow.getHandle(`${target.handle.workflowId}/teacher`);
    await waitFor('the teacher server to hold requests', () => (target.teacher.stats().held > 0 ? true : undefined));
    await waitFor('every answer journalled', async () =>
      (await journalled()) >= target.teacher.stats().answered ? true : undefined
    );
    await killWhileRunning(target, 'teacherShard', 'cpu', target.teacherHandle);
    target.teacher.release();
    target.cpu = await startCpu(target);
  },
  // Slow the store once every teacher call is answered: validation, next, is then seen running.
  validateRationales: async (target) => {
    const sampled = await waitFor('the sample stage', async () => (await runHistory(target.handle)).results.sample);
    const { counts } = sampled as SampleResult;
    await waitFor('every teacher call answered', () =>
      target.teacher.stats().answered >= counts.train + counts.valid ? true : undefined
    );
    target.proxy.setDelay(SLOW_STORE_MS);
    await killWhileRunning(target, 'validateRationales', 'cpu');
    target.proxy.setDelay(0);
    target.cpu = await startCpu(target);
  },
  training: killDuringTraining,
  evaluate: async (target) => {
    await killWhileRunning(target, 'evaluate', 'gpu');
    target.gpu = await startGpu(target);
  },
  // Evaluation makes no store request from the CPU worker: slowing its store then delays only registration.
  registerModel: async (target) => {
    await waitFor('evaluate to run', () => runningActivity(target.handle, 'evaluate'));
    target.proxy.setDelay(SLOW_STORE_MS);
    await killWhileRunning(target, 'registerModel', 'cpu');
    target.proxy.setDelay(0);
    target.cpu = await startCpu(target);
  },
};

/**
 * Training on the GPU worker: the workflow worker is killed while no CPU stage runs (between stages) and stays dead
 * until training has finished; the GPU worker is killed mid-training after a checkpoint. Its training child is frozen
 * as its first checkpoint starts uploading (by the GPU workers' store proxy), so the kill lands mid-training however
 * fast the machine trains, and the steps it executed and the checkpoint reach the server with the worker's next
 * heartbeats before the kill: what is recomputed is then known exactly (the train-kill test's technique).
 */
async function killDuringTraining(target: Target): Promise<void> {
  await waitFor('training to run', () => runningActivity(target.handle, 'trainStudent'));
  await workers.kill(target.cpu);
  target.t.log(`${at(target)}: killed the workflow worker (CPU queue) between stages, with training on the GPU`);
  await within(target.checkpointUpload, 120_000, () => 'a GPU worker to upload its first checkpoint');
  await waitFor('a stored checkpoint', async () => {
    const beat = await heartbeatOf<TrainHeartbeat>(target.handle, 'trainStudent');
    return (beat?.checkpointStep ?? 0) >= CHECKPOINT_EVERY ? beat : undefined;
  });
  // Heartbeats are throttled to 80% of the 5 s timeout: one more brings the frozen child's last step.
  await sleep(4500);
  target.trainAtKill = await heartbeatOf<TrainHeartbeat>(target.handle, 'trainStudent');
  await workers.kill(target.gpu);
  target.t.log(`${at(target)}: killed the GPU worker at training step ${target.trainAtKill?.step}`);
  target.killedMidStage.push('trainStudent');
  target.t.true((target.trainAtKill?.step ?? STEPS) < STEPS, 'the GPU worker was killed mid-training');
  target.gpu = await startGpu(target);
  // Training ends with no workflow worker alive: its completion waits in the history for the replacement.
  await waitFor(
    'training to finish',
    async () => ((await runHistory(target.handle)).results.trainStudent ? true : undefined),
    240_000
  );
  target.t.log(`${at(target)}: training finished; a new workflow worker starts`);
  target.cpu = await startCpu(target);
}

async function runUnderKills(t: ExecutionContext, points: string[]): Promise<void> {
  t.timeout(points.length * 2 * 60_000);
  const model = `teacher-${points.length}-kills`;
  const teacher = await startLocalTeacherServer({ model, latencyMs: 20 });
  const proxy = await startStoreProxy(services().s3.endpoint);
  // The proxy asks for the GPU worker of the moment: replacements come and go.
  const live: { target?: Target } = {};
  const { proxy: gpuProxy, checkpointUpload } = await startGpuProxy(services().s3.endpoint, () => live.target?.gpu);
  t.teardown(async () => {
    await teacher.close();
    await proxy.close();
    await gpuProxy.close();
  });
  const spec: PipelineSpecInput = {
    name: `kill-stages-${points.length}`,
    data: { kind: 'demo', size: 120, seed: 5 },
    teacher: { kind: 'openai', url: teacher.url, model, concurrency: 4, shardSize: 60, heartbeatTimeoutSeconds: 5 },
    student: {
      preset: 'tiny',
      steps: STEPS,
      batchSize: 8,
      seed: 3,
      checkpointEvery: CHECKPOINT_EVERY,
      // A dead GPU worker is noticed 5 s after its last heartbeat (the default 2 minutes would outlast the test).
      heartbeatTimeoutSeconds: 5,
    },
  };
  const [cpu, gpu] = await Promise.all([startCpu({ proxy }), startGpu({ gpuProxy })]);
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `kill-stages-${Date.now()}`,
    args: [spec],
  });
  const target: Target = {
    t,
    handle,
    teacher,
    proxy,
    gpuProxy,
    checkpointUpload,
    cpu,
    gpu,
    killedMidStage: [],
    startedAt: Date.now(),
  };
  live.target = target;
  let result: PipelineResult | undefined;
  try {
    for (const point of points) await KILL_POINTS[point](target);
    result = (await handle.result()) as PipelineResult;
    t.log(`${at(target)}: the run completed`);
  } catch (err) {
    t.log(`worker output:\n${workers.tail()}`);
    recordFigures(`kill-stages ${points.join(',')}`, { faultsTried: faultsOf(points), faultsSurvived: 0 });
    throw err;
  }
  await checkRun(t, target, spec, result, points);
}

/** Faults a list of kill points tries: training stands for two (the workflow worker and the GPU worker). */
const faultsOf = (points: string[]) => points.length + (points.includes('training') ? 1 : 0);

async function checkRun(
  t: ExecutionContext,
  target: Target,
  spec: PipelineSpecInput,
  result: PipelineResult,
  points: string[]
): Promise<void> {
  const figures = await runFigures(t, services().store, target.handle, spec.name);
  const teacherStats = target.teacher.stats();
  recordFigures(`kill-stages ${points.join(',')}`, {
    faultsTried: faultsOf(points),
    faultsSurvived: faultsOf(points),
    examplesLost: figures.examplesLost,
    teacherCallsRepeated: teacherStats.repeatedAnswers,
    registryDuplicates: figures.registryDuplicates,
  });
  t.is(result.name, spec.name);
  t.is(figures.examplesLost, 0, 'every example answered or failed, and validated');
  t.is(teacherStats.repeatedAnswers, 0, 'no teacher call answered twice');
  t.true(Object.values(teacherStats.answeredByPromptHash).every((n) => n === 1));
  t.is(figures.versionsOfRun, 1, 'exactly one registry version for the run');
  t.is(figures.trainSteps, STEPS);

  // Every stage heartbeats, so a dead worker is noticed within seconds (the spec's 5 for the GPU stages; 30 for the
  // cheap ones), not after a start-to-close timeout of minutes or hours.
  const history = await runHistory(target.handle);
  for (const stage of ['sample', 'validateRationales', 'trainStudent', 'evaluate', 'registerModel']) {
    const seconds = history.heartbeatTimeoutSeconds[stage];
    t.true(seconds > 0 && seconds <= 30, `${stage} scheduled with a heartbeat timeout of ${seconds} s`);
  }
  // Each killed stage was retried after its attempt timed out: the kill hit it mid-stage, not after it finished.
  const retried = { ...history.retriedAfterTimeout };
  if (target.teacherHandle) Object.assign(retried, (await runHistory(target.teacherHandle)).retriedAfterTimeout);
  for (const stage of target.killedMidStage) t.truthy(retried[stage]?.length, `${stage} retried after its worker died`);

  if (target.trainAtKill) await checkTrainingResume(t, target, result);
}

/** Training resumed from the checkpoint the killed attempt last heartbeated; recomputed at most one interval. */
async function checkTrainingResume(t: ExecutionContext, target: Target, result: PipelineResult): Promise<void> {
  const { results } = await runHistory(target.handle);
  const { trainLog: trainLogRef } = results.trainStudent as TrainStudentResult;
  const trainLog = JSON.parse((await services().store.get(trainLogRef)).toString()) as {
    resumedFrom: number | null;
    attempt: number;
    lossHistory: { step: number }[];
  };
  const last = target.trainAtKill!;
  t.log(
    `training: attempt ${trainLog.attempt} resumed from ${trainLog.resumedFrom}; last beat ${JSON.stringify(last)}`
  );
  t.is(trainLog.resumedFrom, last.checkpointStep ?? null);
  const recomputed = last.step - (last.checkpointStep ?? 0);
  t.log(`training: killed after step ${last.step}, resumed from ${trainLog.resumedFrom}: ${recomputed} recomputed`);
  t.true(recomputed >= 0 && recomputed <= CHECKPOINT_EVERY, `recomputed ${recomputed} steps`);
  t.deepEqual(
    trainLog.lossHistory.map((p) => p.step),
    Array.from({ length: STEPS }, (_, i) => i + 1)
  );
  t.truthy(result.checkpointUri);
}

const QUICK = ['teacherShard', 'training'];
const FULL = ['sample', 'teacherShard', 'validateRationales', 'training', 'evaluate', 'registerModel'];

test(`a run whose workers are SIGKILLed at ${faultMode() === 'full' ? 'every stage' : 'a teacher shard, training and between stages'} completes with nothing lost or repeated`, async (t) => {
  await runUnderKills(t, faultMode() === 'full' ? FULL : QUICK);
});
