/**
 * What the teacher stage's steps take and return. These cross Temporal as the `promptTeacher` activities' inputs
 * and results (`contract/stages.ts` re-exports them), so they hold references and small figures only, never data.
 */
import type { TaskKind } from '../../data/types';
import type { ArtifactRef } from '../../store/artifact-store';
import type { TeacherOptions } from '../options';
import type { ShardStats } from '../shard';
import type { RateLimitWaits } from '../types';

/** The spec's teacher section, every default filled in. */
export type TeacherSpec = TeacherOptions;

export interface TeacherSummary {
  kind: 'openai' | 'replay' | 'scripted';
  model: string;
  /** sha256 of the prompt template (exemplars and format) that produced the completions. */
  templateHash: string;
  url?: string;
}

export interface TeacherStageInput {
  task: TaskKind;
  teacher: TeacherSpec;
  /** Where replay finds recorded completions when the spec does not name a folder. */
  dataDir?: string;
  train: ArtifactRef;
  valid: ArtifactRef;
}

export interface TeacherPlan {
  /** JSON: the shard files and what the shards share. */
  plan: ArtifactRef;
  shards: number;
  examples: number;
  /** examples × samples. */
  calls: number;
  teacher: TeacherSummary;
}

export interface TeacherShardInput {
  stage: TeacherStageInput;
  /**
   * The teacher-stage execution (its workflow id, stable across continue-as-new). Journal records carry it, so each
   * stage counts only what it spent itself, and a shard another stage finished is reused without being charged.
   */
  stageId: string;
  plan: ArtifactRef;
  index: number;
  /** This shard's share of the stage's concurrency and rate limits (the workflow divides them). */
  concurrency: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  /** Dollars this launch of the shard may spend; absent for no budget. */
  budgetUsd?: number;
  /** Dollars of this shard's journal that earlier launches already reported (and the workflow counted). */
  accountedUsd?: number;
  /**
   * Report the moment this shard's slots start to free up (`teacherShardTailSignal`), so the stage can start the
   * next shard in them. Set only where the stage hands slots on: no budget, no rate limits, direct calls.
   */
  handoff?: boolean;
  /**
   * `slots` of this shard's `concurrency` are still held by shard `shard`, whose tail this launch was started in:
   * they are this shard's once that shard's activity has ended, and not before.
   */
  after?: { shard: number; slots: number };
}

/** A shard's figures (see {@link ShardStats}), except that `usage` is everything this stage's records spent on it. */
export interface TeacherShardResult extends ShardStats {
  index: number;
  /** Waits on rate limits by this stage's calls of the shard, all launches (absent in results of older versions). */
  rateLimit?: RateLimitWaits;
  /** False when the budget stopped the shard before every call was made (a later launch may resume it). */
  complete: boolean;
  costUsd: number;
}

/** Batch mode: which round of submission this is (a round resubmits what an expired or failed batch left undone). */
export interface TeacherBatchInput extends TeacherShardInput {
  round: number;
}

/** Batch mode, after submission: the batch id, or the shard's result when nothing was left to send. */
export interface TeacherBatchSubmitted {
  batchId?: string;
  result?: TeacherShardResult;
}

export interface TeacherBatchPollInput {
  stage: TeacherStageInput;
  batchId: string;
}

export interface TeacherBatchCollectInput extends TeacherBatchInput {
  batchId: string;
  /** On the last round a shard is finished whatever the batch left unanswered (recorded as failures). */
  lastRound: boolean;
}

/** Per-example counts over the assembled responses (usage and cost come from the shards' journals). */
export interface TeacherStageFigures {
  total: number;
  /** Examples answered entirely from the cross-run cache. */
  cached: number;
  failed: number;
  notSent: number;
}

export interface FinishTeacherInput {
  plan: ArtifactRef;
}

export interface FinishTeacherResult extends TeacherStageFigures {
  /** JSONL, one record per train and valid example, in plan order. */
  responses: ArtifactRef;
}

/** What the whole stage returns: the responses artifact and the stage's accounting. */
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
  /** Waits on rate limits (429 refusals, and the time our limiter and the endpoint's retry-after took), direct mode. */
  rateLimit?: RateLimitWaits;
  shards: number;
  mode: 'direct' | 'batch';
  samples: number;
  teacher: TeacherSummary;
}
