/**
 * The run report's builder on fixed inputs (a filesystem store holding hand-made artifacts): every section shows the
 * numbers it was given, the page is self-contained, and each stored chart spec re-renders to its stored SVG.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { openStore } from '../lib/store';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { parseSpec } from '../lib/pipeline/spec';
import { renderSvg } from '../lib/report/vega';
import {
  buildRunReport,
  readRunReport,
  rebuildRunReport,
  writeRunReport,
  type RunReportInput,
} from '../lib/report/run-report';

let tmp: string;
let store: ArtifactStore;
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-report-'));
  store = openStore(join(tmp, 'store'));
});
test.after.always(async () => {
  await store?.close();
  await rm(tmp, { recursive: true, force: true });
});

const spec = parseSpec({
  name: 'report-unit',
  data: { kind: 'demo', size: 40, seed: 1 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 4, batchSize: 4 },
});
const t0 = Date.parse('2025-01-01T00:00:00Z');
const at = (s: number) => new Date(t0 + s * 1000).toISOString();

/** A run that reached evaluation, with every artifact the report reads. */
async function fixedRun(): Promise<RunReportInput> {
  const ref = await store.putJson({ placeholder: true });
  const test = await store.putJsonl([
    { id: 'demo-1', input: 'The food was good <b>x</b>', label: 'positive' },
    { id: 'demo-2', input: 'The room was dirty', label: 'negative' },
    { id: 'demo-3', input: 'The view was lovely', label: 'positive' },
  ]);
  const predictions = await store.putJsonl([
    { id: 'demo-1', input: 'The food was good <b>x</b>', gold: 'positive', prediction: 'positive', correct: true },
    { id: 'demo-2', input: 'The room was dirty', gold: 'negative', prediction: 'positive', correct: false },
    { id: 'demo-3', input: 'The view was lovely', gold: 'positive', prediction: 'positive', correct: true },
  ]);
  const explanations = await store.putJsonl([{ id: 'demo-1', rationale: 'good is positive. That is 1 positive.' }]);
  const trainLog = await store.putJson({
    backend: 'cpu',
    optimizer: 'adamw',
    steps: 4,
    stopReason: 'completed',
    finalLoss: 1.5,
    validLoss: 1.7,
    bestStep: 4,
    params: 1234,
    wallMs: 2500,
    resumedFrom: null,
    attempt: 1,
    checkpointsStored: 0,
    lossHistory: [1, 2, 3, 4].map((step) => ({
      step,
      loss: 3 - step * 0.3,
      labelLoss: 2 - step * 0.2,
      rationaleLoss: 4 - step * 0.4,
      learningRate: 0.001 * step,
    })),
    validHistory: [{ step: 4, loss: 1.7, labelLoss: 1.1, rationaleLoss: 2.3 }],
    throughput: [1, 2, 3, 4].map((step) => ({ step, tokensPerSec: 1000 + step })),
    options: { method: 'distill-step-by-step', preset: 'tiny', learningRate: 0.001, batchSize: 4 },
  });
  const report = await store.putJson({
    total: 10,
    kept: 7,
    keptTrain: 6,
    keptValid: 1,
    filters: {},
    dropped: { unparsable: 2, 'teacher-error': 1 },
    droppedExamples: {
      unparsable: [{ id: 'demo-9', split: 'train', completion: 'no answer here', gold: 'positive' }],
    },
    teacherAccuracy: 0.7,
  });
  return {
    workflowId: 'report-unit-1',
    runId: 'run-1',
    spec,
    task: 'demo',
    startedAt: at(0),
    endedAt: at(30),
    outcome: 'registered',
    stages: [
      { name: 'sample', status: 'done', summary: 'train 30, valid 7, test 3' },
      { name: 'promptTeacher', status: 'done' },
      { name: 'validateRationales', status: 'done' },
      { name: 'trainStudent', status: 'done' },
      { name: 'evaluate', status: 'done' },
      { name: 'registerModel', status: 'failed' },
      { name: 'gate', status: 'skipped' },
    ],
    results: {
      sample: {
        datasetHash: 'd',
        sampleHash: 's',
        source: 'demo',
        train: ref,
        valid: ref,
        test,
        counts: { train: 30, valid: 7, test: 3 },
      },
      promptTeacher: {
        responses: ref,
        total: 37,
        cached: 5,
        failed: 1,
        notSent: 0,
        usage: { promptTokens: 900, completionTokens: 300 },
        costUsd: 0.0123,
        budget: { maxCostUsd: 1, exhausted: false },
        calls: { planned: 37, sent: 29, resumed: 3, cached: 5 },
        shards: 2,
        mode: 'direct',
        samples: 1,
        teacher: { kind: 'scripted', model: 'scripted-demo', templateHash: 'abc' },
      },
      validateRationales: { train: ref, valid: ref, report, kept: 7, dropped: { unparsable: 2 }, teacherAccuracy: 0.7 },
      trainStudent: { checkpoint: ref, trainLog, backend: 'cpu', steps: 4, finalLoss: 1.5, params: 1234, wallMs: 2500 },
      evaluate: {
        predictions,
        metrics: ref,
        accuracy: 2 / 3,
        correct: 2,
        total: 3,
        majorityBaseline: { label: 'positive', accuracy: 2 / 3 },
        explanations,
        explainMs: 120,
      },
    },
    error: { message: 'Activity task failed: the registry is unreachable <oops>', stage: 'registerModel' },
  };
}

const timeline = [
  {
    stage: 'sample',
    activity: 'sample',
    scheduledAt: at(0),
    startedAt: at(1),
    closedAt: at(2),
    attempt: 1,
    worker: 'cpu-1@host',
    status: 'completed' as const,
  },
  {
    stage: 'trainStudent',
    activity: 'trainStudent',
    scheduledAt: at(3),
    startedAt: at(4),
    closedAt: at(20),
    attempt: 2,
    worker: 'gpu-7@host',
    status: 'completed' as const,
  },
  {
    stage: 'registerModel',
    activity: 'registerModel',
    scheduledAt: at(25),
    startedAt: at(25),
    closedAt: at(29),
    attempt: 5,
    worker: 'cpu-1@host',
    status: 'failed' as const,
    failure: 'unreachable',
  },
];

test('the builder shows every section with the numbers it was given, escaped, and nothing external', async (t) => {
  const input = await fixedRun();
  const built = await buildRunReport(store, input, {
    timeline,
    teacherOnTest: { measured: false, reason: 'the unit test asks no teacher' },
  });
  const html = built.html;
  for (const id of ['error', 'timeline', 'teacher', 'validation', 'training', 'evaluation', 'gate', 'lineage']) {
    t.regex(html, new RegExp(`<section id="${id}"`), id);
  }
  t.notRegex(html, /<script/i);
  t.notRegex(html, /(src|href)\s*=\s*["']?(https?:)?\/\//i, 'no external asset');
  // Text from the run is escaped, never markup.
  t.true(html.includes('The food was good &lt;b&gt;x&lt;/b&gt;'));
  t.true(html.includes('unreachable &lt;oops&gt;'));
  t.false(html.includes('<oops>'));
  t.regex(html, /id="accuracy">66\.7%/);
  t.regex(html, /id="teacher-sent">29</);
  t.regex(html, /id="teacher-cached">5</);
  t.regex(html, /id="teacher-resumed">3</);
  t.regex(html, /id="validation-kept">7</);
  t.regex(html, /id="loss-points">4</);
  t.true(html.includes('1,003 tokens/s'), 'mean throughput over the logged steps');
  t.true(html.includes('gpu-7@host') && html.includes('cpu-1@host'));
  t.regex(html, /1 activity, 1 retried/);
  t.true(html.includes('good is positive. That is 1 positive.'), "the student's rationale");
  t.true(html.includes('not measured: the unit test asks no teacher'));
  t.regex(html, /<table id="confusion">/);
  t.true(html.includes('No version was registered'));
  t.deepEqual(built.charts.map((c) => c.name).sort(), [
    'accuracy',
    'confusion',
    'learning-rate',
    'loss',
    'throughput',
    'timeline',
    'validation',
  ]);
  // The loss chart holds every logged point: 4 steps × 3 parts on train, 1 validation × 3 parts.
  const loss = built.charts.find((c) => c.name === 'loss')!;
  t.is((loss.spec.data as { values: unknown[] }).values.length, 4 * 3 + 3);
  for (const c of built.charts) t.true(html.includes(`<figure id="chart-${c.name}"><svg`), c.name);
});

test('a written report is stored by content and by name, with a record naming its charts, and re-renders', async (t) => {
  const input = await fixedRun();
  const result = await writeRunReport(store, input, { timeline });
  const record = (await readRunReport(store, 'report-unit-1'))!;
  t.is(record.report.sha256, result.report.sha256);
  t.is(record.bytes, result.bytes);
  const page = (await store.getKey('runs/report-unit-1/report.html'))!.toString('utf8');
  t.is((await store.get(record.report)).toString('utf8'), page);
  t.true(result.uri.endsWith('runs/report-unit-1/report.html'));
  t.is(record.chartRefs.length, result.charts);
  for (const c of record.chartRefs) {
    const svg = (await store.get(c.svg)).toString('utf8');
    t.is(await renderSvg(await store.getJson(c.spec)), svg, `${c.name} re-renders to the stored SVG`);
  }
});

test('a report rebuilt from its record reads the stored inputs, the teacher answer included, without asking', async (t) => {
  const input = await fixedRun();
  await writeRunReport(
    store,
    { ...input, workflowId: 'report-unit-2' },
    {
      timeline,
      teacherOn: async () => ({ measured: false, reason: 'asked once, when the run ended' }),
    }
  );
  const record = (await readRunReport(store, 'report-unit-2'))!;
  await rebuildRunReport(store, record);
  const rebuilt = (await readRunReport(store, 'report-unit-2'))!;
  const page = (await store.get(rebuilt.report)).toString('utf8');
  t.true(page.includes('not measured: asked once, when the run ended'));
  t.true(page.includes('gpu-7@host'), 'the stored timeline');
  t.is(rebuilt.inputs.sha256, record.inputs.sha256, 'the same inputs');
});
