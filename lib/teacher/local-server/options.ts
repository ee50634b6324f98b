/**
 * The server's options checked and their defaults filled, before anything listens: a bad option is an
 * {@link InputError} naming it, and leaves nothing running.
 */
import { performance } from 'node:perf_hooks';

import { InputError } from '../../errors';
import { ProviderRateLimit } from './provider-limit';
import { scriptedDemoTeacher } from './scripted';
import type { AnswerFn, LocalTeacherServerOptions } from './types';

export const DEFAULT_LOCAL_MODEL = 'stepwise-scripted';

/** {@link LocalTeacherServerOptions} with defaults filled, less what only the server's start reads. */
export interface ServerConfig {
  model: string;
  latencyMs: number;
  batchDelayMs: number;
  maxBatchLines: number;
  rateLimit: ProviderRateLimit | undefined;
  clock: () => number;
  answer: AnswerFn;
}

/** @throws InputError when an option is out of range. */
export function resolveOptions(opts: LocalTeacherServerOptions): ServerConfig {
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
  const rateLimit = opts.rateLimit ? new ProviderRateLimit(opts.rateLimit, model) : undefined;
  const clock = opts.clock ?? (() => performance.now());
  const answer = opts.answer ?? scriptedDemoTeacher({ errorRate: opts.errorRate, seed: opts.seed });
  return { model, latencyMs, batchDelayMs, maxBatchLines, rateLimit, clock, answer };
}
