/**
 * The run report's charts as Vega-Lite specs with their data inline: a spec is all a chart needs, so it is stored
 * beside its SVG and can be re-rendered or re-styled later without the run. Pure functions of the report's figures.
 */
import type { VegaLiteSpec } from './vega';

/** One chart of the report: a name (its anchor and file stem), a title, and its spec. */
export interface ChartSpec {
  name: string;
  title: string;
  spec: VegaLiteSpec;
}

const WIDTH = 560;
const HEIGHT = 220;
const FONT = { font: 'Helvetica, Arial, sans-serif' };
const base = {
  $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
  config: { ...FONT, view: { stroke: null } },
};

/** One bar per activity from its start to its end, in seconds since the run started; colour: the worker. */
export function timelineChart(rows: { label: string; start: number; end: number; worker: string }[]): ChartSpec {
  return {
    name: 'timeline',
    title: 'Stage timeline',
    spec: {
      ...base,
      width: WIDTH,
      height: { step: 18 },
      data: { values: rows },
      mark: { type: 'bar', cornerRadius: 2 },
      encoding: {
        y: { field: 'label', type: 'nominal', sort: null, title: null },
        x: { field: 'start', type: 'quantitative', title: 'seconds since the run started' },
        x2: { field: 'end' },
        color: { field: 'worker', type: 'nominal', title: 'worker', legend: { orient: 'bottom', columns: 1 } },
        tooltip: [{ field: 'label' }, { field: 'worker' }, { field: 'start' }, { field: 'end' }],
      },
    } as VegaLiteSpec,
  };
}

/** Loss per step, one line per series (train and validation, total, label and rationale parts). */
export function lossChart(points: { step: number; value: number; series: string; split: string }[]): ChartSpec {
  return {
    name: 'loss',
    title: 'Loss curves',
    spec: {
      ...base,
      width: WIDTH,
      height: HEIGHT,
      data: { values: points },
      mark: { type: 'line', point: false, strokeWidth: 1.5 },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: 'loss', scale: { zero: false } },
        color: { field: 'series', type: 'nominal', title: 'part' },
        strokeDash: { field: 'split', type: 'nominal', title: 'split' },
      },
    } as VegaLiteSpec,
  };
}

/** One quantity per step as a line (learning rate, tokens per second). */
export function stepChart(name: string, title: string, yTitle: string, points: { step: number; value: number }[]) {
  return {
    name,
    title,
    spec: {
      ...base,
      width: WIDTH,
      height: 160,
      data: { values: points },
      mark: { type: 'line', strokeWidth: 1.5 },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: yTitle },
      },
    } as VegaLiteSpec,
  } satisfies ChartSpec;
}

/** Horizontal bars with their value printed: accuracies against baselines, validation outcomes by reason. */
export function barChart(
  name: string,
  title: string,
  xTitle: string,
  bars: { label: string; value: number; text: string; highlight?: boolean }[]
): ChartSpec {
  return {
    name,
    title,
    spec: {
      ...base,
      width: WIDTH - 120,
      height: { step: 22 },
      data: { values: bars.map((b) => ({ ...b, highlight: b.highlight ? 'yes' : 'no' })) },
      encoding: {
        y: { field: 'label', type: 'nominal', sort: null, title: null },
        x: { field: 'value', type: 'quantitative', title: xTitle },
      },
      layer: [
        {
          mark: { type: 'bar' },
          encoding: {
            color: {
              field: 'highlight',
              type: 'nominal',
              scale: { domain: ['yes', 'no'], range: ['#2f6db5', '#a8b8cc'] },
              legend: null,
            },
          },
        },
        { mark: { type: 'text', align: 'left', dx: 4 }, encoding: { text: { field: 'text' } } },
      ],
    } as VegaLiteSpec,
  };
}

/** Gold label against predicted label, one cell per pair, with the count printed. */
export function confusionChart(cells: { gold: string; predicted: string; count: number }[]): ChartSpec {
  return {
    name: 'confusion',
    title: 'Confusion matrix',
    spec: {
      ...base,
      width: { step: 48 },
      height: { step: 28 },
      data: { values: cells },
      encoding: {
        x: { field: 'predicted', type: 'nominal', title: 'student predicted', sort: null },
        y: { field: 'gold', type: 'nominal', title: 'gold', sort: null },
      },
      layer: [
        {
          mark: 'rect',
          encoding: {
            color: { field: 'count', type: 'quantitative', scale: { scheme: 'blues' }, legend: null },
          },
        },
        {
          mark: { type: 'text', baseline: 'middle' },
          encoding: { text: { field: 'count', type: 'quantitative' } },
        },
      ],
    } as VegaLiteSpec,
  };
}
