/**
 * A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, our local server),
 * called through the official `openai` SDK. Retries are ours rather than the SDK's, so that every attempt passes the
 * shared rate limiter and the cost budget, a 429's `retry-after` pauses every caller rather than only the one that
 * got it, and an empty completion (a 200 the SDK cannot see as a failure) is retried like a timeout. Completed calls
 * are cached in the artifact store, keyed by model, prompt and sampling parameters, so a retried or resumed stage,
 * or a re-run over a grown dataset, pays only for calls it had not finished.
 */
import OpenAI from 'openai';

import { InputError } from '../errors';
import type { ArtifactStore } from '../store/artifact-store';
import { estimatePromptTokens, type Usage } from './budget';
import { sharedHttpFetch } from './http-fetch';
import { mapWithConcurrency } from './pool';
import type { RateLimiter } from './rate-limit';
import { backoffMs, classifyError, retryReasonOf, type ErrorClass, type RetryReason } from './retry';
import {
  promptHash,
  teacherCacheKey,
  type CallBudget,
  type CallOptions,
  type ChatMessage,
  type CompleteOptions,
  type RateLimitWaits,
  type Teacher,
  type TeacherRequest,
  type TeacherResponse,
} from './types';

export interface OpenAITeacherConfig {
  /** Base URL of the API, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`. */
  baseURL: string;
  model: string;
  /** The key, looked up by the caller. Default `'unused'`: local servers ignore the key, but the SDK insists on one. */
  apiKey?: string;
  /** Default 0: rationales should be the teacher's best answer, and reproducible where the endpoint allows. */
  temperature?: number;
  /** Default 256: a few sentences of reasoning and the answer; longer completions are run-on exemplars anyway. */
  maxTokens?: number;
  /** Per attempt. Default 120 s: long enough for a busy endpoint, short enough that a hung call gets retried. */
  timeoutMs?: number;
  /**
   * Retries after the first attempt, for transient failures (connection errors, timeouts, truncated or malformed
   * bodies, 408/409/429/5xx) and empty completions. Default 5: rate limits are routine at scale.
   */
  maxRetries?: number;
  /** First backoff step for retries without a `retry-after`; doubles per attempt (full jitter), at most 60 s. Default 500 ms. */
  retryBaseMs?: number;
  /** Client-side requests/min and tokens/min, shared by every call made through this teacher (and any sharing it). */
  limiter?: RateLimiter;
  /** Told of each retry, before its wait, with why (for metrics: the reason is one of a few fixed words). */
  onRetry?: (reason: RetryReason) => void;
}

/** What the response cache holds for one call. */
/** A response cache record, under `teacherCacheKey(promptHash)`. */
export interface CachedResponse {
  model: string;
  completion: string;
  finishReason?: string;
  usage?: { promptTokens: number; completionTokens: number };
}

/**
 * Writes a completion into the response cache. The one writer of the record format: direct calls and batch
 * collection both go through it, so a later run finds either the same way.
 */
export function writeCachedResponse(store: ArtifactStore, key: string, record: CachedResponse): Promise<unknown> {
  return store.putKey(key, JSON.stringify(record), { contentType: 'application/json' });
}

export const DEFAULT_CONCURRENCY = 8;

/** Retries after a 429, on top of `maxRetries` (each waits for the server's `retry-after`, or backs off). */
export const RATE_LIMIT_RETRIES = 20;

/**
 * Creates a teacher that calls `cfg.model` at `cfg.baseURL`. With a store, responses are cached under
 * `cache/teacher/<promptHash>.json`, and a cache hit makes no HTTP call. Only non-empty completions are cached:
 * a failure must be retried by a later run, not replayed from the cache.
 * @throws InputError when a config field is out of range (the message names it).
 */
export function createOpenAITeacher(cfg: OpenAITeacherConfig, store?: ArtifactStore): Teacher {
  return new OpenAITeacher(cfg, store);
}

type ChatCompletion = OpenAI.Chat.Completions.ChatCompletion;

/** One request as the endpoint will get it, and its identity in the response cache. */
interface PreparedCall {
  /** Only role and content: extra fields a caller carries along are not sent. */
  messages: ChatMessage[];
  seed?: number;
  key: string;
  base: { id: string; promptHash: string };
}

/** One call's progress across its attempts: what a response reports however the call ends. */
interface CallProgress {
  attempts: number;
  lastError: string;
  /** Everything the attempts spent, failed ones included: an empty completion is billed like any other. */
  spent: Usage;
  /** Waits on rate limits, reported so a run's report shows how much of its time the provider's limits took. */
  rateLimit: RateLimitWaits;
}

/** One attempt's outcome: the endpoint's completion, or the failure classified for the retry decision. */
type AttemptOutcome = { completion: ChatCompletion } | { failed: ErrorClass };

/** The teacher {@link createOpenAITeacher} returns: settings resolved and validated once, shared by every call. */
class OpenAITeacher implements Teacher {
  readonly kind = 'openai' as const;
  readonly model: string;
  readonly sampling: { temperature: number; maxTokens: number };
  private readonly temperature: number;
  private readonly maxTokens: number;
  private readonly maxRetries: number;
  private readonly timeoutMs: number;
  private readonly retryBaseMs: number;
  private readonly limiter?: RateLimiter;
  private readonly onRetry?: (reason: RetryReason) => void;
  private readonly client: OpenAI;
  /**
   * Hashes {@link lookup} computed, by request: a shard looks each request up, then calls it on a miss, and the
   * hash (canonical JSON of a prompt several KB long, then sha256) is worth computing once.
   */
  private readonly hashes = new WeakMap<TeacherRequest, string>();

  constructor(
    cfg: OpenAITeacherConfig,
    private readonly store?: ArtifactStore
  ) {
    this.model = cfg.model;
    this.limiter = cfg.limiter;
    this.onRetry = cfg.onRetry;
    this.temperature = cfg.temperature ?? 0;
    this.maxTokens = cfg.maxTokens ?? 256;
    this.maxRetries = cfg.maxRetries ?? 5;
    this.timeoutMs = cfg.timeoutMs ?? 120_000;
    this.retryBaseMs = cfg.retryBaseMs ?? 500;
    validateConfig(cfg, { temperature: this.temperature, maxTokens: this.maxTokens, maxRetries: this.maxRetries });
    this.sampling = { temperature: this.temperature, maxTokens: this.maxTokens };
    this.client = new OpenAI({
      baseURL: cfg.baseURL,
      apiKey: cfg.apiKey ?? 'unused',
      timeout: this.timeoutMs,
      maxRetries: 0,
      // Chat completions over node:http with keep-alive: about 1 ms less CPU per call than Node's fetch (see there).
      fetch: sharedHttpFetch(),
    });
  }

  async callOne(request: TeacherRequest, opts: CallOptions = {}): Promise<TeacherResponse> {
    opts.signal?.throwIfAborted();
    const messages: ChatMessage[] = request.messages.map((m) => ({ role: m.role, content: m.content }));
    const seed = request.seed;
    const hash = this.hashes.get(request) ?? this.hashOf(messages, seed);
    const call: PreparedCall = {
      messages,
      seed,
      key: teacherCacheKey(hash),
      base: { id: request.id, promptHash: hash },
    };
    if (!opts.skipLookup) {
      const hit = await this.lookupKey(call.key, call.base);
      if (hit) return hit;
    }
    return this.callWithRetries(call, opts);
  }

  async lookup(request: TeacherRequest): Promise<TeacherResponse | undefined> {
    const hash = this.hashOf(request.messages, request.seed);
    this.hashes.set(request, hash);
    return this.lookupKey(teacherCacheKey(hash), { id: request.id, promptHash: hash });
  }

  async complete(requests: readonly TeacherRequest[], opts: CompleteOptions = {}): Promise<TeacherResponse[]> {
    const concurrency = opts.concurrency ?? DEFAULT_CONCURRENCY;
    if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
      throw new InputError(
        `concurrency is ${JSON.stringify(opts.concurrency)}; expected an integer >= 1`,
        'concurrency'
      );
    }
    let done = 0;
    return mapWithConcurrency(
      requests,
      concurrency,
      async (request) => {
        const response = await this.callOne(request, { signal: opts.signal });
        opts.onProgress?.(++done, requests.length);
        return response;
      },
      opts.signal
    );
  }

  private hashOf(messages: readonly ChatMessage[], seed: number | undefined): string {
    const { model, temperature, maxTokens } = this;
    return promptHash({ model, messages, temperature, maxTokens, seed });
  }

  private async lookupKey(key: string, base: { id: string; promptHash: string }): Promise<TeacherResponse | undefined> {
    const hit = this.store ? readCached(await this.store.getKey(key), this.model) : undefined;
    if (hit === undefined) return undefined;
    return { ...base, completion: hit.completion, cached: true, attempts: 0, finishReason: hit.finishReason };
  }

  /** Attempts the call until it yields a non-empty completion, fails for good, runs out of retries or budget. */
  private async callWithRetries(call: PreparedCall, opts: CallOptions): Promise<TeacherResponse> {
    const { signal, budget } = opts;
    const { maxRetries, maxTokens, limiter } = this;
    const estimate = estimatePromptTokens(call.messages);
    const progress: CallProgress = {
      attempts: 0,
      lastError: '',
      spent: { promptTokens: 0, completionTokens: 0 },
      rateLimit: { refusals: 0, waitMs: 0 },
    };
    // Rate limiting is the endpoint asking us to slow down, not the call failing: 429s draw on a budget of their own
    // (RATE_LIMIT_RETRIES more), so a busy account delays calls rather than failing them.
    let rateLimitedRetries = 0;
    for (let attempt = 0; attempt <= maxRetries; attempt++) {
      signal?.throwIfAborted();
      const reservation = budget?.reserve(estimate, maxTokens);
      if (budget && reservation === undefined) {
        const why = 'not sent: the cost budget (teacher.maxCost) cannot cover this call';
        const error = progress.lastError ? `${progress.lastError}; then ${why}` : why;
        return { ...failedResponse(call.base, progress, error), notSent: 'budget' };
      }
      // Rate limits count the prompt and the most the completion may take, as providers do when admitting a call;
      // providers never refund what a call did not use, so neither does the limiter (see chargeUsage).
      // Only time spent in the limiter's line counts: a call it admits at once waited for nothing.
      if (limiter) progress.rateLimit.waitMs += await limiter.acquire(estimate + maxTokens, signal);
      progress.attempts++;
      const outcome = await this.attemptOnce(call, signal);
      if ('failed' in outcome) {
        const verdict = outcome.failed;
        // A provider bills what it processed even when the answer never arrived (a timeout, a dropped or cut-off
        // response): unless the endpoint surely did no work, the attempt's worst case counts as spent, in the
        // budget and in the usage the journal keeps, so spend stays under maxCost by the provider's count too.
        const unreported = verdict.notProcessed ? undefined : { promptTokens: estimate, completionTokens: maxTokens };
        budget?.settle(reservation ?? 0, unreported);
        if (signal?.aborted) throw signal.reason;
        if (unreported) {
          progress.spent.promptTokens += unreported.promptTokens;
          progress.spent.completionTokens += unreported.completionTokens;
        }
        progress.lastError = verdict.reason;
        if (!verdict.retryable) break;
        const waitMs = verdict.retryAfterMs ?? backoffMs(attempt + rateLimitedRetries, { baseMs: this.retryBaseMs });
        // A 429 is about the account, not this call: everyone sharing the limiter waits it out.
        if (verdict.rateLimited) {
          progress.rateLimit.refusals++;
          limiter?.pause(waitMs);
          if (rateLimitedRetries++ < RATE_LIMIT_RETRIES) attempt--;
        }
        if (attempt < maxRetries) {
          this.onRetry?.(retryReasonOf(verdict));
          // Counted where it is slept, after a rate-limited attempt was given back, so no wait goes uncounted.
          if (verdict.rateLimited) progress.rateLimit.waitMs += waitMs;
          await sleep(waitMs, signal);
        }
        continue;
      }
      const { text, finishReason, usage } = readCompletion(outcome.completion);
      this.chargeUsage(usage, { reservation, budget, estimate, spent: progress.spent });
      if (text.trim() === '') {
        progress.lastError = `empty completion (finish_reason ${JSON.stringify(finishReason ?? null)})`;
        if (attempt < maxRetries) {
          this.onRetry?.('empty_completion');
          await sleep(backoffMs(attempt, { baseMs: this.retryBaseMs }), signal);
        }
        continue;
      }
      await this.cacheCompletion(call.key, { model: this.model, completion: text, finishReason, usage }, opts);
      const { base } = call;
      return {
        ...base,
        completion: text,
        cached: false,
        attempts: progress.attempts,
        finishReason,
        ...usageOf(progress),
      };
    }
    const { attempts } = progress;
    return failedResponse(
      call.base,
      progress,
      `${progress.lastError} (after ${attempts} attempt${attempts === 1 ? '' : 's'})`
    );
  }

  /**
   * One HTTP attempt under our own deadline: the SDK's timeout stops at the response headers, and a body that stalls
   * after them would otherwise hang the call for ever. Never rejects: a failure comes back classified.
   */
  private async attemptOnce(call: PreparedCall, signal: AbortSignal | undefined): Promise<AttemptOutcome> {
    const { model, temperature, maxTokens, timeoutMs } = this;
    const { messages, seed } = call;
    // A timer of our own, cleared when the call ends (AbortSignal.timeout's would live on for the whole timeout,
    // and at a thousand calls a second that is a lot of timers).
    const deadlineController = new AbortController();
    const deadline = deadlineController.signal;
    const deadlineTimer = setTimeout(
      () => deadlineController.abort(new DOMException(`timeout after ${timeoutMs} ms`, 'TimeoutError')),
      timeoutMs
    );
    try {
      const completion = await withLinkedSignal(signal, deadline, (callSignal) =>
        this.client.chat.completions.create(
          { model, messages, temperature, max_tokens: maxTokens, ...(seed === undefined ? {} : { seed }) },
          { signal: callSignal }
        )
      );
      // A 200 that is not JSON comes back from the SDK as a string: as malformed as a body cut short.
      if (!Array.isArray((completion as { choices?: unknown })?.choices)) {
        throw new SyntaxError(`expected a chat.completion object, got ${JSON.stringify(completion).slice(0, 80)}`);
      }
      return { completion };
    } catch (err) {
      return { failed: classifyError(err, { timeoutMs, timeoutSignal: deadline }) };
    } finally {
      clearTimeout(deadlineTimer);
    }
  }

  /** Replaces the attempt's budget reservation and limiter estimate by what the endpoint says it used. */
  private chargeUsage(
    usage: Usage | undefined,
    at: { reservation: number | undefined; budget: CallBudget | undefined; estimate: number; spent: Usage }
  ): void {
    const { maxTokens, limiter } = this;
    at.budget?.settle(at.reservation ?? 0, usage);
    if (!usage) return;
    // Only ever more than estimated: a prompt the endpoint counted as longer than our estimate.
    limiter?.settle(at.estimate + maxTokens, Math.max(at.estimate, usage.promptTokens) + maxTokens);
    at.spent.promptTokens += usage.promptTokens;
    at.spent.completionTokens += usage.completionTokens;
  }

  /** Writes a completion to the response cache, or hands the write to the caller when it defers writes. */
  private async cacheCompletion(key: string, record: CachedResponse, opts: CallOptions): Promise<void> {
    if (!this.store) return;
    const write = writeCachedResponse(this.store, key, record);
    if (opts.deferWrite) opts.deferWrite(write);
    else await write;
  }
}

/** The completion text, finish reason and reported usage of a chat.completion. */
function readCompletion(completion: ChatCompletion): {
  text: string;
  finishReason: string | undefined;
  usage: Usage | undefined;
} {
  const choice = completion.choices?.[0];
  const usage = completion.usage
    ? {
        promptTokens: completion.usage.prompt_tokens ?? 0,
        completionTokens: completion.usage.completion_tokens ?? 0,
      }
    : undefined;
  return { text: choice?.message?.content ?? '', finishReason: choice?.finish_reason ?? undefined, usage };
}

/** The `usage` field of a response: present only once the attempts spent something. */
function usageOf(progress: CallProgress): { usage?: Usage; rateLimit?: RateLimitWaits } {
  const { spent } = progress;
  const waitMs = Math.round(progress.rateLimit.waitMs);
  return {
    ...(spent.promptTokens + spent.completionTokens > 0 ? { usage: { ...spent } } : {}),
    // Under a millisecond is the limiter admitting at once, not a wait.
    ...(progress.rateLimit.refusals > 0 || waitMs > 0
      ? { rateLimit: { refusals: progress.rateLimit.refusals, waitMs } }
      : {}),
  };
}

/** No completion: why, with what the attempts made so far spent. */
function failedResponse(
  base: { id: string; promptHash: string },
  progress: CallProgress,
  error: string
): TeacherResponse {
  return { ...base, completion: '', cached: false, attempts: progress.attempts, ...usageOf(progress), error };
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Run one call under a short-lived signal that follows `parent` and `deadline`. The SDK leaves its abort listener on
 * whatever signal it is given; on the run-long cancellation signal that would add one listener per call (a leak over
 * 100k calls), on a per-call signal it is collected with the call.
 */
async function withLinkedSignal<T>(
  parent: AbortSignal | undefined,
  deadline: AbortSignal,
  call: (signal: AbortSignal) => Promise<T>
): Promise<T> {
  const controller = new AbortController();
  const forward = (from: AbortSignal) => () => controller.abort(from.reason);
  const onParent = parent ? forward(parent) : undefined;
  const onDeadline = forward(deadline);
  if (parent?.aborted) onParent!();
  else parent?.addEventListener('abort', onParent!, { once: true });
  if (deadline.aborted) onDeadline();
  else deadline.addEventListener('abort', onDeadline, { once: true });
  try {
    return await call(controller.signal);
  } finally {
    if (onParent) parent?.removeEventListener('abort', onParent);
    deadline.removeEventListener('abort', onDeadline);
  }
}

/** A cached record, or undefined when absent or unusable (a bad entry is re-fetched, not trusted). */
function readCached(bytes: Buffer | undefined, model: string): CachedResponse | undefined {
  if (bytes === undefined) return undefined;
  try {
    const record = JSON.parse(bytes.toString('utf8')) as CachedResponse;
    if (record.model === model && typeof record.completion === 'string' && record.completion.trim() !== '')
      return record;
  } catch {
    // fall through: treat as a miss
  }
  return undefined;
}

function validateConfig(
  cfg: OpenAITeacherConfig,
  resolved: { temperature: number; maxTokens: number; maxRetries: number }
): void {
  let url: URL | undefined;
  try {
    url = new URL(cfg.baseURL);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new InputError(
      `teacher.url is ${JSON.stringify(cfg.baseURL)}; expected an http(s) base URL such as https://api.openai.com/v1`,
      'teacher.url'
    );
  }
  if (typeof cfg.model !== 'string' || cfg.model.trim() === '') {
    throw new InputError(`teacher.model is ${JSON.stringify(cfg.model)}; expected a model name`, 'teacher.model');
  }
  if (!(typeof resolved.temperature === 'number' && resolved.temperature >= 0 && resolved.temperature <= 2)) {
    throw new InputError(
      `teacher.temperature is ${JSON.stringify(cfg.temperature)}; expected a number from 0 to 2`,
      'teacher.temperature'
    );
  }
  if (!Number.isSafeInteger(resolved.maxTokens) || resolved.maxTokens < 1) {
    throw new InputError(
      `teacher.maxTokens is ${JSON.stringify(cfg.maxTokens)}; expected an integer >= 1`,
      'teacher.maxTokens'
    );
  }
  if (!Number.isSafeInteger(resolved.maxRetries) || resolved.maxRetries < 0) {
    throw new InputError(
      `teacher.maxRetries is ${JSON.stringify(cfg.maxRetries)}; expected an integer >= 0`,
      'teacher.maxRetries'
    );
  }
  if (cfg.timeoutMs !== undefined && !(Number.isFinite(cfg.timeoutMs) && cfg.timeoutMs > 0)) {
    throw new InputError(
      `teacher.timeoutMs is ${JSON.stringify(cfg.timeoutMs)}; expected a number > 0`,
      'teacher.timeoutMs'
    );
  }
}
