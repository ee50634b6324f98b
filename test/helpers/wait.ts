/** Waiting in tests: for a condition another process or a server makes true, with a deadline that names it. */
import { settledWithin } from '../../lib/wait';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `probe` until it returns a value. Its errors count as "not yet" (a describe racing a restart, a file not yet
 * written); the last one is in the timeout's message.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 120_000,
  everyMs = 100
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const value = await Promise.resolve()
      .then(probe)
      .catch((err: unknown) => {
        lastError = err;
        return undefined;
      });
    if (value !== undefined) return value;
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

/**
 * `promise`, or a rejection naming what it was for once `timeoutMs` passes: a step of a long test that hangs fails
 * as itself, with `what()` (called then, so it can hold a process's output up to that moment, or ask a server where a
 * run stands), instead of as the whole test's timeout with no word of where it stopped.
 */
export async function within<T>(
  promise: Promise<T>,
  timeoutMs: number,
  what: () => string | Promise<string>
): Promise<T> {
  if (!(await settledWithin(promise, timeoutMs))) {
    throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${await what()}`);
  }
  return promise;
}
