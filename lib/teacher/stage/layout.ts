/**
 * Where the teacher stage keeps things in the store. All keys derive from the plan and the teacher's identity, so
 * any attempt of any step finds them without being told:
 * - the plan: a content-addressed JSON artifact ({@link PlanDoc}), and one JSONL artifact per shard's examples;
 * - `teacher/journal/<shardKey>/…jsonl`: every finished call, appended as it finishes (see `lib/teacher/journal.ts`);
 * - `teacher/shards/<shardKey>.json`: a finished shard's responses artifact and figures ({@link ShardDone});
 * - `teacher/batches/<shardKey>/<round>.json`: which calls a batch-mode round submitted ({@link BatchRecord});
 * - `teacher/attempts/<shardKey>/<launch>/…json`: one mark per attempt of a direct-mode launch with a budget, so a
 *   retry sets aside what a dead attempt's calls in flight may have cost (see `accounting.ts`);
 * - `teacher/pauses/<endpoint>.json`: when a 429 told a shard to wait, for every shard of that endpoint
 *   (see `shared-pause.ts`);
 * - `teacher/tails/<shardKey>/<run>.json`: how many slots a shard kept when it handed the rest of its share on to
 *   the next shard of that run of a stage ({@link ShardTailMark}), so that its retries keep within them;
 * - `cache/teacher/<promptHash>.json`: the cross-run response cache, keyed by model, prompt and sampling parameters
 *   (see `teacherCacheKey` in `lib/teacher/types.ts`).
 *
 * A shard key is the hash of the teacher's identity and the shard file's hash: the same examples asked of the same
 * teacher the same way land on the same journal and done key, whichever run or stage planned them.
 */
import type { TaskKind } from '../../data/types';
import { canonicalJson, sha256Hex, type ArtifactRef, type ArtifactStore } from '../../store/artifact-store';
import { templateHash } from '../templates';
import type { TeacherShardResult, TeacherSpec } from './types';

/** What the plan artifact holds. */
export interface PlanDoc {
  version: 1;
  task: TaskKind;
  /** sha256 of everything about the teacher that decides its answers: model, sampling, samples, template. */
  identity: string;
  samples: number;
  examples: number;
  shards: { ref: ArtifactRef; examples: number }[];
}

/** One shard's finished output, under {@link doneKey}. */
export interface ShardDone {
  responses: ArtifactRef;
  result: TeacherShardResult;
  stageId: string;
}

/** What one batch-mode round sent, under {@link batchKey}: collection tells the unanswered calls by it. */
export interface BatchRecord {
  batchId: string;
  /** The `customId`s (`<example>.<sample>`) submitted. */
  calls: string[];
  /** Calls left out because the budget did not cover them. */
  notSent: number;
}

/** The key of one shard's journal, done record and batches: stable for the same examples and the same teacher. */
export const shardKeyOf = (identity: string, shard: ArtifactRef): string => sha256Hex(`${identity}\n${shard.sha256}`);
/** Prefix (ending in `/`) of the shard's journal segments. */
export const journalPrefix = (shardKey: string): string => `teacher/journal/${shardKey}/`;
/** Key of the shard's {@link ShardDone} record. */
export const doneKey = (shardKey: string): string => `teacher/shards/${shardKey}.json`;
/** What a shard that handed its free slots on kept, under {@link tailKey}. */
export interface ShardTailMark {
  slots: number;
}

/** Key of the {@link ShardTailMark} a shard writes in one run of a stage (`scope`: its workflow id and run id). */
export const tailKey = (shardKey: string, scope: string): string =>
  `teacher/tails/${shardKey}/${sha256Hex(scope).slice(0, 32)}.json`;
/** Key of the {@link BatchRecord} of one round of batch submission. */
export const batchKey = (shardKey: string, round: number): string => `teacher/batches/${shardKey}/${round}.json`;

/**
 * The teacher's identity (sha256 of the model name it is recorded under, the sampling parameters that decide its
 * answers, the samples per example and the prompt template), and the samples per example.
 */
export function identityOf(spec: TeacherSpec, task: TaskKind, model: string): { identity: string; samples: number } {
  const samples = spec.kind === 'replay' ? 1 : spec.samples;
  const sampling = spec.kind === 'replay' ? {} : { temperature: spec.temperature, maxTokens: spec.maxTokens };
  const identity = sha256Hex(canonicalJson({ task, model, sampling, samples, template: templateHash(task) }));
  return { identity, samples };
}

/** Reads the plan artifact. */
export function readPlan(store: ArtifactStore, plan: ArtifactRef): Promise<PlanDoc> {
  return store.getJson<PlanDoc>(plan);
}

/** Writes a JSON record under a plain key (canonical, so equal records are equal bytes). */
export async function writeKeyJson(store: ArtifactStore, key: string, value: unknown): Promise<void> {
  await store.putKey(key, canonicalJson(value), { contentType: 'application/json' });
}
