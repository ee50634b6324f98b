/**
 * What each stage returns. These cross Temporal, so they hold references and small summaries only: never data.
 */
import type { ArtifactRef } from '../lib/store/artifact-store';

export interface SampleResult {
  /** sha256 over the full loaded splits, before subsampling: identifies the dataset version. */
  datasetHash: string;
  /** sha256 over the sampled split references: identifies exactly what this run trained and tested on. */
  sampleHash: string;
  /** Human-readable origin, e.g. `reference:/data/cqa` or `demo(seed=7,size=1500)`. */
  source: string;
  train: ArtifactRef;
  valid: ArtifactRef;
  test: ArtifactRef;
  counts: { train: number; valid: number; test: number };
}

export interface TeacherSummary {
  kind: 'openai' | 'replay' | 'scripted';
  model: string;
  /** sha256 of the prompt template (exemplars and format) that produced the completions. */
  templateHash: string;
  url?: string;
}

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

export interface ValidateRationalesResult {
  /** JSONL of training records `{ id, input, goldLabel, teacherLabel, rationale, votes? }`. */
  train: ArtifactRef;
  valid: ArtifactRef;
  /** JSON report: kept, the filters applied, dropped by reason with examples, teacher accuracy. */
  report: ArtifactRef;
  kept: number;
  dropped: Record<string, number>;
  /** Share of examples whose parsed teacher label matches gold (unparsable counts as wrong). */
  teacherAccuracy?: number;
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

export interface EvaluateResult {
  /** JSONL of `{ id, input, gold, prediction, correct }`. */
  predictions: ArtifactRef;
  metrics: ArtifactRef;
  accuracy: number;
  correct: number;
  total: number;
  majorityBaseline: { label: string; accuracy: number };
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
