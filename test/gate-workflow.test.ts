/**
 * The promotion gate and human approval as the pipeline runs them, on the real Temporal dev server and versitygw:
 * first-version rule, pass, fail by margin, fail by significance, approval and rejection by Update, a malformed
 * update refused by the validator without a trace in the history, both timeout policies, and `student.init` naming
 * the champion. Every run trains a real (tiny) student; the runs share one data set, so their test splits, and so
 * the frozen evaluation set, are the same bytes, except the one run that shows a candidate evaluated on the
 * champion's set.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { approveUpdate, CPU_TASK_QUEUE, progressQuery, rejectUpdate, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { getAlias, modelHistory, versionStatus } from '../lib/registry/audit';
import { getVersion } from '../lib/registry/registry';
import { historyJson } from './helpers/history';
import { servicesForFile } from './helpers/services';

const services = servicesForFile();

/** Tiny and quick; every run of one model trains on the same data, so test splits are byte-identical. */
const spec = (name: string, gate: PipelineSpecInput['gate'] = {}, student: object = {}): PipelineSpecInput => ({
  name,
  data: { kind: 'demo', size: 150, seed: 11 },
  teacher: { kind: 'scripted', errorRate: 0.1 },
  student: { preset: 'tiny', steps: 30, batchSize: 16, ...student },
  gate,
});

/** For candidates whose accuracy no assertion reads (a gate of minImprovement -1 passes any): a few steps do. */
const QUICK = { steps: 5 };

let runs = 0;
function start(input: PipelineSpecInput): Promise<WorkflowHandle<typeof distillationPipeline>> {
  return services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `gate-${input.name}-${++runs}-${Date.now()}`,
    args: [input],
  });
}

async function run(input: PipelineSpecInput): Promise<PipelineResult> {
  return (await start(input)).result();
}

/** Polls the progress query until the run waits for approval. */
async function awaitingApproval(handle: WorkflowHandle<typeof distillationPipeline>) {
  for (let i = 0; i < 600; i++) {
    const p = await handle.query(progressQuery).catch(() => undefined);
    if (p?.awaitingApproval) return p;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error('the run never came to await approval');
}

/** A run's history as the Temporal CLI shows it (JSON, the form the replay test's fixtures take). */
async function historyEvents(workflowId: string): Promise<string[]> {
  const history = JSON.parse(await historyJson(services().temporal.address, workflowId)) as {
    events: { eventType: string }[];
  };
  return history.events.map((e) => e.eventType);
}

test('first version: promoted when it beats the majority baseline; then pass, margin and significance', async (t) => {
  const store = services().store;
  const first = await run(spec('gm'));
  t.is(first.promotion?.outcome, 'promoted', first.promotion?.reason);
  t.is(first.promotion?.previous, null);
  t.regex(first.promotion!.reason, /majority/);
  // The demo's scripted teacher (errorRate 0.1) answered the same examples: recorded beside the student's figure.
  t.true(
    first.promotion!.teacherAccuracy! > 0.7 && first.promotion!.teacherAccuracy! <= 1,
    String(first.promotion!.teacherAccuracy)
  );
  t.is(first.promotion!.candidateAccuracy, first.accuracy, 'its own test split is the first frozen set');
  t.is((await getAlias(store, 'gm', 'champion'))?.version, 1);
  t.is((await versionStatus(store, 'gm', 1))?.status, 'approved');

  // The same training on the same data: identical predictions, no discordant pair. A tie passes a 0 margin...
  const tie = await run(spec('gm', { minImprovement: 0 }));
  t.is(tie.promotion?.outcome, 'promoted', tie.promotion?.reason);
  t.is(tie.promotion?.previous, 1);
  t.is((await getAlias(store, 'gm', 'champion'))?.version, 2);

  // ...but not a margin of 0.5 (which no candidate can clear, so a quick one shows it), and not McNemar's test: p = 1
  // with no discordant pairs.
  const margin = await run(spec('gm', { minImprovement: 0.5 }, QUICK));
  t.is(margin.promotion?.outcome, 'rejected');
  t.regex(margin.promotion!.reason, /below/);
  t.is((await versionStatus(store, 'gm', 3))?.status, 'rejected');

  const noisy = await run(spec('gm', { minImprovement: 0, mcNemarAlpha: 0.05 }));
  t.is(noisy.promotion?.outcome, 'rejected');
  t.is(noisy.promotion?.pValue, 1);
  t.is((await getAlias(store, 'gm', 'champion'))?.version, 2, 'the champion never moved on a failed gate');

  // Every decision is in the audit log with its numbers.
  const gates = (await modelHistory(store, 'gm')).filter((r) => r.action === 'gate');
  t.deepEqual(
    gates.map((r) => [r.version, r.to]),
    [
      [1, 'approved'],
      [2, 'approved'],
      [3, 'rejected'],
      [4, 'rejected'],
    ]
  );
  t.true(gates.every((r) => typeof (r.details as { candidate?: unknown }).candidate === 'object'));
});

test('a candidate with a different test split is evaluated on the champion’s frozen set', async (t) => {
  const store = services().store;
  await run(spec('gf'));
  const other = await run({
    ...spec('gf', { minImprovement: -1 }, QUICK),
    data: { kind: 'demo', size: 150, seed: 12 },
  });
  t.is(other.promotion?.outcome, 'promoted', other.promotion?.reason);
  const gate = (await modelHistory(store, 'gf')).find((r) => r.action === 'gate' && r.version === 2)!;
  const frozen = (gate.details as { frozen: { evalSet: { sha256: string }; predictions: { sha256: string } } }).frozen;
  const champion = (await modelHistory(store, 'gf')).find((r) => r.action === 'gate' && r.version === 1)!;
  t.is(
    frozen.evalSet.sha256,
    (champion.details as { frozen: { evalSet: { sha256: string } } }).frozen.evalSet.sha256,
    'compared on the champion’s set'
  );
  const v2 = await getVersion(store, 'gf', 2);
  const manifest = JSON.parse((await store.getKey(`runs/${v2!.lineage.workflowId}/manifest.json`))!.toString());
  const ownTest = manifest.artifacts.find((a: { role: string }) => a.role === 'split/test').sha256;
  t.not(frozen.evalSet.sha256, ownTest, 'not on its own test split');
  t.not(
    frozen.predictions.sha256,
    manifest.artifacts.find((a: { role: string }) => a.role === 'eval/predictions').sha256
  );
});

test('approval by Update: a malformed update is refused without a history event; approve promotes', async (t) => {
  const store = services().store;
  await run(spec('ga'));
  const handle = await start(spec('ga', { minImprovement: -1, approval: { timeoutSeconds: 600 } }, QUICK));
  const waiting = await awaitingApproval(handle);
  t.is(waiting.awaitingApproval!.version, 2);
  t.is((await versionStatus(store, 'ga', 2))?.status, 'candidate', 'awaiting approval it is still a candidate');

  const before = await historyEvents(handle.workflowId);
  for (const bad of [
    { version: 7, identity: 'mallory' },
    { version: 2, identity: '  ' },
  ]) {
    await t.throwsAsync(handle.executeUpdate(approveUpdate, { args: [bad] }), {
      instanceOf: WorkflowUpdateFailedError,
    });
  }
  const after = await historyEvents(handle.workflowId);
  t.deepEqual(
    after.filter((e) => /UPDATE/.test(e)),
    before.filter((e) => /UPDATE/.test(e)),
    'a refused update leaves no event'
  );
  t.is((await getAlias(store, 'ga', 'champion'))?.version, 1);

  const outcome = await handle.executeUpdate(approveUpdate, {
    args: [{ version: 2, identity: 'alice@example.com', comment: 'checked the error analysis' }],
  });
  t.deepEqual(outcome, { name: 'ga', version: 2, outcome: 'promoted', alias: 'champion', previous: 1 });
  const result = await handle.result();
  t.is(result.promotion?.outcome, 'promoted');
  t.is(result.promotion?.decidedBy, 'alice@example.com');
  t.is((await getAlias(store, 'ga', 'champion'))?.version, 2);
  const approval = (await modelHistory(store, 'ga')).find((r) => r.action === 'approve')!;
  t.is(approval.who, 'alice@example.com');
  t.is(approval.why, 'checked the error analysis');
  t.is(approval.workflowId, handle.workflowId);
  const events = await historyEvents(handle.workflowId);
  t.is(events.filter((e) => e === 'EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED').length, 1);
  // A gated, approved run's history: the replay test's fixture for this workflow shape.
  if (process.env.STEPWISE_RECORD_HISTORY) {
    await writeFile(
      join(__dirname, 'fixtures', 'gated-pipeline-history.json'),
      await historyJson(services().temporal.address, handle.workflowId)
    );
  }
});

test('rejection by Update, and both timeout policies', async (t) => {
  const store = services().store;
  await run(spec('gr'));
  const rejected = await start(spec('gr', { minImprovement: -1, approval: { timeoutSeconds: 600 } }, QUICK));
  await awaitingApproval(rejected);
  const outcome = await rejected.executeUpdate(rejectUpdate, {
    args: [{ version: 2, identity: 'bob', comment: 'fails the fairness review' }],
  });
  t.is(outcome.outcome, 'rejected');
  t.is((await rejected.result()).promotion?.outcome, 'rejected');
  t.is((await versionStatus(store, 'gr', 2))?.status, 'rejected');
  t.is((await getAlias(store, 'gr', 'champion'))?.version, 1);

  const promoteOnTimeout = await run(
    spec('gr', { minImprovement: -1, approval: { timeoutSeconds: 2, onTimeout: 'promote' } }, QUICK)
  );
  t.is(promoteOnTimeout.promotion?.outcome, 'promoted');
  t.regex(promoteOnTimeout.promotion!.decidedBy!, /timeout/);
  t.is((await getAlias(store, 'gr', 'champion'))?.version, 3);

  const rejectOnTimeout = await run(
    spec('gr', { minImprovement: -1, approval: { timeoutSeconds: 2, onTimeout: 'reject' } }, QUICK)
  );
  t.is(rejectOnTimeout.promotion?.outcome, 'rejected');
  t.is((await versionStatus(store, 'gr', 4))?.status, 'rejected');
  t.is((await getAlias(store, 'gr', 'champion'))?.version, 3);
  const timeouts = (await modelHistory(store, 'gr')).filter((r) => /timeout/.test(r.who));
  t.deepEqual(
    timeouts.map((r) => [r.version, r.action]),
    [
      [3, 'approve'],
      [4, 'reject'],
    ]
  );
});

test('student.init may name the champion: training starts from it and lineage records the version', async (t) => {
  const store = services().store;
  await run(spec('gi'));
  const tuned = await run(spec('gi', { enabled: false }, { init: 'gi@champion', steps: 10 }));
  t.is(tuned.promotion, undefined, 'gate off: nothing promoted');
  const v2 = await getVersion(store, 'gi', 2);
  t.deepEqual(v2!.lineage.training.initFrom, {
    ref: 'gi@champion',
    name: 'gi',
    version: 1,
    checkpoint: {
      sha256: (await getVersion(store, 'gi', 1))!.checkpoint.sha256,
      size: (await getVersion(store, 'gi', 1))!.checkpoint.size,
    },
  });
  const err = await t.throwsAsync(run(spec('gi', { enabled: false }, { init: 'gi@staging' })));
  const messages: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = e.cause) messages.push(e.message);
  t.regex(messages.join(' | '), /student\.init: gi@staging: model gi has no alias "staging"/);
});
