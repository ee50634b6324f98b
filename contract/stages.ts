/**
 * What every activity takes and returns, and the `Activities` interface the workflows proxy. These cross Temporal,
 * so they hold references and small summaries only, never data. Types only: nothing here runs.
 *
 * A type that a lib function produces is defined beside that function (lib/ cannot import the contract) and
 * re-exported here, so it exists once and every layer above lib/ imports it from one place.
 */
import type { ArtifactRef } from '../lib/store/artifact-store';
import type { PipelineSpec, PipelineSpecInput, TaskKind } from '../lib/pipeline/spec';
import type { BatchStatus } from '../lib/teacher/batch';
import type { SampleResult } from '../lib/data/sample';
import type { ValidateRationalesInput, ValidateRationalesResult } from '../lib/data/rationales';
import type { ResolvedInit, TrainStudentInput, TrainStudentResult } from '../lib/student/train-stage';
import type { EvaluateInput, EvaluateResult } from '../lib/student/evaluate-split';
import type { TrivialBaselines } from '../lib/data/baselines';
import type { RegisterModelInput, RegisterModelResult } from '../lib/registry/run';
import type {
  ApprovalInput,
  DecideGateInput,
  GateOutcome,
  GatePlan,
  GatePlanInput,
  PromoteInput,
  PromotionSummary,
} from '../lib/registry/gate-stage';
import type { TeacherEvalInput, TeacherEvalResult } from '../lib/teacher/eval-set';
import type { RefreshCheck, RefreshCheckInput, UnchangedVersion } from '../lib/registry/refresh';
import type { ScheduleTrigger } from '../lib/registry/registry';
import type {
  FinishTeacherInput,
  FinishTeacherResult,
  TeacherBatchCollectInput,
  TeacherBatchInput,
  TeacherBatchPollInput,
  TeacherBatchSubmitted,
  TeacherPlan,
  TeacherShardInput,
  TeacherShardResult,
  TeacherStageInput,
} from '../lib/teacher/stage/types';
import type { SweepDefinition, SweepPlan, SweepCellPlan } from '../lib/sweep/plan';
import type { FinishSweepInput, SweepArtifacts } from '../lib/sweep/finish';
import type { SweepCell, SweepMeta } from '../lib/sweep/summary';
import type { RunReportInput, RunReportResult } from '../lib/report/run-report';

export type { ArtifactRef, PipelineSpec, TaskKind, BatchStatus };
// sweeps (workflows/sweep.ts)
export type { SweepDefinition, SweepPlan, SweepCellPlan, FinishSweepInput, SweepArtifacts, SweepCell, SweepMeta };
// sample
export type { SampleResult };
// promptTeacher: the teacherStage workflow's steps (lib/teacher/stage/types.ts)
export type { PromptTeacherResult, TeacherSpec, TeacherSummary, TeacherStageFigures } from '../lib/teacher/stage/types';
export type {
  TeacherStageInput,
  TeacherPlan,
  TeacherShardInput,
  TeacherShardResult,
  TeacherBatchInput,
  TeacherBatchSubmitted,
  TeacherBatchPollInput,
  TeacherBatchCollectInput,
  FinishTeacherInput,
  FinishTeacherResult,
};
// validateRationales, trainStudent, evaluate, registerModel
export type { ValidateRationalesInput, ValidateRationalesResult };
export type { TrainStudentInput, TrainStudentResult, ResolvedInit };
export type { EvaluateInput, EvaluateResult };
export type { RegisterModelInput, RegisterModelResult };
// gate
export type { GatePlanInput, GatePlan, DecideGateInput, GateOutcome, ApprovalInput, PromoteInput, PromotionSummary };
export type { TeacherEvalInput, TeacherEvalResult };
// refresh
export type { RefreshCheck, RefreshCheckInput, UnchangedVersion, ScheduleTrigger };
// the run report, written when a run ends (and as far as it got when it fails)
export type { RunReportInput, RunReportResult };

/** What a finished run returns: small, and enough for a CLI to print and a caller to find everything else. */
export interface PipelineResult {
  name: string;
  version: number;
  accuracy: number;
  correct: number;
  total: number;
  majorityBaseline: number;
  /** Every trivial baseline of the task, chosen on train (absent in runs from before they existed). */
  baselines?: TrivialBaselines;
  teacherAccuracy?: number;
  backend: string;
  workflowId: string;
  runId: string;
  manifestUri: string;
  checkpointUri: string;
  registryKey: string;
  /** What the promotion gate decided (absent when the gate is off, and in runs from before it existed). */
  promotion?: PromotionSummary;
  /**
   * Set when a scheduled refresh found the version its gate alias names trained on this very spec and data: nothing
   * was trained, and the fields above describe that version.
   */
  unchanged?: { alias: string; reason: string };
  /** Set when a schedule started the run. */
  trigger?: ScheduleTrigger;
  /** The run's HTML report (`runs/<workflowId>/report.html`; absent in runs from before reports, or when it failed). */
  reportUri?: string;
}

/**
 * Every activity a worker registers, by the name Temporal schedules it under. The names are part of recorded
 * histories: renaming one breaks the replay of every run started before the rename.
 */
export interface Activities {
  /** Validate a spec and fill its defaults: the pipeline's first step, a local activity. Bad: `InputError`. */
  parseSpec(input: PipelineSpecInput): Promise<PipelineSpec>;
  /** Load, subsample and split the dataset; write the splits to the store. */
  sample(spec: PipelineSpec): Promise<SampleResult>;
  /** Teacher stage: split train and valid examples into shards; nothing is called yet. */
  planTeacher(input: TeacherStageInput): Promise<TeacherPlan>;
  /** Teacher stage: few-shot chain-of-thought prompts for one shard, every finished call journalled. */
  teacherShard(input: TeacherShardInput): Promise<TeacherShardResult>;
  /** Batch mode: upload one shard's calls as a provider batch (idempotent). */
  submitTeacherBatch(input: TeacherBatchInput): Promise<TeacherBatchSubmitted>;
  /** Batch mode: one status check, between durable timers. */
  pollTeacherBatch(input: TeacherBatchPollInput): Promise<BatchStatus>;
  /** Batch mode: journal a finished batch's answers exactly as direct calls are journalled. */
  collectTeacherBatch(input: TeacherBatchCollectInput): Promise<TeacherShardResult>;
  /** Teacher stage: assemble every shard's responses into the one artifact the validate stage reads. */
  finishTeacher(input: FinishTeacherInput): Promise<FinishTeacherResult>;
  /** Parse completions into rationales and labels; report what was dropped and why. */
  validateRationales(input: ValidateRationalesInput): Promise<ValidateRationalesResult>;
  /** `student.init: NAME@REF`: resolve the registered version once, before training. */
  resolveInit(ref: string): Promise<ResolvedInit>;
  /** Refresh: is the version the gate alias names trained on this spec and data? If so, one audit record says so. */
  checkRefresh(input: RefreshCheckInput): Promise<RefreshCheck>;
  /** `student.warmStart`: the version it names now, or null when none exists yet (train from scratch). */
  resolveWarmStart(ref: string): Promise<ResolvedInit | null>;
  /** Train the student (GPU queue). */
  trainStudent(input: TrainStudentInput): Promise<TrainStudentResult>;
  /** Decode and score the test split (GPU queue). */
  evaluate(input: EvaluateInput): Promise<EvaluateResult>;
  /** Write the manifest and append a model version with its lineage. */
  registerModel(input: RegisterModelInput): Promise<RegisterModelResult>;
  /** Gate: find the champion the alias names and the frozen evaluation set to compare on (reads only). */
  planGate(input: GatePlanInput): Promise<GatePlan>;
  /** Gate: the teacher's accuracy on the frozen evaluation set, where asking it costs nothing (replay, scripted). */
  teacherOnEvalSet(input: TeacherEvalInput): Promise<TeacherEvalResult>;
  /** Gate: decide on the paired per-example outcomes; record the decision on the candidate. */
  decideGate(input: DecideGateInput): Promise<GateOutcome>;
  /** Gate: a person's approval or rejection (or the timeout policy's), in the audit log. */
  recordApproval(input: ApprovalInput): Promise<{ seq: number }>;
  /** Gate: move the alias to the candidate if it still names the champion it was compared with. */
  promoteVersion(input: PromoteInput): Promise<{ previous: number | null }>;
  /** The run's self-contained HTML report, at the end of the run or, best effort, when it fails. */
  writeRunReport(input: RunReportInput): Promise<RunReportResult>;
  /** Sweep: every cell's spec, name and workflow id; the cells a registered run already answered (reads only). */
  planSweep(def: SweepDefinition): Promise<SweepPlan>;
  /** Sweep: store the table (JSON, Markdown) and the accuracy-vs-fraction plot, and the record naming them. */
  finishSweep(input: FinishSweepInput): Promise<SweepArtifacts>;
}
