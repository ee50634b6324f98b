/**
 * What every activity takes and returns, and the `Activities` interface the workflows proxy. These cross Temporal,
 * so they hold references and small summaries only, never data. Types only: nothing here runs.
 *
 * A type that a lib function produces is defined beside that function (lib/ cannot import the contract) and
 * re-exported here, so it exists once and every layer above lib/ imports it from one place.
 */
import type { ArtifactRef } from '../lib/store/artifact-store';
import type { PipelineSpec, TaskKind } from '../lib/pipeline/spec';
import type { BatchStatus } from '../lib/teacher/batch';
import type { SampleResult } from '../lib/data/sample';
import type { ValidateRationalesInput, ValidateRationalesResult } from '../lib/data/rationales';
import type { TrainStudentInput, TrainStudentResult } from '../lib/student/train-stage';
import type { EvaluateInput, EvaluateResult } from '../lib/student/evaluate-split';
import type { RegisterModelInput, RegisterModelResult } from '../lib/registry/run';
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

export type { ArtifactRef, PipelineSpec, TaskKind, BatchStatus };
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
export type { TrainStudentInput, TrainStudentResult };
export type { EvaluateInput, EvaluateResult };
export type { RegisterModelInput, RegisterModelResult };

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
