/**
 * What a caller of the local teacher server sees: its options, fault plan, rate limit, counters and handle. Kept in
 * one module so the units that implement them (`server.ts` and its parts) all import downward from it.
 */
import type { ChatMessage } from '../types';

/**
 * Faults to inject, each consumed as requests arrive. A chat request that passed validation and the rate limit takes
 * the first of `status`, `dropConnection` left; else it waits out `hangMs` if set (consumed), then takes the first of
 * `truncatedBody`, `malformedBody`, `emptyCompletion` left. Batch lines take no request faults; batches take
 * `failBatches` and `expireBatches`, in that order, when they leave `validating`.
 */
export interface FaultPlan {
  /**
   * Answer the next `count` requests with this HTTP status. `retryAfterS` sends `retry-after` (seconds);
   * `retryAfterMs` sends `retry-after-ms`, as OpenAI does, and also `retry-after` rounded up unless `retryAfterS`
   * is given.
   */
  status?: { code: number; count: number; retryAfterS?: number; retryAfterMs?: number };
  /** Destroy the socket of the next this-many requests without answering. */
  dropConnection?: number;
  /** Stall the next request this long before answering it (a client timeout shorter than this sees a hang). */
  hangMs?: number;
  /**
   * Answer the next this-many requests 200 with a content-length for the whole completion, send half of it, then
   * destroy the socket: the client sees the body end early.
   */
  truncatedBody?: number;
  /** Answer the next this-many requests 200, `application/json`, with a body that is not valid JSON. */
  malformedBody?: number;
  /** Answer the next this-many requests with an empty completion. */
  emptyCompletion?: number;
  /** Arms {@link LocalTeacherServer.holdAfter} with this count (a plan without it leaves holding as it is). */
  holdAfter?: number;
  /**
   * The next this-many `POST /v1/batches` create their batch (it runs, and is billed), then drop the connection
   * without answering: the client cannot tell whether it was created.
   */
  loseBatchCreates?: number;
  /** The next this-many batches end `failed` when they leave `validating`; none of their lines is answered. */
  failBatches?: number;
  /**
   * The next `count` batches end `expired`: the first `doneLines` (default 0) lines are answered, the others go to
   * the error file with `error.code: 'batch_expired'`, as OpenAI files the requests an expired batch did not run.
   */
  expireBatches?: { count: number; doneLines?: number };
}

/** The sampling parameters of a request, as the answer function sees them. */
export interface RequestSampling {
  temperature?: number;
  /** The request's `seed`: with temperature > 0, distinct seeds ask for distinct samples. */
  seed?: number;
}

/**
 * Limits the server enforces as a provider would, over a SLIDING window: a request that would take the requests or
 * tokens that arrived in the last `windowMs` over a limit gets a 429 with `retry-after` (whole seconds, rounded up)
 * and `retry-after-ms` (exact) saying when it would fit. Tokens are counted as OpenAI counts them: the prompt's
 * (approximate) tokens plus the request's `max_tokens` (0 when absent). A refused request does not count against
 * the window; a request over the token limit on its own is refused for good (429, no retry-after).
 */
export interface RateLimit {
  requests?: number;
  tokens?: number;
  windowMs: number;
}

export interface LocalTeacherServerOptions {
  /** Port to listen on; 0 (the default) picks a free one. Always bound to 127.0.0.1: this is not a public service. */
  port?: number;
  /** The one model this server serves; requests naming another get a 404 `model_not_found`, as OpenAI answers. */
  model?: string;
  /**
   * Produces the completion for a request (direct or batch line); default: the scripted demo teacher
   * ({@link scriptedDemoTeacher}).
   */
  answer?: (messages: ChatMessage[], sampling: RequestSampling) => string;
  /** Delay before every direct answer, to make concurrency observable. Default 0. */
  latencyMs?: number;
  faults?: FaultPlan;
  /** Enforce a provider's rate limits; default: none. */
  rateLimit?: RateLimit;
  /**
   * Time a batch spends `in_progress` before its lines are answered and it completes. Default 0: it completes a
   * tick or two after it is created.
   */
  batchDelayMs?: number;
  /** Most requests in one batch's input file; more fail the batch at validation. Default 50,000 (OpenAI's limit). */
  maxBatchLines?: number;
  /**
   * The clock of the rate limit and the arrival log: milliseconds, never decreasing. Default `performance.now`;
   * tests pass a fake one to place requests at exact times.
   */
  clock?: () => number;
  /** Share of demo questions the default teacher answers wrongly. Default 0.1: good, not perfect. */
  errorRate?: number;
  /** Varies which questions are answered wrongly. Default 0. */
  seed?: number;
}

/** Scalar counters: cheap to read however many prompts the server has seen. */
export interface LocalTeacherServerCounters {
  /** Chat-completion requests received, valid or not, faulted or not, rate-limited or not; plus batch lines. */
  requests: number;
  /** Requests that passed validation and the rate limit (batch lines excluded): those {@link maxInWindow} counts. */
  accepted: number;
  /**
   * Completions delivered: a direct answer whose 200 response was fully written (`finish`), or a batch line answered
   * into an output file. Faulted, truncated, malformed and abandoned responses are not answers.
   */
  answered: number;
  /** Answers for a prompt hash that had been answered before: 0 when no call was ever paid for twice. */
  repeatedAnswers: number;
  /** Requests refused with 429 by {@link LocalTeacherServerOptions.rateLimit}. */
  rateLimited: number;
  /**
   * What the server billed, as a provider bills: the usage of every request it processed (went past refusals and
   * injected error statuses or drops to generate an answer), whether or not the answer reached the client (a
   * truncated or malformed body, a client that timed out or went away during a hang or latency), and of every
   * batch line answered.
   */
  billedPromptTokens: number;
  billedCompletionTokens: number;
  /** Requests held now (see {@link LocalTeacherServer.hold}) whose client is still waiting. */
  held: number;
  /** Requests being handled now (held ones included), and the most there ever were at once. */
  inFlight: number;
  maxInFlight: number;
}

export interface LocalTeacherServerStats extends LocalTeacherServerCounters {
  /**
   * Valid requests (rate-limited and faulted ones included; batch lines too) per {@link promptHash} of
   * (model, messages, temperature, max tokens, seed).
   */
  byPromptHash: Record<string, number>;
  /** {@link LocalTeacherServerCounters.answered} per prompt hash; hashes never answered are absent. */
  answeredByPromptHash: Record<string, number>;
}

export interface LocalTeacherServer {
  /** Base URL for an OpenAI client, ending in `/v1`. */
  url: string;
  /** Counters with per-prompt copies: O(distinct prompts); poll {@link counters} or {@link countFor} instead. */
  stats(): LocalTeacherServerStats;
  /** The scalar counters alone, O(1). */
  counters(): LocalTeacherServerCounters;
  /** Requests and answers for one prompt hash, O(1); zeros for a hash never seen. */
  countFor(hash: string): { requests: number; answered: number };
  /**
   * The most accepted requests (or their tokens, counted as the rate limit counts them) that arrived within any
   * sliding window of `windowMs`: for each arrival, it and those less than `windowMs` before it. O(accepted).
   */
  maxInWindow(windowMs: number, what: 'requests' | 'tokens'): number;
  /**
   * When (on the server's clock, `clock` or `performance.now`) each injected error status was answered: with
   * {@link acceptedFrom}, a test sees what arrived after a 429 and before its `retry-after` ran out.
   */
  injectedStatuses(): { at: number; status: number }[];
  /** Arrival times of accepted requests (those {@link maxInWindow} counts) at or after `from`, in order. */
  acceptedFrom(from: number): number[];
  /** Hold every further accepted request (not answered) until {@link release}. */
  hold(): void;
  /**
   * Let exactly `answers` more answers be delivered (the requests beyond those in progress wait their turn), then
   * hold every further accepted request until {@link release}. For kill tests: the test waits for `held > 0`, kills
   * the worker, releases, and counts repeats.
   */
  holdAfter(answers: number): void;
  /** Stop holding; held requests proceed normally (those whose client went away are dropped). */
  release(): void;
  /** Replace the remaining fault plan. */
  setFaults(faults: FaultPlan): void;
  /** Stop listening and cut open connections, hanging and held requests included; stop batches in progress. */
  close(): Promise<void>;
}

/** Produces the completion for a request: the server's teacher. */
export type AnswerFn = NonNullable<LocalTeacherServerOptions['answer']>;
