/**
 * Token and cost accounting for teacher calls: estimates made before a call (for rate limits and the budget), prices
 * the user supplies (we never guess a provider's prices), and the budget that stops sending before it is overrun.
 */
import { InputError } from '../errors';
import type { CallBudget, ChatMessage } from './types';

/** US dollars per million tokens, as providers publish them. */
export interface Price {
  inputPerMillionTokens: number;
  outputPerMillionTokens: number;
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

/**
 * Prompt tokens of a chat request, estimated before sending it: ~4 characters a token for English text (OpenAI's
 * rule of thumb), plus the few tokens each message's framing costs. Rounded up on purpose: the estimate reserves
 * rate-limit and budget room, and running short of room is worse than leaving a little unused. Corrected from the
 * response's `usage` afterwards.
 */
export function estimatePromptTokens(messages: readonly ChatMessage[]): number {
  let tokens = 3;
  for (const m of messages) tokens += 4 + Math.ceil(m.content.length / 3.5);
  return tokens;
}

/** What `usage` cost at `price`; 0 without a price (the stage then reports tokens only). */
export function costOf(usage: Usage, price: Price | undefined): number {
  if (!price) return 0;
  return (
    (usage.promptTokens * price.inputPerMillionTokens + usage.completionTokens * price.outputPerMillionTokens) / 1e6
  );
}

/**
 * A spending limit in dollars for one shard's calls. Before each attempt the worst case (the estimated prompt plus
 * `max_tokens` of completion) is reserved; an attempt whose worst case does not fit is not sent. After it, the
 * reservation is replaced by the reported usage. So the total spent never exceeds the limit, provided the endpoint
 * reports usage no larger than the estimate's worst case.
 */
export class Budget implements CallBudget {
  private spentUsd = 0;
  private reservedUsd = 0;
  private usage: Usage = { promptTokens: 0, completionTokens: 0 };
  private refused = false;

  /**
   * @param limitUsd dollars this budget may spend; undefined for no limit (usage is still counted).
   * @throws InputError when a limit is given without a price, or a value is out of range.
   */
  constructor(
    readonly limitUsd: number | undefined,
    readonly price: Price | undefined
  ) {
    if (limitUsd !== undefined) {
      if (!(Number.isFinite(limitUsd) && limitUsd >= 0)) {
        throw new InputError(
          `teacher.maxCost is ${JSON.stringify(limitUsd)}; expected dollars >= 0`,
          'teacher.maxCost'
        );
      }
      if (!price) {
        throw new InputError(
          'teacher.maxCost is set but teacher.price is not: a budget needs the price per million tokens',
          'teacher.price'
        );
      }
    }
    if (price) validatePrice(price);
  }

  reserve(promptTokens: number, maxTokens: number): number | undefined {
    const worst = costOf({ promptTokens, completionTokens: maxTokens }, this.price);
    if (this.limitUsd !== undefined && this.spentUsd + this.reservedUsd + worst > this.limitUsd + 1e-12) {
      this.refused = true;
      return undefined;
    }
    this.reservedUsd += worst;
    return worst;
  }

  settle(reservation: number, usage: Usage | undefined): void {
    this.reservedUsd = Math.max(0, this.reservedUsd - reservation);
    if (!usage) return;
    this.usage.promptTokens += usage.promptTokens;
    this.usage.completionTokens += usage.completionTokens;
    this.spentUsd += costOf(usage, this.price);
  }

  /** True once an attempt was refused for want of budget. */
  get exhausted(): boolean {
    return this.refused;
  }

  get spent(): { usd: number; usage: Usage } {
    return { usd: this.spentUsd, usage: { ...this.usage } };
  }
}

/** @throws InputError naming the price field that is not a finite number >= 0. */
export function validatePrice(price: Price, field = 'teacher.price'): void {
  for (const key of ['inputPerMillionTokens', 'outputPerMillionTokens'] as const) {
    const v = price[key];
    if (!(typeof v === 'number' && Number.isFinite(v) && v >= 0)) {
      throw new InputError(`${field}.${key} is ${JSON.stringify(v)}; expected dollars per million tokens >= 0`, field);
    }
  }
}
