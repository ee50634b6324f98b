/**
 * A sweep's table and plot from its cells: the statistics against values computed here, failed cells set apart,
 * the Markdown's cells, and the SVG rendered headless with a line per method and the baselines' rules.
 */
import test from 'ava';
import { InputError } from '../lib/errors';
import { summarizeSweep, sweepMarkdown, sweepPlotSpec, type SweepCell, type SweepMeta } from '../lib/sweep/summary';
import { renderSvg } from '../lib/report/vega';
import type { Method } from '../lib/student/options';

const meta: SweepMeta = { sweepId: 'sweep-1', task: 'svamp', specName: 'svamp-paper', wallSeconds: 4000 };

function cell(method: Method, fraction: number, seed: number, accuracy: number, extra: Partial<SweepCell> = {}) {
  return {
    method,
    fraction,
    seed,
    name: `x-${method}-${fraction}-${seed}`,
    workflowId: `w-${method}-${fraction}-${seed}`,
    status: 'done',
    accuracy,
    majorityBaseline: fraction === 1 ? 0.09 : 0.08,
    bestOperation: { operation: 'a+b', accuracy: 0.2 },
    teacherAccuracy: 0.74,
    backend: 'tensorflow',
    ...extra,
  } satisfies SweepCell;
}

// Given in a scrambled order: the summary orders methods as the paper does and fractions and seeds ascending.
const cells: SweepCell[] = [
  cell('distill-step-by-step', 1, 1, 0.5),
  cell('standard-finetune', 0.5, 0, 0.2),
  cell('distill-step-by-step', 0.5, 0, 0.3),
  cell('standard-finetune', 1, 1, 0.35),
  cell('distill-step-by-step', 1, 0, 0.4),
  cell('standard-finetune', 1, 0, 0.25),
  cell('standard-finetune', 0.5, 1, 0.1),
  cell('distill-step-by-step', 0.5, 1, 0.3, { status: 'failed', accuracy: undefined, error: 'worker lost' }),
];

test('the summary gives mean, sample sd, min and max per method and fraction, failed cells apart', (t) => {
  const s = summarizeSweep(cells, meta);
  t.deepEqual(
    s.rows.map((r) => [r.method, r.fraction, r.n]),
    [
      ['standard-finetune', 0.5, 2],
      ['standard-finetune', 1, 2],
      ['distill-step-by-step', 0.5, 1],
      ['distill-step-by-step', 1, 2],
    ]
  );
  const ft1 = s.rows[1];
  t.deepEqual(ft1.seeds, [0, 1]);
  t.deepEqual(ft1.accuracies, [0.25, 0.35]);
  t.true(Math.abs(ft1.mean - 0.3) < 1e-12);
  // Sample sd of {0.25, 0.35}: sqrt(((0.05)² + (0.05)²) / 1).
  t.true(Math.abs(ft1.sd! - Math.sqrt(0.005)) < 1e-12);
  t.is(ft1.min, 0.25);
  t.is(ft1.max, 0.35);
  t.is(s.rows[2].sd, null, 'one seed has no sd');
  t.deepEqual(s.failed, [
    { method: 'distill-step-by-step', fraction: 0.5, seed: 1, workflowId: cells[7].workflowId, error: 'worker lost' },
  ]);
  t.deepEqual(
    s.baselines.map((b) => [b.fraction, b.majority]),
    [
      [0.5, 0.08],
      [1, 0.09],
    ]
  );
  t.is(s.teacherAccuracy, 0.74);
});

test('the Markdown table has a row per method, a column per fraction, and the baselines and teacher', (t) => {
  const md = sweepMarkdown(summarizeSweep(cells, meta));
  t.true(md.includes('| method | 50% of train | 100% of train |'), md);
  t.true(md.includes('| standard-finetune | 15.0 ± 7.1 (n=2) | 30.0 ± 7.1 (n=2) |'), md);
  t.true(md.includes('| distill-step-by-step | 30.0 ± – (n=1) | 45.0 ± 7.1 (n=2) |'), md);
  t.true(md.includes('| majority answer (chosen on train) | 8.0 | 9.0 |'), md);
  t.true(md.includes('| teacher (same examples) | 74.0 | 74.0 |'), md);
  t.true(md.includes('failed: distill-step-by-step, fraction 0.5, seed 1'), md);
  t.true(md.includes('Wall time: 1 h 7 min'), md);
  t.is(md, sweepMarkdown(summarizeSweep([...cells].reverse(), meta)), 'the same cells give the same text');
});

/**
 * Well-formedness, enough for an SVG: every tag closes in order, attributes are quoted, and text holds no raw `<` or
 * bare `&`. (No XML parser is a dependency; this is what a browser's would reject first.)
 */
function xmlProblem(xml: string): string | null {
  const stack: string[] = [];
  let at = 0;
  for (const m of xml.matchAll(/<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/g)) {
    const text = xml.slice(at, m.index);
    if (/[<>]|&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[\da-fA-F]+);)/.test(text)) return `bad text before ${m[0]}`;
    at = m.index + m[0].length;
    const [, closing, name, , selfClosing] = m;
    if (closing) {
      if (stack.pop() !== name) return `</${name}> closes nothing open`;
    } else if (!selfClosing) {
      stack.push(name);
    }
  }
  if (xml.slice(at).trim() !== '') return 'text after the root';
  return stack.length ? `<${stack.join('>, <')}> left open` : null;
}

test('the plot renders headless to SVG with a line per method and a rule per baseline', async (t) => {
  const svg = await renderSvg(sweepPlotSpec(summarizeSweep(cells, meta)));
  t.regex(svg, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.is(xmlProblem(svg), null);
  t.not(xmlProblem(svg.replace('</g>', '')), null, 'the check catches an unclosed tag');
  t.false(svg.includes('…'), 'no legend or axis label is cut short');
  // Vega draws each series of a line mark as one path, labelled with the first point's fields.
  const lines = [...svg.matchAll(/aria-label="([^"]*)"[^>]*aria-roledescription="line mark"/g)].map((m) => m[1]);
  t.is(lines.length, 2, 'one line per method');
  t.true(lines[0].includes('method: standard-finetune') && lines[1].includes('method: distill-step-by-step'));
  t.is((svg.match(/aria-roledescription="rule mark"/g) ?? []).length, 4 + 3, 'an error bar per row (4), 3 baselines');
  for (const label of ['majority answer', 'best single operation', 'teacher', 'distill-step-by-step']) {
    t.true(svg.includes(label), `the plot names ${label}`);
  }
});

test('a finished cell without an accuracy is refused, naming it', (t) => {
  for (const accuracy of [Number.NaN, undefined, 1.5]) {
    const bad = [cell('standard-finetune', 1, 0, 0.3), cell('standard-finetune', 1, 1, 0.3, { accuracy })];
    const err = t.throws(() => summarizeSweep(bad, meta), { instanceOf: InputError });
    t.true(err!.message.includes(bad[1].workflowId), err!.message);
  }
});

test('fraction headers read as percents without float noise', (t) => {
  const md = sweepMarkdown(
    summarizeSweep([cell('standard-finetune', 0.07, 0, 0.1), cell('standard-finetune', 0.125, 0, 0.2)], meta)
  );
  t.true(md.includes('| method | 7% of train | 12.5% of train |'), md);
});

test('a chart that would fetch its data is refused', async (t) => {
  await t.throwsAsync(renderSvg({ data: { url: 'https://example.com/x.csv' }, mark: 'point' }), {
    instanceOf: InputError,
  });
});
