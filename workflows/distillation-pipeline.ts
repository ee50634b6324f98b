/**
 * The distillation DAG: sample → promptTeacher → validateRationales → trainStudent → evaluate → registerModel.
 * Orchestration only: every byte of data moves inside activities, and only references cross this code.
 */
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  type ActivityOptions,
  type RetryPolicy,
  condition,
  executeChild,
  isCancellation,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import {
  approveUpdate,
  GPU_TASK_QUEUE,
  hasStepwiseSearchAttributes,
  StepwiseDatasetHash,
  StepwiseOutcome,
  TemporalScheduledById,
  TemporalScheduledStartTime,
  type RunOutcome,
  rejectUpdate,
  progressQuery,
  stageProgressSignal,
  STAGES,
  type Activities,
  type EvaluateResult,
  type PipelineProgress,
  type ApprovalDecision,
  type ApprovalOutcome,
  type PipelineResult,
  type PromotionSummary,
  type ResolvedInit,
  type PromptTeacherResult,
  type RefreshCheck,
  type ScheduleTrigger,
  type RegisterModelResult,
  type RunReportInput,
  type SampleResult,
  type StageName,
  type TrainStudentResult,
  type ValidateRationalesResult,
} from '../contract';
import type { GateSpec, PipelineSpec, PipelineSpecInput, TaskKind } from '../lib/pipeline/spec';
import { isModelRef, taskOf, usesTeacher, warmStartRef } from '../lib/pipeline/spec-rules';
import { teacherStage } from './teacher-stage';

type SpecModule = typeof import('../lib/pipeline/spec');
/**
 * The spec module with its zod schemas, for replaying runs started before specs were parsed by a local activity
 * (`validSpec`). Required on first use, not at bundle load: every workflow evaluates the bundle's modules afresh,
 * and these cost ~40 ms of CPU each time. The bundler resolves this require statically, as it does an import.
 */
const specLib = (): SpecModule => require('../lib/pipeline/spec') as SpecModule;

/** Failure types that no retry can fix. */
const NON_RETRYABLE = ['InputError', 'NoUsableRationales'];

/** Retries of the cheap I/O activities (the sweep's too): a few quick ones cover a flaky store. */
export const CHEAP_IO_RETRY: RetryPolicy = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '30s',
  maximumAttempts: 5,
  nonRetryableErrorTypes: NON_RETRYABLE,
};
// Cheap I/O stages (sample, validate, register): seconds of work; a few quick retries cover a flaky store. They
// heartbeat every second while they work (activities/progress.ts withKeepalive), so a dead worker is noticed within
// the heartbeat timeout and the stage retried elsewhere, not after the ten-minute start-to-close timeout.
const io = proxyActivities<Activities>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '30 seconds',
  retry: CHEAP_IO_RETRY,
});

// Training and evaluation run on the GPU queue. Hours are normal, so liveness comes from heartbeats (the child
// process reports every step; the heartbeat timeout is the spec's, set where the stages are called); cancellation
// waits for the activity to kill its child, so no training outlives a cancelled run.
const GPU_OPTIONS = {
  taskQueue: GPU_TASK_QUEUE,
  startToCloseTimeout: '24 hours',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  // Most failed attempts here are lost workers (spot preemption, a deploy, a killed session): each resumes from the
  // last checkpoint, so ten cost little, while a training that fails by itself still stops within the hour.
  retry: {
    initialInterval: '10s',
    backoffCoefficient: 2,
    maximumInterval: '10 minutes',
    maximumAttempts: 10,
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
    `accuracy ${pct(r.accuracy)} (${r.correct}/${r.total}); majority baseline ${pct(r.majorityBaseline.accuracy)}` +
    (r.baselines?.bestOperation
      ? `, best single operation (${r.baselines.bestOperation.operation}) ${pct(r.baselines.bestOperation.accuracy)}`
      : ''),
  registerModel: (r: RegisterModelResult) => `${r.name} v${r.version}`,
  gate: (r: PromotionSummary) =>
    (r.outcome === 'promoted'
      ? `promoted to ${r.alias}${r.previous === null ? '' : ` (was v${r.previous})`}`
      : `not promoted to ${r.alias}`) + `: ${r.reason}`,
};

/** The split the evaluate stage scores: the test split unless the spec chose validation (to tune without it). */
function scoredSplit(spec: PipelineSpec, sample: SampleResult) {
  return spec.evaluate.split === 'valid' ? sample.valid : sample.test;
}

// Parsing a spec takes microseconds once the schemas are built; a worker builds them once (activities/spec.ts).
const local = proxyLocalActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { maximumAttempts: 3, nonRetryableErrorTypes: NON_RETRYABLE },
});

/**
 * The spec, parsed: a bad one fails the run at once, non-retryably, before any stage is scheduled. Parsed by a local
 * activity, whose result the history keeps, so a replay reads the spec as its run saw it even where a later version
 * of the code fills a default differently. Runs started before that replay the way they ran: parsed here.
 */
async function validSpec(input: PipelineSpecInput): Promise<PipelineSpec> {
  if (!patched('spec-by-local-activity')) {
    try {
      return specLib().parseSpec(input);
    } catch (err) {
      if (err instanceof specLib().SpecError)
        throw ApplicationFailure.nonRetryable(err.message, 'InputError', err.issues);
      throw err;
    }
  }
  try {
    return await local.parseSpec(input);
  } catch (err) {
    // The run fails as it would have with the spec parsed here: an InputError naming the fields, not an activity's.
    const cause = err instanceof ActivityFailure ? err.cause : undefined;
    if (cause instanceof ApplicationFailure && cause.type === 'InputError')
      throw ApplicationFailure.nonRetryable(cause.message, 'InputError', ...(cause.details ?? []));
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
  // Each stage's result as it finishes, for the run report (a failed run's report shows the stages it reached).
  const results: RunReportInput['results'] = {};
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
      (results as Record<StageName, unknown>)[name] = result;
      return result;
    } catch (err) {
      entry.status = 'failed';
      progress.stage = isCancellation(err) ? 'cancelled' : 'failed';
      throw err;
    }
  }
  return Object.assign(stage, {
    progress,
    results,
    skip: (name: StageName) => {
      progress.stages.find((s) => s.name === name)!.status = 'skipped';
      progress.stageCount -= 1;
    },
    /** Every stage not yet run is skipped (a refresh with nothing to do), with why on the first of them. */
    skipRest: (why: string) => {
      let first = true;
      for (const entry of progress.stages) {
        if (entry.status !== 'pending') continue;
        entry.status = 'skipped';
        if (first) entry.summary = why;
        first = false;
        progress.stageCount -= 1;
      }
    },
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
  const spec = await validSpec(specInput);
  const withTeacher = usesTeacher(spec);
  const stage = trackStages((name) =>
    name === 'gate' ? spec.gate.enabled : withTeacher || (name !== 'promptTeacher' && name !== 'validateRationales')
  );
  const approvals = approvalInbox(stage.progress);
  const attributes = searchAttributes();
  let result: PipelineResult;
  try {
    result = await pipeline(spec, stage, approvals, attributes);
  } catch (err) {
    attributes.outcome('failed');
    // A cancelled run schedules nothing more: the report would be cancelled with it.
    if (!isCancellation(err)) await runReport(spec, stage, { error: err });
    throw err;
  }
  const reportUri = await runReport(spec, stage, { result });
  return reportUri ? { ...result, reportUri } : result;
}

/**
 * The run's report (activities/report.ts): at the end of a run, and as far as it got when it failed. Best effort: a
 * report that cannot be written never fails a run nor hides its error. Runs from before reports replay without it.
 */
async function runReport(
  spec: PipelineSpec,
  stage: ReturnType<typeof trackStages>,
  end: { result: PipelineResult } | { error: unknown }
): Promise<string | undefined> {
  if (!patched('run-report')) return undefined;
  const { workflowId, runId, startTime } = workflowInfo();
  const input: RunReportInput = {
    workflowId,
    runId,
    spec,
    task: taskOf(spec),
    startedAt: startTime.toISOString(),
    endedAt: new Date().toISOString(),
    outcome: 'failed',
    stages: stage.progress.stages,
    results: stage.results,
  };
  if ('result' in end) {
    const r = end.result;
    input.outcome = r.unchanged ? 'unchanged' : (r.promotion?.outcome ?? 'registered');
    if (r.unchanged) input.unchanged = { ...r.unchanged, name: r.name, version: r.version };
  } else {
    const causes: string[] = [];
    for (let e = end.error; e instanceof Error && causes.length < 8; e = e.cause) causes.push(e.message);
    const failed = stage.progress.stages.find((s) => s.status === 'failed');
    input.error = { message: causes.filter(Boolean).join(': '), ...(failed ? { stage: failed.name } : {}) };
  }
  try {
    return (await io.writeRunReport(input)).uri;
  } catch (err) {
    if (isCancellation(err)) throw err;
    return undefined;
  }
}

async function pipeline(
  spec: PipelineSpec,
  stage: ReturnType<typeof trackStages>,
  approvals: ReturnType<typeof approvalInbox>,
  attributes: ReturnType<typeof searchAttributes>
): Promise<PipelineResult> {
  const task = taskOf(spec);
  const { workflowId, runId } = workflowInfo();
  const sample: SampleResult = await stage('sample', () => io.sample(spec), summary.sample);
  attributes.datasetHash(sample.datasetHash);
  const trigger = scheduleTrigger();
  if (trigger) {
    // A scheduled refresh: when the champion was trained on this very spec and data, training again would only
    // reproduce it (training is deterministic), so the run ends here with one audit record and no teacher call.
    const check: RefreshCheck = await io.checkRefresh({
      spec,
      datasetHash: sample.datasetHash,
      workflowId,
      runId,
      trigger,
    });
    if (check.unchanged) {
      const { audit: _audit, alias, ...version } = check.version;
      stage.skipRest(`unchanged: v${version.version} (${alias}) has this spec and data`);
      attributes.outcome('unchanged');
      stage.done();
      return {
        ...version,
        workflowId,
        runId,
        unchanged: { alias, reason: `v${version.version} (${alias}) was trained on this spec and data` },
        trigger,
      };
    }
  }
  const { teacherResult, validation } = await teacherStages(spec, task, sample, stage);

  const gpuStages = gpuActivities(spec);
  const training: TrainStudentResult = await stage(
    'trainStudent',
    async () => {
      const init = await initOf(spec);
      const warm = init.initFrom !== undefined && spec.student.warmStart !== undefined;
      const steps = warm ? (spec.student.warmStartSteps ?? spec.student.steps) : spec.student.steps;
      return gpuStages.trainStudent({
        student: { ...spec.student, steps },
        ...init,
        train: validation?.train ?? sample.train,
        valid: validation?.valid ?? sample.valid,
      });
    },
    summary.trainStudent
  );

  const evaluation: EvaluateResult = await stage(
    'evaluate',
    () =>
      gpuStages.evaluate({
        task,
        checkpoint: training.checkpoint,
        test: scoredSplit(spec, sample),
        train: sample.train,
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
        ...(trigger ? { trigger } : {}),
      }),
    summary.registerModel
  );

  const promotion = await gateStage(stage, {
    spec,
    task,
    registered,
    training,
    evaluation,
    sample,
    gpu: gpuStages,
    approvals,
    progress: stage.progress,
    attributes,
  });
  attributes.outcome(promotion?.outcome ?? 'registered');

  stage.done();
  return {
    ...resultOf(registered, training, evaluation, validation),
    workflowId,
    runId,
    ...(promotion ? { promotion } : {}),
    ...(trigger ? { trigger } : {}),
  };
}

/**
 * The schedule that started this run and the action's nominal time, from the attributes the server sets on every
 * scheduled run; undefined for a run started by hand.
 */
function scheduleTrigger(): ScheduleTrigger | undefined {
  const attrs = workflowInfo().typedSearchAttributes;
  const scheduleId = attrs.get(TemporalScheduledById);
  const nominal = attrs.get(TemporalScheduledStartTime);
  if (!scheduleId || !nominal) return undefined;
  return { scheduleId, nominalTime: new Date(nominal).toISOString() };
}

/**
 * The GPU queue's stages. Training resumes from its last checkpoint on retry, so the sooner a dead worker is noticed
 * the less time is lost: their heartbeat timeout is the spec's (both heartbeat every second or two however long a
 * step takes).
 */
function gpuActivities(spec: PipelineSpec) {
  return proxyActivities<Activities>({
    ...GPU_OPTIONS,
    heartbeatTimeout: spec.student.heartbeatTimeoutSeconds * 1000,
  });
}

/**
 * A registered version as the init (`my-model@champion`) or the warm start, resolved once here so every training
 * attempt starts from it. A warm start that names no version yet (a model's first run) trains from scratch. Specs of
 * runs from before references existed name neither, so their histories replay unchanged.
 */
async function initOf(spec: PipelineSpec): Promise<{ initFrom?: ResolvedInit }> {
  const init = spec.student.init;
  if (init !== undefined && isModelRef(init)) return { initFrom: await io.resolveInit(init) };
  const warm = warmStartRef(spec);
  if (warm === undefined) return {};
  const from = await io.resolveWarmStart(warm);
  return from ? { initFrom: from } : {};
}

/** The teacher and the validation of its rationales, for the methods that learn from a teacher. */
async function teacherStages(
  spec: PipelineSpec,
  task: TaskKind,
  sample: SampleResult,
  stage: ReturnType<typeof trackStages>
): Promise<{ teacherResult?: PromptTeacherResult; validation?: ValidateRationalesResult }> {
  if (!usesTeacher(spec)) return {};
  const teacherResult = await stage('promptTeacher', () => promptTeacher(spec, task, sample), summary.promptTeacher);
  const responses = teacherResult.responses;
  const validation = await stage(
    'validateRationales',
    () => io.validateRationales({ task, train: sample.train, valid: sample.valid, responses, validate: spec.validate }),
    summary.validateRationales
  );
  return { teacherResult, validation };
}

/** The promotion gate as a stage, when the spec turns it on; undefined when it is off. */
async function gateStage(stage: ReturnType<typeof trackStages>, run: GateRun): Promise<PromotionSummary | undefined> {
  if (!run.spec.gate.enabled) return undefined;
  // Runs from before the gate existed never reach it: `patched` is false when their histories replay.
  if (!patched('promotion-gate')) {
    stage.skip('gate');
    return undefined;
  }
  return stage('gate', () => promotionGate(run), summary.gate);
}

/**
 * Keeps the run's search attributes current (dataset hash, outcome), so `temporal workflow list --query` and
 * `stepwise runs ls` find it by where it stands. Only for runs started with the attributes (the cluster knows them:
 * a server fails every workflow task that sets an unknown one), and only in runs from after upserts existed, so the
 * histories of runs already in flight replay unchanged.
 */
function searchAttributes() {
  const on = hasStepwiseSearchAttributes(workflowInfo().typedSearchAttributes) && patched('search-attributes');
  return {
    datasetHash(hash: string) {
      if (on) upsertSearchAttributes([{ key: StepwiseDatasetHash, value: hash }]);
    },
    outcome(outcome: RunOutcome) {
      if (on) upsertSearchAttributes([{ key: StepwiseOutcome, value: outcome }]);
    },
  };
}

type Decision = ApprovalDecision & { kind: 'approve' | 'reject' };

/**
 * The approval Updates. Registered from the start so an early or stray update meets the validator, which refuses it
 * (nothing is written to the history) unless the run is waiting for a decision on exactly that version and the
 * identity is non-empty. The handler returns once the decision is carried out, with the outcome.
 */
function approvalInbox(progress: PipelineProgress) {
  let decision: Decision | undefined;
  let outcome: ApprovalOutcome | undefined;
  const validator = (d: ApprovalDecision) => {
    const waiting = progress.awaitingApproval;
    if (!waiting) throw new Error('this run is not waiting for an approval');
    if (decision) throw new Error(`v${waiting.version} was already ${decision.kind}d by ${decision.identity}`);
    if (!d || typeof d.version !== 'number' || d.version !== waiting.version) {
      throw new Error(
        `version: this run awaits approval of ${waiting.name} v${waiting.version}, not v${String(d?.version)}`
      );
    }
    if (typeof d.identity !== 'string' || !d.identity.trim()) throw new Error('identity: must be non-empty');
    if (d.comment !== undefined && typeof d.comment !== 'string') throw new Error('comment: must be a string');
  };
  const handler = (kind: Decision['kind']) => async (d: ApprovalDecision) => {
    decision = { ...d, identity: d.identity.trim(), kind };
    await condition(() => outcome !== undefined);
    return outcome!;
  };
  setHandler(approveUpdate, handler('approve'), { validator });
  setHandler(rejectUpdate, handler('reject'), { validator });
  return {
    /** Wait for a decision until the deadline; undefined when none came. */
    async wait(timeoutMs: number): Promise<Decision | undefined> {
      return (await condition(() => decision !== undefined, timeoutMs)) ? decision : undefined;
    },
    settle(result: ApprovalOutcome) {
      outcome = result;
    },
  };
}

interface GateRun {
  spec: PipelineSpec;
  task: TaskKind;
  registered: RegisterModelResult;
  training: TrainStudentResult;
  evaluation: EvaluateResult;
  sample: SampleResult;
  gpu: ReturnType<typeof gpuActivities>;
  approvals: ReturnType<typeof approvalInbox>;
  progress: PipelineProgress;
  attributes: ReturnType<typeof searchAttributes>;
}

/**
 * The promotion gate: compare the candidate with the champion on the champion's frozen evaluation set (evaluating
 * the candidate there first when that set is not its own test split), record the decision, wait for a person when
 * the spec asks, and move the alias only if it still names the champion the candidate was compared with.
 */
async function promotionGate(run: GateRun): Promise<PromotionSummary> {
  const { spec, registered } = run;
  const { workflowId, runId } = workflowInfo();
  const base = { name: registered.name, version: registered.version };
  const { plan, decided } = await decideOnFrozenSet(run);
  const summary = (outcome: PromotionSummary['outcome'], reason: string, decidedBy?: string): PromotionSummary => ({
    outcome,
    alias: plan.alias,
    previous: plan.champion?.version ?? null,
    reason,
    ...(decided.pValue === undefined ? {} : { pValue: decided.pValue }),
    candidateAccuracy: decided.candidateAccuracy,
    ...(decided.teacherAccuracy === undefined ? {} : { teacherAccuracy: decided.teacherAccuracy }),
    ...(decidedBy ? { decidedBy } : {}),
  });
  if (!decided.passed) return summary('rejected', decided.reason);

  let decidedBy: string | undefined;
  let why = decided.reason;
  if (spec.gate.approval) {
    const approval = await awaitApproval(run, spec.gate.approval, plan.alias);
    decidedBy = approval.identity;
    why = approval.comment || `${approval.kind}d by ${approval.identity}`;
    await io.recordApproval({
      ...base,
      workflowId,
      runId,
      decision: approval.kind,
      identity: approval.identity,
      comment: why,
    });
    if (approval.kind === 'reject') {
      const result = summary('rejected', `rejected by ${approval.identity}: ${why}`, decidedBy);
      run.approvals.settle({ ...base, outcome: 'rejected', alias: plan.alias });
      return result;
    }
  }
  let result: PromotionSummary;
  try {
    const moved = await io.promoteVersion({
      ...base,
      alias: plan.alias,
      expect: plan.champion?.version ?? null,
      workflowId,
      runId,
      why: decidedBy ? `approved by ${decidedBy}: ${why}` : decided.reason,
      details: { gate: decided.record, pValue: decided.pValue },
    });
    result = { ...summary('promoted', decided.reason, decidedBy), previous: moved.previous };
  } catch (err) {
    // The alias moved while this run was gated against its old champion: never promote over a version the
    // candidate was not compared with. The version stays as the gate left it, for a person to decide.
    if (!isRegistryConflict(err)) throw err;
    result = summary('rejected', `not promoted: ${err.cause.message}`, decidedBy);
  }
  run.approvals.settle({ ...base, outcome: result.outcome, alias: plan.alias, previous: result.previous });
  return result;
}

const isRegistryConflict = (err: unknown): err is ActivityFailure & { cause: ApplicationFailure } =>
  err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'RegistryConflict';

/**
 * Find the champion and its frozen evaluation set, score the candidate there (evaluating it first when that set is
 * not its own test split), ask the teacher the same examples where that costs nothing, and decide.
 */
async function decideOnFrozenSet(run: GateRun) {
  const { spec, registered } = run;
  const { workflowId, runId } = workflowInfo();
  const base = { name: registered.name, version: registered.version };
  const plan = await io.planGate({
    ...base,
    gate: spec.gate,
    candidate: { test: scoredSplit(run.spec, run.sample), predictions: run.evaluation.predictions },
  });
  const candidatePredictions =
    plan.candidatePredictions ??
    (
      await run.gpu.evaluate({
        task: run.task,
        checkpoint: run.training.checkpoint,
        test: plan.evalSet,
        train: run.sample.train,
        evaluate: spec.evaluate,
        backend: spec.student.backend,
      })
    ).predictions;
  const teacher = await io.teacherOnEvalSet({
    teacher: spec.teacher,
    task: run.task,
    dataDir: spec.data.kind === 'reference' ? spec.data.dir : undefined,
    evalSet: plan.evalSet,
  });
  const decided = await io.decideGate({
    ...base,
    workflowId,
    runId,
    gate: spec.gate,
    plan,
    candidatePredictions,
    teacher: teacher.measured
      ? { accuracy: teacher.accuracy, predictions: teacher.predictions, model: teacher.model }
      : { unmeasured: teacher.reason },
    baselineFrom: { task: run.task, train: run.sample.train },
  });
  return { plan, decided };
}

/** Wait durably for a person's decision; at the deadline, apply the spec's timeout policy as the decision. */
async function awaitApproval(
  run: GateRun,
  policy: NonNullable<GateSpec['approval']>,
  alias: string
): Promise<Decision> {
  const { progress } = run;
  const timeoutMs = policy.timeoutSeconds * 1000;
  progress.awaitingApproval = {
    name: run.registered.name,
    version: run.registered.version,
    alias,
    deadline: new Date(Date.now() + timeoutMs).toISOString(),
  };
  run.attributes.outcome('awaiting-approval');
  try {
    const decision = await run.approvals.wait(timeoutMs);
    if (decision) return decision;
    return {
      kind: policy.onTimeout === 'promote' ? 'approve' : 'reject',
      version: run.registered.version,
      identity: `approval-timeout (${policy.onTimeout})`,
      comment: `no decision within ${policy.timeoutSeconds} s: the spec's timeout policy is ${policy.onTimeout}`,
    };
  } finally {
    delete progress.awaitingApproval;
  }
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
    ...(evaluation.baselines ? { baselines: evaluation.baselines } : {}),
    teacherAccuracy: validation?.teacherAccuracy,
    backend: training.backend,
    manifestUri: registered.manifestUri,
    checkpointUri: registered.checkpointUri,
    registryKey: registered.key,
  };
}
