/**
 * What reached the server, as tests read it back: scalar counters, requests and answers per prompt hash, and the
 * arrival log behind `maxInWindow`. One unit so every route counts the same events the same way, and so the cheap
 * reads (`counters`, `countFor`) stay O(1) however many prompts a run sends.
 */
import type { ServerResponse } from 'node:http';

import { InputError } from '../../errors';
import { ArrivalLog } from './rate-window';
import type { LocalTeacherServerCounters, LocalTeacherServerStats } from './types';

export class RequestCounters {
  private readonly scalars: LocalTeacherServerCounters = {
    requests: 0,
    accepted: 0,
    answered: 0,
    repeatedAnswers: 0,
    rateLimited: 0,
    billedPromptTokens: 0,
    billedCompletionTokens: 0,
    held: 0,
    inFlight: 0,
    maxInFlight: 0,
  };
  /** Per prompt hash; a Map, not an object, because 100k keys is an ordinary run. */
  private readonly byHash = new Map<string, { requests: number; answered: number }>();
  private readonly arrivals = new ArrivalLog();
  /** When each injected error status was answered, on the server's clock: rare, so a plain array. */
  private readonly injected: { at: number; status: number }[] = [];

  /** Counts a response in flight from now until it closes. */
  trackInFlight(res: ServerResponse): void {
    const c = this.scalars;
    c.inFlight++;
    c.maxInFlight = Math.max(c.maxInFlight, c.inFlight);
    res.once('close', () => c.inFlight--);
  }

  /** A chat request or batch line arrived, before it is even read. */
  onRequest(): void {
    this.scalars.requests++;
  }

  /** A request passed validation: it counts for its prompt hash from now on. */
  onPrompt(hash: string): void {
    const entry = this.byHash.get(hash);
    if (entry) entry.requests++;
    else this.byHash.set(hash, { requests: 1, answered: 0 });
  }

  onRateLimited(): void {
    this.scalars.rateLimited++;
  }

  /** A direct request passed the rate limit at `now`, with `tokens` counted as the limit counts them. */
  onAccepted(now: number, tokens: number): void {
    this.scalars.accepted++;
    this.arrivals.add(now, tokens);
  }

  /** An accepted request was answered with an injected error status at `now`. */
  onInjectedStatus(now: number, status: number): void {
    this.injected.push({ at: now, status });
  }

  injectedStatuses(): { at: number; status: number }[] {
    return this.injected.map((e) => ({ ...e }));
  }

  /** Accepted arrivals at or after `from`, on the server's clock. */
  acceptedFrom(from: number): number[] {
    return this.arrivals.timesFrom(from);
  }

  /** A request was processed: the provider bills its usage whether or not the answer gets through. */
  onBilled(usage: { promptTokens: number; completionTokens: number }): void {
    this.scalars.billedPromptTokens += usage.promptTokens;
    this.scalars.billedCompletionTokens += usage.completionTokens;
  }

  /** A completion for `hash` was delivered; the hash must have been counted by {@link onPrompt}. */
  onAnswer(hash: string): void {
    const entry = this.byHash.get(hash)!;
    if (entry.answered > 0) this.scalars.repeatedAnswers++;
    entry.answered++;
    this.scalars.answered++;
  }

  setHeld(held: number): void {
    this.scalars.held = held;
  }

  snapshot(): LocalTeacherServerCounters {
    return { ...this.scalars };
  }

  stats(): LocalTeacherServerStats {
    const byPromptHash: Record<string, number> = {};
    const answeredByPromptHash: Record<string, number> = {};
    for (const [hash, { requests, answered }] of this.byHash) {
      byPromptHash[hash] = requests;
      if (answered > 0) answeredByPromptHash[hash] = answered;
    }
    return { ...this.scalars, byPromptHash, answeredByPromptHash };
  }

  countFor(hash: string): { requests: number; answered: number } {
    const entry = this.byHash.get(hash);
    return { requests: entry?.requests ?? 0, answered: entry?.answered ?? 0 };
  }

  /** @throws InputError when `windowMs` is not > 0. */
  maxInWindow(windowMs: number, what: 'requests' | 'tokens'): number {
    if (!(windowMs > 0)) {
      throw new InputError(`windowMs is ${JSON.stringify(windowMs)}; expected a number > 0`, 'windowMs');
    }
    return this.arrivals.maxInWindow(windowMs, what);
  }
}
