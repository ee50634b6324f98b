/**
 * The one place activity dependencies are wired. Workers call `createActivities(deps)`; the workflow imports the
 * type only (`proxyActivities<Activities>`), so none of this reaches the workflow bundle.
 */
import type { Client } from '@temporalio/client';
import type { ArtifactStore } from '../lib/store/artifact-store';
import type { PipelineSpec } from '../lib/pipeline/spec';
import { sampleStage } from './sample';
import {
  collectTeacherBatchActivity,
  finishTeacherStage,
  planTeacherStage,
  pollTeacherBatchActivity,
  submitTeacherBatchActivity,
  teacherShardActivity,
  type ScriptedTeacherProvider,
  type TeacherBatchInput,
  type TeacherShardInput,
  type TeacherStageInput,
} from './teacher-stage';
import type { ArtifactRef } from '../lib/store/artifact-store';
import { validateRationalesStage, type ValidateRationalesInput } from './validate-rationales';
import { trainStudentStage, type TrainStudentInput } from './train-student';
import { evaluateStage, type EvaluateInput } from './evaluate';
import { registerModelStage, type RegisterModelInput } from './register-model';

export interface ActivityDeps {
  store: ArtifactStore;
  /** Used to signal step-level progress to the workflow; optional (tests may leave it out). */
  client?: Client;
  /** Starts (once) the local OpenAI-compatible server that plays the demo's teacher. */
  scripted: ScriptedTeacherProvider;
  /** Recorded in every registered model's lineage. */
  codeVersion: string;
}

export function createActivities(deps: ActivityDeps) {
  return {
    /** Load, subsample and split the dataset; write the splits to the store. */
    sample: (spec: PipelineSpec) => sampleStage(deps.store, spec),
    /** Teacher stage (run by the `teacherStage` workflow): split train and valid examples into shards. */
    planTeacher: (input: TeacherStageInput) => planTeacherStage(deps, input),
    /** Few-shot chain-of-thought prompts for one shard, every finished call journalled. */
    teacherShard: (input: TeacherShardInput) => teacherShardActivity(deps, input),
    /** Batch mode: upload one shard's calls as a provider batch (idempotent). */
    submitTeacherBatch: (input: TeacherBatchInput) => submitTeacherBatchActivity(deps, input),
    /** Batch mode: one status check, between durable timers. */
    pollTeacherBatch: (input: { stage: TeacherStageInput; batchId: string }) => pollTeacherBatchActivity(deps, input),
    /** Batch mode: journal a finished batch's answers exactly as direct calls are journalled. */
    collectTeacherBatch: (input: TeacherBatchInput & { batchId: string; lastRound: boolean }) =>
      collectTeacherBatchActivity(deps, input),
    /** Assemble every shard's responses into the one artifact the validate stage reads. */
    finishTeacher: (input: { plan: ArtifactRef }) => finishTeacherStage(deps, input),
    /** Parse completions into rationales and labels; report what was dropped and why. */
    validateRationales: (input: ValidateRationalesInput) => validateRationalesStage(deps.store, input),
    /** Train the student (GPU queue). */
    trainStudent: (input: TrainStudentInput) => trainStudentStage(deps, input),
    /** Decode and score the test split (GPU queue). */
    evaluate: (input: EvaluateInput) => evaluateStage(deps, input),
    /** Write the manifest and append a model version with its lineage. */
    registerModel: (input: RegisterModelInput) => registerModelStage(deps, input),
  };
}

export type Activities = ReturnType<typeof createActivities>;
