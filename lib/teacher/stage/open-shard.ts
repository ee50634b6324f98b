/**
 * A shard as every step that works on it sees it: its plan entry, examples and journal when opened, and its
 * figures (and, once finished, its folded responses under the done key) when the step is over.
 */
import { parseCompletion } from '../../data/parse';
import type { TaskKind } from '../../data/types';
import { InputError } from '../../errors';
import type { ArtifactStore } from '../../store/artifact-store';
import { costOf } from '../budget';
import { Journal } from '../journal';
import { foldShard, indexRecords, type CallRecord, type ShardExample } from '../shard';
import { journalRateLimit, journalUsage, priceOf } from './accounting';
import { doneKey, journalPrefix, readPlan, shardKeyOf, writeKeyJson, type PlanDoc, type ShardDone } from './layout';
import type { TeacherShardInput, TeacherShardResult } from './types';

/** One shard's plan entry, examples and journal, opened for a step. */
export interface OpenShard {
  doc: PlanDoc;
  shardKey: string;
  examples: ShardExample[];
  journal: Journal<CallRecord>;
  /** Every record in the journal when it was opened. */
  prior: CallRecord[];
}

/** The counts a step reports for a shard; the rest of its figures come from the journal. */
export type ShardCounts = Pick<TeacherShardResult, 'resumed' | 'cached' | 'sent' | 'failed' | 'budgetStopped'>;

/** The label a completion parses to, for the self-consistency vote. */
export const labeller =
  (task: TaskKind) =>
  (completion: string): string | undefined => {
    const parsed = parseCompletion(task, completion);
    return parsed.ok ? parsed.label : undefined;
  };

/**
 * Opens shard `input.index` of the plan, or returns its result without opening it when it is already finished:
 * to a retry of the step that finished it, the same result; to another stage, the result with nothing charged,
 * unless some calls failed (those are tried again, from the journal, which keeps every success).
 * @throws InputError when the plan has no such shard.
 */
export async function openShard(
  store: ArtifactStore,
  input: TeacherShardInput
): Promise<OpenShard | TeacherShardResult> {
  const doc = await readPlan(store, input.plan);
  const shard = doc.shards[input.index];
  if (!shard) throw new InputError(`shard ${input.index} is not in the plan (${doc.shards.length} shards)`, 'index');
  const shardKey = shardKeyOf(doc.identity, shard.ref);
  const done = await store.getKeyJson<ShardDone>(doneKey(shardKey));
  if (done) {
    if (done.stageId === input.stageId) return done.result;
    if (done.result.failed === 0) {
      const none = { promptTokens: 0, completionTokens: 0 };
      return { ...done.result, resumed: done.result.calls, cached: 0, sent: 0, usage: none, costUsd: 0 };
    }
  }
  const [examples, { journal, records: prior }] = await Promise.all([
    store.getJsonl<ShardExample>(shard.ref),
    Journal.open<CallRecord>(store, journalPrefix(shardKey)),
  ]);
  return { doc, shardKey, examples, journal, prior };
}

/** Whether {@link openShard} found the shard finished (and returned its result) rather than opening it. */
export function isFinished(open: OpenShard | TeacherShardResult): open is TeacherShardResult {
  return !('journal' in open);
}

/**
 * A shard's figures from its journal as it now stands; when `finish` says so, its responses are folded and stored
 * under its done key, and later attempts return them without a call.
 */
export async function shardOutcome(
  store: ArtifactStore,
  input: TeacherShardInput,
  open: OpenShard,
  counts: ShardCounts,
  finish: (records: Map<string, CallRecord>) => boolean
): Promise<TeacherShardResult> {
  const { doc, shardKey, examples } = open;
  // What was read at open plus what this attempt wrote: the whole journal, without reading it back.
  const records = [...open.prior, ...open.journal.written];
  const usage = journalUsage(records, input.stageId);
  const rateLimit = journalRateLimit(records, input.stageId);
  const index = indexRecords(records);
  const calls = examples.length * doc.samples;
  const notSent = calls - index.size;
  const complete = finish(index);
  const result: TeacherShardResult = {
    index: input.index,
    complete,
    ...counts,
    budgetStopped: counts.budgetStopped && !complete,
    examples: examples.length,
    calls,
    notSent,
    usage,
    costUsd: costOf(usage, priceOf(input.stage.teacher)),
    rateLimit,
  };
  if (complete) {
    const responses = foldShard(examples, doc.samples, index, labeller(doc.task));
    const done: ShardDone = { responses: await store.putJsonl(responses), result, stageId: input.stageId };
    await writeKeyJson(store, doneKey(shardKey), done);
  }
  return result;
}
