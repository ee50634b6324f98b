/**
 * The budget holds by the provider's count, not only by ours: attempts the server processed and billed but whose
 * answer never arrived (a body cut off mid-response, a call that timed out while the server worked on it) count
 * against `maxCost` as much as answered ones. The local teacher server bills as a provider does, and the test adds
 * up what it billed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { generateDemoTask } from '../../lib/data/demo-task';
import { parseSpec } from '../../lib/pipeline/spec';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { costOf, estimatePromptTokens } from '../../lib/teacher/budget';
import { startLocalTeacherServer } from '../../lib/teacher/local-server';
import { planShards, promptShard, type StageDeps, type TeacherStageInput } from '../../lib/teacher/stage';
import { buildPrompt } from '../../lib/teacher/templates';
import { faultMode, recordFigures } from '../helpers/figures';

const MODEL = 'budget-fault-test';
/** A dollar per million tokens either way: cost is tokens / 1e6, easy to reason about. */
const PRICE = { inputPerMillionTokens: 1, outputPerMillionTokens: 1 };
const MAX_TOKENS = 256;
let tmp: string;
let store: ArtifactStore;

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-budget-faults-'));
  store = openStore(join(tmp, 'store'));
});

test.after.always(async () => {
  await store?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** `n` demo examples as one shard of an openai teacher at `url`, priced, with `maxCost` dollars. */
async function pricedStage(
  n: number,
  url: string,
  maxCost: number,
  timeoutSeconds: number,
  more: { seed?: number; concurrency?: number; maxTokens?: number } = {}
) {
  const maxTokens = more.maxTokens ?? MAX_TOKENS;
  const examples = generateDemoTask({ n, seed: more.seed ?? 8200 });
  const [train, valid] = await Promise.all([
    store.putJsonl(examples.slice(0, n - 2)),
    store.putJsonl(examples.slice(-2)),
  ]);
  const spec = parseSpec({
    name: 'budget-faults',
    data: { kind: 'demo' },
    teacher: {
      kind: 'openai',
      url,
      model: MODEL,
      shardSize: n,
      concurrency: more.concurrency ?? 2,
      maxTokens,
      price: PRICE,
      maxCost,
      timeoutSeconds,
    },
  });
  const stage: TeacherStageInput = { task: 'demo', teacher: spec.teacher, train, valid };
  // The worst case of one call of this shard, as the budget reserves it.
  const worst = costOf(
    { promptTokens: estimatePromptTokens(buildPrompt('demo', examples[0].input)), completionTokens: maxTokens },
    PRICE
  );
  return { stage, worst };
}

test('attempts the server billed but never answered count against maxCost: billed stays under it', async (t) => {
  const server = await startLocalTeacherServer({ model: MODEL, errorRate: 0 });
  t.teardown(() => server.close());
  const deps: StageDeps = { store, scripted: async () => ({ url: server.url, model: MODEL }), apiKey: () => undefined };
  // Room for twenty calls at their worst case; the shard has twice as many.
  const probe = await pricedStage(40, server.url, 1, 2);
  const maxCost = 20 * probe.worst;
  const { stage } = await pricedStage(40, server.url, maxCost, 2);
  const plan = await planShards(deps, stage);
  // Eight responses cut off mid-body after the server did (and billed) the work, and one that hangs past the
  // client's timeout while the server works on it: billed, never answered.
  const cut = faultMode() === 'full' ? 16 : 8;
  server.setFaults({ truncatedBody: cut, hangMs: 4000 });
  const result = await promptShard(deps, {
    stage,
    stageId: 'budget-billed',
    plan: plan.plan,
    index: 0,
    concurrency: 2,
    budgetUsd: maxCost,
  });
  const c = server.counters();
  const billed = costOf({ promptTokens: c.billedPromptTokens, completionTokens: c.billedCompletionTokens }, PRICE);
  t.true(result.budgetStopped, 'the budget stopped the shard before its 40 calls');
  t.true(c.answered > 0);
  t.true(billed <= maxCost + 1e-12, `billed $${billed} <= maxCost $${maxCost}`);
  // Our count covers the provider's: what the stage reports spending is at least what it was billed.
  t.true(result.costUsd >= billed - 1e-12, `counted $${result.costUsd} >= billed $${billed}`);
  t.true(result.costUsd <= maxCost + 1e-12);
  recordFigures('teacher-budget-billed-unanswered', {
    faultsTried: cut + 1,
    faultsSurvived: billed <= maxCost + 1e-12 ? cut + 1 : 0,
  });
});

test('an attempt that dies with calls in flight: the retry sets their worst case aside, and billed stays under maxCost', async (t) => {
  // Slow answers, billed as soon as the server starts on them: the calls in flight when the attempt dies are paid
  // for though nobody journals them.
  const server = await startLocalTeacherServer({ model: MODEL, errorRate: 0, latencyMs: 1500 });
  t.teardown(() => server.close());
  const deps: StageDeps = { store, scripted: async () => ({ url: server.url, model: MODEL }), apiKey: () => undefined };
  // A small max_tokens keeps a call's worst case close to what it costs, so the budget runs close to its limit.
  const shape = { seed: 8300, concurrency: 4, maxTokens: 64 };
  const probe = await pricedStage(40, server.url, 1, 30, shape);
  const maxCost = 16 * probe.worst;
  const { stage } = await pricedStage(40, server.url, maxCost, 30, shape);
  const plan = await planShards(deps, stage);
  const input = {
    stage,
    stageId: 'budget-dead-attempt',
    plan: plan.plan,
    index: 0,
    concurrency: 4,
    budgetUsd: maxCost,
  };

  // The first attempt dies (its signal aborts, as a killed worker's calls end) with a second wave in flight.
  const dying = new AbortController();
  const first = promptShard(deps, input, { signal: dying.signal });
  const started = Date.now();
  while (!(server.counters().answered >= 4 && server.counters().inFlight >= 4)) {
    if (Date.now() - started > 60_000) throw new Error('the first attempt never had a second wave in flight');
    await new Promise((r) => setTimeout(r, 10));
  }
  dying.abort(new Error('worker killed'));
  await t.throwsAsync(first);

  const result = await promptShard(deps, input);
  const c = server.counters();
  const billed = costOf({ promptTokens: c.billedPromptTokens, completionTokens: c.billedCompletionTokens }, PRICE);
  t.true(result.budgetStopped, 'the budget stopped the retry before the 40 calls');
  t.true(c.answered > 4, 'the retry made calls of its own');
  t.true(billed <= maxCost + 1e-12, `billed $${billed} <= maxCost $${maxCost}`);
  recordFigures('teacher-budget-dead-attempt', { faultsTried: 1, faultsSurvived: billed <= maxCost + 1e-12 ? 1 : 0 });
});
