/**
 * Who spent what. Journal records carry the stage execution that made them, so a stage is charged only for its own
 * calls, and a shard launched again (after a crash, or when budget frees up) is charged for what its earlier
 * attempts spent but never reported.
 */
import { randomBytes } from 'node:crypto';

import { canonicalJson, sha256Hex, type ArtifactStore } from '../../store/artifact-store';
import { Budget, costOf, type Price, type Usage } from '../budget';
import { indexRecords, type CallRecord } from '../shard';
import type { RateLimitWaits } from '../types';
import { writeKeyJson } from './layout';
import type { TeacherShardInput, TeacherSpec } from './types';

/** The spec's price per million tokens; replay has none (it costs nothing). */
export function priceOf(spec: TeacherSpec): Price | undefined {
  return spec.kind === 'replay' ? undefined : spec.price;
}

/** Tokens the records of one stage execution spent. */
export function journalUsage(records: readonly CallRecord[], stageId: string): Usage {
  const usage = { promptTokens: 0, completionTokens: 0 };
  for (const r of records) {
    if (r.stage !== stageId) continue;
    usage.promptTokens += r.usage?.promptTokens ?? 0;
    usage.completionTokens += r.usage?.completionTokens ?? 0;
  }
  return usage;
}

/** Rate-limit waits of the records of one stage execution (see {@link RateLimitWaits}). */
export function journalRateLimit(records: readonly CallRecord[], stageId: string): RateLimitWaits {
  const waits = { refusals: 0, waitMs: 0 };
  for (const r of records) {
    if (r.stage !== stageId || !r.rateLimit) continue;
    waits.refusals += r.rateLimit.refusals;
    waits.waitMs += r.rateLimit.waitMs;
  }
  return waits;
}

/** Calls an earlier attempt finished with a completion. */
export function successes(records: readonly CallRecord[]): number {
  let n = 0;
  for (const r of indexRecords(records).values()) if (r.error === undefined) n++;
  return n;
}

/**
 * The budget of this launch of a shard. What earlier attempts of this launch spent (they died before reporting it)
 * comes out of it: the journal's spend by this stage, less what earlier launches reported (`accountedUsd`).
 */
export function budgetFor(input: TeacherShardInput, prior: readonly CallRecord[]): Budget {
  const price = priceOf(input.stage.teacher);
  const unaccounted = Math.max(0, costOf(journalUsage(prior, input.stageId), price) - (input.accountedUsd ?? 0));
  return new Budget(input.budgetUsd === undefined ? undefined : Math.max(0, input.budgetUsd - unaccounted), price);
}

/**
 * Where the attempts of one launch of a shard leave their marks: a launch is the workflow's (stage, shard, budget,
 * what it had counted), and every retry of its activity gets the same input.
 */
export function attemptsPrefix(shardKey: string, input: TeacherShardInput): string {
  const launch = { stage: input.stageId, budget: input.budgetUsd ?? null, accounted: input.accountedUsd ?? 0 };
  return `teacher/attempts/${shardKey}/${sha256Hex(canonicalJson(launch))}/`;
}

/**
 * The budget of one attempt of a direct-mode launch. Besides what earlier attempts journalled ({@link budgetFor}),
 * an attempt that died (a killed worker, a failed step) may have had calls in flight that the provider processed
 * and billed but nobody journalled: at most `inFlightUsd`, two calls per slot at a call's worst case. So each attempt
 * leaves a mark under the launch's prefix before it sends anything, and sets that much aside for every mark an
 * earlier attempt left. Conservative (an earlier attempt's finished calls are counted twice), never short.
 */
export async function attemptBudget(
  store: ArtifactStore,
  shardKey: string,
  input: TeacherShardInput,
  prior: readonly CallRecord[],
  inFlightUsd: number
): Promise<Budget> {
  const budget = budgetFor(input, prior);
  if (budget.limitUsd === undefined) return budget;
  const prefix = attemptsPrefix(shardKey, input);
  const earlier = (await store.listKeys(prefix)).length;
  const mark = `${prefix}${Date.now().toString(36)}-${randomBytes(4).toString('hex')}.json`;
  await writeKeyJson(store, mark, { inFlightUsd });
  return new Budget(Math.max(0, budget.limitUsd - earlier * inFlightUsd), budget.price);
}
