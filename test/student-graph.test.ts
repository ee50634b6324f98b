import { createHash } from 'node:crypto';
import test from 'ava';
import { GraphBuilder } from '../lib/student/tf-graph';

type Variation = {
  op?: string;
  input?: string;
  attr?: number;
  value?: number;
  shape?: number[];
  name?: string;
  dtype?: 'float32' | 'int32';
};

/** A graph with every kind of node the builder writes; `v` changes one thing in it. */
function build(v: Variation = {}): GraphBuilder {
  const g = new GraphBuilder();
  const x = g.placeholder('x', v.dtype ?? 'float32');
  const s = g.placeholder('seed', 'int32');
  const c1 = g.constant('float32', [1.5, v.value ?? -2.25, 3e-8], v.shape ?? [3]);
  const c2 = g.constant('int32', [-1, 0, 300, 2 ** 31 - 1, -(2 ** 31)], [5]);
  const c3 = g.constant('uint16', [65535, 7]);
  const c4 = g.constant('float32', [0.1]);
  const a = g.op('AddV2', [v.input ?? x, c1], { T: { type: 'float32' } });
  const r = g.op('Reshape', [a, c2], { T: { type: 'float32' }, Tshape: { type: 'int32' } });
  const sp = g.op('Split', [c3, r], { T: { type: 'float32' }, num_split: { int: v.attr ?? 2 } }, 'split');
  const m = g.op(v.op ?? 'BatchMatMulV2', [`${sp}:1`, `${sp}:0`], {
    T: { type: 'float32' },
    adj_x: { bool: true },
    adj_y: { bool: false },
  });
  g.op('Mul', [m, c4, s], { T: { type: 'float32' }, neg: { int: -5 }, big: { int: 2 ** 40 } }, v.name ?? 'out');
  return g;
}

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

test('the SavedModel a graph is written as is byte for byte what the builder wrote before it kept node records', (t) => {
  // Computed from this graph with the builder that wrote each node's protobuf as it was added (before 1ca92b7): the
  // records, written only when a graph is first loaded, must give TensorFlow the same file.
  const bytes = build().toSavedModel();
  t.is(bytes.length, 713);
  t.is(sha(bytes), '7e54c2e00ace253a449a93db32c32449bc8cf2acec3babd5b6abf8abbafb960e');
});

test('two builders share a digest exactly when they write the same graph', (t) => {
  const base = build();
  t.is(build().digest(), base.digest());
  t.deepEqual(build().toSavedModel(), base.toSavedModel());
  const variations: Variation[] = [
    { op: 'MatMul' },
    { input: 'seed' },
    { attr: 3 },
    { value: -2.5 },
    { shape: [1, 3] },
    { name: 'result' },
    { dtype: 'int32' },
  ];
  for (const v of variations) {
    const g = build(v);
    t.not(g.digest(), base.digest(), JSON.stringify(v));
    t.notDeepEqual(g.toSavedModel(), base.toSavedModel(), JSON.stringify(v));
  }
});

test('constants that differ only in NaN, ±Infinity or the sign of zero keep distinct digests', (t) => {
  // JSON alone would write NaN and ±Infinity as null and −0 as 0, and these graphs would share one session.
  const specials = [Number.NaN, Infinity, -Infinity, 0, -0];
  const digests = specials.map((value) => build({ value }).digest());
  t.is(new Set(digests).size, specials.length, digests.join('\n'));
  const files = specials.map((value) => sha(build({ value }).toSavedModel()));
  t.is(new Set(files).size, specials.length);
});

test('a node records copies of what it was given: changing the caller arrays afterwards changes nothing', (t) => {
  const g = new GraphBuilder();
  const values = [1, 2, 3];
  const inputs = ['x'];
  g.placeholder('x', 'float32');
  g.constant('float32', values, [3]);
  g.op('Neg', inputs, { T: { type: 'float32' } }, 'out');
  const before = g.digest();
  values[0] = 9;
  inputs[0] = 'y';
  t.is(g.digest(), before);
});

test('a node name given twice is refused', (t) => {
  const g = new GraphBuilder();
  g.placeholder('x', 'float32');
  t.throws(() => g.op('Neg', ['x'], {}, 'x'), { message: /node name 'x' is taken/ });
});
