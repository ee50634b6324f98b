/**
 * The teacher stage's activities: plan the shards, run one shard (direct calls, or a batch job in three steps), and
 * assemble the responses. The `teacherStage` child workflow fans shards out over every worker serving the queue.
 *
 * Where things live in the store (all keys derive from the plan and the teacher's identity, so any attempt of any
 * activity finds them without being told):
 * - `teacher/journal/<shardKey>/…jsonl`: every finished call, appended as it finishes (see `lib/teacher/journal.ts`);
 * - `teacher/shards/<shardKey>.json`: a finished shard's responses artifact and figures;
 * - `cache/teacher/<promptHash>.json`: the cross-run response cache, keyed by model, prompt and sampling parameters.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { once, setMaxListeners } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';

import type { Example } from '../lib/data/types';
import { parseCompletion } from '../lib/data/parse';
import { InputError } from '../lib/errors';
import type { PipelineSpec, TaskKind } from '../lib/pipeline/spec';
import { canonicalJson, sha256Hex, type ArtifactRef, type ArtifactStore } from '../lib/store/artifact-store';
import { createOpenAITeacher, createTeacher, REPLAY_MODEL } from '../lib/teacher';
import { Budget, costOf, estimatePromptTokens, type Price, type Usage } from '../lib/teacher/budget';
import { Journal } from '../lib/teacher/journal';
import { mapWithConcurrency } from '../lib/teacher/pool';
import { createRateLimiter } from '../lib/teacher/rate-limit';
import {
  batchAnswers,
  batchClient,
  batchStatus,
  findBatch,
  submitBatch,
  type BatchCall,
  type BatchStatus,
} from '../lib/teacher/batch';
import {
  foldShard,
  indexRecords,
  runShard,
  type CallRecord,
  type ShardExample,
  type ShardStats,
} from '../lib/teacher/shard';
import { promptHash, teacherCacheKey } from '../lib/teacher/types';
import { buildPrompt, templateHash } from '../lib/teacher/templates';
import type { Teacher } from '../lib/teacher/types';
import type { TeacherSummary } from './types';
import { mapErrors, progressReporter } from './progress';

export type TeacherSpec = PipelineSpec['teacher'];

export interface TeacherStageInput {
  task: TaskKind;
  teacher: TeacherSpec;
  /** Where replay finds recorded completions when the spec does not name a folder. */
  dataDir?: string;
  train: ArtifactRef;
  valid: ArtifactRef;
}

/** Resolves the built-in scripted teacher to a running local OpenAI-compatible server (started once per worker). */
export type ScriptedTeacherProvider = (errorRate: number) => Promise<{ url: string; model: string }>;

export interface TeacherPlan {
  /** JSON: the shard files and what the shards share. */
  plan: ArtifactRef;
  shards: number;
  examples: number;
  /** examples × samples. */
  calls: number;
  teacher: TeacherSummary;
}

/** What the plan artifact holds. */
interface PlanDoc {
  version: 1;
  task: TaskKind;
  /** sha256 of everything about the teacher that decides its answers: model, sampling, samples, template. */
  identity: string;
  samples: number;
  examples: number;
  shards: { ref: ArtifactRef; examples: number }[];
}

export interface TeacherShardInput {
  stage: TeacherStageInput;
  /**
   * The teacher-stage execution (its workflow id, stable across continue-as-new). Journal records carry it, so each
   * stage counts only what it spent itself, and a shard another stage finished is reused without being charged.
   */
  stageId: string;
  plan: ArtifactRef;
  index: number;
  /** This shard's share of the stage's concurrency and rate limits (the workflow divides them). */
  concurrency: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  /** Dollars this launch of the shard may spend; absent for no budget. */
  budgetUsd?: number;
  /** Dollars of this shard's journal that earlier launches already reported (and the workflow counted). */
  accountedUsd?: number;
}

/** A shard's figures (see {@link ShardStats}), except that `usage` is everything this stage's records spent on it. */
export interface TeacherShardResult extends ShardStats {
  index: number;
  /** False when the budget stopped the shard before every call was made (a later launch may resume it). */
  complete: boolean;
  costUsd: number;
}

/** Per-example counts over the assembled responses (usage and cost come from the shards' journals). */
export interface TeacherStageFigures {
  total: number;
  /** Examples answered entirely from the cross-run cache. */
  cached: number;
  failed: number;
  notSent: number;
}

/** One shard's finished output, under `teacher/shards/<shardKey>.json`. */
interface ShardDone {
  responses: ArtifactRef;
  result: TeacherShardResult;
  stageId: string;
}

const shardKeyOf = (identity: string, shard: ArtifactRef) => sha256Hex(`${identity}\n${shard.sha256}`);
const journalPrefix = (shardKey: string) => `teacher/journal/${shardKey}/`;
const doneKey = (shardKey: string) => `teacher/shards/${shardKey}.json`;

/** The model name the teacher is recorded under, and the sampling parameters that decide its answers. */
function identityOf(spec: TeacherSpec, task: TaskKind, model: string): { identity: string; samples: number } {
  const samples = spec.kind === 'replay' ? 1 : spec.samples;
  const sampling = spec.kind === 'replay' ? {} : { temperature: spec.temperature, maxTokens: spec.maxTokens };
  const identity = sha256Hex(canonicalJson({ task, model, sampling, samples, template: templateHash(task) }));
  return { identity, samples };
}

async function modelOf(spec: TeacherSpec, scripted: ScriptedTeacherProvider): Promise<{ model: string; url?: string }> {
  switch (spec.kind) {
    case 'scripted':
      return scripted(spec.errorRate);
    case 'openai':
      return { model: spec.model, url: spec.url };
    case 'replay':
      return { model: REPLAY_MODEL };
  }
}

/** Split the train and valid examples into shard files; nothing is called yet. */
export async function planTeacherStage(
  deps: { store: ArtifactStore; scripted: ScriptedTeacherProvider },
  input: TeacherStageInput
): Promise<TeacherPlan> {
  return mapErrors(async () => {
    const { store } = deps;
    const { model, url } = await modelOf(input.teacher, deps.scripted);
    const { identity, samples } = identityOf(input.teacher, input.task, model);
    const shardSize = input.teacher.shardSize;
    const shards: PlanDoc['shards'] = [];
    let examples = 0;
    // One split at a time, one shard at a time: the plan never holds more than a split and a shard.
    let pending: ShardExample[] = [];
    const emit = async () => {
      shards.push({ ref: await store.putJsonl(pending), examples: pending.length });
      pending = [];
    };
    for (const split of [input.train, input.valid]) {
      for await (const ex of store.iterJsonl<Example>(split)) {
        pending.push({ id: ex.id, input: ex.input, ...(ex.source ? { source: ex.source } : {}) });
        examples++;
        if (pending.length === shardSize) await emit();
      }
    }
    if (pending.length > 0) await emit();
    const doc: PlanDoc = { version: 1, task: input.task, identity, samples, examples, shards };
    return {
      plan: await store.putJson(doc),
      shards: shards.length,
      examples,
      calls: examples * samples,
      teacher: {
        kind: input.teacher.kind,
        model,
        templateHash: templateHash(input.task),
        ...(url && input.teacher.kind === 'openai' ? { url } : {}),
      },
    };
  });
}

/** Where an OpenAI-compatible teacher lives, and the key to call it with (read from the worker's environment). */
async function endpointOf(
  spec: Exclude<TeacherSpec, { kind: 'replay' }>,
  scripted: ScriptedTeacherProvider
): Promise<{ baseURL: string; model: string; apiKey?: string }> {
  if (spec.kind === 'scripted') {
    const { url, model } = await scripted(spec.errorRate);
    return { baseURL: url, model };
  }
  const apiKey = process.env[spec.apiKeyEnv];
  if (apiKey === undefined && spec.apiKeyEnv !== 'OPENAI_API_KEY') {
    throw new InputError(
      `teacher.apiKeyEnv names ${spec.apiKeyEnv}, which is not set in this worker's environment`,
      'teacher.apiKeyEnv'
    );
  }
  return { baseURL: spec.url, model: spec.model, apiKey };
}

/** The teacher for one shard, with its share of the stage's limits. */
async function shardTeacher(
  deps: { store: ArtifactStore; scripted: ScriptedTeacherProvider },
  input: TeacherShardInput
): Promise<Teacher> {
  const spec = input.stage.teacher;
  if (spec.kind === 'replay') {
    const dataDir = spec.dir ?? input.stage.dataDir;
    // The spec schema guarantees a folder for replay; this guards direct activity calls.
    if (!dataDir) throw new InputError('a replay teacher needs the folder of recorded completions', 'teacher.dir');
    const task = input.stage.task;
    if (task === 'demo' || task === 'jsonl') {
      throw new InputError(`replay needs a reference benchmark task, got '${task}'`, 'teacher.kind');
    }
    return createTeacher({ kind: 'replay', dataDir, task });
  }
  const endpoint = await endpointOf(spec, deps.scripted);
  // Always a limiter, limits or not: it is also how a 429's retry-after pauses every call of the shard at once.
  const limiter = createRateLimiter({
    requestsPerMinute: input.requestsPerMinute,
    tokensPerMinute: input.tokensPerMinute,
  });
  return createOpenAITeacher(
    {
      ...endpoint,
      temperature: spec.temperature,
      maxTokens: spec.maxTokens,
      timeoutMs: spec.timeoutSeconds * 1000,
      maxRetries: spec.maxRetries,
      limiter,
    },
    deps.store
  );
}

function priceOf(spec: TeacherSpec): Price | undefined {
  return spec.kind === 'replay' ? undefined : spec.price;
}

async function readPlan(store: ArtifactStore, plan: ArtifactRef): Promise<PlanDoc> {
  return store.getJson<PlanDoc>(plan);
}

/** The label a completion parses to, for the self-consistency vote. */
const labeller = (task: TaskKind) => (completion: string) => {
  const parsed = parseCompletion(task, completion);
  return parsed.ok ? parsed.label : undefined;
};

/** Tokens the records of one stage execution spent. */
function journalUsage(records: readonly CallRecord[], stageId: string): Usage {
  const usage = { promptTokens: 0, completionTokens: 0 };
  for (const r of records) {
    if (r.stage !== stageId) continue;
    usage.promptTokens += r.usage?.promptTokens ?? 0;
    usage.completionTokens += r.usage?.completionTokens ?? 0;
  }
  return usage;
}

/** One shard's plan entry, examples and journal, opened for an activity. */
interface OpenShard {
  doc: PlanDoc;
  shardKey: string;
  examples: ShardExample[];
  journal: Journal<CallRecord>;
  prior: CallRecord[];
}

async function openShard(store: ArtifactStore, input: TeacherShardInput): Promise<OpenShard | TeacherShardResult> {
  const doc = await readPlan(store, input.plan);
  const shard = doc.shards[input.index];
  if (!shard) throw new InputError(`shard ${input.index} is not in the plan (${doc.shards.length} shards)`, 'index');
  const shardKey = shardKeyOf(doc.identity, shard.ref);
  const finished = await store.getKey(doneKey(shardKey));
  if (finished) {
    const done = JSON.parse(finished.toString('utf8')) as ShardDone;
    // A retry of the activity that finished it gets the same answer; another stage reuses it for free, unless some
    // calls failed: those are tried again (from the journal, which keeps every success).
    if (done.stageId === input.stageId) return done.result;
    if (done.result.failed === 0) {
      const none = { promptTokens: 0, completionTokens: 0 };
      return { ...done.result, resumed: done.result.calls, cached: 0, sent: 0, usage: none, costUsd: 0 };
    }
  }
  const [examples, { journal, records: prior }] = await Promise.all([
    store.getJsonl<ShardExample>(shard.ref),
    Journal.open<CallRecord>(store, journalPrefix(shardKey)),
  ]);
  return { doc, shardKey, examples, journal, prior };
}

/**
 * A shard's figures from its journal as it now stands; when `finish` says so, its responses are folded and stored
 * under its done key, and later attempts return them without a call.
 */
async function shardOutcome(
  store: ArtifactStore,
  input: TeacherShardInput,
  open: OpenShard,
  counts: Pick<TeacherShardResult, 'resumed' | 'cached' | 'sent' | 'failed' | 'budgetStopped'>,
  finish: (records: Map<string, CallRecord>) => boolean
): Promise<TeacherShardResult> {
  const { doc, shardKey, examples } = open;
  // What was read at open plus what this attempt wrote: the whole journal, without reading it back.
  const records = [...open.prior, ...open.journal.written];
  const usage = journalUsage(records, input.stageId);
  const index = indexRecords(records);
  const calls = examples.length * doc.samples;
  const notSent = calls - index.size;
  const complete = finish(index);
  const result: TeacherShardResult = {
    index: input.index,
    complete,
    ...counts,
    budgetStopped: counts.budgetStopped && !complete,
    examples: examples.length,
    calls,
    notSent,
    usage,
    costUsd: costOf(usage, priceOf(input.stage.teacher)),
  };
  if (complete) {
    const responses = foldShard(examples, doc.samples, index, labeller(doc.task));
    const done: ShardDone = { responses: await store.putJsonl(responses), result, stageId: input.stageId };
    await store.putKey(doneKey(shardKey), canonicalJson(done), { contentType: 'application/json' });
  }
  return result;
}

/** What earlier attempts of this launch spent (they died before reporting it): it comes out of this launch's budget. */
function budgetFor(input: TeacherShardInput, prior: readonly CallRecord[]): Budget {
  const price = priceOf(input.stage.teacher);
  const unaccounted = Math.max(0, costOf(journalUsage(prior, input.stageId), price) - (input.accountedUsd ?? 0));
  return new Budget(input.budgetUsd === undefined ? undefined : Math.max(0, input.budgetUsd - unaccounted), price);
}

/**
 * Run one shard: every call not already journalled (by an earlier attempt, after a crash) or cached (by an earlier
 * run) is made, and journalled as it finishes. A finished shard writes its responses and figures under a key of
 * its own, so a retry after that point returns them without a call.
 */
export async function teacherShardActivity(
  deps: { store: ArtifactStore; client?: Client; scripted: ScriptedTeacherProvider },
  input: TeacherShardInput
): Promise<TeacherShardResult> {
  return mapErrors(async () => {
    const { store } = deps;
    const ctx = Context.current();
    const open = await openShard(store, input);
    if (!('journal' in open)) return open;
    const { doc, examples, journal, prior } = open;
    const teacher = await shardTeacher(deps, input);
    const report = progressReporter(deps.client, 'promptTeacher');
    let progress = { step: 0, total: examples.length * doc.samples };
    // Calls can all be waiting at once (a long rate-limit pause, hung requests): the heartbeat must not wait on them.
    // Every call in flight links its own signal to this one for the duration of the call: that many listeners are
    // expected, not a leak.
    setMaxListeners(input.concurrency + 16, ctx.cancellationSignal);
    const every = Math.max(200, Math.min(5000, (ctx.info.heartbeatTimeoutMs ?? 15_000) / 3));
    const beat = setInterval(() => ctx.heartbeat({ ...progress, shard: input.index }), every);
    try {
      const { stats } = await runShard({
        examples,
        messagesFor: (ex) => buildPrompt(doc.task, ex.input),
        teacher,
        samples: doc.samples,
        concurrency: input.concurrency,
        journal,
        prior,
        stageId: input.stageId,
        budget: budgetFor(input, prior),
        labelOf: labeller(doc.task),
        signal: ctx.cancellationSignal,
        onProgress: (step, total) => {
          progress = { step, total };
          report(step, total, { shard: input.index });
        },
      });
      // Every call has a record (failures included: they are data about the teacher, and are retried by a re-run).
      return await shardOutcome(store, input, open, stats, (index) => index.size === stats.calls);
    } finally {
      clearInterval(beat);
    }
  });
}

/** Batch mode: which round of submission this is (a round resubmits what an expired or failed batch left undone). */
export interface TeacherBatchInput extends TeacherShardInput {
  round: number;
}

function callingSpec(input: TeacherShardInput): Exclude<TeacherSpec, { kind: 'replay' }> {
  const spec = input.stage.teacher;
  if (spec.kind === 'replay') {
    throw new InputError('teacher.mode batch needs an endpoint to call; a replay teacher has none', 'teacher.mode');
  }
  return spec;
}

/** The batch's record in the store: which calls went into it, so collection can tell the unanswered ones. */
const batchKey = (shardKey: string, round: number) => `teacher/batches/${shardKey}/${round}.json`;

/**
 * Batch mode, step 1: journal the calls the response cache already answers, then upload the rest as one batch
 * (or find the batch an earlier attempt created). Returns the batch id, or the shard's result when nothing is left
 * to send.
 */
export async function submitTeacherBatchActivity(
  deps: { store: ArtifactStore; scripted: ScriptedTeacherProvider },
  input: TeacherBatchInput
): Promise<{ batchId?: string; result?: TeacherShardResult }> {
  return mapErrors(async () => {
    const { store } = deps;
    const spec = callingSpec(input);
    const open = await openShard(store, input);
    if (!('journal' in open)) return { result: open };
    const { doc, shardKey, examples, journal, prior } = open;
    const endpoint = await endpointOf(spec, deps.scripted);
    const client = batchClient(endpoint);
    const existing = await findBatch(client, shardKey, input.round);
    if (existing) return { batchId: existing };

    const done = indexRecords(prior);
    const wanted: { i: number; s: number; call: BatchCall }[] = [];
    for (let i = 0; i < examples.length; i++) {
      const messages = buildPrompt(doc.task, examples[i].input);
      for (let s = 0; s < doc.samples; s++) {
        const seen = done.get(`${i}.${s}`);
        if (seen && seen.error === undefined) continue;
        const seed = doc.samples > 1 ? s : undefined;
        wanted.push({ i, s, call: { customId: `${i}.${s}`, messages, ...(seed === undefined ? {} : { seed }) } });
      }
    }
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
      void journal.append({
        i,
        s,
        id: examples[i].id,
        promptHash: hit.promptHash,
        completion: hit.completion,
        cached: true,
        stage: input.stageId,
      });
    });
    const pending = wanted.filter((w) => !hits.has(w.call.customId)).map((w) => w.call);
    const cached = hits.size;
    await journal.flush();
    const counts = { resumed: successes(prior), cached, sent: 0, failed: 0 };
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
    await store.putKey(
      batchKey(shardKey, input.round),
      canonicalJson({ batchId, calls: calls.map((c) => c.customId), notSent: pending.length - fit }),
      { contentType: 'application/json' }
    );
    return { batchId };
  });
}

/** Batch mode, step 2 (repeated on durable timers): is the batch done? */
export async function pollTeacherBatchActivity(
  deps: { scripted: ScriptedTeacherProvider },
  input: { stage: TeacherStageInput; batchId: string }
): Promise<BatchStatus> {
  return mapErrors(async () => {
    const spec = callingSpec({ stage: input.stage } as TeacherShardInput);
    return batchStatus(batchClient(await endpointOf(spec, deps.scripted)), input.batchId);
  });
}

/**
 * Batch mode, step 3: journal every answer (and cache the good ones), exactly as direct calls are journalled, so
 * both modes give the same artifacts. Calls the batch did not answer (it expired or failed) are journalled as
 * failures with the provider's reason; the shard is finished when every call succeeded, or on the last round.
 */
export async function collectTeacherBatchActivity(
  deps: { store: ArtifactStore; scripted: ScriptedTeacherProvider },
  input: TeacherBatchInput & { batchId: string; lastRound: boolean }
): Promise<TeacherShardResult> {
  return mapErrors(async () => {
    const { store } = deps;
    const ctx = Context.current();
    const spec = callingSpec(input);
    const open = await openShard(store, input);
    if (!('journal' in open)) return open;
    const { doc, shardKey, examples, journal, prior } = open;
    const endpoint = await endpointOf(spec, deps.scripted);
    const client = batchClient(endpoint);
    const status = await batchStatus(client, input.batchId);
    const sentRecord = await store.getKey(batchKey(shardKey, input.round));
    const submitted: string[] = sentRecord
      ? (JSON.parse(sentRecord.toString('utf8')) as { calls: string[] }).calls
      : [];
    const answers = await batchAnswers(client, status);
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
      const hash = promptHash({ model: endpoint.model, messages, ...teacherSampling(spec), seed });
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
        await store.putKey(
          teacherCacheKey(hash),
          JSON.stringify({
            model: endpoint.model,
            completion: a.completion,
            finishReason: a.finishReason,
            usage: a.usage,
          }),
          { contentType: 'application/json' }
        );
        void journal.append({
          ...base,
          completion: a.completion,
          ...(a.finishReason ? { finishReason: a.finishReason } : {}),
        });
      } else {
        failed++;
        void journal.append({ ...base, error: a.error ?? 'batch: no answer' });
      }
      ctx.heartbeat({ collected: answered.size });
    }
    const why =
      status.status === 'completed'
        ? 'batch completed without an answer for this call'
        : `batch ${status.status}${status.errors?.length ? ` (${status.errors.join('; ')})` : ''} before this call was answered`;
    for (const customId of submitted) {
      if (answered.has(customId)) continue;
      const [i, s] = customId.split('.').map(Number);
      failed++;
      void journal.append({ i, s, id: examples[i].id, promptHash: '', error: why, stage: input.stageId });
    }
    await journal.flush();
    const counts = { resumed: successes(prior), cached: 0, sent: answers.length, failed, budgetStopped: false };
    const calls = examples.length * doc.samples;
    return shardOutcome(store, input, open, counts, (index) => {
      let ok = 0;
      for (const r of index.values()) if (r.error === undefined) ok++;
      return ok === calls || (input.lastRound && index.size === calls);
    });
  });
}

/** Calls an earlier attempt finished with a completion. */
function successes(records: readonly CallRecord[]): number {
  let n = 0;
  for (const r of indexRecords(records).values()) if (r.error === undefined) n++;
  return n;
}

function teacherSampling(spec: Exclude<TeacherSpec, { kind: 'replay' }>): { temperature: number; maxTokens: number } {
  return { temperature: spec.temperature, maxTokens: spec.maxTokens };
}

/**
 * Assemble every shard's responses, in plan order, into the one JSONL artifact the validate stage reads. A shard the
 * budget stopped contributes what its journal holds; the rest of its examples are recorded as not sent. Streams
 * through a temporary file: memory holds one shard at a time whatever the data size.
 */
export async function finishTeacherStage(
  deps: { store: ArtifactStore },
  input: { plan: ArtifactRef }
): Promise<TeacherStageFigures & { responses: ArtifactRef }> {
  return mapErrors(async () => {
    const { store } = deps;
    const ctx = Context.current();
    const doc = await readPlan(store, input.plan);
    const dir = await mkdtemp(join(tmpdir(), 'stepwise-teacher-'));
    try {
      const path = join(dir, 'responses.jsonl');
      const out = createWriteStream(path);
      const figures: TeacherStageFigures = { total: 0, cached: 0, failed: 0, notSent: 0 };
      for (let index = 0; index < doc.shards.length; index++) {
        ctx.heartbeat({ shard: index });
        const shard = doc.shards[index];
        const shardKey = shardKeyOf(doc.identity, shard.ref);
        const done = await store.getKey(doneKey(shardKey));
        let lines: string[];
        if (done) {
          const { responses } = JSON.parse(done.toString('utf8')) as ShardDone;
          lines = (await store.get(responses)).toString('utf8').split('\n');
        } else {
          const [examples, { records }] = await Promise.all([
            store.getJsonl<ShardExample>(shard.ref),
            Journal.open<CallRecord>(store, journalPrefix(shardKey)),
          ]);
          const folded = foldShard(examples, doc.samples, indexRecords(records), labeller(doc.task));
          lines = folded.map((r) => JSON.stringify(r));
        }
        for (const line of lines) {
          if (line.length === 0) continue;
          const r = JSON.parse(line) as { cached?: boolean; error?: string };
          figures.total++;
          if (r.cached) figures.cached++;
          if (r.error !== undefined) {
            if (r.error.startsWith('not sent')) figures.notSent++;
            else figures.failed++;
          }
          if (!out.write(line + '\n')) await once(out, 'drain');
        }
      }
      out.end();
      await once(out, 'finish');
      const responses = await store.putFile(path, 'application/x-ndjson');
      return { ...figures, responses };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
