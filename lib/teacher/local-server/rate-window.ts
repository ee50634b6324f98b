/**
 * Sliding windows over request arrivals, for the local teacher server: the rate limiter it enforces as a provider
 * would, and the arrival log tests read to check that a client kept to its limits.
 *
 * Both use the same window: a request at time t shares a window of length W with every request that arrived after
 * t - W (times in milliseconds). So a client that keeps to a limit by this rule is never refused by the limiter, and
 * `maxInWindow` over the log never exceeds a limit the limiter enforced.
 */

/** Why a request does not fit, and how long until it would. */
export interface WindowVerdict {
  /** Milliseconds until the request would fit; 0 when it fits now; Infinity when it never can (too many tokens). */
  waitMs: number;
  /** The limit that decided `waitMs` (the one needing the longer wait); absent when the request fits. */
  limitedBy?: 'requests' | 'tokens';
  /** Requests and tokens counted in the window now, for the error message. */
  usedRequests: number;
  usedTokens: number;
}

/**
 * At most `requests` requests and `tokens` tokens in any window of `windowMs`, like a provider's per-minute limits
 * but sliding rather than bucketed per minute, so a burst at a minute's boundary cannot slip twice the limit through.
 * Only the requests in the current window are kept, so memory is bounded by what the limits allow.
 */
export class SlidingWindowLimiter {
  private times: number[] = [];
  private tokens: number[] = [];
  private head = 0;
  private tokenSum = 0;

  constructor(
    readonly windowMs: number,
    readonly maxRequests: number | undefined,
    readonly maxTokens: number | undefined
  ) {}

  /** Whether a request of `tokens` tokens arriving at `now` fits, and if not, when it would. */
  check(now: number, tokens: number): WindowVerdict {
    this.prune(now);
    const count = this.times.length - this.head;
    const verdict: WindowVerdict = { waitMs: 0, usedRequests: count, usedTokens: this.tokenSum };
    if (this.maxRequests !== undefined && count >= this.maxRequests) {
      // The request fits once all but maxRequests - 1 of those in the window have left it.
      const leaving = this.head + (count - this.maxRequests);
      verdict.waitMs = this.times[leaving] + this.windowMs - now;
      verdict.limitedBy = 'requests';
    }
    if (this.maxTokens !== undefined && this.tokenSum + tokens > this.maxTokens) {
      let waitMs = Infinity;
      if (tokens <= this.maxTokens) {
        let excess = this.tokenSum + tokens - this.maxTokens;
        let i = this.head;
        for (; excess > 0; i++) excess -= this.tokens[i];
        waitMs = this.times[i - 1] + this.windowMs - now;
      }
      if (waitMs > verdict.waitMs) {
        verdict.waitMs = waitMs;
        verdict.limitedBy = 'tokens';
      }
    }
    return verdict;
  }

  /** Count a request that was let through. */
  add(now: number, tokens: number): void {
    this.times.push(now);
    this.tokens.push(tokens);
    this.tokenSum += tokens;
  }

  private prune(now: number): void {
    while (this.head < this.times.length && this.times[this.head] <= now - this.windowMs) {
      this.tokenSum -= this.tokens[this.head];
      this.head++;
    }
    // Compact now and then rather than shift() each time: shift is O(n) on large arrays.
    if (this.head > 1024 && this.head * 2 > this.times.length) {
      this.times = this.times.slice(this.head);
      this.tokens = this.tokens.slice(this.head);
      this.head = 0;
    }
  }
}

/**
 * Every accepted request's arrival time and token count, in arrival order: 16 bytes a request, so 100k requests
 * take under 2 MB. Times must not decrease (use a monotonic clock).
 */
export class ArrivalLog {
  private times: Float64Array = new Float64Array(1024);
  private tokens: Float64Array = new Float64Array(1024);
  private size = 0;

  get length(): number {
    return this.size;
  }

  add(time: number, tokens: number): void {
    if (this.size === this.times.length) {
      this.times = grow(this.times);
      this.tokens = grow(this.tokens);
    }
    this.times[this.size] = time;
    this.tokens[this.size] = tokens;
    this.size++;
  }

  /** Arrival times from `from` on (inclusive), in arrival order. O(arrivals). */
  timesFrom(from: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.times[i] >= from) out.push(this.times[i]);
    return out;
  }

  /**
   * The most requests (or their tokens) that arrived within any window of `windowMs`: for each arrival, those that
   * arrived less than `windowMs` before it, itself included. One pass with two pointers, O(arrivals).
   */
  maxInWindow(windowMs: number, what: 'requests' | 'tokens'): number {
    let best = 0;
    let sum = 0;
    let start = 0;
    for (let end = 0; end < this.size; end++) {
      sum += what === 'requests' ? 1 : this.tokens[end];
      while (this.times[start] <= this.times[end] - windowMs) {
        sum -= what === 'requests' ? 1 : this.tokens[start];
        start++;
      }
      if (sum > best) best = sum;
    }
    return best;
  }
}

function grow(a: Float64Array): Float64Array {
  const bigger = new Float64Array(a.length * 2);
  bigger.set(a);
  return bigger;
}
