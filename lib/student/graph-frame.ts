/**
 * The fused sublayers' ops (fast-ops.ts) built into a TensorFlow graph and run as one session call, in place of one
 * binding call per op. The same sublayer code drives both: it is written against {@link Ops}, which fast-ops.ts's
 * eager `Frame` runs op by op and {@link GraphFrame} records as graph nodes, tracking each result's static shape so
 * the code can read shapes as it does eagerly. A graph is rebuilt on every call (JavaScript only: a sublayer's ~60
 * nodes) and found again by its hash. What changes from call to call is fed, not built in: the dropout seeds, and
 * every shape an op takes as an input (reshape targets, mask sizes), so one graph serves every batch size and
 * sequence length. Built in, shapes would make a graph per batch shape, and training pads each batch to its own
 * longest rows: measured on the `small` shape, a step at a shape not seen before cost 200–400 ms more (ten graphs to
 * load and optimise) than one at a shape seen before.
 */
import { GraphBuilder, GraphSession, type DType } from './tf-graph';
import type { tf } from './tf';
import type { Handle, NativeBackend } from './tf-native';

/** The ops a fused sublayer is written with; results are handles whose `shape` is known when the op is added. */
export interface Ops {
  /** A tfjs tensor as an input of the ops (still tfjs's). */
  borrow(t: tf.Tensor): Handle;
  borrowAll(ts: readonly tf.Tensor[]): Handle[];
  /** Says `handles` are no longer needed (eagerly, their memory is released now). */
  free(...handles: (Handle | undefined)[]): void;
  scalar(x: number): Handle;
  add(a: Handle, b: Handle): Handle;
  sub(a: Handle, b: Handle): Handle;
  mul(a: Handle, b: Handle): Handle;
  unary(op: 'Square' | 'Rsqrt' | 'Sigmoid' | 'Softmax' | 'Relu', x: Handle): Handle;
  /** TensorFlow's gradient kernels: SigmoidGrad(y, dy) = dy·y(1 − y); ReluGrad(dy, features) = dy·[features > 0]. */
  grad(op: 'SigmoidGrad' | 'ReluGrad', a: Handle, b: Handle): Handle;
  /** Product over the last two axes, `adjX`/`adjY` transposing an operand inside the kernel (BatchMatMulV2). */
  matMul(a: Handle, b: Handle, adjX?: boolean, adjY?: boolean): Handle;
  reshape(x: Handle, shape: number[]): Handle;
  transpose(x: Handle, perm: number[]): Handle;
  /** Sum over `axes`, keeping them as size 1 when `keep`. */
  sum(x: Handle, axes: number[], keep: boolean): Handle;
  meanLast(x: Handle): Handle;
  concat(parts: Handle[], axis: number): Handle;
  split(x: Handle, axis: number, n: number): Handle[];
  pack(parts: Handle[], axis: number): Handle;
  unpack(x: Handle, n: number, axis: number): Handle[];
  /** Inverted dropout's mask for `shape`: 0 where dropped, 1/(1 − rate) elsewhere, reproducible from `seed`. */
  dropoutMask(shape: number[], rate: number, seed: number): Handle;
}

/** The two int32 words of TensorFlow's seed pair for a non-negative integer seed below 2^53. */
export function seedWords(seed: number): Int32Array {
  const whole = Math.floor(Math.abs(seed));
  return Int32Array.of(whole % 0x7fffffff, Math.floor(whole / 0x7fffffff) % 0x7fffffff);
}

/** The uint16 threshold below which a 16-bit draw drops its position: round(rate·2^16). */
export function threshold16(rate: number): number {
  return Math.min(0xffff, Math.round(rate * 0x10000));
}

/** numpy's broadcast of two shapes (the binary ops' result shape). */
function broadcast(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`GraphFrame: shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

const T = { T: { type: 'float32' as const } };

/**
 * Records a sublayer's ops as a graph; {@link GraphFrame.run} runs a body in one and returns its results as tfjs
 * tensors. Handles' ids index the frame's node outputs.
 */
export class GraphFrame implements Ops {
  private readonly g = new GraphBuilder();
  private readonly outputs: string[] = [];
  private readonly feeds = new Map<string, number>();
  /** Seed tensors made for this run's feeds, deleted after it. */
  private readonly made: number[] = [];
  private readonly constants = new Map<string, string>();

  private constructor(
    private readonly nb: NativeBackend,
    private readonly halfDraws: boolean
  ) {}

  /**
   * Runs `body` as one graph: builds it, finds or loads its session, feeds what the body borrowed and the dropout
   * seeds it drew, and returns the handles it returned as tfjs tensors (new ones, owned by tfjs).
   */
  static run(nb: NativeBackend, halfDraws: boolean, body: (f: GraphFrame) => Handle[]): tf.Tensor[] {
    const frame = new GraphFrame(nb, halfDraws);
    try {
      const results = body(frame);
      const fetches = results.map((h, i) => frame.g.op('Identity', [frame.name(h)], T, `out_${i}`));
      const session = GraphSession.load(nb.binding, frame.g);
      const outs = session.run(frame.feeds, fetches);
      return outs.map((o) => nb.createOutputTensor({ id: o.id, shape: o.shape, dtype: nb.binding.TF_FLOAT }));
    } finally {
      for (const id of frame.made) nb.binding.deleteTensor(id);
    }
  }

  private name(h: Handle): string {
    const name = this.outputs[h.id];
    if (name === undefined) throw new Error('GraphFrame: a handle from another frame');
    return name;
  }

  private handle(name: string, shape: readonly number[]): Handle {
    this.outputs.push(name);
    return { id: this.outputs.length - 1, shape: [...shape], dtype: this.nb.binding.TF_FLOAT };
  }

  private op(op: string, inputs: (Handle | string)[], shape: readonly number[], attrs = {}): Handle {
    const names = inputs.map((x) => (typeof x === 'string' ? x : this.name(x)));
    return this.handle(this.g.op(op, names, { ...T, ...attrs }), shape);
  }

  private constant(dtype: 'float32' | 'int32' | 'uint16', values: readonly number[], shape: readonly number[]): string {
    const key = `${dtype}:${shape.join(',')}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.g.constant(dtype, values, shape);
      this.constants.set(key, name);
    }
    return name;
  }

  /** Axes and permutations: the same for every batch shape, so part of the graph. */
  private ints(values: readonly number[], scalar = false): string {
    return this.constant('int32', values, scalar ? [] : [values.length]);
  }

  /** A shape vector, fed (see the module's comment). */
  private shapeFeed(values: readonly number[]): string {
    const b = this.nb.binding;
    const id = b.createTensor([values.length], b.TF_INT32, Int32Array.from(values));
    this.made.push(id);
    return this.placeholder('int32', id);
  }

  private placeholder(dtype: DType, id: number): string {
    const name = this.g.placeholder(`in_${this.feeds.size}`, dtype);
    this.feeds.set(name, id);
    return name;
  }

  borrow(t: tf.Tensor): Handle {
    return this.handle(this.placeholder('float32', this.nb.getInputTensorIds([t])[0]), t.shape);
  }

  borrowAll(ts: readonly tf.Tensor[]): Handle[] {
    return ts.map((t) => this.borrow(t));
  }

  free(): void {
    // A graph's executor releases each intermediate after its last use.
  }

  scalar(x: number): Handle {
    return this.handle(this.constant('float32', [x], []), []);
  }

  add(a: Handle, b: Handle): Handle {
    return this.op('AddV2', [a, b], broadcast(a.shape, b.shape));
  }
  sub(a: Handle, b: Handle): Handle {
    return this.op('Sub', [a, b], broadcast(a.shape, b.shape));
  }
  mul(a: Handle, b: Handle): Handle {
    return this.op('Mul', [a, b], broadcast(a.shape, b.shape));
  }
  unary(op: 'Square' | 'Rsqrt' | 'Sigmoid' | 'Softmax' | 'Relu', x: Handle): Handle {
    return this.op(op, [x], x.shape);
  }
  grad(op: 'SigmoidGrad' | 'ReluGrad', a: Handle, b: Handle): Handle {
    return this.op(op, [a, b], a.shape);
  }

  matMul(a: Handle, b: Handle, adjX = false, adjY = false): Handle {
    if (adjX && adjY) throw new Error('matMul: transposing both operands is not used');
    const batch = broadcast(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const rows = adjX ? a.shape[a.shape.length - 1] : a.shape[a.shape.length - 2];
    const cols = adjY ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1];
    return this.op('BatchMatMulV2', [a, b], [...batch, rows, cols], { adj_x: { bool: adjX }, adj_y: { bool: adjY } });
  }

  reshape(x: Handle, shape: number[]): Handle {
    const size = x.shape.reduce((p, d) => p * d, 1);
    const known = shape.reduce((p, d) => (d === -1 ? p : p * d), 1);
    const resolved = shape.map((d) => (d === -1 ? size / known : d));
    return this.op('Reshape', [x, this.shapeFeed(shape)], resolved, { Tshape: { type: 'int32' } });
  }
  transpose(x: Handle, perm: number[]): Handle {
    return this.op(
      'Transpose',
      [x, this.ints(perm)],
      perm.map((i) => x.shape[i]),
      { Tperm: { type: 'int32' } }
    );
  }
  sum(x: Handle, axes: number[], keep: boolean): Handle {
    const shape = keep
      ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
      : x.shape.filter((_, i) => !axes.includes(i));
    return this.op('Sum', [x, this.ints(axes)], shape, { Tidx: { type: 'int32' }, keep_dims: { bool: keep } });
  }
  meanLast(x: Handle): Handle {
    const last = x.shape.length - 1;
    return this.op(
      'Mean',
      [x, this.ints([last])],
      x.shape.map((d, i) => (i === last ? 1 : d)),
      { Tidx: { type: 'int32' }, keep_dims: { bool: true } }
    );
  }
  concat(parts: Handle[], axis: number): Handle {
    const shape = [...parts[0].shape];
    shape[axis] = parts.reduce((p, h) => p + h.shape[axis], 0);
    return this.op('ConcatV2', [...parts, this.ints([axis], true)], shape, {
      N: { int: parts.length },
      Tidx: { type: 'int32' },
    });
  }
  split(x: Handle, axis: number, n: number): Handle[] {
    const shape = [...x.shape];
    shape[axis] /= n;
    const node = this.g.op('Split', [this.ints([axis], true), this.name(x)], { ...T, num_split: { int: n } });
    return Array.from({ length: n }, (_, i) => this.handle(`${node}:${i}`, shape));
  }
  pack(parts: Handle[], axis: number): Handle {
    const shape = [...parts[0].shape];
    shape.splice(axis, 0, parts.length);
    return this.op('Pack', parts, shape, { N: { int: parts.length }, axis: { int: axis } });
  }
  unpack(x: Handle, n: number, axis: number): Handle[] {
    const shape = x.shape.filter((_, i) => i !== axis);
    const node = this.g.op('Unpack', [this.name(x)], { ...T, num: { int: n }, axis: { int: axis } });
    return Array.from({ length: n }, (_, i) => this.handle(`${node}:${i}`, shape));
  }

  /** The eager frame's mask, kernel for kernel (fast-ops.ts's `Frame.dropoutMask`), with the seed pair fed. */
  dropoutMask(shape: number[], rate: number, seed: number): Handle {
    const b = this.nb.binding;
    const seedId = b.createTensor([2], b.TF_INT32, seedWords(seed));
    this.made.push(seedId);
    const seedPair = this.placeholder('int32', seedId);
    const count = shape.reduce((a, d) => a * d, 1);
    const random = { T: { type: 'int32' as const }, Tseed: { type: 'int32' as const } };
    let keep: string;
    if (this.halfDraws && count % 2 === 0) {
      const bits = this.g.op('StatelessRandomUniformFullInt', [this.shapeFeed([count / 2]), seedPair], {
        ...random,
        dtype: { type: 'uint32' },
      });
      const halves = this.g.op('Bitcast', [bits], { T: { type: 'uint32' }, type: { type: 'uint16' } });
      const above = this.g.op('GreaterEqual', [halves, this.constant('uint16', [threshold16(rate)], [])], {
        T: { type: 'uint16' },
      });
      keep = this.g.op('Reshape', [above, this.shapeFeed(shape)], { T: { type: 'bool' }, Tshape: { type: 'int32' } });
    } else {
      const uniform = this.g.op('StatelessRandomUniform', [this.shapeFeed(shape), seedPair], {
        ...random,
        dtype: { type: 'float32' },
      });
      keep = this.g.op('GreaterEqual', [uniform, this.constant('float32', [rate], [])], T);
    }
    const scale = this.constant('float32', [1 / (1 - rate)], []);
    return this.op('SelectV2', [keep, scale, this.constant('float32', [0], [])], shape);
  }
}
