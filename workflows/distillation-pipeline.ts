/**
 * The distillation DAG: sample → promptTeacher → validateRationales → trainStudent → evaluate → registerModel.
 * Orchestration only: every byte of data moves inside activities, and only references cross this code.
 */
import {
  ActivityCancellationType,
  ApplicationFailure,
  type ActivityOptions,
  executeChild,
  isCancellation,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type {
  EvaluateResult,
  PromptTeacherResult,
  RegisterModelResult,
  SampleResult,
  TrainStudentResult,
  ValidateRationalesResult,
} from '../activities/types';
import { parseSpec, SpecError, taskOf, usesTeacher, type PipelineSpecInput } from '../lib/pipeline/spec';
import {
  GPU_TASK_QUEUE,
  progressQuery,
  stageProgressSignal,
  STAGES,
  type PipelineProgress,
  type StageName,
} from './definitions';
import { teacherStage } from './teacher-stage';

/** Failure types that no retry can fix. */
const NON_RETRYABLE = ['InputError', 'NoUsableRationales'];

// Cheap I/O stages (sample, validate, register): seconds of work; a few quick retries cover a flaky store.
const io = proxyActivities<Activities>({
  startToCloseTimeout: '10 minutes',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
});

// Training and evaluation run on the GPU queue. Hours are normal, so liveness comes from heartbeats (the child
// process reports every step); cancellation waits for the activity to kill its child, so no training outlives
// a cancelled run.
const GPU_OPTIONS = {
  taskQueue: GPU_TASK_QUEUE,
  startToCloseTimeout: '24 hours',
  heartbeatTimeout: '2 minutes',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '10s',
    backoffCoefficient: 2,
    maximumInterval: '10 minutes',
    maximumAttempts: 3,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
} satisfies ActivityOptions;
const gpu = proxyActivities<Activities>(GPU_OPTIONS);

/** What a finished run returns: small, and enough for a CLI to print and a caller to find everything else. */
export interface PipelineResult {
  name: string;
  version: number;
  accuracy: number;
  correct: number;
  total: number;
  majorityBaseline: number;
  teacherAccuracy?: number;
  backend: string;
  workflowId: string;
  runId: string;
  manifestUri: string;
  checkpointUri: string;
  registryKey: string;
}

/**
 * Distill a teacher into a student, step by step. The spec is validated before any stage runs; a bad spec fails
 * the run at once, non-retryably, naming the field, the value and what was expected.
 */
export async function distillationPipeline(specInput: PipelineSpecInput): Promise<PipelineResult> {
  let spec;
  try {
    spec = parseSpec(specInput);
  } catch (err) {
    if (err instanceof SpecError) throw ApplicationFailure.nonRetryable(err.message, 'InputError', err.issues);
    throw err;
  }
  const task = taskOf(spec);
  const withTeacher = usesTeacher(spec);
  const runs = (stage: StageName) => withTeacher || (stage !== 'promptTeacher' && stage !== 'validateRationales');

  const progress: PipelineProgress = {
    stage: 'starting',
    stageIndex: 0,
    stageCount: STAGES.filter(runs).length,
    step: 0,
    total: 0,
    stages: STAGES.map((name) => ({ name, status: runs(name) ? 'pending' : 'skipped' })),
  };
  setHandler(progressQuery, () => progress);
  setHandler(stageProgressSignal, (update) => {
    if (update.stage === progress.stage) {
      progress.step = update.step;
      progress.total = update.total;
    }
  });

  async function stage<T>(name: StageName, body: () => Promise<T>, summarize: (r: T) => string): Promise<T> {
    const entry = progress.stages.find((s) => s.name === name)!;
    progress.stage = name;
    progress.stageIndex += 1;
    progress.step = 0;
    progress.total = 0;
    entry.status = 'running';
    try {
      const result = await body();
      entry.status = 'done';
      entry.summary = summarize(result);
      return result;
    } catch (err) {
      entry.status = 'failed';
      progress.stage = isCancellation(err) ? 'cancelled' : 'failed';
      throw err;
    }
  }

  const { workflowId, runId } = workflowInfo();
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

  const sample: SampleResult = await stage(
    'sample',
    () => io.sample(spec),
    (r) => `train ${r.counts.train}, valid ${r.counts.valid}, test ${r.counts.test}`
  );

  let teacherResult: PromptTeacherResult | undefined;
  let validation: ValidateRationalesResult | undefined;
  if (withTeacher) {
    // The teacher stage is a workflow of its own: its shards fan out over every worker on the queue, and it
    // continues as new on its own, so this run's history stays small however many examples there are.
    teacherResult = await stage(
      'promptTeacher',
      () =>
        executeChild(teacherStage, {
          workflowId: `${workflowInfo().workflowId}/teacher`,
          args: [
            {
              task,
              teacher: spec.teacher,
              dataDir: spec.data.kind === 'reference' ? spec.data.dir : undefined,
              train: sample.train,
              valid: sample.valid,
            },
          ],
        }),
      (r) =>
        `${r.total} responses (${r.cached} cached, ${r.failed} failed` +
        (r.notSent ? `, ${r.notSent} not sent: budget` : '') +
        ')' +
        (r.costUsd === undefined ? '' : `, $${r.costUsd.toFixed(4)}`)
    );
    const responses = teacherResult.responses;
    validation = await stage(
      'validateRationales',
      () =>
        io.validateRationales({ task, train: sample.train, valid: sample.valid, responses, validate: spec.validate }),
      (r) => `kept ${r.kept}` + (r.teacherAccuracy === undefined ? '' : `, teacher accuracy ${pct(r.teacherAccuracy)}`)
    );
  }

  // Training resumes from its last checkpoint on retry, so the sooner a dead worker is noticed the less time is lost:
  // its heartbeat timeout is the spec's (the activity heartbeats every second or two however long a step takes).
  const trainer = proxyActivities<Activities>({
    ...GPU_OPTIONS,
    heartbeatTimeout: spec.student.heartbeatTimeoutSeconds * 1000,
  });
  const training: TrainStudentResult = await stage(
    'trainStudent',
    () =>
      trainer.trainStudent({
        student: spec.student,
        train: validation?.train ?? sample.train,
        valid: validation?.valid ?? sample.valid,
      }),
    (r) => `${r.steps} steps on ${r.backend}, final loss ${r.finalLoss.toFixed(4)}`
  );

  const evaluation: EvaluateResult = await stage(
    'evaluate',
    () =>
      gpu.evaluate({
        task,
        checkpoint: training.checkpoint,
        test: sample.test,
        evaluate: spec.evaluate,
        backend: spec.student.backend,
      }),
    (r) =>
      `accuracy ${pct(r.accuracy)} (${r.correct}/${r.total}); majority baseline ${pct(r.majorityBaseline.accuracy)}`
  );

  const registered: RegisterModelResult = await stage(
    'registerModel',
    () =>
      io.registerModel({
        spec,
        task,
        workflowId,
        runId,
        sample,
        teacher: teacherResult,
        validation,
        training,
        evaluation,
      }),
    (r) => `${r.name} v${r.version}`
  );

  progress.stage = 'done';
  return {
    name: registered.name,
    version: registered.version,
    accuracy: evaluation.accuracy,
    correct: evaluation.correct,
    total: evaluation.total,
    majorityBaseline: evaluation.majorityBaseline.accuracy,
    teacherAccuracy: validation?.teacherAccuracy,
    backend: training.backend,
    workflowId,
    runId,
    manifestUri: registered.manifestUri,
    checkpointUri: registered.checkpointUri,
    registryKey: registered.key,
  };
}
