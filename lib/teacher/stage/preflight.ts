/**
 * The teacher stage's preflight, run when it plans: one cheap look at what the stage will call or read, so a wrong
 * URL, key or recording folder fails the run at once, naming the spec field, instead of as thousands of failed calls
 * retried for an hour. Only what no retry can fix is an InputError; a teacher that is busy or briefly down (429, 5xx,
 * a timeout, a reset connection) is an ordinary error, and the plan is retried like any transient fault.
 */
import { InputError, inputErrorAt } from '../../errors';
import { loadReferenceCompletions, loadReferenceSplit, referenceSplitExists } from '../../data/reference';
import { resolveInRoots } from '../../data/roots';
import { isBenchmarkTask, type BenchmarkTask, type Split } from '../../data/types';
import type { ApiKeyLookup } from './endpoint';
import type { TeacherSpec, TeacherStageInput } from './types';

/** What a worker adds to a preflight: the keys it holds and the folders it may read under. Both optional for tests. */
export interface PreflightDeps {
  apiKey?: ApiKeyLookup;
  /** `STEPWISE_DATA_ROOTS` (lib/data/roots.ts); absent, recording folders are not confined. */
  dataRoots?: readonly string[];
}

/** The preflight request's own limit: a listing answers in well under a second; a silent host is worth a retry. */
const MAX_PREFLIGHT_MS = 30_000;

/** Connection errors that mean "nothing OpenAI-like is there" rather than "it is there but busy". */
const UNREACHABLE = /^(ECONNREFUSED|ENOTFOUND|EAI_NONAME|EHOSTUNREACH|ENETUNREACH|HPE_|ERR_TLS|.*CERT)/;

type OpenAISpec = Extract<TeacherSpec, { kind: 'openai' }>;

/**
 * Checks the teacher before the stage plans its shards: for `openai`, that the URL answers `GET /models` like an
 * OpenAI-compatible API and accepts the key; for `replay`, that the recordings are inside the data roots, readable,
 * and hold exactly one completion per example of each split prompted. The scripted teacher is our own: nothing to do.
 * @throws InputError naming `teacher.url`, `teacher.apiKeyEnv`, `teacher.dir` or `data.dir`.
 */
export async function preflightTeacher(deps: PreflightDeps, input: TeacherStageInput): Promise<void> {
  const { teacher } = input;
  if (teacher.kind === 'openai') return checkEndpoint(teacher, deps.apiKey?.(teacher.apiKeyEnv));
  if (teacher.kind === 'replay') return checkRecordings(deps, input, teacher.dir);
}

/** The error a fetch failure turns into: permanent when nothing HTTP answers there, else transient. */
function unreachable(url: string, err: unknown): Error {
  const cause = (err as { cause?: { code?: unknown } }).cause;
  const code = typeof cause?.code === 'string' ? cause.code : (err as Error).name;
  if (UNREACHABLE.test(code)) {
    return new InputError(
      `teacher.url: ${url} cannot be reached (${code}); expected a running OpenAI-compatible server`,
      'teacher.url'
    );
  }
  return new Error(`teacher.url: ${url} did not answer (${code}: ${(err as Error).message}); retrying`);
}

async function checkEndpoint(spec: OpenAISpec, apiKey: string | undefined): Promise<void> {
  const url = `${spec.url.replace(/\/+$/, '')}/models`;
  let res: Response;
  try {
    res = await fetch(url, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(Math.min(spec.timeoutSeconds * 1000, MAX_PREFLIGHT_MS)),
    });
  } catch (err) {
    throw unreachable(url, err);
  }
  const body = await res.text().catch(() => '');
  if (res.status === 429 || res.status >= 500) {
    throw new Error(`teacher.url: GET ${url} answered ${res.status}; the teacher is busy or down, retrying`);
  }
  if (res.status === 401 || res.status === 403) {
    const key = apiKey === undefined ? `${spec.apiKeyEnv} is not set on this worker` : `the key in ${spec.apiKeyEnv}`;
    throw new InputError(
      `teacher.apiKeyEnv: ${url} refused the request (${res.status}): ${key}; expected a key this teacher accepts`,
      'teacher.apiKeyEnv'
    );
  }
  const notOpenAI = (why: string) =>
    new InputError(
      `teacher.url: ${spec.url} is not an OpenAI-compatible API (GET ${url} ${why}); expected the API's base URL, ` +
        'which usually ends in /v1',
      'teacher.url'
    );
  if (!res.ok) throw notOpenAI(`answered ${res.status}`);
  let listing: unknown;
  try {
    listing = JSON.parse(body);
  } catch {
    throw notOpenAI(`answered ${res.headers.get('content-type') ?? 'an unknown type'}, not JSON`);
  }
  if (!Array.isArray((listing as { data?: unknown } | null)?.data)) {
    throw notOpenAI('answered JSON without a "data" list of models');
  }
}

/**
 * Replay reads `<dir>/<task>/llm/<split>_CoT_<i>.json`. A folder outside the roots, missing or malformed files, or a
 * count that differs from the split's examples (which would pair rationales with the wrong examples) are refused.
 */
async function checkRecordings(deps: PreflightDeps, input: TeacherStageInput, teacherDir?: string): Promise<void> {
  const field = teacherDir !== undefined ? 'teacher.dir' : 'data.dir';
  const dir = teacherDir ?? input.dataDir;
  if (dir === undefined) throw new InputError(`${field}: a replay teacher needs the folder of recordings`, field);
  if (!isBenchmarkTask(input.task)) {
    throw new InputError(
      `teacher.kind: replay answers the reference benchmarks only (cqa, svamp, esnli, anli1), not '${input.task}'`,
      'teacher.kind'
    );
  }
  const task: BenchmarkTask = input.task;
  if (deps.dataRoots) await resolveInRoots(dir, field, deps.dataRoots);
  // The splits the stage prompts: train always, valid where the data has one (else it is carved from train).
  const dataDir = input.dataDir ?? dir;
  const splits: Split[] = ['train'];
  if (await referenceSplitExists(dataDir, task, 'valid')) splits.push('valid');
  for (const split of splits) {
    const [examples, completions] = await Promise.all([
      loadReferenceSplit(dataDir, task, split).then((rows) => rows.length),
      loadReferenceCompletions(dir, task, split).then((rows) => rows.length),
    ]).catch((err: unknown) => {
      throw err instanceof InputError ? inputErrorAt(field, err) : err;
    });
    if (examples !== completions) {
      throw new InputError(
        `${field}: ${task} ${split} has ${examples} examples but ${dir}/${task}/llm holds ${completions} recorded ` +
          'completions; expected one completion per example',
        field
      );
    }
  }
}
