/**
 * The rate limit the server enforces as a provider would, and the 429 it answers with: OpenAI's wording, its
 * `retry-after` and `retry-after-ms` headers, and a refusal for good when one request is over the limit on its own.
 * Apart from the window arithmetic (`rate-window.ts`) so that stays a plain data structure tests can drive directly.
 */
import { InputError } from '../../errors';
import { HttpError } from './http';
import { SlidingWindowLimiter, type WindowVerdict } from './rate-window';
import type { RateLimit } from './types';

export class ProviderRateLimit {
  private readonly window: SlidingWindowLimiter;

  /**
   * @param limit the caller's limits, read again when a refusal is worded.
   * @param model the served model, named in refusals as OpenAI names it.
   * @throws InputError when a limit is out of range.
   */
  constructor(
    private readonly limit: RateLimit,
    private readonly model: string
  ) {
    this.window = validateRateLimit(limit);
  }

  /**
   * Counts a request of `tokens` tokens arriving at `now` against the window when it fits; when it does not, counts
   * nothing and returns the 429 to answer.
   */
  take(now: number, tokens: number): HttpError | undefined {
    const verdict = this.window.check(now, tokens);
    if (verdict.waitMs > 0) return this.refusal(verdict, tokens);
    this.window.add(now, tokens);
    return undefined;
  }

  private refusal(verdict: WindowVerdict, tokens: number): HttpError {
    const what = verdict.limitedBy!;
    const limit = what === 'requests' ? this.limit.requests : this.limit.tokens;
    const per = `${what} per ${this.limit.windowMs} ms`;
    if (verdict.waitMs === Infinity) {
      return new HttpError(
        429,
        `Request too large for ${this.model} on ${per}: Limit ${limit}, Requested ${tokens}. ` +
          'The input or output tokens must be reduced in order to run successfully.',
        what,
        null,
        'rate_limit_exceeded'
      );
    }
    // Whole milliseconds, rounded up: a client that waits exactly this long fits.
    const waitMs = Math.max(1, Math.ceil(verdict.waitMs));
    const used = what === 'requests' ? verdict.usedRequests : verdict.usedTokens;
    return new HttpError(
      429,
      `Rate limit reached for ${this.model} on ${per}: Limit ${limit}, Used ${used}, ` +
        `Requested ${what === 'requests' ? 1 : tokens}. Please try again in ${waitMs}ms.`,
      what,
      null,
      'rate_limit_exceeded',
      { 'retry-after': String(Math.ceil(waitMs / 1000)), 'retry-after-ms': String(waitMs) }
    );
  }
}

function validateRateLimit(rateLimit: RateLimit): SlidingWindowLimiter {
  const { requests, tokens, windowMs } = rateLimit;
  if (!(Number.isFinite(windowMs) && windowMs > 0)) {
    throw new InputError(
      `rateLimit.windowMs is ${JSON.stringify(windowMs)}; expected a number of milliseconds > 0`,
      'rateLimit.windowMs'
    );
  }
  for (const [name, value] of Object.entries({ requests, tokens })) {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1)) {
      throw new InputError(
        `rateLimit.${name} is ${JSON.stringify(value)}; expected an integer >= 1`,
        `rateLimit.${name}`
      );
    }
  }
  if (requests === undefined && tokens === undefined) {
    throw new InputError('rateLimit has neither requests nor tokens; expected at least one limit', 'rateLimit');
  }
  return new SlidingWindowLimiter(windowMs, requests, tokens);
}
