/**
 * What every activity takes and returns, and the `Activities` interface the workflows proxy. These cross Temporal,
 * so they hold references and small summaries only, never data. Types only: nothing here runs.
 */
import type { ArtifactRef } from '../lib/store/artifact-store';
import type { PipelineSpec, TaskKind } from '../lib/pipeline/spec';
import type { BatchStatus } from '../lib/teacher/batch';
import type { SampleResult } from '../lib/data/sample';
import type { EvaluateInput, EvaluateResult } from '../lib/student/evaluate-split';
import type { ValidateRationalesInput, ValidateRationalesResult } from '../lib/data/rationales';
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
  TeacherSpec,
  TeacherStageFigures,
  TeacherStageInput,
  TeacherSummary,
} from '../lib/teacher/stage/types';

// Types a lib function produces are defined beside it and re-exported here, so each exists once.
export type { ArtifactRef, PipelineSpec, TaskKind, BatchStatus, SampleResult };
export type { ValidateRationalesInput, ValidateRationalesResult, EvaluateInput, EvaluateResult };

// ---- promptTeacher (run by the teacherStage workflow) -------------------------------------------------------------

// The shapes of the teacher stage's steps are the library's own (`lib/teacher/stage/types.ts`): one definition.
export type {
  TeacherSpec,
  TeacherSummary,
  TeacherStageInput,
  TeacherPlan,
  TeacherShardInput,
  TeacherShardResult,
  TeacherBatchInput,
  TeacherBatchSubmitted,
  TeacherBatchPollInput,
  TeacherBatchCollectInput,
  TeacherStageFigures,
  FinishTeacherInput,
  FinishTeacherResult,
};

export interface PromptTeacherResult {
  /** JSONL of `{ id, completion, cached, promptHash, error?, samples?, votes?, usage? }`, one per train and valid example. */
  responses: ArtifactRef;
  /** Examples. */
  total: number;
  /** Examples answered wholly from the cross-run response cache. */
  cached: number;
  /** Examples with no completion after retries (each `error` says why). */
  failed: number;
  /** Examples never sent because the cost budget ran out. */
  notSent: number;
  /** Tokens the stage spent, failed attempts included (journalled per call, summed per shard). */
  usage: { promptTokens: number; completionTokens: number };
  /** Dollars, at the spec's prices; absent without prices. */
  costUsd?: number;
  budget?: { maxCostUsd: number; exhausted: boolean };
  /** Calls (examples × samples): made by this stage, found in a shard journal after a crash, found in the cache. */
  calls: { planned: number; sent: number; resumed: number; cached: number };
  shards: number;
  mode: 'direct' | 'batch';
  samples: number;
  teacher: TeacherSummary;
}

// ---- trainStudent -------------------------------------------------------------------------------------------------

export interface TrainStudentInput {
  student: PipelineSpec['student'];
  /** Validated rationale records, or plain examples when the method needs no teacher (standard finetuning). */
  train: ArtifactRef;
  valid: ArtifactRef;
}

export interface TrainStudentResult {
  checkpoint: ArtifactRef;
  /** JSON loss curve and run statistics. */
  trainLog: ArtifactRef;
  backend: string;
  steps: number;
  finalLoss: number;
  validLoss?: number;
  params: number;
  wallMs: number;
}

// ---- registerModel ------------------------------------------------------------------------------------------------

export interface RegisterModelInput {
  spec: PipelineSpec;
  task: TaskKind;
  workflowId: string;
  runId: string;
  sample: SampleResult;
  teacher?: PromptTeacherResult;
  validation?: ValidateRationalesResult;
  training: TrainStudentResult;
  evaluation: EvaluateResult;
}

export interface RegisterModelResult {
  name: string;
  version: number;
  /** Registry key of the version record. */
  key: string;
  manifestKey: string;
  manifestUri: string;
  checkpointUri: string;
}

// ---- the pipeline -------------------------------------------------------------------------------------------------

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
 * Every activity a worker registers, by the name Temporal schedules it under. The names are part of recorded
 * histories: renaming one breaks the replay of every run started before the rename.
 */
export interface Activities {
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
  /** Train the student (GPU queue). */
  trainStudent(input: TrainStudentInput): Promise<TrainStudentResult>;
  /** Decode and score the test split (GPU queue). */
  evaluate(input: EvaluateInput): Promise<EvaluateResult>;
  /** Write the manifest and append a model version with its lineage. */
  registerModel(input: RegisterModelInput): Promise<RegisterModelResult>;
}
