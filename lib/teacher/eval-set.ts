/**
 * The teacher's accuracy on the promotion gate's frozen evaluation set, so a candidate student can be compared with
 * its teacher on exactly the examples it is compared with its champion on. The teacher is asked only where that
 * costs nothing: recorded completions (replay) and the demo's scripted server. An `openai` teacher is never asked:
 * its URL may be a provider that bills per token, and a gate that quietly spends money on every run is a surprise
 * no one wants. Answers go through the same prompt template, parser and scorer as the teacher and validate stages,
 * so the figure means what the validate report's `teacherAccuracy` means.
 */
import { parseCompletion } from '../data/parse';
import { resolveInRoots } from '../data/roots';
import { labelsMatch } from '../data/score';
import { isBenchmarkTask, isTaskKind, type Example, type TaskKind } from '../data/types';
import { InputError } from '../errors';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import { createOpenAITeacher } from './openai-teacher';
import { createReplayTeacher } from './replay-teacher';
import { foldShard, type CallRecord, type ShardExample } from './shard';
import { endpointOf, type ScriptedTeacherProvider } from './stage/endpoint';
import { labeller } from './stage/open-shard';
import type { TeacherSpec } from './stage/types';
import { buildPrompt } from './templates';
import type { Teacher, TeacherRequest, TeacherResponse } from './types';

/** Why an `openai` teacher is not measured: recorded on the gate decision as it is. */
export const BILLING_REASON = 'an endpoint teacher is not called on the evaluation set (it would bill)';

export interface TeacherEvalInput {
  /** The spec's teacher section, defaults filled in. */
  teacher: TeacherSpec;
  /** The task the examples belong to: decides the prompt template, the parser and the scorer. */
  task: TaskKind;
  /** Where replay finds recorded completions when the teacher section names no folder (the spec's `data.dir`). */
  dataDir?: string;
  /** JSONL of {@link Example}s: the frozen evaluation set. */
  evalSet: ArtifactRef;
}

/** One line of the predictions artifact, in evaluation-set order. */
export interface TeacherPrediction {
  id: string;
  gold: string;
  /** The label the completion parses to; null when it does not parse (counted wrong, as the validate stage does). */
  teacherLabel: string | null;
  correct: boolean;
}

export type TeacherEvalResult =
  | {
      measured: true;
      /** correct / total. */
      accuracy: number;
      correct: number;
      total: number;
      /** JSONL of {@link TeacherPrediction}, one per example in evaluation-set order. */
      predictions: ArtifactRef;
      /** The model the answers are recorded under (as lineage names the teacher). */
      model: string;
    }
  | { measured: false; reason: string };

export interface TeacherEvalDeps {
  /** Starts (once per worker) the scripted demo teacher's local server. */
  scripted: ScriptedTeacherProvider;
  /** `STEPWISE_DATA_ROOTS`: a replay folder must lie under one; absent, folders are not confined. */
  dataRoots?: readonly string[];
}

export interface TeacherEvalHooks {
  /** Aborts the calls in flight. */
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Asks the teacher about every example of the evaluation set, scores its answers against the gold labels, and stores
 * the per-example predictions. Deterministic for a given set and teacher: the predictions artifact is content
 * addressed, so a retried call lands on the same reference. Scripted answers go through the store's response cache,
 * so a retry asks the server again only for what it did not answer.
 *
 * Returns `measured: false` with the reason for an `openai` teacher (without a call), and for a replay teacher
 * whose recordings do not cover the set (an example without a split and row, or a row past the recordings): a
 * teacher accuracy on part of the set would not be comparable with the student's on all of it.
 * @throws InputError when a field is malformed, replay is asked of a task with no recordings or without a folder,
 *   or the folder lies outside the data roots.
 * @throws Error (transient, worth a retry) when the scripted server failed some examples after the client's retries.
 */
export async function teacherAccuracyOn(
  store: ArtifactStore,
  deps: TeacherEvalDeps,
  input: TeacherEvalInput,
  hooks: TeacherEvalHooks = {}
): Promise<TeacherEvalResult> {
  checkInput(input);
  const spec = input.teacher;
  // Decided before reading anything: a billing endpoint is refused whatever the set holds.
  if (spec.kind === 'openai') return { measured: false, reason: BILLING_REASON };
  const examples = await store.getJsonl<Example>(input.evalSet);
  if (examples.length === 0) {
    throw new InputError(`evalSet ${input.evalSet.sha256} holds no examples; expected a JSONL of examples`, 'evalSet');
  }
  const teacher = await evalTeacher(store, deps, input);
  const samples = spec.kind === 'scripted' ? spec.samples : 1;
  const requests = examples.flatMap((ex) =>
    Array.from({ length: samples }, (_, s): TeacherRequest => {
      const request: TeacherRequest = { id: ex.id, messages: buildPrompt(input.task, ex.input), source: ex.source };
      // Seeded exactly as the teacher stage seeds self-consistency samples, so the cache serves both.
      return samples > 1 ? { ...request, seed: s } : request;
    })
  );
  const responses = await teacher.complete(requests, {
    concurrency: spec.kind === 'scripted' ? spec.concurrency : 1,
    signal: hooks.signal,
    onProgress: hooks.onProgress,
  });
  const failed = responses.filter((r) => r.error !== undefined);
  if (failed.length > 0) {
    const first = `${failed[0].id}: ${failed[0].error}`;
    if (spec.kind === 'replay') {
      return { measured: false, reason: `the recordings do not cover ${failed.length} example(s) (first: ${first})` };
    }
    throw new Error(`the scripted teacher failed ${failed.length} of ${responses.length} calls (first: ${first})`);
  }
  const completions = foldSamples(input.task, examples, samples, responses);
  const predictions = examples.map((ex, i): TeacherPrediction => {
    const parsed = parseCompletion(input.task, completions[i]);
    const teacherLabel = parsed.ok ? parsed.label : null;
    return {
      id: ex.id,
      gold: ex.label,
      teacherLabel,
      correct: teacherLabel !== null && labelsMatch(input.task, teacherLabel, ex.label),
    };
  });
  const correct = predictions.filter((p) => p.correct).length;
  return {
    measured: true,
    accuracy: correct / examples.length,
    correct,
    total: examples.length,
    predictions: await store.putJsonl(predictions),
    model: teacher.model,
  };
}

/** The teacher that answers the set: recordings, or the scripted server through the store's response cache. */
async function evalTeacher(store: ArtifactStore, deps: TeacherEvalDeps, input: TeacherEvalInput): Promise<Teacher> {
  const spec = input.teacher;
  if (spec.kind === 'replay') {
    const dataDir = spec.dir ?? input.dataDir;
    if (!dataDir)
      throw new InputError(
        'teacher.dir is unset and so is data.dir; a replay teacher needs the folder of recorded completions',
        'teacher.dir'
      );
    if (!isBenchmarkTask(input.task)) {
      throw new InputError(
        `teacher.kind is replay but the task is ${input.task}; replay needs a benchmark with recordings (cqa, svamp, esnli, anli1)`,
        'teacher.kind'
      );
    }
    if (deps.dataRoots) await resolveInRoots(dataDir, spec.dir ? 'teacher.dir' : 'data.dir', deps.dataRoots);
    return createReplayTeacher({ dataDir, task: input.task });
  }
  if (spec.kind !== 'scripted') throw new Error(`unreachable: teacher kind ${spec.kind} is never asked`);
  // The scripted server is ours and local: no rate limiter, no budget, nothing shared with other workers.
  return createOpenAITeacher(
    {
      ...(await endpointOf(spec, { scripted: deps.scripted, apiKey: () => undefined })),
      temperature: spec.temperature,
      maxTokens: spec.maxTokens,
      timeoutMs: spec.timeoutSeconds * 1000,
      maxRetries: spec.maxRetries,
    },
    store
  );
}

/**
 * One completion per example. With several samples the teacher stage's vote decides (`foldShard`: the label most
 * samples parse to, ties to the first seen), so the teacher is scored as it would answer in the teacher stage.
 */
function foldSamples(
  task: TaskKind,
  examples: readonly Example[],
  samples: number,
  responses: readonly TeacherResponse[]
): string[] {
  if (samples === 1) return responses.map((r) => r.completion);
  const records = new Map<string, CallRecord>();
  responses.forEach((r, k) => {
    const i = Math.floor(k / samples);
    const s = k % samples;
    records.set(`${i}.${s}`, { i, s, id: r.id, promptHash: r.promptHash, completion: r.completion });
  });
  const shardExamples: ShardExample[] = examples.map((ex) => ({ id: ex.id, input: ex.input }));
  return foldShard(shardExamples, samples, records, labeller(task)).map((r) => r.completion);
}

/** @throws InputError naming the first malformed field. */
function checkInput(input: TeacherEvalInput): void {
  if (typeof input !== 'object' || input === null) {
    throw new InputError(`input is ${JSON.stringify(input)}; expected { teacher, task, evalSet }`, 'input');
  }
  const kind = (input.teacher as { kind?: unknown } | undefined)?.kind;
  if (kind !== 'replay' && kind !== 'scripted' && kind !== 'openai') {
    throw new InputError(
      `teacher.kind is ${JSON.stringify(kind)}; expected scripted, openai or replay (the spec's teacher section)`,
      'teacher.kind'
    );
  }
  if (!isTaskKind(input.task)) {
    throw new InputError(
      `task is ${JSON.stringify(input.task)}; expected one of cqa, svamp, esnli, anli1, demo, jsonl`,
      'task'
    );
  }
  const ref = input.evalSet as Partial<ArtifactRef> | undefined;
  if (typeof ref?.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(ref.sha256) || !Number.isSafeInteger(ref.size)) {
    throw new InputError(
      `evalSet is ${JSON.stringify(input.evalSet)}; expected an artifact reference { sha256, size }`,
      'evalSet'
    );
  }
}
