/**
 * The teacher's contract: what a stage hands it (chat requests) and what it gets back (one response per request, in
 * order). Implementations: an OpenAI-compatible endpoint (`openai-teacher.ts`) and recorded completions
 * (`replay-teacher.ts`).
 */
import { sha256Hex } from '../store/artifact-store';

/** One chat message as the OpenAI chat-completions API takes it (plain text content only). */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** One example's prompt. */
export interface TeacherRequest {
  /** The example id; echoed on the response so results can be joined back to examples. */
  id: string;
  messages: ChatMessage[];
  /**
   * Where the example came from. Only the replay teacher reads it: recorded completions are indexed by split and
   * 0-based row, not by prompt.
   */
  source?: { split: string; row: number };
  /**
   * Sent as the request's `seed` (and part of the cache key): one prompt asked several times for self-consistency
   * gets seeds 0..k-1, so each sample is a distinct call that a re-run finds in the cache.
   */
  seed?: number;
}

/** What the teacher said about one request. */
export interface TeacherResponse {
  id: string;
  /** The raw completion, unparsed ('' when `error` is set). Parsing is the validate stage's job. */
  completion: string;
  /** True when the completion came from the artifact store's response cache and no call was made. */
  cached: boolean;
  /** Identifies what was asked (see {@link promptHash}); lineage records it beside the completion. */
  promptHash: string;
  /** Tokens this call spent, as the endpoint reported them; absent for cache hits and replay (nothing was spent). */
  usage?: { promptTokens: number; completionTokens: number };
  /**
   * Why there is no completion, after retries. Set per response rather than thrown, so one bad example does not
   * sink a batch of thousands: the stage decides how many failures it tolerates.
   */
  error?: string;
  /** HTTP calls made for this response: 0 for cache hits and replay, more than 1 after retries. */
  attempts?: number;
  /** The endpoint's `finish_reason` (`stop`, `length`, ...), when there is a completion. */
  finishReason?: string;
  /** Set when the call was never sent because the run's cost budget could not cover it (`error` says so too). */
  notSent?: 'budget';
  /** Time this call waited on rate limits (our limiter's pacing and the endpoint's 429s), when it waited at all. */
  rateLimit?: RateLimitWaits;
}

/** Waits on rate limits: the endpoint's refusals (429) and the milliseconds spent waiting, ours and theirs. */
export interface RateLimitWaits {
  /** Attempts the endpoint refused with 429. */
  refusals: number;
  /** Milliseconds spent waiting: for the limiter to admit an attempt, and out a 429's retry-after or backoff. */
  waitMs: number;
}

/** A run's spending limit, shared by the calls of one shard (see `budget.ts`). */
export interface CallBudget {
  /**
   * Reserve the worst case of one attempt before sending it; returns the reservation, or undefined when the budget
   * cannot cover it (the call is then not sent).
   */
  reserve(promptTokens: number, maxTokens: number): number | undefined;
  /** Replace a reservation by what the attempt really cost (nothing when the endpoint reported no usage). */
  settle(reservation: number, usage: { promptTokens: number; completionTokens: number } | undefined): void;
}

export interface CallOptions {
  signal?: AbortSignal;
  budget?: CallBudget;
  /** The caller already looked the request up with {@link Teacher.lookup} and missed: go straight to the endpoint. */
  skipLookup?: boolean;
  /**
   * Takes the response-cache write instead of waiting for it, so the caller's slot is free for the next call while
   * it lands; the caller must await it before reporting the work done.
   */
  deferWrite?: (write: Promise<unknown>) => void;
}

export interface CompleteOptions {
  /** Requests in flight at once. Default 8. */
  concurrency?: number;
  /** Aborting rejects `complete()` promptly and cancels calls in flight; completions already cached stay cached. */
  signal?: AbortSignal;
  /** Called after each response with the number done so far; drives heartbeats and progress bars. */
  onProgress?: (done: number, total: number) => void;
}

export interface Teacher {
  kind: 'openai' | 'replay';
  /** The model name recorded in lineage. */
  model: string;
  /**
   * One response per request, in request order. Per-request failures are returned with `error` set; only an abort
   * (or a misconfiguration that would fail every request the same way) rejects.
   */
  complete(requests: readonly TeacherRequest[], opts?: CompleteOptions): Promise<TeacherResponse[]>;
  /**
   * One request, with the teacher's retries. Resolves with `error` set rather than rejecting for per-call failures;
   * rejects only on abort.
   */
  callOne(request: TeacherRequest, opts?: CallOptions): Promise<TeacherResponse>;
  /**
   * The cached response for a request, if an earlier call made it (no call is made here). A `callOne` of the same
   * request object may reuse what the lookup computed: a request must not change between the two.
   */
  lookup?(request: TeacherRequest): Promise<TeacherResponse | undefined>;
  /** Sampling parameters that, with the model, decide the answer: part of every cache and shard key. */
  sampling: { temperature?: number; maxTokens?: number };
}

/**
 * The identity of a teacher call: sha256 of the canonical JSON of everything that decides the answer. The same
 * function is used by the client (as the cache key) and by the local test server (to count requests per prompt),
 * so a test can tell exactly which prompts reached the network.
 */
export function promptHash(call: {
  model: string;
  messages: readonly ChatMessage[];
  temperature?: number;
  maxTokens?: number;
  /**
   * The request's `seed`, sent when several samples of one prompt are wanted (self-consistency): it makes each
   * sample a distinct, reproducible call. Absent for ordinary calls, which keeps their hashes unchanged.
   */
  seed?: number;
}): string {
  // The canonical JSON (keys sorted) of these fields, written out in sorted order rather than sorted per call: the
  // same bytes as canonicalJson gives (test/teacher-openai.test.ts checks), at a fraction of its cost, paid on every
  // call. JSON drops an undefined member, so a call without a seed hashes as it always did.
  return sha256Hex(
    JSON.stringify({
      maxTokens: call.maxTokens,
      // Only role and content: extra fields a caller may carry along do not change the answer.
      messages: call.messages.map((m) => ({ content: m.content, role: m.role })),
      model: call.model,
      seed: call.seed,
      temperature: call.temperature,
    })
  );
}

/** The store key of a cached teacher response. */
export function teacherCacheKey(hash: string): string {
  return `cache/teacher/${hash}.json`;
}
