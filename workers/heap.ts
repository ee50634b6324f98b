/**
 * How far V8 lets a worker's heap grow past what the last full collection kept. By default V8 picks a factor from
 * its collector's speed, up to 4×: a teacher worker keeps ~80 MiB live, and every call's request and response objects
 * outlive two scavenges while the call is in flight, so they reach the old generation and pile up there until the
 * next full collection. Measured (`bench:teacher`, 64 calls in flight at 2 ms, filesystem store): the old space
 * swung between ~100 and ~260 MiB, peak RSS landed anywhere from 357 to 569 MiB depending on where a run caught the
 * swing, and the 10k → 100k growth read 0.02 in one run and 0.36 in another, same code. At 30% the heap holds at
 * 120–127 MiB, peak RSS at 288 / 299 MiB, and the worker spent less CPU per call (1.13 against 1.21–1.32 ms: a
 * small heap stays in cache; the extra full collections cost less than that).
 * The price is paid where a worker does little but promote: a loop that only churns long-lived garbage over a
 * 116 MiB live set ran 2.4× as long at 30% as on V8's own sizing (test/worker-heap.test.ts's workload). Students
 * train in forked children, which this does not reach.
 *
 * The flag is read at every full collection, so setting it once the process runs takes effect from the next one.
 * It is a V8 flag, not a Node option: NODE_OPTIONS refuses it, so a worker sets it on itself.
 */
import v8 from 'node:v8';

import { settings } from '../infra/config';
import { InputError } from '../lib/errors';

export const HEAP_GROWTH_ENV = 'STEPWISE_WORKER_HEAP_GROWTH_PERCENT';
export const DEFAULT_HEAP_GROWTH_PERCENT = 30;

/**
 * The growth `STEPWISE_WORKER_HEAP_GROWTH_PERCENT` asks for (raw, from infra/config.ts): a whole percent from 1 to
 * 300, `0` for V8's own heuristics, unset for the default. Anything else is refused naming the variable, before the
 * worker connects.
 */
export function heapGrowthPercent(raw: string | undefined): number {
  if (raw === undefined || raw.trim() === '') return DEFAULT_HEAP_GROWTH_PERCENT;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0 || value > 300) {
    throw new InputError(
      `${HEAP_GROWTH_ENV} is ${JSON.stringify(raw)}: expected a whole percent from 1 to 300, or 0 for V8's own ` +
        `heap sizing (default ${DEFAULT_HEAP_GROWTH_PERCENT})`,
      HEAP_GROWTH_ENV
    );
  }
  return value;
}

/** Applies the growth to this process; `0` leaves V8 to size the heap as it does by default. */
export function limitHeapGrowth(percent: number): void {
  // V8 reads 0 as "no fixed factor": its default.
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
}

/**
 * Applies the process's `STEPWISE_WORKER_HEAP_GROWTH_PERCENT` (see {@link heapGrowthPercent}): each worker entry
 * point's one call.
 */
export function limitHeapGrowthFromSettings(): void {
  limitHeapGrowth(heapGrowthPercent(settings().workerHeapGrowthPercent));
}
