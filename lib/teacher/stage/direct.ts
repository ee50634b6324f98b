/** Direct mode: one shard's calls made one by one (concurrently), each journalled as it finishes. */
import { costOf, estimatePromptTokens } from '../budget';
import { runShard, type RunShardOptions } from '../shard';
import type { RetryReason } from '../retry';
import { buildPrompt } from '../templates';
import { attemptBudget, priceOf } from './accounting';
import { shardTeacher, type StageDeps } from './endpoint';
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
  const { stats } = await runShard({
    examples,
    messagesFor: (ex) => buildPrompt(doc.task, ex.input),
    teacher,
    samples: doc.samples,
    concurrency: input.concurrency,
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
