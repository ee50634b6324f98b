/**
 * `POST /v1/chat/completions`, and the same answer for a batch line. The route is the one place where the server's
 * parts meet a request in order: count it, check it, rate-limit it, hold it, inject a fault, wait, answer. Kept apart
 * from the server's lifecycle so that order reads top to bottom.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

import { promptHash } from '../types';
import {
  checkModel,
  completionFor,
  promptTokensOf,
  samplingOf,
  usageFor,
  validateChatRequest,
  type ChatRequest,
} from './chat-format';
import type { RequestCounters } from './counters';
import { sendMalformed, sendTruncated, type FaultInjector } from './faults';
import type { HoldGate } from './hold-gate';
import { readJsonBody, sendJson } from './http';
import type { ProviderRateLimit } from './provider-limit';
import type { AnswerFn } from './types';

/** Requests larger than this are not prompts; refusing them bounds memory. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;

export interface ChatRouteDeps {
  model: string;
  answer: AnswerFn;
  /** Delay before every direct answer. */
  latencyMs: number;
  rateLimit: ProviderRateLimit | undefined;
  clock: () => number;
  counters: RequestCounters;
  gate: HoldGate;
  faults: FaultInjector;
}

export class ChatRoute {
  /** Completions built, direct and batch alike: numbers their ids. */
  private served = 0;
  /** Pending hangs and latencies, cut short by {@link close}. */
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly deps: ChatRouteDeps) {}

  async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { counters, gate, faults } = this.deps;
    counters.onRequest();
    const request = validateChatRequest(await readJsonBody(req, MAX_BODY_BYTES));
    checkModel(request, this.deps.model);
    const hash = promptHash(request);
    counters.onPrompt(hash);
    this.accept(request);

    const delivered = gate.settle(await gate.admit(res), res);
    if (res.destroyed) return;

    const status = faults.takeStatus();
    if (status) {
      counters.onInjectedStatus(this.deps.clock(), status.status);
      throw status;
    }
    if (faults.takeDrop()) {
      req.socket.destroy();
      return;
    }
    // From here the provider generates the answer and bills it, whether or not the client is there to read it.
    const content = this.answer(request);
    counters.onBilled(usageFor(request, content));
    const hang = faults.takeHang();
    if (hang !== undefined) await this.wait(hang, res);
    await this.wait(this.deps.latencyMs, res);
    if (res.destroyed) return;
    this.reply(request, content, res, () => {
      delivered();
      counters.onAnswer(hash);
    });
  }

  /**
   * Answers one batch line's request body as a direct call would, counting it the same way (no rate limit, holding
   * or faults: those belong to direct requests).
   * @throws HttpError for a request the API would refuse.
   */
  answerLine(body: unknown): object {
    const { counters } = this.deps;
    counters.onRequest();
    const request = validateChatRequest(body);
    checkModel(request, this.deps.model);
    const hash = promptHash(request);
    counters.onPrompt(hash);
    const content = this.answer(request);
    counters.onBilled(usageFor(request, content));
    const completion = this.complete(request, content);
    counters.onAnswer(hash);
    return completion;
  }

  /** Cut pending hangs and latencies short, so closing the server leaves no timers behind. */
  close(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  /**
   * Counts the request against the rate limit and the arrival log.
   * @throws HttpError 429 when the rate limit refuses it.
   */
  private accept(request: ChatRequest): void {
    const { counters, rateLimit } = this.deps;
    // Tokens as OpenAI's limiter counts them: the prompt plus the most the completion may take.
    const tokens = promptTokensOf(request.messages) + (request.maxTokens ?? 0);
    const now = this.deps.clock();
    const refusal = rateLimit?.take(now, tokens);
    if (refusal) {
      counters.onRateLimited();
      throw refusal;
    }
    counters.onAccepted(now, tokens);
  }

  /** Sends the answer, or the body fault that replaces it; `onDelivered` runs once a 200 was fully written. */
  private reply(request: ChatRequest, answer: string, res: ServerResponse, onDelivered: () => void): void {
    const fault = this.deps.faults.takeBodyFault();
    if (fault === 'truncated') return sendTruncated(res, this.complete(request, answer));
    if (fault === 'malformed') return sendMalformed(res, this.complete(request, answer));
    const content = fault === 'empty' ? '' : answer;
    res.once('finish', onDelivered);
    sendJson(res, 200, this.complete(request, content));
  }

  private answer(request: ChatRequest): string {
    return this.deps.answer(request.messages, samplingOf(request));
  }

  private complete(request: ChatRequest, content: string): object {
    return completionFor(request, content, this.deps.model, `chatcmpl-local-${++this.served}`);
  }

  /** Resolves after `ms`, or early when the client goes away (no point answering a closed socket). */
  private wait(ms: number, res: ServerResponse): Promise<void> {
    return new Promise<void>((resolve) => {
      if (ms <= 0) return resolve();
      const timers = this.timers;
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
  }
}
