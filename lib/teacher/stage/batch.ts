/**
 * Batch mode: a shard's calls go to the provider's batch API in three steps (submit, poll on durable timers,
 * collect), and the answers are journalled exactly as direct calls are, so both modes give the same artifacts.
 */
import type { ArtifactStore } from '../../store/artifact-store';
import {
  batchAnswers,
  batchClient,
  batchStatus,
  findBatch,
  submitBatch,
  type BatchAnswer,
  type BatchCall,
  type BatchStatus,
} from '../batch';
import { estimatePromptTokens } from '../budget';
import { mapWithConcurrency } from '../pool';
import { createOpenAITeacher, writeCachedResponse } from '../openai-teacher';
import { indexRecords, type RunShardOptions } from '../shard';
import { buildPrompt } from '../templates';
import { promptHash, teacherCacheKey } from '../types';
import { budgetFor, successes } from './accounting';
import { callingSpec, endpointOf, type CallingSpec, type Endpoint, type StageDeps } from './endpoint';
import { batchKey, writeKeyJson, type BatchRecord } from './layout';
import { isFinished, openShard, shardOutcome, type OpenShard } from './open-shard';
import type {
  TeacherBatchCollectInput,
  TeacherBatchInput,
  TeacherBatchPollInput,
  TeacherBatchSubmitted,
  TeacherShardInput,
  TeacherShardResult,
} from './types';

/** A call still to make: example `i`, sample `s`, and the batch line that asks it. */
interface WantedCall {
  i: number;
  s: number;
  call: BatchCall;
}

/** What journalling a shard's batch calls needs: where, for which teacher and stage, and the opened shard. */
interface BatchShard {
  store: ArtifactStore;
  spec: CallingSpec;
  endpoint: Endpoint;
  input: TeacherShardInput;
  open: OpenShard;
}

/**
 * Step 1: journal the calls the response cache already answers, then upload the rest as one batch (or find the
 * batch an earlier attempt created). Returns the batch id, or the shard's result when nothing is left to send.
 * @throws InputError for a replay teacher.
 */
export async function submitShardBatch(deps: StageDeps, input: TeacherBatchInput): Promise<TeacherBatchSubmitted> {
  const { store } = deps;
  const spec = callingSpec(input.stage.teacher);
  const open = await openShard(store, input);
  if (isFinished(open)) return { result: open };
  const { shardKey, prior } = open;
  const endpoint = await endpointOf(spec, deps);
  const client = batchClient(endpoint);
  const existing = await findBatch(client, shardKey, input.round);
  if (existing) return { batchId: existing };

  const wanted = wantedCalls(open);
  const cached = await journalCacheHits({ store, spec, endpoint, input, open }, wanted);
  const pending = wanted.filter((w) => !cached.has(w.call.customId)).map((w) => w.call);
  const counts = { resumed: successes(prior), cached: cached.size, sent: 0, failed: 0 };
  if (pending.length === 0) {
    return { result: await shardOutcome(store, input, open, { ...counts, budgetStopped: false }, () => true) };
  }
  // A batch is paid for as a whole: send only as many calls as the budget covers at their worst case.
  const budget = budgetFor(input, prior);
  let fit = 0;
  while (
    fit < pending.length &&
    budget.reserve(estimatePromptTokens(pending[fit].messages), spec.maxTokens) !== undefined
  )
    fit++;
  if (fit === 0) {
    return { result: await shardOutcome(store, input, open, { ...counts, budgetStopped: true }, () => false) };
  }
  const calls = pending.slice(0, fit);
  const batchId = await submitBatch(client, {
    model: endpoint.model,
    temperature: spec.temperature,
    maxTokens: spec.maxTokens,
    calls,
    shardKey,
    round: input.round,
  });
  const record: BatchRecord = { batchId, calls: calls.map((c) => c.customId), notSent: pending.length - fit };
  await writeKeyJson(store, batchKey(shardKey, input.round), record);
  return { batchId };
}

/** Every (example, sample) of the shard without a successful record, as a batch line. */
function wantedCalls({ doc, examples, prior }: OpenShard): WantedCall[] {
  const done = indexRecords(prior);
  const wanted: WantedCall[] = [];
  for (let i = 0; i < examples.length; i++) {
    const messages = buildPrompt(doc.task, examples[i].input);
    for (let s = 0; s < doc.samples; s++) {
      const seen = done.get(`${i}.${s}`);
      if (seen && seen.error === undefined) continue;
      const seed = doc.samples > 1 ? s : undefined;
      wanted.push({ i, s, call: { customId: `${i}.${s}`, messages, ...(seed === undefined ? {} : { seed }) } });
    }
  }
  return wanted;
}

/** Journals every wanted call the response cache answers; returns their `customId`s. */
async function journalCacheHits(shard: BatchShard, wanted: readonly WantedCall[]): Promise<Set<string>> {
  const { store, spec, endpoint, input } = shard;
  const { examples, journal } = shard.open;
  // The response cache is read through the teacher that writes it (same keys, same records), a few dozen at once.
  const cacheReader = createOpenAITeacher(
    { ...endpoint, temperature: spec.temperature, maxTokens: spec.maxTokens },
    store
  );
  const hits = new Set<string>();
  await mapWithConcurrency(wanted, 32, async ({ i, s, call }) => {
    const hit = await cacheReader.lookup!({ id: examples[i].id, messages: call.messages, seed: call.seed });
    if (hit === undefined) return;
    hits.add(call.customId);
    // Awaited: a store failure must fail the step (and be retried), not surface later as an unhandled rejection.
    await journal.append({
      i,
      s,
      id: examples[i].id,
      promptHash: hit.promptHash,
      completion: hit.completion,
      cached: true,
      stage: input.stageId,
    });
  });
  return hits;
}

/** Step 2 (repeated on durable timers): the batch's status, `terminal` once it will change no more. */
export async function pollShardBatch(
  deps: Pick<StageDeps, 'scripted' | 'apiKey'>,
  input: TeacherBatchPollInput
): Promise<BatchStatus> {
  const spec = callingSpec(input.stage.teacher);
  return batchStatus(batchClient(await endpointOf(spec, deps)), input.batchId);
}

/** How the caller follows collection. */
export interface CollectHooks {
  /** Answers journalled so far, after each one. */
  onCollected?: (answered: number) => void;
  /** Calls as they are journalled, by outcome, with their usage: for metrics, as direct mode reports them. */
  onCalls?: RunShardOptions['onCalls'];
}

/**
 * Step 3: journal every answer (and cache the good ones), exactly as direct calls are journalled, so both modes
 * give the same artifacts. Calls the batch did not answer (it expired or failed) are journalled as failures with
 * the provider's reason; the shard is finished when every call succeeded, or on the last round.
 * @throws InputError for a replay teacher.
 */
export async function collectShardBatch(
  deps: StageDeps,
  input: TeacherBatchCollectInput,
  hooks: CollectHooks = {}
): Promise<TeacherShardResult> {
  const { store } = deps;
  const spec = callingSpec(input.stage.teacher);
  const open = await openShard(store, input);
  if (isFinished(open)) return open;
  const { doc, shardKey, examples, prior } = open;
  const endpoint = await endpointOf(spec, deps);
  const client = batchClient(endpoint);
  const status = await batchStatus(client, input.batchId);
  const submitted = (await store.getKeyJson<BatchRecord>(batchKey(shardKey, input.round)))?.calls ?? [];
  const answers = await batchAnswers(client, status);
  const shard: BatchShard = { store, spec, endpoint, input, open };
  const appends: Promise<void>[] = [];
  const { answered, failed: failedAnswers } = await journalAnswers(shard, answers, hooks, appends);
  const unanswered = submitted.filter((customId) => !answered.has(customId));
  journalUnanswered(shard, unanswered, status, appends);
  if (unanswered.length > 0) hooks.onCalls?.('failed', unanswered.length);
  // Every append, awaited together (they group-commit): a store failure fails the step rather than surfacing later
  // as an unhandled rejection, and the retry collects again from what landed.
  await Promise.all(appends);
  const failed = failedAnswers + unanswered.length;
  const counts = { resumed: successes(prior), cached: 0, sent: answers.length, failed, budgetStopped: false };
  const calls = examples.length * doc.samples;
  return shardOutcome(store, input, open, counts, (index) => {
    let ok = 0;
    for (const r of index.values()) if (r.error === undefined) ok++;
    return ok === calls || (input.lastRound && index.size === calls);
  });
}

/**
 * Journals each answer that names a call of this shard: a completion also goes into the response cache, under the
 * key a direct call would have written. Returns the `customId`s answered and how many answers were failures.
 */
async function journalAnswers(
  shard: BatchShard,
  answers: readonly BatchAnswer[],
  hooks: CollectHooks,
  appends: Promise<void>[]
): Promise<{ answered: Set<string>; failed: number }> {
  const { store, spec, endpoint, input } = shard;
  const { doc, examples, journal } = shard.open;
  const answered = new Set<string>();
  let failed = 0;
  for (const a of answers) {
    const m = /^(\d+)\.(\d+)$/.exec(a.customId);
    if (!m) continue;
    const i = Number(m[1]);
    const s = Number(m[2]);
    if (i >= examples.length || s >= doc.samples) continue;
    answered.add(a.customId);
    const messages = buildPrompt(doc.task, examples[i].input);
    const seed = doc.samples > 1 ? s : undefined;
    const sampling = { temperature: spec.temperature, maxTokens: spec.maxTokens };
    const hash = promptHash({ model: endpoint.model, messages, ...sampling, seed });
    const base = {
      i,
      s,
      id: examples[i].id,
      promptHash: hash,
      attempts: 1,
      stage: input.stageId,
      ...(a.usage ? { usage: a.usage } : {}),
    };
    if (a.completion !== undefined) {
      const { completion, finishReason, usage } = a;
      await writeCachedResponse(store, teacherCacheKey(hash), {
        model: endpoint.model,
        completion,
        finishReason,
        usage,
      });
      pending(
        appends,
        journal.append({
          ...base,
          completion: a.completion,
          ...(a.finishReason ? { finishReason: a.finishReason } : {}),
        })
      );
    } else {
      failed++;
      pending(appends, journal.append({ ...base, error: a.error ?? 'batch: no answer' }));
    }
    hooks.onCalls?.(a.completion !== undefined ? 'sent' : 'failed', 1, a.usage);
    hooks.onCollected?.(answered.size);
  }
  return { answered, failed };
}

/** Journals the submitted calls the batch never answered as failures, with the provider's reason, into `appends`. */
function journalUnanswered(
  shard: BatchShard,
  customIds: readonly string[],
  status: BatchStatus,
  appends: Promise<void>[]
): void {
  const why =
    status.status === 'completed'
      ? 'batch completed without an answer for this call'
      : `batch ${status.status}${status.errors?.length ? ` (${status.errors.join('; ')})` : ''} before this call was answered`;
  for (const customId of customIds) {
    const [i, s] = customId.split('.').map(Number);
    const id = shard.open.examples[i].id;
    pending(appends, shard.open.journal.append({ i, s, id, promptHash: '', error: why, stage: shard.input.stageId }));
  }
}

/**
 * Adds an append to those the caller awaits together. A handler is attached at once: an append that fails while the
 * caller is still awaiting something else (a cache write) would otherwise count as unhandled, which kills a worker.
 * The caller's `Promise.all` still sees the failure.
 */
function pending(appends: Promise<void>[], append: Promise<void>): void {
  append.catch(() => undefined);
  appends.push(append);
}
