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
import {
  GPU_TASK_QUEUE,
  progressQuery,
  stageProgressSignal,
  STAGES,
  type Activities,
  type EvaluateResult,
  type PipelineProgress,
  type PipelineResult,
  type PromptTeacherResult,
  type RegisterModelResult,
  type SampleResult,
  type StageName,
  type TrainStudentResult,
  type ValidateRationalesResult,
} from '../contract';
import {
  parseSpec,
  SpecError,
  taskOf,
  usesTeacher,
  type PipelineSpec,
  type PipelineSpecInput,
  type TaskKind,
} from '../lib/pipeline/spec';
import { teacherStage } from './teacher-stage';

/** Failure types that no retry can fix. */
const NON_RETRYABLE = ['InputError', 'NoUsableRationales'];

// Cheap I/O stages (sample, validate, register): seconds of work; a few quick retries cover a flaky store. They
// heartbeat every second while they work (activities/progress.ts withKeepalive), so a dead worker is noticed within
// the heartbeat timeout and the stage retried elsewhere, not after the ten-minute start-to-close timeout.
const io = proxyActivities<Activities>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '30 seconds',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
});

// Training and evaluation run on the GPU queue. Hours are normal, so liveness comes from heartbeats (the child
// process reports every step; the heartbeat timeout is the spec's, set where the stages are called); cancellation
// waits for the activity to kill its child, so no training outlives a cancelled run.
const GPU_OPTIONS = {
  taskQueue: GPU_TASK_QUEUE,
  startToCloseTimeout: '24 hours',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '10s',
    backoffCoefficient: 2,
    maximumInterval: '10 minutes',
    maximumAttempts: 3,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
} satisfies ActivityOptions;

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/**
 * What the teacher stage did with its calls: sent now, or reused (journalled by an earlier attempt or run, or found
 * in the cache), e.g. "1200 reused, 0 sent" after a crash. Results recorded before `calls` existed say "N responses".
 */
function teacherCalls(r: PromptTeacherResult): string {
  if (!r.calls) return `${r.total} responses`;
  const reused = r.calls.resumed + r.calls.cached;
  return reused > 0 ? `${reused} reused, ${r.calls.sent} sent` : `${r.calls.sent} sent`;
}

/** Each stage's one-line summary in `progressQuery` (and so in the CLI's progress display). */
const summary = {
  sample: (r: SampleResult) => `train ${r.counts.train}, valid ${r.counts.valid}, test ${r.counts.test}`,
  promptTeacher: (r: PromptTeacherResult) =>
    teacherCalls(r) +
    ` (${r.cached} cached, ${r.failed} failed` +
    (r.notSent ? `, ${r.notSent} not sent: budget` : '') +
    ')' +
    (r.costUsd === undefined ? '' : `, $${r.costUsd.toFixed(4)}`),
  validateRationales: (r: ValidateRationalesResult) =>
    `kept ${r.kept}` + (r.teacherAccuracy === undefined ? '' : `, teacher accuracy ${pct(r.teacherAccuracy)}`),
  trainStudent: (r: TrainStudentResult) => `${r.steps} steps on ${r.backend}, final loss ${r.finalLoss.toFixed(4)}`,
  evaluate: (r: EvaluateResult) =>
    `accuracy ${pct(r.accuracy)} (${r.correct}/${r.total}); majority baseline ${pct(r.majorityBaseline.accuracy)}`,
  registerModel: (r: RegisterModelResult) => `${r.name} v${r.version}`,
};

/** The spec, parsed: a bad one fails the run at once, non-retryably, before any stage is scheduled. */
function validSpec(input: PipelineSpecInput): PipelineSpec {
  try {
    return parseSpec(input);
  } catch (err) {
    if (err instanceof SpecError) throw ApplicationFailure.nonRetryable(err.message, 'InputError', err.issues);
    throw err;
  }
}

/**
 * Serves `progressQuery` (fed by the activities' throttled `stageProgressSignal`) and returns the wrapper every stage
 * runs in, which moves the run's progress along and records each stage's outcome and one-line summary.
 */
function trackStages(runs: (stage: StageName) => boolean) {
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
  return Object.assign(stage, {
    done: () => {
      progress.stage = 'done';
    },
  });
}

/**
 * Distill a teacher into a student, step by step. The spec is validated before any stage runs; a bad spec fails
 * the run at once, non-retryably, naming the field, the value and what was expected.
 */
export async function distillationPipeline(specInput: PipelineSpecInput): Promise<PipelineResult> {
  const spec = validSpec(specInput);
  const task = taskOf(spec);
  const withTeacher = usesTeacher(spec);
  const stage = trackStages((name) => withTeacher || (name !== 'promptTeacher' && name !== 'validateRationales'));
  const { workflowId, runId } = workflowInfo();

  const sample: SampleResult = await stage('sample', () => io.sample(spec), summary.sample);

  let teacherResult: PromptTeacherResult | undefined;
  let validation: ValidateRationalesResult | undefined;
  if (withTeacher) {
    teacherResult = await stage('promptTeacher', () => promptTeacher(spec, task, sample), summary.promptTeacher);
    const responses = teacherResult.responses;
    validation = await stage(
      'validateRationales',
      () =>
        io.validateRationales({ task, train: sample.train, valid: sample.valid, responses, validate: spec.validate }),
      summary.validateRationales
    );
  }

  // Training resumes from its last checkpoint on retry, so the sooner a dead worker is noticed the less time is lost:
  // the GPU stages' heartbeat timeout is the spec's (both heartbeat every second or two however long a step takes).
  const gpuStages = proxyActivities<Activities>({
    ...GPU_OPTIONS,
    heartbeatTimeout: spec.student.heartbeatTimeoutSeconds * 1000,
  });
  const training: TrainStudentResult = await stage(
    'trainStudent',
    () =>
      gpuStages.trainStudent({
        student: spec.student,
        train: validation?.train ?? sample.train,
        valid: validation?.valid ?? sample.valid,
      }),
    summary.trainStudent
  );

  const evaluation: EvaluateResult = await stage(
    'evaluate',
    () =>
      gpuStages.evaluate({
        task,
        checkpoint: training.checkpoint,
        test: sample.test,
        evaluate: spec.evaluate,
        backend: spec.student.backend,
      }),
    summary.evaluate
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
    summary.registerModel
  );

  stage.done();
  return { ...resultOf(registered, training, evaluation, validation), workflowId, runId };
}

/**
 * The teacher stage is a workflow of its own: its shards fan out over every worker on the queue, and it continues as
 * new on its own, so this run's history stays small however many examples there are.
 */
function promptTeacher(spec: PipelineSpec, task: TaskKind, sample: SampleResult): Promise<PromptTeacherResult> {
  return executeChild(teacherStage, {
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
  });
}

/** What the run returns besides its own ids: small, and enough to find everything else. */
function resultOf(
  registered: RegisterModelResult,
  training: TrainStudentResult,
  evaluation: EvaluateResult,
  validation: ValidateRationalesResult | undefined
): Omit<PipelineResult, 'workflowId' | 'runId'> {
  return {
    name: registered.name,
    version: registered.version,
    accuracy: evaluation.accuracy,
    correct: evaluation.correct,
    total: evaluation.total,
    majorityBaseline: evaluation.majorityBaseline.accuracy,
    teacherAccuracy: validation?.teacherAccuracy,
    backend: training.backend,
    manifestUri: registered.manifestUri,
    checkpointUri: registered.checkpointUri,
    registryKey: registered.key,
  };
}
