import test from 'ava';

import { settledWithin } from '../lib/wait';

/**
 * Counts the timers started through the global setTimeout while `run` goes and still pending when it returns: a
 * bounded wait must not leave its bound running after the promise won.
 */
async function pendingTimersAfter<T>(run: () => Promise<T>): Promise<{ value: T; pending: number }> {
  const pending = new Set<unknown>();
  const { setTimeout: set, clearTimeout: clear } = globalThis;
  globalThis.setTimeout = ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const timer = set(
      (...a: unknown[]) => {
        pending.delete(timer);
        fn(...a);
      },
      ms,
      ...args
    );
    pending.add(timer);
    return timer;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((timer: NodeJS.Timeout | undefined) => {
    pending.delete(timer);
    clear(timer);
  }) as typeof clearTimeout;
  try {
    const value = await run();
    return { value, pending: pending.size };
  } finally {
    globalThis.setTimeout = set;
    globalThis.clearTimeout = clear;
  }
}

test.serial('a promise that settles first ends the wait at once, and leaves no timer behind', async (t) => {
  const started = performance.now();
  const { value, pending } = await pendingTimersAfter(() => settledWithin(Promise.resolve('done'), 60_000));
  t.true(value);
  t.is(pending, 0);
  t.true(performance.now() - started < 10_000);
});

test.serial(
  'a rejection counts as settled and is not thrown: the caller reads it where it awaits the promise',
  async (t) => {
    const failing = Promise.reject(new Error('boom'));
    const { value, pending } = await pendingTimersAfter(() => settledWithin(failing, 60_000));
    t.true(value);
    t.is(pending, 0);
    await t.throwsAsync(failing, { message: 'boom' });
  }
);

test.serial('a promise that does not settle holds the wait only for the bound', async (t) => {
  const started = performance.now();
  const { value, pending } = await pendingTimersAfter(() => settledWithin(new Promise(() => undefined), 150));
  const waited = performance.now() - started;
  t.false(value);
  t.is(pending, 0);
  t.true(waited >= 140, `waited ${waited} ms`);
});
