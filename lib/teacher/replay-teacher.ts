/**
 * A teacher that answers from the paper's recorded PaLM 540B completions (`<dir>/<task>/llm/<split>_CoT_<i>.json`)
 * instead of calling a model, so the reference benchmarks can be distilled without an LLM. The recordings are
 * indexed by split and row, not by prompt, so each request must carry its example's `source`.
 */
import { loadReferenceCompletions } from '../data/reference';
import { isBenchmarkTask, isSplit, type BenchmarkTask, type Split } from '../data/types';
import { InputError } from '../errors';
import { mapWithConcurrency } from './pool';
import {
  promptHash,
  type CallOptions,
  type CompleteOptions,
  type Teacher,
  type TeacherRequest,
  type TeacherResponse,
} from './types';

export interface ReplayTeacherConfig {
  /** Folder in the reference layout (`<dataDir>/<task>/llm/...`). */
  dataDir: string;
  task: BenchmarkTask;
}

/** The model name lineage records for replayed completions. */
export const REPLAY_MODEL = 'palm-540b-recorded';

/**
 * Creates the replay teacher. Each split's recordings are read once, on first use, and kept for the teacher's life.
 * A request without a source, or whose row is beyond the recordings, gets a response with `error` set. A split
 * whose recordings are missing or malformed rejects `complete()` with the loader's InputError: that is a wrong
 * folder or task, which would fail every request the same way.
 * @throws InputError when the task is not a benchmark or dataDir is not a non-empty string.
 */
export function createReplayTeacher(cfg: ReplayTeacherConfig): Teacher {
  if (!isBenchmarkTask(cfg.task)) {
    throw new InputError(
      `task is ${JSON.stringify(cfg.task)}; expected a benchmark with recorded completions (cqa, svamp, esnli, anli1)`,
      'task'
    );
  }
  if (typeof cfg.dataDir !== 'string' || cfg.dataDir === '') {
    throw new InputError(
      `dataDir is ${JSON.stringify(cfg.dataDir)}; expected the folder of recorded completions`,
      'dataDir'
    );
  }
  const loaded = new Map<Split, Promise<string[]>>();
  const recordings = (split: Split) => {
    let completions = loaded.get(split);
    if (completions === undefined) {
      completions = loadReferenceCompletions(cfg.dataDir, cfg.task, split);
      loaded.set(split, completions);
      // A failed load is not kept: the next complete() call tries the files again.
      completions.catch(() => loaded.delete(split));
    }
    return completions;
  };

  async function replayOne(request: TeacherRequest): Promise<TeacherResponse> {
    // The prompt is hashed as asked, so lineage can still tell which of our templates the stage used.
    const base = { id: request.id, promptHash: promptHash({ model: REPLAY_MODEL, messages: request.messages }) };
    const fail = (error: string): TeacherResponse => ({ ...base, completion: '', cached: false, error });
    const { source } = request;
    if (source === undefined) return fail('no source: the replay teacher looks completions up by split and row');
    if (!isSplit(source.split)) {
      return fail(`source.split is ${JSON.stringify(source.split)}; expected train, valid or test`);
    }
    const completions = await recordings(source.split);
    if (!Number.isSafeInteger(source.row) || source.row < 0 || source.row >= completions.length) {
      return fail(
        `source.row is ${JSON.stringify(source.row)}; the ${cfg.task} ${source.split} recordings hold rows 0 to ` +
          `${completions.length - 1}`
      );
    }
    return { ...base, completion: completions[source.row], cached: false };
  }

  return {
    kind: 'replay',
    model: REPLAY_MODEL,
    sampling: {},
    async callOne(request: TeacherRequest, opts: CallOptions = {}): Promise<TeacherResponse> {
      opts.signal?.throwIfAborted();
      return { ...(await replayOne(request)), attempts: 0 };
    },
    async complete(requests: readonly TeacherRequest[], opts: CompleteOptions = {}): Promise<TeacherResponse[]> {
      let done = 0;
      // Lookups are in memory once a split is loaded; the pool only keeps progress reports and abort checks regular.
      return mapWithConcurrency(
        requests,
        1,
        async (request) => {
          const response = await replayOne(request);
          opts.onProgress?.(++done, requests.length);
          return response;
        },
        opts.signal
      );
    },
  };
}
