/**
 * The teacher domain library: prompt templates, an OpenAI-compatible client with a response cache, a replay teacher
 * over recorded completions, and a local OpenAI-compatible server for the demo and for tests.
 */
import { InputError } from '../errors';
import type { BenchmarkTask } from '../data/types';
import type { ArtifactStore } from '../store/artifact-store';
import { createOpenAITeacher } from './openai-teacher';
import { createReplayTeacher } from './replay-teacher';
import type { Teacher } from './types';

export * from './types';
export * from './templates';
export { createOpenAITeacher, DEFAULT_CONCURRENCY, type OpenAITeacherConfig } from './openai-teacher';
export { createReplayTeacher, REPLAY_MODEL, type ReplayTeacherConfig } from './replay-teacher';
export {
  startLocalTeacherServer,
  scriptedDemoTeacher,
  DEFAULT_LOCAL_MODEL,
  UNKNOWN_ANSWER,
  type FaultPlan,
  type LocalTeacherServer,
  type LocalTeacherServerOptions,
  type LocalTeacherServerStats,
  type LocalTeacherServerCounters,
  type RateLimit,
  type RequestSampling,
} from './local-server';
export { Budget, costOf, estimatePromptTokens, type Price, type Usage } from './budget';
export { createRateLimiter, type RateLimitConfig, type RateLimiter } from './rate-limit';
export { backoffMs, classifyError, retryAfterMs, type ErrorClass } from './retry';
export { Journal } from './journal';
export { runShard, foldShard, type CallRecord, type ShardExample, type ShardResponse, type ShardStats } from './shard';
export * as batch from './batch';

/**
 * Which teacher to use.
 * - `openai`: any OpenAI-compatible endpoint. `concurrency` is not used here: it is passed to `complete()`.
 * - `replay`: the paper's recorded completions for a benchmark.
 * - `scripted`: the demo's built-in teacher. It is an OpenAI endpoint served by {@link startLocalTeacherServer};
 *   the caller (the worker, which owns the server's lifetime) starts it and passes an `openai` config pointing at
 *   it, so the scripted teacher goes through the same client, cache and retries as a real one. `createTeacher`
 *   rejects it.
 */
export type TeacherConfig =
  | {
      kind: 'openai';
      /** Base URL ending in `/v1`. */
      url: string;
      model: string;
      /** The API key (the caller looks it up); none for keyless local servers. */
      apiKey?: string;
      /** Default 0. */
      temperature?: number;
      /** Default 256. */
      maxTokens?: number;
      /** Requests in flight at once; read by the caller and handed to `complete()`. */
      concurrency?: number;
    }
  | { kind: 'replay'; dataDir: string; task: BenchmarkTask }
  | { kind: 'scripted' };

/**
 * Builds the teacher a config names. The store, when given, caches OpenAI responses.
 * @throws InputError for the `scripted` kind (resolve it to an `openai` config first) and for bad fields.
 */
export function createTeacher(cfg: TeacherConfig, deps: { store?: ArtifactStore } = {}): Teacher {
  switch (cfg.kind) {
    case 'openai':
      return createOpenAITeacher(
        {
          baseURL: cfg.url,
          model: cfg.model,
          apiKey: cfg.apiKey,
          temperature: cfg.temperature,
          maxTokens: cfg.maxTokens,
        },
        deps.store
      );
    case 'replay':
      return createReplayTeacher({ dataDir: cfg.dataDir, task: cfg.task });
    case 'scripted':
      throw new InputError(
        "teacher.kind is 'scripted'; createTeacher expects 'openai' or 'replay': start the local teacher server " +
          "and pass an 'openai' config with its url",
        'teacher.kind'
      );
    default:
      throw new InputError(
        `teacher.kind is ${JSON.stringify((cfg as { kind: unknown }).kind)}; expected 'openai' or 'replay'`,
        'teacher.kind'
      );
  }
}
