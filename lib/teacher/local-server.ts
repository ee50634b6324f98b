/**
 * A small OpenAI-compatible server of our own (node:http, no framework): the teacher's test double. It serves
 * (a) the zero-config demo's scripted teacher, which reasons correctly about demo reviews most of the time, and
 * (b) tests, which inject faults (error statuses, dropped connections, hangs, truncated or malformed bodies, empty
 * answers), impose a provider's rate limits, hold requests while a worker is killed, run OpenAI batches, and read back
 * what reached the server: requests and delivered answers per prompt hash, and the most requests (or tokens) that
 * arrived in any window. The teacher client talks to it through the official `openai` SDK exactly as it would to a
 * real endpoint, so retries, timeouts and error mapping are exercised for real.
 *
 * Routes: `POST /v1/chat/completions`, `GET /v1/models`, and the Batch API's `/v1/files` and `/v1/batches` (see
 * `local-server-batch.ts`).
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';

import { DEMO_LABELS, solveDemo } from '../data/demo-task';
import { InputError } from '../errors';
import { createBatchService, type BatchOutcome } from './local-server-batch';
import { badParam, HttpError, readJsonBody, sendJson } from './local-server-http';
import { ArrivalLog, SlidingWindowLimiter, type WindowVerdict } from './local-server-window';
import { promptHash, type ChatMessage } from './types';

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

export const DEFAULT_LOCAL_MODEL = 'stepwise-scripted';

/** Requests larger than this are not prompts; refusing them bounds memory. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;

const ROLES = ['system', 'user', 'assistant', 'developer', 'tool'];

/** The answer of a teacher that does not recognise the question: readable, and deliberately unparseable. */
export const UNKNOWN_ANSWER = "I don't know.";

/** Where holding stands: off, holding everything, or letting a number of answers through first. */
type HoldState =
  { kind: 'open' } | { kind: 'closed' } | { kind: 'after'; limit: number; answered: number; passing: number };
type Gate = Extract<HoldState, { kind: 'after' }>;

/** A held request: how to let it go on (through the gate when `gate` is set). */
interface Held {
  resume(gate: Gate | undefined): void;
}

/**
 * Starts the server and resolves once it is listening.
 * @throws InputError when an option is out of range.
 */
export async function startLocalTeacherServer(opts: LocalTeacherServerOptions = {}): Promise<LocalTeacherServer> {
  const model = opts.model ?? DEFAULT_LOCAL_MODEL;
  const latencyMs = opts.latencyMs ?? 0;
  if (!Number.isFinite(latencyMs) || latencyMs < 0) {
    throw new InputError(`latencyMs is ${JSON.stringify(opts.latencyMs)}; expected a number >= 0`, 'latencyMs');
  }
  if (typeof model !== 'string' || model === '') {
    throw new InputError(`model is ${JSON.stringify(opts.model)}; expected a non-empty string`, 'model');
  }
  const batchDelayMs = opts.batchDelayMs ?? 0;
  if (!Number.isFinite(batchDelayMs) || batchDelayMs < 0) {
    throw new InputError(
      `batchDelayMs is ${JSON.stringify(opts.batchDelayMs)}; expected a number >= 0`,
      'batchDelayMs'
    );
  }
  const maxBatchLines = opts.maxBatchLines ?? 50_000;
  if (!Number.isSafeInteger(maxBatchLines) || maxBatchLines < 1) {
    throw new InputError(
      `maxBatchLines is ${JSON.stringify(opts.maxBatchLines)}; expected an integer >= 1`,
      'maxBatchLines'
    );
  }
  const limiter = opts.rateLimit && validateRateLimit(opts.rateLimit);
  const clock = opts.clock ?? (() => performance.now());
  const answer = opts.answer ?? scriptedDemoTeacher({ errorRate: opts.errorRate, seed: opts.seed });
  const counters: LocalTeacherServerCounters = {
    requests: 0,
    accepted: 0,
    answered: 0,
    repeatedAnswers: 0,
    rateLimited: 0,
    held: 0,
    inFlight: 0,
    maxInFlight: 0,
  };
  /** Per prompt hash; a Map, not an object, because 100k keys is an ordinary run. */
  const byHash = new Map<string, { requests: number; answered: number }>();
  const arrivals = new ArrivalLog();
  const timers = new Set<NodeJS.Timeout>();
  let served = 0;
  let hold: HoldState = { kind: 'open' };
  /** Held requests in arrival order (a Set keeps insertion order and deletes in O(1)). */
  const held = new Set<Held>();
  let faults: FaultPlan = {};
  const setFaults = (f: FaultPlan) => {
    faults = copyFaults(f);
    if (f.holdAfter !== undefined) holdAfter(f.holdAfter);
  };

  const countRequest = (hash: string) => {
    const entry = byHash.get(hash);
    if (entry) entry.requests++;
    else byHash.set(hash, { requests: 1, answered: 0 });
  };
  const countAnswer = (hash: string) => {
    const entry = byHash.get(hash)!;
    if (entry.answered > 0) counters.repeatedAnswers++;
    entry.answered++;
    counters.answered++;
  };

  /** Resolves after `ms`, or early when the client goes away (no point answering a closed socket). */
  const wait = (ms: number, res: ServerResponse) =>
    new Promise<void>((resolve) => {
      if (ms <= 0) return resolve();
      const timer = setTimeout(done, ms);
      timers.add(timer);
      res.once('close', done);
      function done() {
        clearTimeout(timer);
        timers.delete(timer);
        res.off('close', done);
        resolve();
      }
    });

  function holdAfter(answers: number): void {
    if (!Number.isSafeInteger(answers) || answers < 0) {
      throw new InputError(`holdAfter is ${JSON.stringify(answers)}; expected an integer >= 0`, 'holdAfter');
    }
    if (answers === 0) {
      hold = { kind: 'closed' };
    } else {
      hold = { kind: 'after', limit: answers, answered: 0, passing: 0 };
      // Requests held by an earlier hold() get the new gate's places first.
      fillGate(hold);
    }
  }

  function release(): void {
    hold = { kind: 'open' };
    const all = [...held];
    held.clear();
    counters.held = 0;
    for (const h of all) h.resume(undefined);
  }

  /** While a gate has room (answers delivered plus answers in progress below its limit), let held requests through. */
  function fillGate(gate: Gate): void {
    for (const h of held) {
      if (gate.answered + gate.passing >= gate.limit) return;
      held.delete(h);
      counters.held = held.size;
      gate.passing++;
      h.resume(gate);
    }
  }

  /**
   * Admits an accepted request past holding: at once, or once released (or let through a gate). Resolves with the
   * gate it passed, if any, so its outcome is reported back to that gate when the response closes.
   */
  function admit(res: ServerResponse): Promise<Gate | undefined> {
    if (hold.kind === 'open') return Promise.resolve(undefined);
    if (hold.kind === 'after' && hold.answered + hold.passing < hold.limit) {
      hold.passing++;
      return Promise.resolve(hold);
    }
    return new Promise((resolve) => {
      const entry: Held = {
        resume: (gate) => {
          res.off('close', gone);
          resolve(gate);
        },
      };
      // A client that gives up while held is dropped: it is not waiting for an answer any more.
      const gone = () => {
        held.delete(entry);
        counters.held = held.size;
        resolve(undefined);
      };
      res.once('close', gone);
      held.add(entry);
      counters.held = held.size;
    });
  }

  /** A request that passed a gate has ended: count its answer, close the gate when full, or free its place. */
  function leaveGate(gate: Gate, answered: boolean): void {
    gate.passing--;
    if (answered) gate.answered++;
    if (hold !== gate) return; // released or replaced meanwhile
    if (gate.answered >= gate.limit) hold = { kind: 'closed' };
    else fillGate(gate);
  }

  function checkModel(request: ChatRequest): void {
    if (request.model !== model) {
      throw new HttpError(
        404,
        `The model '${request.model}' does not exist`,
        'invalid_request_error',
        'model',
        'model_not_found'
      );
    }
  }

  /** The response to a request whose answer is `content`, in OpenAI's shape, after the `max_tokens` cut. */
  function completionFor(request: ChatRequest, content: string): object {
    let finishReason = 'stop';
    if (request.maxTokens !== undefined && approxTokens(content) > request.maxTokens) {
      content = content.slice(0, request.maxTokens * CHARS_PER_TOKEN);
      finishReason = 'length';
    }
    const promptTokens = promptTokensOf(request.messages);
    const completionTokens = approxTokens(content);
    return {
      id: `chatcmpl-local-${++served}`,
      object: 'chat.completion',
      created: Math.floor(Date.now() / 1000),
      model,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content, refusal: null },
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
      usage: {
        prompt_tokens: promptTokens,
        completion_tokens: completionTokens,
        total_tokens: promptTokens + completionTokens,
      },
    };
  }

  const samplingOf = (request: ChatRequest): RequestSampling => ({
    temperature: request.temperature,
    seed: request.seed,
  });

  function rateLimitError(verdict: WindowVerdict, tokens: number, rateLimit: RateLimit): HttpError {
    const what = verdict.limitedBy!;
    const limit = what === 'requests' ? rateLimit.requests : rateLimit.tokens;
    const per = `${what} per ${rateLimit.windowMs} ms`;
    if (verdict.waitMs === Infinity) {
      return new HttpError(
        429,
        `Request too large for ${model} on ${per}: Limit ${limit}, Requested ${tokens}. ` +
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
      `Rate limit reached for ${model} on ${per}: Limit ${limit}, Used ${used}, ` +
        `Requested ${what === 'requests' ? 1 : tokens}. Please try again in ${waitMs}ms.`,
      what,
      null,
      'rate_limit_exceeded',
      { 'retry-after': String(Math.ceil(waitMs / 1000)), 'retry-after-ms': String(waitMs) }
    );
  }

  async function chatCompletion(req: IncomingMessage, res: ServerResponse): Promise<void> {
    counters.requests++;
    const request = validateChatRequest(await readJsonBody(req, MAX_BODY_BYTES));
    checkModel(request);
    const hash = promptHash(request);
    countRequest(hash);

    // Tokens as OpenAI's limiter counts them: the prompt plus the most the completion may take.
    const tokens = promptTokensOf(request.messages) + (request.maxTokens ?? 0);
    const now = clock();
    if (limiter) {
      const verdict = limiter.check(now, tokens);
      if (verdict.waitMs > 0) {
        counters.rateLimited++;
        throw rateLimitError(verdict, tokens, opts.rateLimit!);
      }
      limiter.add(now, tokens);
    }
    counters.accepted++;
    arrivals.add(now, tokens);

    const gate = await admit(res);
    let answered = false;
    if (gate) {
      if (res.closed) leaveGate(gate, false);
      else res.once('close', () => leaveGate(gate, answered));
    }
    if (res.destroyed) return;

    if (faults.status && faults.status.count > 0) {
      const { code, retryAfterS, retryAfterMs } = faults.status;
      if (--faults.status.count === 0) delete faults.status;
      const headers: Record<string, string> = {};
      if (retryAfterMs !== undefined) headers['retry-after-ms'] = String(retryAfterMs);
      if (retryAfterS !== undefined) headers['retry-after'] = String(retryAfterS);
      else if (retryAfterMs !== undefined) headers['retry-after'] = String(Math.ceil(retryAfterMs / 1000));
      throw new HttpError(
        code,
        `injected fault: status ${code}`,
        code >= 500 ? 'server_error' : 'invalid_request_error',
        null,
        null,
        headers
      );
    }
    if (faults.dropConnection && faults.dropConnection > 0) {
      faults.dropConnection--;
      req.socket.destroy();
      return;
    }
    if (faults.hangMs !== undefined) {
      const hang = faults.hangMs;
      delete faults.hangMs;
      await wait(hang, res);
    }
    await wait(latencyMs, res);
    if (res.destroyed) return;

    if (faults.truncatedBody && faults.truncatedBody > 0) {
      faults.truncatedBody--;
      const text = Buffer.from(JSON.stringify(completionFor(request, answer(request.messages, samplingOf(request)))));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': text.length });
      res.write(text.subarray(0, text.length >> 1), () => res.destroy());
      return;
    }
    if (faults.malformedBody && faults.malformedBody > 0) {
      faults.malformedBody--;
      const text = JSON.stringify(completionFor(request, answer(request.messages, samplingOf(request))));
      // Well framed (the content-length matches), but cut mid-object: what a broken proxy or server sends.
      const body = text.slice(0, text.length >> 1);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    let content: string;
    if (faults.emptyCompletion && faults.emptyCompletion > 0) {
      faults.emptyCompletion--;
      content = '';
    } else {
      content = answer(request.messages, samplingOf(request));
    }
    res.once('finish', () => {
      answered = true;
      countAnswer(hash);
    });
    sendJson(res, 200, completionFor(request, content));
  }

  const batchService = createBatchService({
    batchDelayMs,
    maxLines: maxBatchLines,
    answer: (body) => {
      counters.requests++;
      const request = validateChatRequest(body);
      checkModel(request);
      const hash = promptHash(request);
      countRequest(hash);
      const completion = completionFor(request, answer(request.messages, samplingOf(request)));
      countAnswer(hash);
      return completion;
    },
    takeOutcome: (): BatchOutcome | undefined => {
      if (faults.failBatches && faults.failBatches > 0) {
        faults.failBatches--;
        return { status: 'failed' };
      }
      const expire = faults.expireBatches;
      if (expire && expire.count > 0) {
        if (--expire.count === 0) delete faults.expireBatches;
        return { status: 'expired', doneLines: expire.doneLines ?? 0 };
      }
      return undefined;
    },
  });

  const server = createServer((req, res) => {
    counters.inFlight++;
    counters.maxInFlight = Math.max(counters.maxInFlight, counters.inFlight);
    res.once('close', () => counters.inFlight--);
    const [rawPath, rawQuery = ''] = (req.url ?? '/').split('?');
    const path = rawPath.replace(/\/+$/, '');
    const handle = async () => {
      if (path === '/v1/chat/completions') {
        if (req.method !== 'POST') throw new HttpError(405, `${req.method} is not allowed here; expected POST`);
        return chatCompletion(req, res);
      }
      if (path === '/v1/models') {
        if (req.method !== 'GET') throw new HttpError(405, `${req.method} is not allowed here; expected GET`);
        return sendJson(res, 200, {
          object: 'list',
          data: [{ id: model, object: 'model', created: 0, owned_by: 'stepwise' }],
        });
      }
      if (await batchService.route(req, res, path, new URLSearchParams(rawQuery))) return;
      throw new HttpError(
        404,
        `no route ${req.method} ${path || '/'}; this server serves POST /v1/chat/completions, GET /v1/models, ` +
          '/v1/files and /v1/batches'
      );
    };
    handle().catch((err: unknown) => {
      if (res.headersSent || res.destroyed) return;
      const e =
        err instanceof HttpError
          ? err
          : new HttpError(500, `the teacher failed: ${(err as Error)?.message ?? err}`, 'server_error');
      sendJson(res, e.status, { error: e.toJSON() }, e.headers);
    });
  });

  // Options are checked before listening, so a bad one leaves nothing running.
  setFaults(opts.faults ?? {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/v1`,
    stats: () => {
      const byPromptHash: Record<string, number> = {};
      const answeredByPromptHash: Record<string, number> = {};
      for (const [hash, { requests, answered }] of byHash) {
        byPromptHash[hash] = requests;
        if (answered > 0) answeredByPromptHash[hash] = answered;
      }
      return { ...counters, byPromptHash, answeredByPromptHash };
    },
    counters: () => ({ ...counters }),
    countFor: (hash) => {
      const entry = byHash.get(hash);
      return { requests: entry?.requests ?? 0, answered: entry?.answered ?? 0 };
    },
    maxInWindow: (windowMs, what) => {
      if (!(windowMs > 0)) {
        throw new InputError(`windowMs is ${JSON.stringify(windowMs)}; expected a number > 0`, 'windowMs');
      }
      return arrivals.maxInWindow(windowMs, what);
    },
    hold: () => {
      hold = { kind: 'closed' };
    },
    holdAfter,
    release,
    setFaults,
    close: () =>
      new Promise<void>((resolve, reject) => {
        for (const timer of timers) clearTimeout(timer);
        timers.clear();
        batchService.close();
        server.close((err) => (err ? reject(err) : resolve()));
        // Keep-alive sockets and hanging or held requests would otherwise hold close() open.
        server.closeAllConnections();
      }),
  };
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

/**
 * The demo's scripted teacher. It finds the last `Q:` question in the last user message, solves the review with
 * {@link solveDemo} and answers `<rationale> So the answer is <label>.`. For a share `errorRate` of questions, picked
 * by a hash of the question and `seed` (so the same question always gets the same answer), it miscounts instead: it
 * misreads just enough adjectives to flip the majority and answers the other label with a rationale that is wrong
 * but reads like a real one, as a real teacher's mistakes do. A question that is not a demo review gets
 * {@link UNKNOWN_ANSWER}.
 *
 * Sampling: at temperature 0 (or none) the request's seed is ignored, as greedy decoding would. At temperature > 0
 * the hash also covers the request's `seed`, so samples with distinct seeds are independent draws, each wrong with
 * probability `errorRate`, and the same seed gives the same sample again.
 * @throws InputError when errorRate is not in [0, 1] or seed is not an integer.
 */
export function scriptedDemoTeacher(
  opts: { errorRate?: number; seed?: number } = {}
): (messages: ChatMessage[], sampling?: RequestSampling) => string {
  const errorRate = opts.errorRate ?? 0.1;
  const seed = opts.seed ?? 0;
  if (!(errorRate >= 0 && errorRate <= 1)) {
    throw new InputError(`errorRate is ${JSON.stringify(opts.errorRate)}; expected a number from 0 to 1`, 'errorRate');
  }
  if (!Number.isSafeInteger(seed)) {
    throw new InputError(`seed is ${JSON.stringify(opts.seed)}; expected an integer`, 'seed');
  }
  return (messages, sampling) => {
    const question = lastQuestion(messages);
    const solved = question === undefined ? undefined : solveDemo(question);
    if (question === undefined || solved === undefined) return UNKNOWN_ANSWER;
    const sampled = sampling?.temperature !== undefined && sampling.temperature > 0;
    const key = sampled ? `${seed}\n${sampling.seed ?? 'none'}\n${question}` : `${seed}\n${question}`;
    const digest = createHash('sha256').update(key).digest();
    const wrong = digest.readUInt32BE(0) / 0x1_0000_0000 < errorRate;
    const { rationale, label } = wrong ? (miscount(solved.rationale, digest[4]) ?? solved) : solved;
    return `${rationale} So the answer is ${label}.`;
  };
}

/** The text after the last `Q:` that starts a line in the last user message, up to its `A:` line. */
function lastQuestion(messages: readonly ChatMessage[]): string | undefined {
  const user = [...messages].reverse().find((m) => m.role === 'user');
  if (user === undefined) return undefined;
  const starts = [...user.content.matchAll(/(?:^|\n)Q:[ \t]*/g)];
  const last = starts.at(-1);
  if (last === undefined) return undefined;
  const rest = user.content.slice(last.index + last[0].length);
  const end = rest.search(/\nA:/);
  return (end === -1 ? rest : rest.slice(0, end)).trim();
}

const RATIONALE = /^(\w+) is (positive|negative), (\w+) is (positive|negative) and (\w+) is (positive|negative)\./;

/**
 * A plausible wrong answer: starting at a hash-chosen word, misread majority-side adjectives as the opposite polarity
 * until the majority flips, then count and answer consistently with the misreading.
 */
function miscount(rationale: string, pick: number): { rationale: string; label: string } | undefined {
  const match = RATIONALE.exec(rationale);
  if (match === null) return undefined;
  const words = [match[1], match[3], match[5]];
  const polarities = [match[2], match[4], match[6]];
  const count = (p: string) => polarities.filter((q) => q === p).length;
  const majority = count('positive') > count('negative') ? 'positive' : 'negative';
  const other = DEMO_LABELS.find((l) => l !== majority)!;
  for (let k = 0; k < 3 && count(other) <= count(majority); k++) {
    const i = (pick + k) % 3;
    if (polarities[i] === majority) polarities[i] = other;
  }
  const [a, b, c] = words.map((w, i) => `${w} is ${polarities[i]}`);
  return {
    rationale: `${a}, ${b} and ${c}. That is ${count('positive')} positive and ${count('negative')} negative.`,
    label: other,
  };
}

/** A rough token count (OpenAI's rule of thumb); good enough for usage figures and the `max_tokens` cut. */
const CHARS_PER_TOKEN = 4;
function approxTokens(text: string): number {
  return Math.ceil(text.length / CHARS_PER_TOKEN);
}

/** The prompt tokens reported in `usage` and counted by the rate limit. */
function promptTokensOf(messages: readonly ChatMessage[]): number {
  return approxTokens(messages.map((m) => m.content).join('\n'));
}

interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  temperature?: number;
  maxTokens?: number;
  seed?: number;
}

/** The subset of the chat-completions request this server understands, checked as strictly as OpenAI does. */
function validateChatRequest(body: unknown): ChatRequest {
  const bad = badParam;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'the request body must be a JSON object');
  }
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '')
    throw bad('model', `got ${JSON.stringify(b.model)}; expected a model name`);
  if (b.stream === true)
    throw bad('stream', 'streaming is not supported by this server; expected stream to be false or absent');
  if (b.n !== undefined && b.n !== null && b.n !== 1) throw bad('n', `got ${JSON.stringify(b.n)}; expected 1`);
  if (!Array.isArray(b.messages) || b.messages.length === 0) {
    throw bad('messages', 'expected a non-empty array of messages');
  }
  const messages = b.messages.map((m: unknown, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw bad(param, 'expected an object with role and content');
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.includes(role)) {
      throw bad(`${param}.role`, `got ${JSON.stringify(role)}; expected one of ${ROLES.join(', ')}`);
    }
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content) && content.every((p) => p?.type === 'text' && typeof p.text === 'string')) {
      text = content.map((p: { text: string }) => p.text).join('');
    } else throw bad(`${param}.content`, 'expected a string or an array of text parts');
    return { role: role as ChatMessage['role'], content: text };
  });
  const temperature = b.temperature ?? undefined;
  if (temperature !== undefined && !(typeof temperature === 'number' && temperature >= 0 && temperature <= 2)) {
    throw bad('temperature', `got ${JSON.stringify(temperature)}; expected a number from 0 to 2`);
  }
  const maxTokensField = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = b[maxTokensField] ?? undefined;
  if (maxTokens !== undefined && !(Number.isSafeInteger(maxTokens) && (maxTokens as number) >= 1)) {
    throw bad(maxTokensField, `got ${JSON.stringify(maxTokens)}; expected an integer >= 1`);
  }
  const seed = b.seed ?? undefined;
  if (seed !== undefined && !Number.isSafeInteger(seed)) {
    throw bad('seed', `got ${JSON.stringify(seed)}; expected an integer`);
  }
  return {
    model: b.model,
    messages,
    temperature: temperature as number | undefined,
    maxTokens: maxTokens as number | undefined,
    seed: seed as number | undefined,
  };
}

/** A copy the server may consume without changing the caller's plan. */
function copyFaults(f: FaultPlan): FaultPlan {
  return {
    ...f,
    status: f.status ? { ...f.status } : undefined,
    expireBatches: f.expireBatches ? { ...f.expireBatches } : undefined,
  };
}
