/**
 * Who spent what. Journal records carry the stage execution that made them, so a stage is charged only for its own
 * calls, and a shard launched again (after a crash, or when budget frees up) is charged for what its earlier
 * attempts spent but never reported.
 */
import { Budget, costOf, type Price, type Usage } from '../budget';
import { indexRecords, type CallRecord } from '../shard';
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
