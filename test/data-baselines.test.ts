/**
 * Honest trivial baselines: chosen on the training split, scored on what is scored (an SVAMP answer's value, not its
 * equation text); and a validation split that stays the same whatever share of the training data a run keeps.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { numbersIn, trivialBaselines } from '../lib/data/baselines';
import { evaluateExpression } from '../lib/data/arith';
import { sampleDataset } from '../lib/data/sample';
import { majorityOn } from '../lib/registry/gate-stage';
import { parseSpec } from '../lib/pipeline/spec';
import { openStore } from '../lib/store';
import type { Example } from '../lib/data/types';

const DATASETS = join(__dirname, '..', '..', 'shared', 'datasets');
const svamp = (split: string): Example[] =>
  readFileSync(join(DATASETS, 'svamp', `svamp_${split}.json`), 'utf8')
    .trim()
    .split('\n')
    .map((line, i) => ({ id: `${split}-${i}`, ...(JSON.parse(line) as { input: string; label: string }) }));

const ex = (input: string, label: string, i = 0): Example => ({ id: `e${i}`, input, label });

test('numbers are read as written: thousands separators and decimals', (t) => {
  t.deepEqual(numbersIn('He had 1,200 cards and 3.5 boxes, then 7 more.'), [1200, 3.5, 7]);
  t.deepEqual(numbersIn('no numbers here'), []);
});

test('the arithmetic majority groups equal values, whatever the equation, and is chosen on train', (t) => {
  // On train, value 6 is written three ways and is the majority; the most common *string* is "( 1.0 + 1.0 )".
  const train = [
    ex('a', '( 1.0 + 1.0 )'),
    ex('b', '( 1.0 + 1.0 )'),
    ex('c', '( 2.0 * 3.0 )'),
    ex('d', '( 3.0 + 3.0 )'),
    ex('e', '( 12.0 / 2.0 )'),
  ];
  const testSplit = [ex('f', '( 5.0 + 1.0 )'), ex('g', '( 1.0 + 1.0 )'), ex('h', '( 4.0 + 4.0 )')];
  const b = trivialBaselines('svamp', testSplit, train);
  t.is(Number(b.majority.label), 6);
  t.is(b.majority.accuracy, 1 / 3);
  // Text tasks keep exact labels: the majority of train, scored on test.
  const text = trivialBaselines('cqa', [ex('x', 'yes'), ex('y', 'no')], [ex('p', 'no'), ex('q', 'no'), ex('r', 'yes')]);
  t.deepEqual(text.majority, { label: 'no', accuracy: 0.5 });
});

test('the best single operation is chosen on train and scored on test, even where another wins on test', (t) => {
  // On train, a+b is right twice and a*b once; on test a*b would be right twice and a+b never.
  const train = [
    ex('Tom has 3 apples and gets 4 more.', '( 3.0 + 4.0 )', 1),
    ex('Ann has 10 pens and buys 5.', '( 10.0 + 5.0 )', 2),
    ex('There are 2 rows of 6 seats.', '( 2.0 * 6.0 )', 3),
  ];
  const testSplit = [ex('5 boxes of 3 toys.', '( 5.0 * 3.0 )', 4), ex('4 bags of 7 nuts.', '( 4.0 * 7.0 )', 5)];
  const b = trivialBaselines('svamp', testSplit, train);
  t.deepEqual(b.bestOperation, { operation: 'a+b', accuracy: 0 });
  t.is(trivialBaselines('svamp', testSplit, testSplit).bestOperation?.operation, 'a*b');
});

test('on SVAMP the majority answer value scores what an independent count says, not the equation-string figure', (t) => {
  const [train, testSplit] = [svamp('train'), svamp('test')];
  const b = trivialBaselines('svamp', testSplit, train);
  // Independent count: the most common value on train (rounded), then test labels with that value.
  const counts = new Map<number, number>();
  for (const e of train) {
    const v = Math.round(evaluateExpression(e.label) * 1e6) / 1e6;
    counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  const top = [...counts.entries()].sort((a, c) => c[1] - a[1] || a[0] - c[0])[0][0];
  const hits = testSplit.filter((e) => Math.abs(evaluateExpression(e.label) - top) < 1e-4).length;
  t.is(Number(b.majority.label), top);
  t.is(b.majority.accuracy, hits / testSplit.length);
  // The most common equation string on test scores far less than the most common value does.
  const strings = new Map<string, number>();
  for (const e of testSplit) strings.set(e.label, (strings.get(e.label) ?? 0) + 1);
  const stringMajority = Math.max(...strings.values()) / testSplit.length;
  t.true(b.majority.accuracy > 3 * stringMajority, `${b.majority.accuracy} vs ${stringMajority}`);
  t.truthy(b.bestOperation);
  t.log(`SVAMP test: majority answer ${b.majority.accuracy}, best op ${JSON.stringify(b.bestOperation)}`);
});

test('every training fraction validates on the same held-out examples, apart from what it trains on', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-fractions-'));
  const store = openStore(dir);
  try {
    const sampled = [];
    for (const fraction of [0.125, 0.5, 1]) {
      const spec = parseSpec({
        name: 'fractions',
        data: { kind: 'reference', dir: DATASETS, task: 'svamp' },
        teacher: { kind: 'replay' },
        sample: { fraction, seed: 3 },
      });
      const r = await sampleDataset(store, spec);
      const [train, valid] = await Promise.all([store.getJsonl<Example>(r.train), store.getJsonl<Example>(r.valid)]);
      sampled.push({
        fraction,
        train: new Set(train.map((e) => e.id)),
        valid: r.valid,
        validIds: valid.map((e) => e.id),
      });
    }
    const full = sampled[2];
    t.is(full.validIds.length, 80);
    t.is(full.train.size, 720);
    for (const s of sampled) {
      t.is(s.valid.sha256, full.valid.sha256, `fraction ${s.fraction} validates on the same split`);
      t.is(s.train.size, Math.round(s.fraction * 720));
      for (const id of s.validIds) t.false(s.train.has(id), `${id} is not trained on at fraction ${s.fraction}`);
      for (const id of s.train) t.true(full.train.has(id));
    }
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the gate’s first-version baseline is the majority answer value chosen on train, not the commonest equation', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-gate-baseline-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = openStore(dir);
  const testSplit = svamp('test');
  const train = svamp('train');
  const evalSet = await store.putJsonl(testSplit);
  const rows = testSplit.map((e) => ({ id: e.id, gold: e.label, correct: false }));
  const input = {
    plan: { alias: 'champion', champion: null, evalSet },
    baselineFrom: { task: 'svamp' as const, train: await store.putJsonl(train) },
  } as unknown as Parameters<typeof majorityOn>[1];
  const honest = await majorityOn(store, input, rows);
  t.is(honest.accuracy, trivialBaselines('svamp', testSplit, train).majority.accuracy);
  t.is(honest.accuracy, 0.09, 'the answer value 2 is 9% of the SVAMP test set');
  const legacy = await majorityOn(store, { ...input, baselineFrom: undefined }, rows);
  t.true(legacy.accuracy < 0.05, `the old equation-string majority (${legacy.accuracy}) undersold the baseline`);
});
