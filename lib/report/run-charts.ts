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

/** A tree to draw: what `lineageTree` (lib/registry/lineage.ts) returns has this shape. */
export interface ChartTreeNode {
  kind: string;
  label: string;
  children: readonly ChartTreeNode[];
}

/** Labels longer than this are cut: the list under the graph has them whole. */
const LINEAGE_LABEL_CHARS = 48;
/** Deeper lineage (rare) is summarised at this depth; the list holds the rest. */
const LINEAGE_MAX_DEPTH = 6;

/**
 * The lineage as a graph, left to right: each thing, and to its right what it was made of, joined by an edge.
 * Laid out here (leaves one row apart in order, a parent centred on its children) because Vega-Lite has no tree
 * layout; drawn as rules, points and text.
 */
export function lineageChart(tree: ChartTreeNode): ChartSpec {
  const nodes: { id: number; depth: number; row: number; kind: string; text: string }[] = [];
  const edges: { x: number; y: number; x2: number; y2: number }[] = [];
  let leaves = 0;
  const place = (n: ChartTreeNode, depth: number): { id: number; row: number } => {
    const id = nodes.length;
    const text = `${n.kind}: ${n.label}`;
    const node = {
      id,
      depth,
      row: 0,
      kind: n.kind,
      text: text.length > LINEAGE_LABEL_CHARS ? `${text.slice(0, LINEAGE_LABEL_CHARS - 1)}…` : text,
    };
    nodes.push(node);
    const children = depth < LINEAGE_MAX_DEPTH ? n.children : [];
    if (children.length === 0) {
      node.row = leaves++;
    } else {
      const placed = children.map((c) => place(c, depth + 1));
      node.row = (placed[0].row + placed[placed.length - 1].row) / 2;
      for (const c of placed) edges.push({ x: depth, y: node.row, x2: depth + 1, y2: c.row });
    }
    return { id, row: node.row };
  };
  place(tree, 0);
  const depths = Math.max(...nodes.map((n) => n.depth)) + 1;
  const x = { type: 'quantitative', axis: null, scale: { domain: [0, depths] } };
  const y = { type: 'quantitative', axis: null, scale: { domain: [leaves - 0.5, -0.5] } };
  return {
    name: 'lineage',
    title: 'Lineage: each thing, then what it was made of',
    spec: {
      ...base,
      width: Math.max(WIDTH, depths * 190),
      height: Math.max(60, leaves * 20),
      layer: [
        {
          data: { values: edges },
          mark: { type: 'rule', color: '#9ca3af' },
          encoding: { x: { field: 'x', ...x }, y: { field: 'y', ...y }, x2: { field: 'x2' }, y2: { field: 'y2' } },
        },
        {
          data: { values: nodes },
          mark: { type: 'point', filled: true, size: 60 },
          encoding: {
            x: { field: 'depth', ...x },
            y: { field: 'row', ...y },
            color: { field: 'kind', type: 'nominal', title: 'kind', legend: { orient: 'bottom', columns: 4 } },
            tooltip: [{ field: 'text', title: 'node' }],
          },
        },
        {
          data: { values: nodes },
          mark: { type: 'text', align: 'left', dx: 7, fontSize: 10 },
          encoding: { x: { field: 'depth', ...x }, y: { field: 'row', ...y }, text: { field: 'text' } },
        },
      ],
    } as VegaLiteSpec,
  };
}
