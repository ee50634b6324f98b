/**
 * Retry policy for teacher calls: how long the server asked us to wait, how long to back off otherwise, and which
 * failures are worth another attempt. Pure functions, so the client, the batch poller and the tests share one policy.
 *
 * What the `openai` SDK (v6) throws, as checked against a local server in test/teacher-retry.test.ts:
 * - a non-2xx status: an `APIError` subclass with `.status` and `.headers` (`RateLimitError` for 429,
 *   `InternalServerError` for 5xx, `BadRequestError` for 400, ...), message `"<status> <server's message>"`;
 * - no response (refused, reset, dropped before the headers): `APIConnectionError`, the undici error as `.cause`;
 * - no headers within the SDK's `timeout`: `APIConnectionTimeoutError`;
 * - the caller's signal aborted before the headers: `APIUserAbortError`;
 * - after a 2xx, the body is read outside the SDK's error handling, so those errors surface raw: a body that is not
 *   JSON (or cut short but cleanly ended) is a `SyntaxError` from `response.json()`, a connection dropped mid-body is
 *   undici's `TypeError('terminated')`, and an abort mid-body is a `DOMException` named `AbortError`.
 *   The SDK's `timeout` stops at the headers: a server that sends headers and then stalls hangs the call until the
 *   caller's own signal fires, so the caller needs its own per-call deadline, passed here as `timeoutSignal`.
 */
import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';

export type HeaderBag = Headers | Record<string, string | string[] | null | undefined>;

/** Ten minutes: a longer `Retry-After` is more likely a misconfigured server than a real request to wait. */
export const MAX_RETRY_AFTER_MS = 600_000;

/**
 * Milliseconds the server asked us to wait: `retry-after-ms`, else `retry-after` as seconds or an HTTP date;
 * undefined if absent/unparsable; capped at maxMs (default 10 min). A date in the past means 0.
 */
export function retryAfterMs(
  headers: HeaderBag | undefined,
  now: number = Date.now(),
  maxMs: number = MAX_RETRY_AFTER_MS
): number | undefined {
  if (headers === undefined || headers === null) return undefined;
  // Not a standard header, but OpenAI and Azure send it, and it is more precise than whole seconds.
  const ms = parseNumber(header(headers, 'retry-after-ms'));
  if (ms !== undefined) return Math.min(ms, maxMs);
  const value = header(headers, 'retry-after');
  if (value === undefined) return undefined;
  const seconds = parseNumber(value);
  if (seconds !== undefined) return Math.min(seconds * 1000, maxMs);
  // An HTTP date needs a weekday or month name: Date.parse alone accepts bare numbers and odd fragments.
  if (!/[a-z]{3}/i.test(value)) return undefined;
  const at = Date.parse(value);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - now), maxMs);
}

/**
 * Exponential backoff with full jitter: random in [0, min(maxMs, baseMs·2^attempt)], attempt 0-based; defaults base
 * 500 ms, max 60 s. Full jitter spreads the retries of many concurrent calls that failed together, so they do not
 * come back as the same burst that failed.
 * @throws RangeError when `attempt` is not an integer >= 0 or a bound is negative.
 */
export function backoffMs(
  attempt: number,
  opts: { baseMs?: number; maxMs?: number; random?: () => number } = {}
): number {
  const baseMs = opts.baseMs ?? 500;
  const maxMs = opts.maxMs ?? 60_000;
  const random = opts.random ?? Math.random;
  if (!Number.isSafeInteger(attempt) || attempt < 0) {
    throw new RangeError(`backoffMs: attempt is ${String(attempt)}; expected an integer >= 0`);
  }
  if (!(baseMs >= 0 && maxMs >= 0 && Number.isFinite(maxMs))) {
    throw new RangeError(`backoffMs: baseMs ${String(baseMs)} and maxMs ${String(maxMs)} must be finite and >= 0`);
  }
  // 2 ** attempt overflows to Infinity for huge attempts, which min() turns into maxMs (0 · Infinity would be NaN).
  const ceiling = baseMs === 0 ? 0 : Math.min(maxMs, baseMs * 2 ** attempt);
  return Math.min(ceiling, Math.max(0, random()) * ceiling);
}

export interface ErrorClass {
  /** Worth another attempt: the same request may well succeed later. */
  retryable: boolean;
  /** The server refused for load (429): the caller should pause its rate limiter, not only this call. */
  rateLimited: boolean;
  /** What failed, in a few fixed words: what retries are counted by (see {@link retryReasonOf}). */
  kind: FailureKind;
  /** One short human line, starting with the kind: `HTTP 503: …`, `timeout after 30000 ms`, `connection error: …`. */
  reason: string;
  /** What the server asked for in `retry-after-ms` / `retry-after`, when it said. */
  retryAfterMs?: number;
  /**
   * Set when the endpoint certainly did not process the request, so nothing was billed: it answered a 4xx (a
   * refusal, 429 included), or it was never reached (connection refused, name not resolved). Absent, a failed
   * attempt may have been processed and billed though no usage came back (a timeout, a dropped or cut-off
   * response, a 5xx), and a budget must count it.
   */
  notProcessed?: true;
}

/**
 * Why a call was tried again, in a few fixed words: what metrics count retries by. A reason line carries the server's
 * own text (unbounded, and it may echo the request), so it is never a label itself.
 */
export type RetryReason = Exclude<FailureKind, 'aborted'> | 'rate_limited' | 'empty_completion';

/** A classified failure's kind: an HTTP status by its class, or how the call failed without one. */
export type FailureKind =
  'server_error' | 'client_error' | 'timeout' | 'connection' | 'malformed' | 'aborted' | 'other';

/** The {@link RetryReason} of a classified failure (an empty completion is not one: its caller names it). */
export function retryReasonOf(verdict: ErrorClass): RetryReason {
  if (verdict.rateLimited) return 'rate_limited';
  // An abort is never retried; were it counted, it would be as what it is not.
  return verdict.kind === 'aborted' ? 'other' : verdict.kind;
}

/** Connection failures that happen before a request can reach the endpoint. */
const NEVER_REACHED_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Statuses the SDK itself retries: request timeout, lock conflict, rate limit, and every server error. */
function retryableStatus(status: number): boolean {
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

const REASON_MAX_CHARS = 200;

/**
 * Classifies an error thrown by the `openai` SDK (or fetch): 408/409/429/5xx, connection errors, timeouts, truncated
 * or malformed (non-JSON) response bodies are retryable; other 4xx (400/401/403/404/422) are not; aborts are not
 * retryable (reason 'aborted'). `reason` is one short human line starting with the kind, e.g. 'HTTP 503: …',
 * 'timeout after 30000 ms', 'connection error: …', 'malformed response: …'.
 *
 * An `x-should-retry: true|false` response header overrides the status, as it does in the SDK. A 429 whose code is
 * `insufficient_quota` (OpenAI: out of credit) is not retryable: waiting does not refill an account.
 * @param opts.timeoutMs the per-call timeout, for the reason line.
 * @param opts.timeoutSignal the caller's per-call deadline: when it has fired, an abort is reported as a timeout
 *   (retryable), not as the caller giving up. Needed because the SDK reports any abort of the signal it was given as
 *   `APIUserAbortError`, and an abort while reading the body as a bare `AbortError`.
 */
export function classifyError(
  err: unknown,
  opts: { timeoutMs?: number; timeoutSignal?: AbortSignal } = {}
): ErrorClass {
  const timeout = (detail?: string): ErrorClass => ({
    retryable: true,
    rateLimited: false,
    kind: 'timeout',
    reason:
      opts.timeoutMs !== undefined
        ? `timeout after ${opts.timeoutMs} ms`
        : `timeout: ${oneLine(detail ?? 'timed out')}`,
  });
  const name = errorName(err);
  const isAbort = err instanceof APIUserAbortError || name === 'AbortError' || name === 'TimeoutError';

  if (isAbort && (opts.timeoutSignal?.aborted || name === 'TimeoutError')) return timeout(errorMessage(err));
  if (isAbort) return { retryable: false, rateLimited: false, kind: 'aborted', reason: 'aborted' };
  if (err instanceof APIConnectionTimeoutError) return timeout(err.message);
  if (err instanceof APIConnectionError) {
    return connectionError(err);
  }
  if (err instanceof APIError && err.status !== undefined) return classifyStatus(err, err.status);
  if (err instanceof SyntaxError) {
    return {
      retryable: true,
      rateLimited: false,
      kind: 'malformed',
      reason: `malformed response: ${oneLine(err.message)}`,
    };
  }
  // undici ends a body whose connection dropped before Content-Length bytes arrived with TypeError('terminated').
  if (err instanceof TypeError && err.message === 'terminated') {
    return {
      retryable: true,
      rateLimited: false,
      kind: 'malformed',
      reason: `malformed response: body truncated (${oneLine(rootCause(err))})`,
    };
  }
  if (isConnectionFailure(err)) return connectionError(err);
  // Anything else is most likely a bug on our side; retrying would only repeat it.
  return {
    retryable: false,
    rateLimited: false,
    kind: 'other',
    reason: `error: ${oneLine(`${name}: ${errorMessage(err)}`)}`,
  };
}

function connectionError(err: unknown): ErrorClass {
  const never = NEVER_REACHED_CODES.has(rootCode(err) ?? '');
  return {
    retryable: true,
    rateLimited: false,
    kind: 'connection',
    reason: `connection error: ${oneLine(rootCause(err))}`,
    ...(never ? { notProcessed: true as const } : {}),
  };
}

/** The innermost `code` along the cause chain, if any (`ECONNREFUSED`, `UND_ERR_SOCKET`, …). */
function rootCode(err: unknown): string | undefined {
  let code: string | undefined;
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 6; e = e.cause, depth++) {
    const c = (e as { code?: unknown }).code;
    if (typeof c === 'string') code = c;
  }
  return code;
}

function classifyStatus(err: APIError, status: number): ErrorClass {
  const headers = err.headers ?? undefined;
  const wait = retryAfterMs(headers);
  // The SDK's message is "<status> <detail>"; the reason states the status once.
  const detail = err.message.startsWith(`${status} `) ? err.message.slice(String(status).length + 1) : err.message;
  const reason = `HTTP ${status}: ${oneLine(detail)}`;
  const shouldRetry = headers?.get('x-should-retry');
  const outOfCredit = status === 429 && err.code === 'insufficient_quota';
  const retryable =
    shouldRetry === 'true' ? true : shouldRetry === 'false' || outOfCredit ? false : retryableStatus(status);
  return {
    retryable,
    rateLimited: status === 429 && !outOfCredit,
    kind: status >= 500 && status < 600 ? 'server_error' : 'client_error',
    reason,
    ...(wait === undefined ? {} : { retryAfterMs: wait }),
    // A 4xx is the endpoint refusing the request before any work; a 5xx may come after the work was done.
    ...(status >= 400 && status < 500 ? { notProcessed: true as const } : {}),
  };
}

const CONNECTION_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ENOTFOUND',
]);

/** fetch's own failures: `TypeError('fetch failed')` around an undici or socket error, or that error bare. */
function isConnectionFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('UND_ERR_'))) return true;
    if (e instanceof TypeError && e.message === 'fetch failed') return true;
  }
  return false;
}

/** The innermost cause's message (and code), which says what actually happened: "other side closed", "ECONNREFUSED". */
function rootCause(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  let e: Error = err;
  for (let depth = 0; e.cause instanceof Error && depth < 5; depth++) e = e.cause;
  const code = (e as { code?: unknown }).code;
  return typeof code === 'string' && !e.message.includes(code) ? `${e.message} (${code})` : e.message;
}

function errorName(err: unknown): string {
  return typeof err === 'object' && err !== null && typeof (err as { name?: unknown }).name === 'string'
    ? (err as { name: string }).name
    : typeof err;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function oneLine(text: string): string {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > REASON_MAX_CHARS ? `${line.slice(0, REASON_MAX_CHARS - 1)}…` : line;
}

/** A header by name, case-insensitively, from a fetch `Headers` or a plain object (Node's `IncomingHttpHeaders`). */
function header(headers: HeaderBag, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== name) continue;
    const first = Array.isArray(value) ? value[0] : value;
    if (typeof first === 'string') return first;
  }
  return undefined;
}

/** A non-negative decimal number, strictly: "10", "1.5", " 2 "; not "10s", "", "-1", "1e3". */
function parseNumber(value: string | undefined): number | undefined {
  if (value === undefined || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return undefined;
  return Number(value);
}
