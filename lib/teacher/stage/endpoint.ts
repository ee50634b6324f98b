/**
 * Which teacher a stage calls, and how: the scripted demo teacher resolves to a local server the worker runs, an
 * `openai` teacher to its URL and the API key its spec names (read where the calls are made), and replay to the
 * recorded completions. The caller supplies the two things only a worker knows: the scripted server and the keys.
 */
import { InputError } from '../../errors';
import type { ArtifactStore } from '../../store/artifact-store';
import { createOpenAITeacher } from '../openai-teacher';
import { createRateLimiter } from '../rate-limit';
import { createReplayTeacher, REPLAY_MODEL } from '../replay-teacher';
import { resolveInRoots } from '../../data/roots';
import { DEFAULT_API_KEY_ENV } from '../options';
import type { RetryReason } from '../retry';
import type { Teacher } from '../types';
import { pauseKey, sharedPauseLimiter } from './shared-pause';
import type { TeacherShardInput, TeacherSpec } from './types';

/** Resolves the built-in scripted teacher to a running local OpenAI-compatible server (started once per worker). */
export type ScriptedTeacherProvider = (errorRate: number) => Promise<{ url: string; model: string }>;

/** A teacher API key by the name of its environment variable (`teacher.apiKeyEnv`); undefined when unset. */
export type ApiKeyLookup = (variable: string) => string | undefined;

/** What a teacher stage step needs besides its input: the store, the scripted teacher and the API keys. */
export interface StageDeps {
  store: ArtifactStore;
  scripted: ScriptedTeacherProvider;
  apiKey: ApiKeyLookup;
  /** `STEPWISE_DATA_ROOTS` (lib/data/roots.ts); absent, recording folders are not confined (tests wiring by hand). */
  dataRoots?: readonly string[];
}

/** A teacher that is called over HTTP (scripted or openai), as opposed to replayed from recordings. */
export type CallingSpec = Exclude<TeacherSpec, { kind: 'replay' }>;

/** An OpenAI-compatible endpoint: base URL, model, and the key to call it with (undefined for keyless servers). */
export interface Endpoint {
  baseURL: string;
  model: string;
  apiKey?: string;
}

/** The model name the teacher is recorded under, and the URL it is called at (none for replay). */
export async function modelOf(
  spec: TeacherSpec,
  scripted: ScriptedTeacherProvider
): Promise<{ model: string; url?: string }> {
  switch (spec.kind) {
    case 'scripted':
      return scripted(spec.errorRate);
    case 'openai':
      return { model: spec.model, url: spec.url };
    case 'replay':
      return { model: REPLAY_MODEL };
  }
}

/**
 * Where an OpenAI-compatible teacher lives, and the key to call it with.
 * @throws InputError when the spec names a key variable other than the default and it is not set on this worker
 *   (the default may be unset: local servers need no key).
 */
export async function endpointOf(spec: CallingSpec, deps: Pick<StageDeps, 'scripted' | 'apiKey'>): Promise<Endpoint> {
  if (spec.kind === 'scripted') {
    const { url, model } = await deps.scripted(spec.errorRate);
    return { baseURL: url, model };
  }
  const apiKey = deps.apiKey(spec.apiKeyEnv);
  if (apiKey === undefined && spec.apiKeyEnv !== DEFAULT_API_KEY_ENV) {
    throw new InputError(
      `teacher.apiKeyEnv names ${spec.apiKeyEnv}, which is not set in this worker's environment`,
      'teacher.apiKeyEnv'
    );
  }
  return { baseURL: spec.url, model: spec.model, apiKey };
}

/**
 * The teacher spec of a batch-mode step.
 * @throws InputError for a replay teacher, which has no endpoint to send a batch to.
 */
export function callingSpec(spec: TeacherSpec): CallingSpec {
  if (spec.kind === 'replay') {
    throw new InputError('teacher.mode batch needs an endpoint to call; a replay teacher has none', 'teacher.mode');
  }
  return spec;
}

/**
 * The teacher for one shard, with its share of the stage's limits.
 * @throws InputError for a replay teacher without a folder or a benchmark task, or an unset key variable.
 */
export async function shardTeacher(
  deps: Pick<StageDeps, 'store' | 'scripted' | 'apiKey' | 'dataRoots'>,
  input: TeacherShardInput,
  observe: { onRetry?: (reason: RetryReason) => void } = {}
): Promise<Teacher> {
  const spec = input.stage.teacher;
  if (spec.kind === 'replay') {
    const dataDir = spec.dir ?? input.stage.dataDir;
    // The spec schema guarantees a folder for replay; this guards direct calls.
    if (!dataDir) throw new InputError('a replay teacher needs the folder of recorded completions', 'teacher.dir');
    const task = input.stage.task;
    if (task === 'demo' || task === 'jsonl') {
      throw new InputError(`replay needs a reference benchmark task, got '${task}'`, 'teacher.kind');
    }
    // The plan's preflight checked the folder on its worker; a shard may run on a worker with other roots.
    if (deps.dataRoots) await resolveInRoots(dataDir, spec.dir ? 'teacher.dir' : 'data.dir', deps.dataRoots);
    return createReplayTeacher({ dataDir, task });
  }
  const endpoint = await endpointOf(spec, deps);
  // Always a limiter, limits or not: it is also how a 429's retry-after pauses every call of the shard at once,
  // and, through the store, every other shard calling this endpoint on any worker.
  const limiter = sharedPauseLimiter(
    createRateLimiter({ requestsPerMinute: input.requestsPerMinute, tokensPerMinute: input.tokensPerMinute }),
    deps.store,
    pauseKey(endpoint)
  );
  return createOpenAITeacher(
    {
      ...endpoint,
      temperature: spec.temperature,
      maxTokens: spec.maxTokens,
      timeoutMs: spec.timeoutSeconds * 1000,
      maxRetries: spec.maxRetries,
      limiter,
      onRetry: observe.onRetry,
    },
    deps.store
  );
}
