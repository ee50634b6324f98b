/**
 * A run's report: one self-contained HTML page (inline CSS and SVG, no script, no external asset) that shows what a
 * run did, from the stage timeline to the lineage graph, with the numbers read from the run's own artifacts. Written
 * at the end of every run, and of a failed one as far as it got.
 *
 * Stored by content, with a copy under `runs/<workflowId>/report.html` (a name a browser opens from a file) and the
 * record `runs/<workflowId>/report.json` naming both, every chart's Vega-Lite spec and SVG, and the inputs the page
 * was built from, so `stepwise report` finds it long after Temporal has forgotten the run.
 */
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import type { SampleResult } from '../data/sample';
import type { ValidateRationalesResult, ValidationReport } from '../data/rationales';
import type { TaskKind } from '../data/types';
import type { PipelineSpec } from '../pipeline/spec';
import type { EvaluateResult } from '../student/evaluate-split';
import type { TrainStudentResult } from '../student/train-stage';
import type { PromptTeacherResult } from '../teacher/stage/types';
import type { TeacherEvalResult, TeacherPrediction } from '../teacher/eval-set';
import type { RegisterModelResult } from '../registry/run';
import { getVersion, runReportHtmlKey, runReportKey, type ModelVersion } from '../registry/registry';
import { versionHistory, type AuditRecord } from '../registry/audit';
import type { PromotionSummary } from '../registry/gate-stage';
import { lineageTree, redact, redactUrl, type LineageNode } from '../registry/lineage';
import { renderSvg } from './vega';
import {
  barChart,
  confusionChart,
  lineageChart,
  lossChart,
  stepChart,
  timelineChart,
  type ChartSpec,
} from './run-charts';
import { esc, facts, num, pct, raw, seconds, STYLE, table } from './html';

// ---------------------------------------------------------------------------------------------------------------
// Inputs

/** One activity execution as the run's history recorded it (activities/report.ts reads it). */
export interface TimelineEntry {
  /** The pipeline stage it belongs to (the teacher stage's activities are `promptTeacher`'s). */
  stage: string;
  activity: string;
  /** ISO-8601 times; `startedAt` is the last attempt's start, absent while it waited in the queue. */
  scheduledAt: string;
  startedAt?: string;
  closedAt?: string;
  /** The attempt that ran last (1: no retry). */
  attempt: number;
  /** The worker identity that ran the last attempt. */
  worker?: string;
  status: 'completed' | 'failed' | 'timed-out' | 'cancelled' | 'running';
  failure?: string;
}

/** What the workflow hands the report step: its ids, its spec and every stage result it has. References only. */
export interface RunReportInput {
  workflowId: string;
  runId: string;
  spec: PipelineSpec;
  task: TaskKind;
  /** When the workflow started and when the report was asked for (workflow time), ISO-8601. */
  startedAt: string;
  endedAt: string;
  outcome: 'registered' | 'promoted' | 'rejected' | 'unchanged' | 'failed';
  /** Every stage with its status and one-line summary, as `progressQuery` shows them. */
  stages: { name: string; status: string; summary?: string }[];
  results: {
    sample?: SampleResult;
    promptTeacher?: PromptTeacherResult;
    validateRationales?: ValidateRationalesResult;
    trainStudent?: TrainStudentResult;
    evaluate?: EvaluateResult;
    registerModel?: RegisterModelResult;
    gate?: PromotionSummary;
  };
  /** A refresh that found its champion trained on this spec and data: the version it names. */
  unchanged?: { alias: string; reason: string; name: string; version: number };
  /** Why a failed run failed: the chain of causes as one line, and the stage it failed in. */
  error?: { message: string; stage?: string };
}

/** What the report step adds from outside the workflow: the history, and the teacher's answers on the test set. */
export interface RunReportSources {
  /** The run's activities from its history; a string says why they could not be read. */
  timeline?: TimelineEntry[] | string;
  /** Asks the teacher about the scored split where that costs nothing (lib/teacher/eval-set.ts). */
  teacherOn?: (evalSet: ArtifactRef) => Promise<TeacherEvalResult>;
  /** Its answer, once asked: stored with the report's inputs, so a rebuild shows the same teacher without asking. */
  teacherOnTest?: TeacherEvalResult;
  /** Rows of the per-example page (default {@link EXAMPLE_ROWS}). */
  exampleRows?: number;
  now?: () => Date;
}

/** The per-example page shows this many of the scored split's first examples (the evaluate stage explains 50). */
export const EXAMPLE_ROWS = 50;

/** A classification task's confusion matrix is drawn when its gold labels are at most this many. */
const MAX_CONFUSION_LABELS = 12;

// ---------------------------------------------------------------------------------------------------------------
// Outputs

/** One stored chart: its spec and the SVG rendered from it, both by content. */
export interface StoredChart {
  name: string;
  title: string;
  spec: ArtifactRef;
  svg: ArtifactRef;
}

/** What the report step returns to the workflow: small. */
export interface RunReportResult {
  report: ArtifactRef;
  /** The named copy a browser opens (`runs/<workflowId>/report.html`), and the record naming everything. */
  uri: string;
  recordUri: string;
  bytes: number;
  buildMs: number;
  charts: number;
}

/** The record `runs/<workflowId>/report.json`. */
export interface RunReportRecord extends RunReportResult {
  workflowId: string;
  runId: string;
  outcome: RunReportInput['outcome'];
  objectUri: string;
  generatedAt: string;
  chartRefs: StoredChart[];
  /** The builder's inputs (workflow's and history's), stored by content: `stepwise report --rebuild` reads them. */
  inputs: ArtifactRef;
}

export { runReportHtmlKey, runReportKey };

// ---------------------------------------------------------------------------------------------------------------
// Building

/** The page and its charts, before anything is stored. */
export interface BuiltReport {
  html: string;
  charts: (ChartSpec & { svg: string })[];
}

/**
 * Reads what the run's results name (the validation report, the training log, the predictions, the registry's
 * version, audit log and lineage) and renders the page. A part that cannot be read says so on the page; a report is
 * never refused for a missing piece, since a failed run's is most needed when pieces are missing.
 */
export async function buildRunReport(
  store: ArtifactStore,
  input: RunReportInput,
  sources: RunReportSources = {}
): Promise<BuiltReport> {
  const charts: ChartSpec[] = [];
  const chart = (c: ChartSpec | undefined) => {
    if (c) charts.push(c);
    return c ? `<!--chart:${c.name}-->` : '';
  };
  const { results } = input;
  const version = await readVersion(store, input);
  const sections = [
    input.error ? errorSection(input) : '',
    timelineSection(input, sources.timeline, chart),
    results.promptTeacher ? teacherSection(results.promptTeacher) : '',
    results.validateRationales ? await validationSection(store, results.validateRationales, chart) : '',
    results.trainStudent ? await trainingSection(store, results.trainStudent, chart) : '',
    results.evaluate ? await evaluationSection(store, input, version, sources, chart) : '',
    gateSection(input, version?.history),
    await lineageSection(store, input, version?.version, chart),
  ].filter(Boolean);
  const rendered = await Promise.all(charts.map(async (c) => ({ ...c, svg: await renderSvg(c.spec) })));
  let body = sections.join('\n');
  for (const c of rendered) {
    const svg = c.svg.replace(/^<\?xml[^>]*>\s*/, '');
    body = body.replace(
      `<!--chart:${c.name}-->`,
      () => `<figure id="chart-${esc(c.name)}">${svg}<figcaption>${esc(c.title)}</figcaption></figure>`
    );
  }
  const html = page(input, version?.version, body, (sources.now ?? (() => new Date()))());
  return { html, charts: rendered };
}

/**
 * Builds the report and stores it: every chart's spec and SVG, the inputs, the page by content and under its name,
 * and last the record naming them. Idempotent apart from the generation time the page and the record carry.
 */
export async function writeRunReport(
  store: ArtifactStore,
  input: RunReportInput,
  sources: RunReportSources = {}
): Promise<RunReportResult> {
  const started = performance.now();
  const teacherOnTest = sources.teacherOnTest ?? (await askTeacher(input, sources));
  const built = await buildRunReport(store, input, { ...sources, ...(teacherOnTest ? { teacherOnTest } : {}) });
  const chartRefs = await Promise.all(
    built.charts.map(async (c) => ({
      name: c.name,
      title: c.title,
      spec: await store.putJson(c.spec),
      svg: await store.put(c.svg, 'image/svg+xml'),
    }))
  );
  const inputs = await store.putJson({
    input,
    timeline: sources.timeline ?? null,
    teacherOnTest: teacherOnTest ?? null,
  });
  const report = await store.put(built.html, 'text/html; charset=utf-8');
  const htmlKey = runReportHtmlKey(input.workflowId);
  await store.putKey(htmlKey, built.html, { contentType: 'text/html; charset=utf-8' });
  const result: RunReportResult = {
    report,
    uri: store.uri(htmlKey),
    recordUri: store.uri(runReportKey(input.workflowId)),
    bytes: report.size,
    buildMs: Math.round(performance.now() - started),
    charts: chartRefs.length,
  };
  const record: RunReportRecord = {
    ...result,
    workflowId: input.workflowId,
    runId: input.runId,
    outcome: input.outcome,
    objectUri: store.uri(report),
    generatedAt: (sources.now ?? (() => new Date()))().toISOString(),
    chartRefs,
    inputs,
  };
  await store.putKey(runReportKey(input.workflowId), JSON.stringify(record, null, 2), {
    contentType: 'application/json',
  });
  return result;
}

/** A run's report record, or undefined when the store has none for that workflow id. */
export async function readRunReport(store: ArtifactStore, workflowId: string): Promise<RunReportRecord | undefined> {
  return store.getKeyJson<RunReportRecord>(runReportKey(workflowId));
}

/** Builds a stored report again from the inputs its record names, with this code (`stepwise report --rebuild`). */
export async function rebuildRunReport(
  store: ArtifactStore,
  record: RunReportRecord,
  sources: Omit<RunReportSources, 'timeline'> = {}
): Promise<RunReportResult> {
  const saved = await store.getJson<{
    input: RunReportInput;
    timeline: TimelineEntry[] | string | null;
    teacherOnTest?: TeacherEvalResult | null;
  }>(record.inputs);
  return writeRunReport(store, saved.input, {
    ...sources,
    ...(saved.timeline ? { timeline: saved.timeline } : {}),
    ...(saved.teacherOnTest ? { teacherOnTest: saved.teacherOnTest } : {}),
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Sections

type ChartSlot = (c: ChartSpec | undefined) => string;

function page(input: RunReportInput, version: ModelVersion | undefined, body: string, now: Date): string {
  const model = version
    ? `${version.name} v${version.version}`
    : input.unchanged
      ? `${input.unchanged.name} v${input.unchanged.version} (unchanged)`
      : input.spec.name;
  const wall = Date.parse(input.endedAt) - Date.parse(input.startedAt);
  const nav = [
    ['error', input.error],
    ['timeline', true],
    ['teacher', input.results.promptTeacher],
    ['validation', input.results.validateRationales],
    ['training', input.results.trainStudent],
    ['evaluation', input.results.evaluate],
    ['gate', true],
    ['lineage', true],
  ]
    .filter(([, on]) => on)
    .map(([id]) => `<a href="#${id}">${id}</a>`)
    .join('');
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stepwise run ${esc(input.workflowId)}</title><style>${STYLE}</style></head>
<body><header><h1>Run report: ${esc(model)}</h1>
<p>workflow <code>${esc(input.workflowId)}</code> · Temporal run <code>${esc(input.runId)}</code></p>
<p>outcome <span class="status ${esc(input.outcome)}" id="outcome">${esc(input.outcome)}</span> · task ${esc(input.task)} · method ${esc(input.spec.student.method)} · started ${esc(input.startedAt)} · ${esc(seconds(wall))} wall time${version ? ` · code ${esc(version.lineage.codeVersion)}` : ''}</p>
<nav>${nav}</nav></header><main>
${body}
<p class="muted">Generated ${esc(now.toISOString())} by Stepwise. Charts are Vega-Lite specs rendered to SVG; each spec is stored beside its SVG (see <code>runs/${esc(input.workflowId)}/report.json</code>).</p>
</main></body></html>
`;
}

function errorSection(input: RunReportInput): string {
  const e = input.error!;
  return `<section id="error" class="error"><h2>Failed${e.stage ? ` in ${esc(e.stage)}` : ''}</h2><pre>${esc(e.message)}</pre></section>`;
}

/** Per stage: status, summary, start, duration, attempts and workers; under it, every activity and a Gantt chart. */
function timelineSection(input: RunReportInput, timeline: RunReportSources['timeline'], chart: ChartSlot): string {
  const t0 = Date.parse(input.startedAt);
  const entries = Array.isArray(timeline) ? timeline : [];
  const rows = input.stages.map((s) => {
    const mine = entries.filter((e) => e.stage === s.name);
    const start = Math.min(...mine.map((e) => Date.parse(e.scheduledAt)));
    const end = Math.max(...mine.map((e) => Date.parse(e.closedAt ?? e.startedAt ?? e.scheduledAt)));
    const workers = [...new Set(mine.map((e) => e.worker).filter((w): w is string => !!w))];
    const retries = mine.reduce((n, e) => n + (e.attempt - 1), 0);
    return [
      s.name,
      raw(`<span class="status ${esc(s.status)}">${esc(s.status)}</span>`),
      s.summary ?? '',
      mine.length ? seconds(start - t0) : '—',
      mine.length ? seconds(end - start) : '—',
      mine.length
        ? `${mine.length} activit${mine.length === 1 ? 'y' : 'ies'}${retries ? `, ${retries} retried` : ''}`
        : '—',
      raw(workers.map((w) => `<code class="worker">${esc(w)}</code>`).join(' ')),
    ];
  });
  const detail = entries.length
    ? `<details><summary>Every activity (${entries.length})</summary>${table(
        ['stage', 'activity', 'status', 'queued', 'ran', 'attempt', 'worker'],
        entries.map((e) => [
          e.stage,
          e.activity,
          e.failure ? `${e.status}: ${e.failure}` : e.status,
          seconds(Date.parse(e.startedAt ?? e.scheduledAt) - Date.parse(e.scheduledAt)),
          e.startedAt ? seconds(Date.parse(e.closedAt ?? e.startedAt) - Date.parse(e.startedAt)) : '—',
          e.attempt,
          e.worker ?? '—',
        ]),
        { numeric: [5] }
      )}</details>`
    : `<p class="muted">${esc(typeof timeline === 'string' ? `The run's history could not be read: ${timeline}` : 'No activity history.')}</p>`;
  const bars = entries
    .filter((e) => e.startedAt)
    .map((e, i) => ({
      label: `${i + 1}. ${e.activity}`,
      start: (Date.parse(e.startedAt!) - t0) / 1000,
      end: (Date.parse(e.closedAt ?? e.startedAt!) - t0) / 1000,
      worker: e.worker ?? '?',
    }));
  return `<section id="timeline"><h2>Stage timeline</h2>${table(
    ['stage', 'status', 'summary', 'started at', 'duration', 'attempts', 'worker'],
    rows,
    { id: 'stages' }
  )}${bars.length ? chart(timelineChart(bars)) : ''}${detail}</section>`;
}

/** 429 refusals and the time calls waited on rate limits (ours and the endpoint's), summed over calls. */
function rateLimitText(t: PromptTeacherResult): string {
  if (t.mode === 'batch') return 'none: batch jobs are not rate-limited per call';
  if (!t.rateLimit) return 'not recorded (a run of a version before they were counted)';
  const { refusals, waitMs } = t.rateLimit;
  const waited = waitMs < 1000 ? `${waitMs} ms` : `${(waitMs / 1000).toFixed(1)} s`;
  return `${refusals} refusal${refusals === 1 ? '' : 's'} (429); ${waited} waited, summed over calls`;
}

function teacherSection(t: PromptTeacherResult): string {
  const calls = t.calls;
  return `<section id="teacher"><h2>Teacher</h2>${facts([
    ['teacher', `${t.teacher.kind} · ${t.teacher.model}${t.teacher.url ? ` · ${redactUrl(t.teacher.url)}` : ''}`],
    [
      'mode',
      `${t.mode}, ${t.shards} shard${t.shards === 1 ? '' : 's'}, ${t.samples} sample${t.samples === 1 ? '' : 's'} per example`,
    ],
    ['examples', `${t.total} (${t.cached} wholly cached, ${t.failed} failed, ${t.notSent} not sent)`],
    ['calls planned', calls?.planned ?? '—'],
    ['calls sent', raw(`<span id="teacher-sent">${esc(calls?.sent ?? '—')}</span>`)],
    ['calls cached', raw(`<span id="teacher-cached">${esc(calls?.cached ?? '—')}</span>`)],
    ['calls resumed', raw(`<span id="teacher-resumed">${esc(calls?.resumed ?? '—')}</span>`)],
    ['examples failed', raw(`<span id="teacher-failed">${esc(t.failed)}</span>`)],
    ['tokens', `${t.usage.promptTokens} prompt + ${t.usage.completionTokens} completion`],
    ['cost', t.costUsd === undefined ? 'no prices in the spec' : `$${t.costUsd.toFixed(4)}`],
    [
      'budget',
      t.budget ? `$${t.budget.maxCostUsd} max, ${t.budget.exhausted ? 'exhausted' : 'not exhausted'}` : 'no budget',
    ],
    ['rate-limit waits', raw(`<span id="teacher-rate-limit">${esc(rateLimitText(t))}</span>`)],
    ['template', raw(`<code>${esc(t.teacher.templateHash)}</code>`)],
    ['responses', raw(`<code>${esc(t.responses.sha256)}</code>`)],
  ])}</section>`;
}

async function validationSection(store: ArtifactStore, v: ValidateRationalesResult, chart: ChartSlot): Promise<string> {
  const report = await store.getJson<ValidationReport>(v.report).catch(() => undefined);
  const dropped = Object.entries(report?.dropped ?? v.dropped).sort((a, b) => b[1] - a[1]);
  const total = report?.total ?? v.kept + dropped.reduce((n, [, c]) => n + c, 0);
  const bars = [
    { label: 'kept', value: v.kept, text: `${v.kept} (${pct(total ? v.kept / total : 0)})`, highlight: true },
    ...dropped.map(([reason, n]) => ({ label: `dropped: ${reason}`, value: n, text: `${n} (${pct(n / total)})` })),
  ];
  const examples = dropped
    .map(([reason]) => {
      const list = report?.droppedExamples?.[reason] ?? [];
      if (!list.length) return '';
      return `<h3>${esc(reason)}</h3>${table(
        ['id', 'split', 'gold', 'parsed', 'why', 'completion'],
        list.map((e) => [
          e.id,
          e.split,
          e.gold,
          e.parsedLabel ?? '—',
          e.detail ?? e.error ?? '',
          raw(`<div class="text">${esc(e.completion)}</div>`),
        ])
      )}`;
    })
    .join('');
  return `<section id="validation"><h2>Validation</h2>${facts([
    ['responses scored', total],
    [
      'kept',
      raw(
        `<span id="validation-kept">${v.kept}</span>${report ? ` (train ${report.keptTrain}, valid ${report.keptValid})` : ''}`
      ),
    ],
    ['dropped', dropped.map(([r, n]) => `${r} ${n}`).join(', ') || 'none'],
    ['teacher accuracy (train + valid)', pct(v.teacherAccuracy)],
    ['filters', raw(`<code>${esc(JSON.stringify(report?.filters ?? {}))}</code>`)],
  ])}${chart(barChart('validation', 'Teacher responses kept and dropped, by reason', 'responses', bars))}${
    examples ? `<h3>Dropped examples, by reason</h3>${examples}` : ''
  }</section>`;
}

interface TrainLog {
  backend: string;
  optimizer?: string;
  steps: number;
  stopReason?: string;
  finalLoss: number;
  validLoss: number | null;
  bestStep: number | null;
  params: number;
  wallMs: number;
  resumedFrom: number | null;
  attempt: number;
  checkpointsStored: number;
  lossHistory: { step: number; loss: number; labelLoss: number; rationaleLoss?: number; learningRate?: number }[];
  validHistory?: { step: number; loss: number; labelLoss: number; rationaleLoss?: number }[];
  throughput?: { step: number; tokensPerSec: number }[];
  options: Record<string, unknown>;
}

async function trainingSection(store: ArtifactStore, t: TrainStudentResult, chart: ChartSlot): Promise<string> {
  const log = await store.getJson<TrainLog>(t.trainLog).catch(() => undefined);
  if (!log) {
    return `<section id="training"><h2>Training</h2><p class="bad">The training log ${esc(t.trainLog.sha256)} could not be read.</p>${facts(
      [
        ['backend', t.backend],
        ['steps', t.steps],
        ['final loss', num(t.finalLoss)],
      ]
    )}</section>`;
  }
  const series: { step: number; value: number; series: string; split: string }[] = [];
  for (const p of log.lossHistory) {
    series.push({ step: p.step, value: p.loss, series: 'total', split: 'train' });
    series.push({ step: p.step, value: p.labelLoss, series: 'label', split: 'train' });
    if (p.rationaleLoss !== undefined)
      series.push({ step: p.step, value: p.rationaleLoss, series: 'rationale', split: 'train' });
  }
  for (const p of log.validHistory ?? []) {
    series.push({ step: p.step, value: p.loss, series: 'total', split: 'valid' });
    series.push({ step: p.step, value: p.labelLoss, series: 'label', split: 'valid' });
    if (p.rationaleLoss !== undefined)
      series.push({ step: p.step, value: p.rationaleLoss, series: 'rationale', split: 'valid' });
  }
  const lr = log.lossHistory
    .filter((p) => p.learningRate !== undefined)
    .map((p) => ({ step: p.step, value: p.learningRate! }));
  const tps = (log.throughput ?? []).map((p) => ({ step: p.step, value: p.tokensPerSec }));
  const meanTps = tps.length ? tps.reduce((n, p) => n + p.value, 0) / tps.length : undefined;
  const o = log.options;
  return `<section id="training"><h2>Training</h2>${facts([
    ['backend', raw(`<span id="training-backend">${esc(log.backend)}</span>`)],
    ['method', String(o.method ?? '—')],
    ['model', `${String(o.preset ?? 'custom')} · ${log.params.toLocaleString('en-US')} parameters`],
    [
      'optimizer',
      `${log.optimizer ?? '—'}, peak learning rate ${String(o.learningRate ?? '—')}, ${String(o.warmupSteps ?? 0)} warmup steps, batch ${String(o.batchSize ?? '—')}`,
    ],
    ['steps', `${log.steps}${log.stopReason && log.stopReason !== 'completed' ? ` (${log.stopReason})` : ''}`],
    ['final loss (last 10 steps)', num(log.finalLoss)],
    [
      'validation loss',
      log.validLoss === null
        ? '—'
        : `${num(log.validLoss)}${log.bestStep !== null ? ` (weights of step ${log.bestStep})` : ''}`,
    ],
    [
      'throughput',
      meanTps === undefined
        ? 'not recorded'
        : `${Math.round(meanTps).toLocaleString('en-US')} tokens/s (mean over logged steps)`,
    ],
    ['wall time', seconds(log.wallMs)],
    [
      'attempt',
      `${log.attempt}${log.resumedFrom !== null ? `, resumed after step ${log.resumedFrom}` : ''}; ${log.checkpointsStored} resume checkpoints stored`,
    ],
    ['logged steps', raw(`<span id="loss-points">${log.lossHistory.length}</span>`)],
  ])}${chart(lossChart(series))}${lr.length ? chart(stepChart('learning-rate', 'Learning rate', 'learning rate', lr)) : ''}${
    tps.length ? chart(stepChart('throughput', 'Tokens per second', 'tokens/s', tps)) : ''
  }</section>`;
}

interface PredictionRow {
  id: string;
  input: string;
  gold: string;
  prediction: string;
  correct: boolean;
}

async function evaluationSection(
  store: ArtifactStore,
  input: RunReportInput,
  version: { history: AuditRecord[] } | undefined,
  sources: RunReportSources,
  chart: ChartSlot
): Promise<string> {
  const e = input.results.evaluate!;
  const [rows, explanations, teacher] = await Promise.all([
    store.getJsonl<PredictionRow>(e.predictions).catch(() => [] as PredictionRow[]),
    e.explanations
      ? store.getJsonl<{ id: string; rationale: string }>(e.explanations).catch(() => [])
      : Promise.resolve([]),
    teacherOnScored(store, input, sources),
  ]);
  const gate = version?.history.filter((r) => r.action === 'gate').at(-1)?.details as
    { champion?: { version: number; accuracy: number } } | undefined;
  const bars = [
    { label: 'student', value: e.accuracy, text: pct(e.accuracy), highlight: true },
    {
      label: `majority baseline (${e.majorityBaseline.label})`,
      value: e.majorityBaseline.accuracy,
      text: pct(e.majorityBaseline.accuracy),
    },
    ...(e.baselines?.bestOperation
      ? [
          {
            label: `best operation (${e.baselines.bestOperation.operation})`,
            value: e.baselines.bestOperation.accuracy,
            text: pct(e.baselines.bestOperation.accuracy),
          },
        ]
      : []),
    ...(teacher.measured ? [{ label: 'teacher', value: teacher.accuracy, text: pct(teacher.accuracy) }] : []),
    ...(gate?.champion
      ? [
          {
            label: `champion v${gate.champion.version} (frozen set)`,
            value: gate.champion.accuracy,
            text: pct(gate.champion.accuracy),
          },
        ]
      : []),
  ];
  const teacherBy = new Map((teacher.measured ? teacher.rows : []).map((r) => [r.id, r]));
  const rationaleBy = new Map(explanations.map((r) => [r.id, r.rationale]));
  const shown = rows.slice(0, sources.exampleRows ?? EXAMPLE_ROWS);
  const examples = table(
    ['id', 'input', 'gold', 'teacher', 'student', 'student rationale (explain:)'],
    shown.map((r) => {
      const t = teacherBy.get(r.id);
      return [
        r.id,
        raw(`<div class="text">${esc(r.input)}</div>`),
        r.gold,
        t ? raw(`<span class="${t.correct ? 'ok' : 'bad'}">${esc(t.teacherLabel ?? '(unparsed)')}</span>`) : '—',
        raw(`<span class="${r.correct ? 'ok' : 'bad'}">${esc(r.prediction)}</span>`),
        raw(`<div class="text">${esc(rationaleBy.get(r.id) ?? '—')}</div>`),
      ];
    }),
    { id: 'examples' }
  );
  const labels = [...new Set(rows.map((r) => r.gold))].sort();
  const classification = input.task !== 'svamp' && labels.length > 1 && labels.length <= MAX_CONFUSION_LABELS;
  let confusion = '';
  if (classification) {
    const predicted = [...labels, ...(rows.some((r) => !labels.includes(r.prediction)) ? ['(other)'] : [])];
    const count = (g: string, p: string) =>
      rows.filter((r) => r.gold === g && (labels.includes(r.prediction) ? r.prediction : '(other)') === p).length;
    const cells = labels.flatMap((g) => predicted.map((p) => ({ gold: g, predicted: p, count: count(g, p) })));
    confusion = `<h3>Confusion matrix</h3>${table(
      ['gold \\ predicted', ...predicted],
      labels.map((g) => [g, ...predicted.map((p) => count(g, p))]),
      { id: 'confusion', numeric: predicted.map((_, i) => i + 1) }
    )}${chart(confusionChart(cells))}`;
  }
  return `<section id="evaluation"><h2>Evaluation</h2>${facts([
    ['scored split', `${input.spec.evaluate.split} (${e.total} examples)`],
    ['student accuracy', raw(`<span id="accuracy">${esc(pct(e.accuracy))}</span> (${e.correct}/${e.total})`)],
    [
      'majority baseline',
      `${pct(e.majorityBaseline.accuracy)} (always “${e.majorityBaseline.label}”, chosen on train)`,
    ],
    ...(e.baselines?.bestOperation
      ? [
          [
            'best single operation',
            `${pct(e.baselines.bestOperation.accuracy)} (${e.baselines.bestOperation.operation})`,
          ] as [string, unknown],
        ]
      : []),
    [
      'teacher on the same examples',
      teacher.measured
        ? `${pct(teacher.accuracy)} (${teacher.correct}/${teacher.total}, ${teacher.model})`
        : `not measured: ${teacher.reason}`,
    ],
    [
      'champion',
      gate?.champion
        ? `v${gate.champion.version}: ${pct(gate.champion.accuracy)} on its frozen evaluation set`
        : 'none (no gate, or the first version)',
    ],
    [
      'student rationales',
      e.explanations
        ? `${explanations.length} generated with explain: in ${seconds(e.explainMs)}`
        : 'none (the student was not trained to explain)',
    ],
  ])}${chart(barChart('accuracy', 'Accuracy on the scored split', 'accuracy', bars))}${confusion}<h3>Examples (the first ${shown.length} of ${rows.length})</h3>${examples}</section>`;
}

type TeacherRows =
  | { measured: true; accuracy: number; correct: number; total: number; model: string; rows: TeacherPrediction[] }
  | { measured: false; reason: string };

/** The split the evaluate stage scored (test, or validation with `evaluate.split: "valid"`). */
const scoredSplitOf = (input: RunReportInput) =>
  input.spec.evaluate.split === 'valid' ? input.results.sample?.valid : input.results.sample?.test;

/** The teacher asked about the scored split, once, where the run got that far and used a teacher. */
async function askTeacher(input: RunReportInput, sources: RunReportSources): Promise<TeacherEvalResult | undefined> {
  const scored = scoredSplitOf(input);
  if (!input.results.promptTeacher || !input.results.evaluate || !scored || !sources.teacherOn) return undefined;
  try {
    return await sources.teacherOn(scored);
  } catch (err) {
    return { measured: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

/** The teacher's answers on the scored split, where asking costs nothing; why not otherwise. */
async function teacherOnScored(
  store: ArtifactStore,
  input: RunReportInput,
  sources: RunReportSources
): Promise<TeacherRows> {
  if (!input.results.promptTeacher) return { measured: false, reason: 'this method uses no teacher' };
  const r = sources.teacherOnTest ?? (await askTeacher(input, sources));
  if (!r) return { measured: false, reason: 'no way to ask the teacher here' };
  try {
    if (!r.measured) return r;
    const rows = await store.getJsonl<TeacherPrediction>(r.predictions);
    return { measured: true, accuracy: r.accuracy, correct: r.correct, total: r.total, model: r.model, rows };
  } catch (err) {
    return { measured: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

function gateSection(input: RunReportInput, history: AuditRecord[] | undefined): string {
  const g = input.results.gate;
  const gateStage = input.stages.find((s) => s.name === 'gate');
  if (!g) {
    const why = input.unchanged
      ? input.unchanged.reason
      : gateStage?.status === 'skipped' || !input.spec.gate.enabled
        ? 'the gate is off in this spec'
        : `the gate did not decide (${gateStage?.status ?? 'not reached'})`;
    return `<section id="gate"><h2>Gate</h2><p>${esc(why)}</p></section>`;
  }
  const decision = history?.filter((r) => r.action === 'gate').at(-1);
  const approvals = history?.filter((r) => r.action === 'approve' || r.action === 'reject') ?? [];
  const d = decision?.details as
    { rule?: string; improvement?: number; minImprovement?: number; discordant?: unknown } | undefined;
  return `<section id="gate"><h2>Gate</h2>${facts([
    [
      'decision',
      raw(
        `<span class="status ${esc(g.outcome)}" id="gate-outcome">${esc(g.outcome)}</span> for alias <code>${esc(g.alias)}</code>`
      ),
    ],
    ['why', g.reason],
    ['previous holder', g.previous === null ? 'none' : `v${g.previous}`],
    ['candidate accuracy (frozen set)', pct(g.candidateAccuracy)],
    ['teacher accuracy (frozen set)', pct(g.teacherAccuracy)],
    ['p-value', g.pValue === undefined ? '—' : num(g.pValue)],
    ['rule', d?.rule ? `${d.rule}; improvement ${num(d.improvement)} (minimum ${num(d.minImprovement)})` : '—'],
    [
      'approval',
      g.decidedBy ? `by ${g.decidedBy}` : input.spec.gate.approval ? 'asked, none recorded' : 'not required',
    ],
  ])}${
    approvals.length
      ? table(
          ['when', 'decision', 'who', 'why'],
          approvals.map((r) => [r.when, r.action, r.who, r.why])
        )
      : ''
  }</section>`;
}

/**
 * The version's lineage (the same tree `stepwise lineage` prints and `--dot` draws): as a graph, then as nested lists
 * with every hash and location.
 */
async function lineageSection(
  store: ArtifactStore,
  input: RunReportInput,
  version: ModelVersion | undefined,
  chart: ChartSlot
): Promise<string> {
  // The spec as the run validated it, redacted as lineage redacts it (a URL's credentials, secret-looking fields).
  const spec = `<details><summary>Spec</summary><pre>${esc(JSON.stringify(redact(input.spec), null, 2))}</pre></details>`;
  if (!version) {
    return `<section id="lineage"><h2>Lineage</h2><p>No version was registered, so there is no lineage.</p>${spec}</section>`;
  }
  let tree: LineageNode;
  try {
    tree = await lineageTree(store, version);
  } catch (err) {
    return `<section id="lineage"><h2>Lineage</h2><p class="bad">${esc(err instanceof Error ? err.message : String(err))}</p></section>`;
  }
  const node = (n: LineageNode, depth: number): string => {
    const head = `<span class="kind">${esc(n.kind)}</span> ${esc(n.label)}${
      n.hash && !n.label.includes(n.hash) ? ` <code title="sha256">${esc(n.hash.slice(0, 12))}</code>` : ''
    }${n.uri ? ` <span class="muted">${esc(n.role ? `${n.role} ` : '')}${esc(n.uri)}</span>` : ''}`;
    if (!n.children.length) return `<li>${head}</li>`;
    return `<li><details${depth < 2 ? ' open' : ''}><summary>${head}</summary><ul class="tree">${n.children
      .map((c) => node(c, depth + 1))
      .join('')}</ul></details></li>`;
  };
  const workers = version.lineage.workers;
  return `<section id="lineage"><h2>Lineage</h2><p>Edges point from each thing to what it was made of. ${
    workers ? `Workflow tasks ran on ${workers.workflow.map((w) => `<code>${esc(w)}</code>`).join(', ')}.` : ''
  }</p>${chart(lineageChart(tree))}<ul class="tree">${node(tree, 0)}</ul>${spec}</section>`;
}

/** The registered version and its audit history, when the run got that far. */
async function readVersion(
  store: ArtifactStore,
  input: RunReportInput
): Promise<{ version: ModelVersion; history: AuditRecord[] } | undefined> {
  const ref = input.results.registerModel ?? input.unchanged;
  if (!ref) return undefined;
  try {
    const version = await getVersion(store, ref.name, ref.version);
    if (!version) return undefined;
    return { version, history: await versionHistory(store, ref.name, ref.version) };
  } catch {
    return undefined;
  }
}
