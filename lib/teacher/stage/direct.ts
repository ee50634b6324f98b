/** Direct mode: one shard's calls made one by one (concurrently), each journalled as it finishes. */
import { costOf, estimatePromptTokens } from '../budget';
import { runShard, type RunShardOptions } from '../shard';
import type { RetryReason } from '../retry';
import { buildPrompt } from '../templates';
import { attemptBudget, priceOf } from './accounting';
import { shardTeacher, type StageDeps } from './endpoint';
import { tailKey, writeKeyJson, type ShardTailMark } from './layout';
import { isFinished, labeller, openShard, shardOutcome, type OpenShard } from './open-shard';
import type { TeacherShardInput, TeacherShardResult } from './types';

/** How the caller follows and stops a shard. */
export interface PromptShardHooks {
  /** Aborts the calls in flight and stops the shard (it throws the signal's reason). */
  signal?: AbortSignal;
  /** Calls finished (journalled, cached or resumed) out of the shard's total, first reported before any call. */
  onProgress?: (step: number, total: number) => void;
  /** Calls as they end, by outcome, with their usage (see {@link RunShardOptions.onCalls}): for metrics. */
  onCalls?: RunShardOptions['onCalls'];
  /** Each retry of a call, with why: for metrics. */
  onRetry?: (reason: RetryReason) => void;
  /**
   * Told when the shard's slots start to free up, with how many it keeps (see {@link RunShardOptions.onTail}), once
   * its retries are bound to them; only for a shard launched with `handoff`.
   */
  onTail?: (slots: number) => void;
  /** After the tail, each slot as it frees up for good (see {@link RunShardOptions.onFreed}); with `handoff` only. */
  onFreed?: (slots: number) => void;
  /**
   * The run of the stage this attempt belongs to (its workflow id and run id), which keys the tail's mark: a re-run of
   * the stage under the same workflow id must not find the marks of the run before. Default: `input.stageId`.
   */
  tailScope?: string;
  /** Slots of the shard's share that the shard it was started after still holds (see `TeacherShardInput.after`). */
  lent?: RunShardOptions['lent'];
}

/**
 * Runs one shard: every call not already journalled (by an earlier attempt, after a crash) or cached (by an earlier
 * run) is made, and journalled as it finishes. A finished shard writes its responses and figures under a key of
 * its own, so a retry after that point returns them without a call.
 */
export async function promptShard(
  deps: StageDeps,
  input: TeacherShardInput,
  hooks: PromptShardHooks = {}
): Promise<TeacherShardResult> {
  const open = await openShard(deps.store, input);
  if (isFinished(open)) return open;
  const { doc, examples, journal, prior } = open;
  const teacher = await shardTeacher(deps, input, { onRetry: hooks.onRetry });
  const budget = await attemptBudget(deps.store, open.shardKey, input, prior, inFlightWorstUsd(input, open));
  const tail = input.handoff
    ? await tailOf(deps, tailKey(open.shardKey, hooks.tailScope ?? input.stageId), hooks.onTail)
    : undefined;
  const { stats } = await runShard({
    examples,
    messagesFor: (ex) => buildPrompt(doc.task, ex.input),
    teacher,
    samples: doc.samples,
    concurrency: tail?.kept === undefined ? input.concurrency : Math.min(input.concurrency, tail.kept),
    ...(tail?.kept === undefined ? {} : { keepFailures: true }),
    ...(tail?.onTail ? { onTail: tail.onTail } : {}),
    ...(tail && hooks.onFreed ? { onFreed: hooks.onFreed } : {}),
    ...(hooks.lent ? { lent: hooks.lent } : {}),
    journal,
    prior,
    stageId: input.stageId,
    budget,
    labelOf: labeller(doc.task),
    signal: hooks.signal,
    onProgress: hooks.onProgress,
    onCalls: hooks.onCalls,
  });
  // Every call has a record (failures included: they are data about the teacher, and are retried by a re-run).
  return shardOutcome(deps.store, input, open, stats, (index) => index.size === stats.calls);
}

/**
 * A shard that hands its free slots on: the slots an earlier attempt kept, when one already did (this attempt stays
 * within them, and says so again in case that attempt died before it could), else the hook that marks what this
 * attempt keeps in the store before telling the stage. The mark comes first: once the stage has heard, the next shard
 * may be using the rest, and a retry of this one, on any worker, must find the bound.
 */
async function tailOf(
  deps: StageDeps,
  key: string,
  tell: ((slots: number) => void) | undefined
): Promise<{ kept?: number; onTail?: (slots: number) => void }> {
  const mark = await deps.store.getKeyJson<ShardTailMark>(key);
  if (mark) {
    tell?.(mark.slots);
    return { kept: mark.slots };
  }
  if (!tell) return {};
  return {
    onTail: (slots) => {
      // Not marked, not told: the stage then starts the next shard when this one ends, as without a handoff.
      writeKeyJson(deps.store, key, { slots } satisfies ShardTailMark).then(
        () => tell(slots),
        () => undefined
      );
    },
  };
}

/**
 * What this attempt's calls could cost at most without a record in the journal, were it to die now: per slot, one
 * answer still being written and one call in flight (shard.ts), each at the worst case of the shard's calls.
 */
function inFlightWorstUsd(input: TeacherShardInput, { doc, examples }: Pick<OpenShard, 'doc' | 'examples'>): number {
  const spec = input.stage.teacher;
  const price = priceOf(spec);
  if (input.budgetUsd === undefined || !price || spec.kind === 'replay') return 0;
  let longest = 0;
  for (const ex of examples) longest = Math.max(longest, estimatePromptTokens(buildPrompt(doc.task, ex.input)));
  return 2 * input.concurrency * costOf({ promptTokens: longest, completionTokens: spec.maxTokens }, price);
}
