/**
 * A sweep's result as numbers, a Markdown table and a chart: mean ± sd over seeds per method and training fraction,
 * beside the trivial baselines and the teacher. Pure: the cells come in, JSON, text and a Vega-Lite spec go out.
 */
import { InputError } from '../errors';
import type { Method } from '../student/options';
import type { VegaLiteSpec } from '../report/vega';

/** One finished (or failed) cell of a sweep, as the sweep workflow hands it over. */
export interface SweepCell {
  method: Method;
  fraction: number;
  seed: number;
  name: string;
  workflowId: string;
  version?: number;
  /** done: trained in this sweep; reused: a finished run with the same spec and data was found. */
  status: 'done' | 'reused' | 'failed';
  accuracy?: number;
  correct?: number;
  total?: number;
  /** Trivial baselines of the cell's evaluation (on the scored value, fitted on the cell's train split). */
  majorityBaseline?: number;
  bestOperation?: { operation: string; accuracy: number };
  teacherAccuracy?: number;
  /** Which split was scored ('test' unless the spec's evaluate.split said 'valid'). */
  split?: 'test' | 'valid';
  backend?: string;
  error?: string;
}

export interface SweepMeta {
  sweepId: string;
  task: string;
  specName: string;
  command?: string;
  startedAt?: string;
  finishedAt?: string;
  wallSeconds?: number;
}

export interface SweepRow {
  method: Method;
  fraction: number;
  /** Finished cells (failed ones are not counted). */
  n: number;
  mean: number;
  /** Sample standard deviation (n − 1); null for a single seed. */
  sd: number | null;
  min: number;
  max: number;
  seeds: number[];
  accuracies: number[];
}

export interface SweepSummary {
  meta: SweepMeta;
  split: 'test' | 'valid';
  rows: SweepRow[];
  /** Per fraction: the trivial baselines (mean over the fraction's cells; they differ only by the train subset). */
  baselines: { fraction: number; majority?: number; bestOperation?: { operation: string; accuracy: number } }[];
  teacherAccuracy?: number;
  backends: string[];
  failed: { method: Method; fraction: number; seed: number; workflowId: string; error: string }[];
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

function checkAccuracy(cell: SweepCell): number {
  const a = cell.accuracy;
  if (typeof a !== 'number' || !Number.isFinite(a) || a < 0 || a > 1) {
    throw new InputError(
      `cell ${cell.workflowId} (${cell.status}) has accuracy ${JSON.stringify(a)}; expected a number in [0, 1]`,
      'cells.accuracy'
    );
  }
  return a;
}

/**
 * Groups the cells by method and fraction. Methods in the paper's order (standard finetuning, standard
 * distillation, distilling step-by-step), fractions ascending, seeds ascending within a row.
 * @throws InputError when a finished cell has no accuracy in [0, 1].
 */
export function summarizeSweep(cells: readonly SweepCell[], meta: SweepMeta): SweepSummary {
  const finished = cells.filter((c) => c.status !== 'failed');
  const rows: SweepRow[] = [];
  const fractions = [...new Set(cells.map((c) => c.fraction))].sort((a, b) => a - b);
  const methods = PAPER_ORDER.filter((m) => cells.some((c) => c.method === m));
  for (const method of methods) {
    for (const fraction of fractions) {
      const group = finished
        .filter((c) => c.method === method && c.fraction === fraction)
        .sort((a, b) => a.seed - b.seed);
      if (group.length === 0) continue;
      const accuracies = group.map(checkAccuracy);
      const m = mean(accuracies);
      const sd =
        accuracies.length < 2
          ? null
          : Math.sqrt(accuracies.reduce((s, a) => s + (a - m) ** 2, 0) / (accuracies.length - 1));
      rows.push({
        method,
        fraction,
        n: group.length,
        mean: m,
        sd,
        min: Math.min(...accuracies),
        max: Math.max(...accuracies),
        seeds: group.map((c) => c.seed),
        accuracies,
      });
    }
  }
  const baselines = fractions.map((fraction) => {
    const group = finished.filter((c) => c.fraction === fraction);
    const majority = group.map((c) => c.majorityBaseline).filter((v): v is number => v !== undefined);
    const ops = group.map((c) => c.bestOperation).filter((v) => v !== undefined);
    const opNames = [...new Set(ops.map((o) => o.operation))];
    return {
      fraction,
      ...(majority.length ? { majority: mean(majority) } : {}),
      ...(ops.length
        ? { bestOperation: { operation: opNames.join(' | '), accuracy: mean(ops.map((o) => o.accuracy)) } }
        : {}),
    };
  });
  const teacher = cells.map((c) => c.teacherAccuracy).find((v) => v !== undefined);
  return {
    meta,
    split: cells.find((c) => c.split)?.split ?? 'test',
    rows,
    baselines,
    ...(teacher !== undefined ? { teacherAccuracy: teacher } : {}),
    backends: [...new Set(finished.map((c) => c.backend).filter((b): b is string => b !== undefined))].sort(),
    failed: cells
      .filter((c) => c.status === 'failed')
      .map((c) => ({
        method: c.method,
        fraction: c.fraction,
        seed: c.seed,
        workflowId: c.workflowId,
        error: c.error ?? 'failed',
      })),
  };
}

const PAPER_ORDER: readonly Method[] = ['standard-finetune', 'standard-distill', 'distill-step-by-step'];

const pct = (x: number) => (100 * x).toFixed(1);
/** A fraction as a percent label; rounded to 12 significant digits because 0.07 * 100 is 7.000000000000001. */
const fractionPct = (f: number) => `${Number((100 * f).toPrecision(12))}%`;
const cellText = (r: SweepRow) => `${pct(r.mean)} ± ${r.sd === null ? '–' : pct(r.sd)} (n=${r.n})`;

function duration(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.round((seconds % 3600) / 60);
  return h > 0 ? `${h} h ${m} min` : `${m} min`;
}

/** The table as Markdown: a row per method, a column per training fraction, then the baselines and the teacher. */
export function sweepMarkdown(summary: SweepSummary): string {
  const fractions = summary.baselines.map((b) => b.fraction);
  const head = `| method | ${fractions.map((f) => `${fractionPct(f)} of train`).join(' | ')} |`;
  const rule = `| --- | ${fractions.map(() => '---:').join(' | ')} |`;
  const methods = [...new Set(summary.rows.map((r) => r.method))];
  const lines = methods.map((method) => {
    const cells = fractions.map((f) => {
      const row = summary.rows.find((r) => r.method === method && r.fraction === f);
      return row ? cellText(row) : '';
    });
    return `| ${method} | ${cells.join(' | ')} |`;
  });
  const majority = summary.baselines.map((b) => (b.majority === undefined ? '' : pct(b.majority)));
  if (majority.some((m) => m !== '')) lines.push(`| majority answer (chosen on train) | ${majority.join(' | ')} |`);
  const ops = summary.baselines.map((b) =>
    b.bestOperation ? `${pct(b.bestOperation.accuracy)} (${b.bestOperation.operation})` : ''
  );
  if (ops.some((o) => o !== '')) lines.push(`| best single operation (chosen on train) | ${ops.join(' | ')} |`);
  if (summary.teacherAccuracy !== undefined) {
    lines.push(`| teacher (same examples) | ${fractions.map(() => pct(summary.teacherAccuracy!)).join(' | ')} |`);
  }
  const m = summary.meta;
  const about = [
    `Task ${m.task}, base spec ${m.specName}; accuracy (%) on the ${summary.split === 'valid' ? 'validation' : 'test'} split, mean ± sample sd over seeds (n seeds).`,
    ...(summary.backends.length ? [`Backend: ${summary.backends.join(', ')}.`] : []),
    ...(m.wallSeconds !== undefined
      ? [`Wall time: ${duration(m.wallSeconds)} (${m.startedAt} to ${m.finishedAt}).`]
      : []),
    ...(m.command ? [`Command: \`${m.command}\``] : []),
    `Sweep: ${m.sweepId}.`,
  ];
  const failed = summary.failed.map(
    (f) => `- failed: ${f.method}, fraction ${f.fraction}, seed ${f.seed} (${f.workflowId}): ${f.error}`
  );
  const perSeed = summary.rows.map(
    (r) =>
      `- ${r.method}, ${fractionPct(r.fraction)}: ${r.accuracies.map((a, i) => `seed ${r.seeds[i]} ${pct(a)}`).join(', ')}`
  );
  return [
    head,
    rule,
    ...lines,
    '',
    ...about,
    '',
    'Per seed:',
    '',
    ...perSeed,
    ...(failed.length ? ['', ...failed] : []),
    '',
  ].join('\n');
}

/** Accuracy (%) against the training fraction: a line per method with ± sd error bars, rules for the baselines. */
export function sweepPlotSpec(summary: SweepSummary): VegaLiteSpec {
  const points = summary.rows.map((r) => ({
    method: r.method,
    fraction: r.fraction,
    mean: 100 * r.mean,
    low: 100 * (r.mean - (r.sd ?? 0)),
    high: 100 * (r.mean + (r.sd ?? 0)),
  }));
  const last = summary.baselines[summary.baselines.length - 1];
  const rules = [
    ...(last?.majority !== undefined ? [{ label: 'majority answer', value: 100 * last.majority }] : []),
    ...(last?.bestOperation ? [{ label: 'best single operation', value: 100 * last.bestOperation.accuracy }] : []),
    ...(summary.teacherAccuracy !== undefined ? [{ label: 'teacher', value: 100 * summary.teacherAccuracy }] : []),
  ];
  const x = {
    field: 'fraction',
    type: 'quantitative' as const,
    title: 'fraction of the training split',
    scale: { type: 'log' as const, base: 2 },
    axis: { values: summary.baselines.map((b) => b.fraction) },
  };
  const color = {
    field: 'method',
    type: 'nominal' as const,
    sort: PAPER_ORDER as unknown as string[],
    title: 'method',
    // The default 160 px limit, measured with estimated (headless) text widths, cuts 'distill-step-by-step'.
    legend: { labelLimit: 300 },
  };
  const split = summary.split === 'valid' ? 'validation' : 'test';
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: `${summary.meta.task}: ${split} accuracy vs training data (mean ± sd over seeds)`,
    width: 420,
    height: 280,
    layer: [
      {
        data: { values: points },
        mark: { type: 'line', point: true },
        encoding: { x, y: { field: 'mean', type: 'quantitative', title: `${split} accuracy (%)` }, color },
      },
      {
        data: { values: points },
        mark: { type: 'rule' },
        encoding: { x, y: { field: 'low', type: 'quantitative' }, y2: { field: 'high' }, color },
      },
      ...(rules.length
        ? [
            {
              data: { values: rules },
              mark: { type: 'rule' as const, strokeDash: [4, 4], color: 'gray' },
              encoding: { y: { field: 'value', type: 'quantitative' as const } },
            },
            {
              data: { values: rules },
              mark: { type: 'text' as const, align: 'left' as const, dx: 4, dy: -6, color: 'gray' },
              encoding: {
                y: { field: 'value', type: 'quantitative' as const },
                x: { value: 0 },
                text: { field: 'label', type: 'nominal' as const },
              },
            },
          ]
        : []),
    ],
  } as VegaLiteSpec;
}
