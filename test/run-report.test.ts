/**
 * Run reports end to end, on real Temporal and a real S3 server: a small demo run writes one self-contained HTML page
 * whose numbers are the run's own (accuracy, teacher calls, loss points, workers), each chart's spec is stored and
 * re-renders to the stored SVG, `stepwise report` finds it by workflow id and by version; and a run that fails in its
 * first stage still gets a report naming the stage and the error.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { CPU_TASK_QUEUE, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { getVersion } from '../lib/registry/registry';
import { lineageTree, type LineageNode } from '../lib/registry/lineage';
import { readRunReport, type RunReportInput } from '../lib/report/run-report';
import { renderSvg } from '../lib/report/vega';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { servicesForFile } from './helpers/services';

const services = servicesForFile();

/** Small: a few seconds of training, yet every stage (teacher, validation, gate) does real work. */
const spec: PipelineSpecInput = {
  name: 'report-demo',
  data: { kind: 'demo', size: 160, seed: 4 },
  teacher: { kind: 'scripted', errorRate: 0.1 },
  student: { preset: 'tiny', steps: 30, batchSize: 16, evalEvery: 10 },
};

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** Every page must open from a file, offline: no script, and no src or href that leaves the page. */
function assertSelfContained(t: import('ava').ExecutionContext, html: string) {
  t.notRegex(html, /<script/i, 'no script');
  t.notRegex(html, /\s(src|href)\s*=\s*["']?\s*(https?:|\/\/)/i, 'no external asset');
  t.notRegex(html, /<link[^>]+stylesheet/i, 'no external stylesheet');
  t.notRegex(html, /@import/i, 'no imported style');
}

test.serial('a finished run writes one self-contained report with every section and its own numbers', async (t) => {
  t.timeout(600_000);
  const { client, store } = services();
  const workflowId = `report-${Date.now()}`;
  const handle = await client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [spec],
  });
  const result = (await handle.result()) as PipelineResult;
  t.is(result.reportUri, store.uri(`runs/${workflowId}/report.html`));

  const record = (await readRunReport(store, workflowId))!;
  t.truthy(record, 'the record names the report');
  t.is(record.outcome, 'promoted');
  const html = (await store.get(record.report)).toString('utf8');
  t.is((await store.getKey(`runs/${workflowId}/report.html`))!.toString('utf8'), html, 'the named copy is the page');
  t.log(`report: ${record.bytes} bytes, ${record.charts} charts, built in ${record.buildMs} ms`);
  assertSelfContained(t, html);
  for (const id of ['timeline', 'teacher', 'validation', 'training', 'evaluation', 'gate', 'lineage']) {
    t.regex(html, new RegExp(`<section id="${id}"`), `section ${id}`);
  }
  t.notRegex(html, /<section id="error"/);

  // The run's own numbers: accuracy, the teacher's calls as lineage counts them, the gate's decision.
  t.true(html.includes(`id="accuracy">${pct(result.accuracy)}</span> (${result.correct}/${result.total})`));
  const version = (await getVersion(store, 'report-demo', result.version))!;
  const calls = version.lineage.teacher!.calls!;
  t.true(html.includes(`id="teacher-sent">${calls.sent}<`), `sent ${calls.sent}`);
  t.true(html.includes(`id="teacher-cached">${calls.cached}<`));
  t.true(html.includes(`id="teacher-resumed">${calls.resumed}<`));
  t.true(html.includes(`id="validation-kept">${version.lineage.validation!.kept}<`));
  t.true(html.includes(`id="gate-outcome">${result.promotion!.outcome}<`));
  t.true(html.includes(`id="training-backend">${result.backend}<`));
  // The scripted teacher has no rate limit: counted, and zero.
  t.true(html.includes('id="teacher-rate-limit">0 refusals (429); 0 ms waited'));

  // The loss curve has a point per logged step, train and validation alike.
  const manifest = JSON.parse((await store.getKey(`runs/${workflowId}/manifest.json`))!.toString('utf8'));
  const trainLogEntry = manifest.artifacts.find((a: { role: string }) => a.role === 'student/train-log');
  const trainLog = await store.getJson<{ lossHistory: unknown[]; validHistory: unknown[] }>(trainLogEntry);
  t.is(trainLog.lossHistory.length, 30, 'a short run logs every step');
  t.is(trainLog.validHistory.length, 3, 'validated every 10 steps');
  t.true(html.includes(`id="loss-points">${trainLog.lossHistory.length}<`));
  const lossChart = record.chartRefs.find((c) => c.name === 'loss')!;
  const lossValues = (await store.getJson<{ data: { values: { split: string; series: string }[] } }>(lossChart.spec))
    .data.values;
  t.is(lossValues.filter((p) => p.split === 'train' && p.series === 'total').length, trainLog.lossHistory.length);
  t.is(lossValues.filter((p) => p.split === 'valid' && p.series === 'rationale').length, trainLog.validHistory.length);

  // Who ran each stage: every worker lineage names is on the timeline.
  const workers = new Set(version.lineage.workers!.activities.map((a) => a.worker));
  t.true(workers.size > 0);
  for (const w of workers) t.true(html.includes(`<code class="worker">${w}</code>`), `worker ${w}`);

  // The student's own rationales for the first examples, and the teacher on the same test set.
  const saved = await store.getJson<{ input: RunReportInput }>(record.inputs);
  const evaluation = saved.input.results.evaluate!;
  const explained = await store.getJsonl<{ id: string; rationale: string }>(evaluation.explanations!);
  t.is(explained.length, Math.min(50, result.total));
  t.log(`${explained.length} student rationales generated in ${evaluation.explainMs} ms`);
  const escaped = explained[0].rationale.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  t.true(html.includes(escaped), 'a generated rationale is on the examples page');
  t.regex(html, /teacher on the same examples<\/th><td>\d+\.\d%/, 'the scripted teacher was measured on the test set');
  t.regex(html, /<table id="confusion">/, 'the demo task is classification');

  // The lineage graph draws every node of the version's lineage tree, joined by one edge less.
  const tree = await lineageTree(store, version);
  const count = (n: LineageNode): number => 1 + n.children.reduce((k, c) => k + count(c), 0);
  const lineageSpec = await store.getJson<{ layer: { data: { values: unknown[] } }[] }>(
    record.chartRefs.find((c) => c.name === 'lineage')!.spec
  );
  t.is(lineageSpec.layer[1].data.values.length, count(tree));
  t.is(lineageSpec.layer[0].data.values.length, count(tree) - 1);

  // Every chart's spec is stored beside its SVG and re-renders to it.
  t.deepEqual(record.chartRefs.map((c) => c.name).sort(), [
    'accuracy',
    'confusion',
    'learning-rate',
    'lineage',
    'loss',
    'throughput',
    'timeline',
    'validation',
  ]);
  for (const c of record.chartRefs) {
    t.is(await renderSvg(await store.getJson(c.spec)), (await store.get(c.svg)).toString('utf8'), c.name);
  }

  // The manifest names where the report is; the CLI finds it by version and copies it out.
  t.deepEqual(manifest.report, { page: result.reportUri, record: store.uri(`runs/${workflowId}/report.json`) });
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-report-cli-'));
  try {
    const out = join(dir, 'report.html');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join(__dirname, '..', 'bin', 'stepwise.js'), 'report', `report-demo@${result.version}`, '--out', out],
      { env: { ...process.env, STEPWISE_STORE: services().storeLocation } }
    );
    t.is(stdout.trim(), out);
    t.is(await readFile(out, 'utf8'), html);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test.serial('a run that fails in its first stage still gets a report naming the stage and the error', async (t) => {
  const { client, store } = services();
  const workflowId = `report-failed-${Date.now()}`;
  const handle = await client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [
      {
        name: 'report-missing',
        data: { kind: 'reference', dir: '/nowhere/at/all', task: 'cqa' },
        teacher: { kind: 'replay' },
      },
    ],
  });
  await t.throwsAsync(handle.result());
  const record = (await readRunReport(store, workflowId))!;
  t.truthy(record, 'the failed run has a report');
  t.is(record.outcome, 'failed');
  const html = (await store.get(record.report)).toString('utf8');
  assertSelfContained(t, html);
  t.regex(html, /<section id="error" class="error"><h2>Failed in sample<\/h2><pre>[^<]*\/nowhere\/at\/all/);
  t.regex(html, /<td>sample<\/td><td><span class="status failed">failed<\/span>/);
  t.regex(html, /<td>trainStudent<\/td><td><span class="status pending">pending<\/span>/);
  t.regex(
    html,
    /<td>sample<\/td><td>sample<\/td><td>failed: [^<]*\/nowhere\/at\/all/,
    'the timeline has the failed attempt'
  );
  t.true(html.includes('No version was registered'));
  for (const absent of ['teacher', 'training', 'evaluation']) t.notRegex(html, new RegExp(`<section id="${absent}"`));
});
