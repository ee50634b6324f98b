/**
 * Client-side limits on requests/min and tokens/min for teacher calls, so a run stays under a provider's quota
 * instead of learning it from 429s.
 *
 * Providers enforce their limits over sliding windows, so the starts must be smooth, not bursts at the top of each
 * window. Each limit is a continuous-refill token bucket (`TokenBucket` from the `limiter` package) used in
 * "overdraft" mode: a request may start once every bucket is out of debt (level >= 0), and then takes its whole cost,
 * which may leave a bucket in debt until the refill pays it back. The buckets hold at most {@link SLACK_MS} worth of
 * refill, which is only there to absorb timer lateness (without it every late timer would be lost throughput).
 *
 * The guarantee: over ANY sliding window of w ms, with limits R requests/min and T tokens/min,
 *
 *     started requests <= R·w/60000 + b_req,   b_req = 1 + R·SLACK_MS/60000   (1.2 requests at 1200/min)
 *     started tokens   <= T·w/60000 + b_tok,   b_tok = largest single request + T·SLACK_MS/60000
 *
 * (the window may open on a full bucket, and its last start may overdraw by one request), plus whatever `settle()`
 * refunded inside the window. Times are the limiter's decisions; callers and servers see them later by their own
 * scheduling and network jitter, which a server's limit must leave room for (10% leaves plenty). A request larger than T tokens never deadlocks: it starts once the token bucket is out
 * of debt, and its debt then holds the next start back by as long as it takes to refill.
 *
 * Waiters are served strictly first in, first out by one timer for the whole limiter; a waiter that aborts is removed
 * at once and takes nothing with it.
 */
import { TokenBucket } from 'limiter';

import { InputError } from '../errors';

export interface RateLimitConfig {
  /** Requests that may start per minute. Unset: no request limit. */
  requestsPerMinute?: number;
  /** Tokens (the caller's estimate of prompt + completion) that may start per minute. Unset: no token limit. */
  tokensPerMinute?: number;
}

export interface RateLimiter {
  /**
   * Resolves, with the milliseconds it waited (0 when it could start at once), when a request estimated at `tokens`
   * may start under both limits and any pause; rejects with `signal.reason` on abort (and releases nothing it did
   * not take). Waiters are served in call order.
   * A call that took its tokens but never reached the server can hand them back with `settle(tokens, 0)`.
   * @throws RangeError (as a rejection) when `tokens` is not a finite number >= 0: a caller bug, not user input.
   */
  acquire(tokens: number, signal?: AbortSignal): Promise<number>;
  /**
   * After the call, correct the token budget by actual − estimated: extra consumption puts the bucket (further)
   * into debt and holds later starts back; a refund pays debt off and may let waiters start at once.
   */
  settle(estimatedTokens: number, actualTokens: number): void;
  /**
   * The server said wait (429 retry-after): no request starts before now+ms, for every caller of this limiter.
   * Later pauses extend, never shorten. The buckets keep refilling only up to their small slack meanwhile, so the
   * end of a pause is not a burst.
   */
  pause(ms: number): void;
}

/**
 * Refill a bucket may bank beyond zero debt, in ms of its rate. Node timers fire a millisecond or two late (more on a
 * busy machine); banking 10 ms keeps that lateness from becoming lost throughput, at the cost of 0.2 request of extra
 * burst at 1200 requests/min. At any rate it is a 10 ms sliver of a window, however many requests that holds.
 */
export const SLACK_MS = 10;

const MINUTE_MS = 60_000;

/**
 * Creates a limiter for one endpoint; share it between every caller of that endpoint in the process.
 * With no limits, `acquire` resolves at once (only pauses apply) and `settle` does nothing.
 * @throws InputError when a limit is not a number > 0 (the message names `teacher.requestsPerMinute` or
 * `teacher.tokensPerMinute`).
 */
export function createRateLimiter(cfg: RateLimitConfig = {}): RateLimiter {
  const requestsPerMinute = validateLimit(cfg.requestsPerMinute, 'teacher.requestsPerMinute');
  const tokensPerMinute = validateLimit(cfg.tokensPerMinute, 'teacher.tokensPerMinute');
  return new SmoothRateLimiter(
    requestsPerMinute === undefined ? undefined : overdraftBucket(requestsPerMinute),
    tokensPerMinute === undefined ? undefined : overdraftBucket(tokensPerMinute)
  );
}

interface Waiter {
  tokens: number;
  /** Called with the milliseconds the waiter spent in line. */
  resolve: (waitedMs: number) => void;
  /** When it joined the line, on the `performance.now()` clock. */
  queuedAt: number;
  reject: (reason: unknown) => void;
  signal?: AbortSignal;
}

/** The waiters queued under one signal, and the single abort listener that rejects them all. */
interface SignalWaiters {
  onAbort: () => void;
  waiters: Set<Waiter>;
}

class SmoothRateLimiter implements RateLimiter {
  /** Insertion-ordered, with O(1) removal of an aborted waiter from anywhere in the line. */
  private readonly queue = new Set<Waiter>();
  /**
   * One abort listener per signal, not per waiter: callers share a run-wide signal, and 64 waiters each listening on
   * it would trip Node's MaxListenersExceededWarning (and cost a listener add/remove per call).
   */
  private readonly bySignal = new Map<AbortSignal, SignalWaiters>();
  /** On the `performance.now()` clock, which the buckets use too and which never jumps with the wall clock. */
  private pausedUntil = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly requestBucket: TokenBucket | undefined,
    private readonly tokenBucket: TokenBucket | undefined
  ) {}

  acquire(tokens: number, signal?: AbortSignal): Promise<number> {
    if (!(typeof tokens === 'number' && Number.isFinite(tokens) && tokens >= 0)) {
      return Promise.reject(new RangeError(`acquire(tokens): tokens is ${String(tokens)}; expected a number >= 0`));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.queue.size === 0) {
      this.refill();
      if (this.waitMs() === 0) {
        this.take(tokens);
        return Promise.resolve(0);
      }
    }
    return new Promise<number>((resolve, reject) => {
      const waiter: Waiter = { tokens, resolve, reject, signal, queuedAt: performance.now() };
      if (signal) this.watch(waiter, signal);
      this.queue.add(waiter);
      // One timer serves the whole line; it is armed whenever the line is non-empty.
      if (this.timer === undefined) this.arm();
    });
  }

  settle(estimatedTokens: number, actualTokens: number): void {
    for (const [name, value] of [
      ['estimatedTokens', estimatedTokens],
      ['actualTokens', actualTokens],
    ] as const) {
      if (!(typeof value === 'number' && Number.isFinite(value) && value >= 0)) {
        throw new RangeError(`settle(): ${name} is ${String(value)}; expected a number >= 0`);
      }
    }
    const bucket = this.tokenBucket;
    if (bucket === undefined || actualTokens === estimatedTokens) return;
    this.refill();
    bucket.content -= actualTokens - estimatedTokens;
    // A refund may lift the bucket above its cap for a moment: let waiters spend it before capping, or a refund that
    // more than pays off the debt would be lost, and token throughput would fall short of the limit whenever
    // estimates run high (as they do: the estimate counts max_tokens in full).
    this.serve();
    bucket.content = Math.min(bucket.content, bucket.bucketSize);
    this.rearm();
  }

  pause(ms: number): void {
    if (!(typeof ms === 'number' && Number.isFinite(ms) && ms >= 0)) {
      throw new RangeError(`pause(ms): ms is ${String(ms)}; expected a finite number >= 0`);
    }
    const until = performance.now() + ms;
    if (until <= this.pausedUntil) return;
    this.pausedUntil = until;
    this.rearm();
  }

  /** The timer's callback: start every waiter that may start now, then sleep until the next one may. */
  private readonly pump = (): void => {
    this.timer = undefined;
    this.refill();
    this.serve();
    this.arm();
  };

  /** Starts waiters from the head of the line while they may start. Buckets must be freshly refilled. */
  private serve(): void {
    for (const waiter of this.queue) {
      if (this.waitMs() > 0) return;
      this.queue.delete(waiter);
      this.unwatch(waiter);
      this.take(waiter.tokens);
      waiter.resolve(performance.now() - waiter.queuedAt);
    }
  }

  private watch(waiter: Waiter, signal: AbortSignal): void {
    let entry = this.bySignal.get(signal);
    if (entry === undefined) {
      const created: SignalWaiters = { onAbort: () => this.cancel(signal, created), waiters: new Set() };
      entry = created;
      this.bySignal.set(signal, entry);
      signal.addEventListener('abort', entry.onAbort, { once: true });
    }
    entry.waiters.add(waiter);
  }

  /** Drops a served waiter from its signal's set, and the listener with the last one. */
  private unwatch(waiter: Waiter): void {
    if (waiter.signal === undefined) return;
    const entry = this.bySignal.get(waiter.signal);
    if (entry === undefined || !entry.waiters.delete(waiter) || entry.waiters.size > 0) return;
    waiter.signal.removeEventListener('abort', entry.onAbort);
    this.bySignal.delete(waiter.signal);
  }

  /** Rejects the waiters still queued under an aborted signal. Served ones have left the set: they keep what they took. */
  private cancel(signal: AbortSignal, entry: SignalWaiters): void {
    this.bySignal.delete(signal);
    for (const waiter of entry.waiters) {
      this.queue.delete(waiter);
      waiter.reject(signal.reason);
    }
    entry.waiters.clear();
    if (this.queue.size === 0) this.disarm();
  }

  /** Arms the timer for when the head of the line may start; the readiness test does not depend on the head's size. */
  private arm(): void {
    if (this.queue.size === 0 || this.timer !== undefined) return;
    // At least 1 ms, rounded up: never a busy loop, and never woken before the bucket is out of debt.
    this.timer = setTimeout(this.pump, Math.max(1, Math.ceil(this.waitMs())));
  }

  private disarm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private rearm(): void {
    this.disarm();
    this.refill();
    this.arm();
  }

  private refill(): void {
    this.requestBucket?.drip();
    this.tokenBucket?.drip();
  }

  /** Ms until a request may start: the longest of the pause and each bucket's time to pay off its debt. */
  private waitMs(): number {
    return Math.max(this.pausedUntil - performance.now(), debtMs(this.requestBucket), debtMs(this.tokenBucket), 0);
  }

  private take(tokens: number): void {
    if (this.requestBucket) this.requestBucket.content -= 1;
    if (this.tokenBucket) this.tokenBucket.content -= tokens;
  }
}

/** A bucket refilling at `perMinute`, capped at {@link SLACK_MS} of refill, and full (idle) to begin with. */
function overdraftBucket(perMinute: number): TokenBucket {
  const slack = (perMinute * SLACK_MS) / MINUTE_MS;
  const bucket = new TokenBucket({ bucketSize: slack, tokensPerInterval: perMinute, interval: 'minute' });
  bucket.content = slack;
  return bucket;
}

/** Ms until `bucket` is out of debt at its refill rate; 0 when it is not in debt (or there is no such limit). */
function debtMs(bucket: TokenBucket | undefined): number {
  if (bucket === undefined || bucket.content >= 0) return 0;
  return (-bucket.content * bucket.interval) / bucket.tokensPerInterval;
}

function validateLimit(value: unknown, field: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'number' && Number.isFinite(value) && value > 0 && value <= Number.MAX_SAFE_INTEGER) {
    return value;
  }
  const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
  throw new InputError(`${field} is ${shown}; expected a number > 0 (leave it unset for no limit)`, field);
}
