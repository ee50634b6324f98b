/**
 * Fused formulations of the student's training step. A step of the `small` shape on native TensorFlow
 * (bench/train-throughput.ts: batch 8 × 64+32 tokens) costs ~108 GFLOP of matrix products, which oneDNN runs at
 * ~95 GFLOP/s per core; everything else is elementwise kernels and the bookkeeping around each kernel, and that is
 * where the formulation matters. Measured on a 2-core AMD EPYC (Zen 4) with one intra-op thread, CPU time per step
 * (the machine was shared, so CPU time, not wall time, is the robust figure): op by op through tfjs ~1,930 ms (4,280
 * kernels), with the sublayers below ~1,610 ms (3,500 kernels), PyTorch (HF T5, same shape and thread) ~1,930 ms.
 * Each helper is one of:
 *
 * - a whole pre-norm sublayer as one differentiable op with a hand-written backward pass (attention and
 *   feed-forward): norm, projections, attention or activation, dropout and the residual in ~30 raw TensorFlow ops
 *   each way and one tape node, where tfjs's autodiff records ~40 nodes and runs about twice the kernels;
 * - a hand-written gradient (`tf.customGrad`) for RMS norm and gated GELU elsewhere;
 * - a TensorFlow op run by name on the native backend (tfjs-node executes any TF op through its binding): dropout
 *   masks from Philox (`StatelessRandomUniformFullInt`), the loss from `SparseSoftmaxCrossEntropyWithLogits`, the
 *   global norm from `L2Loss`, and the whole AdamW update, in place: Stepwise's own `StepwiseApplyAdamW`
 *   (kernels/stepwise_ops.cc: clip coefficient, decay and Adam in one pass) where that library is loaded, else
 *   TensorFlow's `ResourceApplyAdam` after a scaling Mul and a decay assign.
 *
 * The sublayers are written once against graph-frame.ts's `Ops` and run either way: each call as one graph session
 * (`GraphFrame`, the default), or op by op on raw handles (see {@link Frame}): ops straight through the binding with
 * their attributes and constant inputs made once, which skips tfjs's per-op tracking. Both free each intermediate
 * result after its last use, which also halves the step's peak memory against tfjs's autodiff (measured: 4.8 → 2.7 GB
 * for `small` distill-step-by-step).
 *
 * Every helper computes the same function on every backend: where the native backend is absent (wasm, cpu) it runs
 * plain tfjs ops (for the sublayers, t5.ts's op-by-op formulas), and test/student-fast-ops.test.ts holds the fused
 * formulations to the plain ones, values and gradients. The forward formulas are those of t5.ts, so the parity
 * test vector still holds.
 */
import { tf } from './tf';
import { GraphFrame, seedWords, threshold16, type Ops } from './graph-frame';
import {
  nativeBackend as native,
  stepwiseOpsStatus,
  type Binding,
  type Handle,
  type NativeBackend,
  type OpAttr,
} from './tf-native';

/** Set while {@link withOpByOpSublayers} runs. */
let noFusedSublayers = false;

/**
 * Whether the fused sublayers run as graph sessions (graph-frame.ts) rather than op by op in a {@link Frame}. A graph
 * saves the binding's dispatch per op and lets TensorFlow's executor run independent ops side by side on its
 * inter-op threads. Measured on 2 cores (`small` shape, standard step, 2 intra-op and 2 inter-op threads, TF's
 * defaults there): 1,853–1,872 ms a step against 2,150–2,190 op by op, alternated runs; with one inter-op thread the
 * gain shrinks to 2–7%. Measured on the CPU only, and used there only: the binding feeds a session through host
 * memory (each input handle is resolved to a host tensor), which on a GPU would copy every weight and activation off
 * the device and back at each call.
 */
let graphSublayers = true;

/** Whether NativeAdam uses Stepwise's fused AdamW kernel when the kernel library is loaded (tf-native.ts). */
let stepwiseKernels = true;

/**
 * True when Stepwise's own kernels run: the native backend is current, on the CPU (the kernels are built for it
 * alone), the library is loaded and they are not switched off. What the optimiser uses and the backend reports.
 */
export function usesStepwiseKernels(): boolean {
  const nb = native();
  return nb !== undefined && stepwiseKernels && stepwiseOpsStatus().loaded && !kernelsOf(nb).onGpu;
}

/** Turns Stepwise's own kernels on or off (tests compare them with TensorFlow's); returns the setting before. */
export function useStepwiseKernels(on: boolean): boolean {
  const before = stepwiseKernels;
  stepwiseKernels = on;
  return before;
}

/** Turns graph sessions for the fused sublayers on or off (tests compare the two); returns the setting before. */
export function useGraphSublayers(on: boolean): boolean {
  const before = graphSublayers;
  graphSublayers = on;
  return before;
}

/**
 * Runs `body` with the sublayers op by op while the other native kernels (dropout masks among them) stay: the fused
 * sublayers must equal that with dropout on, masks included.
 */
export function withOpByOpSublayers<T>(body: () => T): T {
  const before = noFusedSublayers;
  noFusedSublayers = true;
  try {
    return body();
  } finally {
    noFusedSublayers = before;
  }
}

/** True when the fused native kernels are in use (the current backend is tfjs-node's `tensorflow`). */
export function usesNativeKernels(): boolean {
  return native() !== undefined;
}

const typeAttr = (nb: NativeBackend, name: string, dtype: 'float32' | 'int32'): OpAttr => ({
  name,
  type: nb.binding.TF_ATTR_TYPE,
  value: dtype === 'float32' ? nb.binding.TF_FLOAT : nb.binding.TF_INT32,
});
const boolAttr = (nb: NativeBackend, name: string, value: boolean): OpAttr => ({
  name,
  type: nb.binding.TF_ATTR_BOOL,
  value,
});

/**
 * `tf.customGrad` with the inputs as an array: tfjs passes them and the save function as one rest list, which
 * TypeScript cannot split.
 */
function withGradient<T extends tf.Tensor>(
  f: (
    inputs: tf.Tensor[],
    save: tf.GradSaveFunc
  ) => { value: T; gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[] }
): (...inputs: tf.Tensor[]) => T {
  return tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) =>
    f(args.slice(0, -1) as tf.Tensor[], args[args.length - 1] as tf.GradSaveFunc)
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Raw handles: ops straight through the binding, for the fused sublayers

/** TensorFlow's C API type codes (TF_DataType) that the binding does not name. */
const TF_BOOL = 10;
const TF_UINT16 = 17;
const TF_UINT32 = 22;

/**
 * The binding's ops on raw handles, with every attribute list built once and the small constant tensors ops take
 * (shapes, permutations, axes, scalars) made once and kept. Through tfjs each op also pays for the engine's tensor
 * tracking, and `tf.reshape`, `tf.transpose` or `tf.sum` each create a constant tensor per call; a training step of
 * the `small` shape ran ~4,300 ops, so the bookkeeping per op adds up to a good part of a step.
 */
class RawKernels {
  readonly b: Binding;
  readonly attrs: Record<
    | 'float'
    | 'reshape'
    | 'transpose'
    | 'reduce'
    | 'reduceKeep'
    | 'uniform'
    | 'fullInt'
    | 'toUint16'
    | 'uint16'
    | 'reshapeBool'
    | 'matMulNN'
    | 'matMulTN'
    | 'matMulNT',
    OpAttr[]
  >;
  /**
   * Whether dropout masks take two 16-bit draws per 32 random bits (see {@link Frame.dropoutMask}): on the CPU,
   * where the generator is most of a mask's cost; a GPU draws a float per position as cheaply, and may lack the
   * uint16 comparison kernel.
   */
  readonly halfDraws: boolean;
  /** Whether ops run on a GPU (tfjs-node-gpu with a device): the sublayers then stay op by op (see graphSublayers). */
  readonly onGpu: boolean;
  private readonly countedAttrs = new Map<string, OpAttr[]>();
  private readonly constants = new Map<string, Handle>();

  constructor(readonly nb: NativeBackend) {
    this.b = nb.binding;
    this.onGpu = (nb as { isUsingGpuDevice?: boolean }).isUsingGpuDevice === true;
    this.halfDraws = !this.onGpu;
    const T = typeAttr(nb, 'T', 'float32');
    const index = (name: string) => typeAttr(nb, name, 'int32');
    const flags = (adjX: boolean, adjY: boolean) => [T, boolAttr(nb, 'adj_x', adjX), boolAttr(nb, 'adj_y', adjY)];
    this.attrs = {
      float: [T],
      reshape: [T, index('Tshape')],
      transpose: [T, index('Tperm')],
      reduce: [T, index('Tidx'), boolAttr(nb, 'keep_dims', false)],
      reduceKeep: [T, index('Tidx'), boolAttr(nb, 'keep_dims', true)],
      uniform: [typeAttr(nb, 'dtype', 'float32'), index('T'), index('Tseed')],
      fullInt: [{ name: 'dtype', type: this.b.TF_ATTR_TYPE, value: TF_UINT32 }, index('T'), index('Tseed')],
      toUint16: [
        { name: 'T', type: this.b.TF_ATTR_TYPE, value: TF_UINT32 },
        { name: 'type', type: this.b.TF_ATTR_TYPE, value: TF_UINT16 },
      ],
      uint16: [{ name: 'T', type: this.b.TF_ATTR_TYPE, value: TF_UINT16 }],
      reshapeBool: [{ name: 'T', type: this.b.TF_ATTR_TYPE, value: TF_BOOL }, index('Tshape')],
      matMulNN: flags(false, false),
      matMulTN: flags(true, false),
      matMulNT: flags(false, true),
    };
  }

  /** Attributes of an op with an int attribute besides T (Pack's N, Unpack's num, Split's num_split, ...). */
  counted(op: string, extra: Record<string, number>, index?: string): OpAttr[] {
    const key = `${op}:${JSON.stringify(extra)}`;
    let attrs = this.countedAttrs.get(key);
    if (!attrs) {
      attrs = [
        typeAttr(this.nb, 'T', 'float32'),
        ...Object.entries(extra).map(([name, value]) => ({ name, type: this.b.TF_ATTR_INT, value })),
        ...(index ? [typeAttr(this.nb, index, 'int32')] : []),
      ];
      this.countedAttrs.set(key, attrs);
    }
    return attrs;
  }

  /** A kept int32 vector (a shape, permutation or axis list) or float32 scalar. */
  constant(kind: 'int' | 'float', values: readonly number[], scalar = false): Handle {
    const key = `${kind}${scalar ? 's' : 'v'}${values.join(',')}`;
    let h = this.constants.get(key);
    if (!h) {
      // Shapes vary with the batch's lengths; a long run meets a bounded set of them, but keep the table small.
      if (this.constants.size > 4096) this.dropConstants();
      const dtype = kind === 'int' ? this.b.TF_INT32 : this.b.TF_FLOAT;
      const data = kind === 'int' ? Int32Array.from(values) : Float32Array.from(values);
      const shape = scalar ? [] : [values.length];
      h = { id: this.b.createTensor(shape, dtype, data), shape, dtype };
      this.constants.set(key, h);
    }
    return h;
  }

  /** round(rate·2^16) as a kept uint16 scalar (the binding makes no uint16 tensor from JS: cast from int32). */
  threshold16(rate: number): Handle {
    const key = `u16:${rate}`;
    let h = this.constants.get(key);
    if (!h) {
      const value = this.constant('int', [threshold16(rate)], true);
      const castAttrs = [
        typeAttr(this.nb, 'SrcT', 'int32'),
        { name: 'DstT', type: this.b.TF_ATTR_TYPE, value: TF_UINT16 },
        boolAttr(this.nb, 'Truncate', false),
      ];
      [h] = this.b.executeOp('Cast', castAttrs, [value.id], 1);
      this.constants.set(key, h);
    }
    return h;
  }

  private dropConstants(): void {
    for (const h of this.constants.values()) this.b.deleteTensor(h.id);
    this.constants.clear();
  }
}

const rawKernels = new WeakMap<NativeBackend, RawKernels>();

function kernelsOf(nb: NativeBackend): RawKernels {
  let k = rawKernels.get(nb);
  if (!k) {
    k = new RawKernels(nb);
    rawKernels.set(nb, k);
  }
  return k;
}

/**
 * Ops on raw handles inside one fused op. Every handle an op makes is owned by the frame until it is freed,
 * adopted (handed to tfjs as a tensor) or the frame closes, which frees whatever is left: nothing leaks when a
 * shape check throws halfway. Handles of tfjs tensors (`borrow`) stay tfjs's.
 */
class Frame implements Ops {
  private readonly live = new Set<Handle>();
  private readonly b: Binding;
  constructor(private readonly k: RawKernels) {
    this.b = k.b;
  }

  /** Runs `body` in a fresh frame and frees what it leaves. */
  static run<T>(nb: NativeBackend, body: (f: Frame) => T): T {
    const frame = new Frame(kernelsOf(nb));
    try {
      return body(frame);
    } finally {
      frame.close();
    }
  }

  borrow(t: tf.Tensor): Handle {
    return { id: this.k.nb.getInputTensorIds([t])[0], shape: t.shape, dtype: this.b.TF_FLOAT };
  }

  /** {@link borrow} of each of `ts`, in order. */
  borrowAll(ts: readonly tf.Tensor[]): Handle[] {
    return ts.map((t) => this.borrow(t));
  }

  /** A tfjs tensor that owns `h` from now on. */
  adopt(h: Handle): tf.Tensor {
    this.live.delete(h);
    return this.k.nb.createOutputTensor(h);
  }

  free(...handles: (Handle | undefined)[]): void {
    for (const h of handles) {
      if (h && this.live.delete(h)) this.b.deleteTensor(h.id);
    }
  }

  private close(): void {
    for (const h of this.live) this.b.deleteTensor(h.id);
    this.live.clear();
  }

  private run(name: string, attrs: OpAttr[], inputs: Handle[]): Handle {
    return this.runN(name, attrs, inputs, 1)[0];
  }

  private runN(name: string, attrs: OpAttr[], inputs: Handle[], n: number): Handle[] {
    const outs = this.b.executeOp(
      name,
      attrs,
      inputs.map((h) => h.id),
      n
    );
    for (const h of outs) this.live.add(h);
    return outs;
  }

  scalar(x: number): Handle {
    return this.k.constant('float', [x], true);
  }

  add(a: Handle, b: Handle): Handle {
    return this.run('AddV2', this.k.attrs.float, [a, b]);
  }
  sub(a: Handle, b: Handle): Handle {
    return this.run('Sub', this.k.attrs.float, [a, b]);
  }
  mul(a: Handle, b: Handle): Handle {
    return this.run('Mul', this.k.attrs.float, [a, b]);
  }
  unary(op: 'Square' | 'Rsqrt' | 'Sigmoid' | 'Softmax' | 'Relu', x: Handle): Handle {
    return this.run(op, this.k.attrs.float, [x]);
  }
  /** TensorFlow's gradient kernels: SigmoidGrad(y, dy) = dy·y(1 − y); ReluGrad(dy, features) = dy·[features > 0]. */
  grad(op: 'SigmoidGrad' | 'ReluGrad', a: Handle, b: Handle): Handle {
    return this.run(op, this.k.attrs.float, [a, b]);
  }

  /**
   * Product over the last two axes (2-D operands included), `adjX`/`adjY` transposing an operand inside the kernel.
   * Always BatchMatMulV2, as tfjs runs it: TensorFlow's `MatMul` goes to oneDNN's legacy sgemm, which corrupted the
   * heap when a signal reached the thread running it (reproduced with node --cpu-prof and one intra-op thread).
   */
  matMul(a: Handle, b: Handle, adjX = false, adjY = false): Handle {
    if (adjX && adjY) throw new Error('matMul: transposing both operands is not used');
    const attrs = adjY ? this.k.attrs.matMulNT : adjX ? this.k.attrs.matMulTN : this.k.attrs.matMulNN;
    return this.run('BatchMatMulV2', attrs, [a, b]);
  }

  reshape(x: Handle, shape: number[]): Handle {
    return this.run('Reshape', this.k.attrs.reshape, [x, this.k.constant('int', shape)]);
  }
  transpose(x: Handle, perm: number[]): Handle {
    return this.run('Transpose', this.k.attrs.transpose, [x, this.k.constant('int', perm)]);
  }
  /** Sum over `axes`, keeping them as size 1 when `keep`. */
  sum(x: Handle, axes: number[], keep: boolean): Handle {
    return this.run('Sum', keep ? this.k.attrs.reduceKeep : this.k.attrs.reduce, [x, this.k.constant('int', axes)]);
  }
  meanLast(x: Handle): Handle {
    return this.run('Mean', this.k.attrs.reduceKeep, [x, this.k.constant('int', [x.shape.length - 1])]);
  }
  concat(parts: Handle[], axis: number): Handle {
    const attrs = this.k.counted('ConcatV2', { N: parts.length }, 'Tidx');
    return this.run('ConcatV2', attrs, [...parts, this.k.constant('int', [axis], true)]);
  }
  split(x: Handle, axis: number, n: number): Handle[] {
    return this.runN('Split', this.k.counted('Split', { num_split: n }), [this.k.constant('int', [axis], true), x], n);
  }
  pack(parts: Handle[], axis: number): Handle {
    return this.run('Pack', this.k.counted('Pack', { N: parts.length, axis }), parts);
  }
  unpack(x: Handle, n: number, axis: number): Handle[] {
    return this.runN('Unpack', this.k.counted('Unpack', { num: n, axis }), [x], n);
  }

  /**
   * Inverted dropout's mask for `shape`: 0 where dropped, 1/(1 − rate) elsewhere, reproducible from `seed` (the
   * mask {@link dropout} multiplies by). The random numbers come from TensorFlow's Philox generator, and it is most
   * of a mask's cost: `StatelessRandomUniformFullInt` gives 32 random bits per call, which serve two positions as two
   * 16-bit draws (dropped when below rate·2^16), half the generator's work of a float per position (measured: 2.9 →
   * 1.5 ms for 512k positions). The drop probability is the rate to 2^-17, as a float draw gives it to 2^-24.
   * An odd count, and a GPU, take one float draw per position.
   */
  dropoutMask(shape: number[], rate: number, seed: number): Handle {
    // Two int32 words of the seed (TF's seed is a pair); seeds here are non-negative integers below 2^53.
    const seedPair: Handle = {
      id: this.b.createTensor([2], this.b.TF_INT32, seedWords(seed)),
      shape: [2],
      dtype: this.b.TF_INT32,
    };
    this.live.add(seedPair);
    const count = shape.reduce((a, b) => a * b, 1);
    let keep: Handle;
    if (this.k.halfDraws && count % 2 === 0) {
      const bits = this.run('StatelessRandomUniformFullInt', this.k.attrs.fullInt, [
        this.k.constant('int', [count / 2]),
        seedPair,
      ]);
      const halves = this.run('Bitcast', this.k.attrs.toUint16, [bits]); // [count/2, 2]
      this.free(bits);
      const above = this.run('GreaterEqual', this.k.attrs.uint16, [halves, this.k.threshold16(rate)]);
      this.free(halves);
      // In `shape`: SelectV2 over the [n, 2] condition was ~20x slower than over the same values (measured).
      keep = this.run('Reshape', this.k.attrs.reshapeBool, [above, this.k.constant('int', shape)]);
      this.free(above);
    } else {
      const uniform = this.run('StatelessRandomUniform', this.k.attrs.uniform, [
        this.k.constant('int', shape),
        seedPair,
      ]);
      keep = this.run('GreaterEqual', this.k.attrs.float, [uniform, this.scalar(rate)]);
      this.free(uniform);
    }
    this.free(seedPair);
    const mask = this.run('SelectV2', this.k.attrs.float, [keep, this.scalar(1 / (1 - rate)), this.scalar(0)]);
    this.free(keep);
    return mask;
  }
}

/**
 * Whether the ops about to run are recorded for a gradient: outside `tf.grad`/`variableGrads` a fused op keeps
 * nothing for a backward pass that will not come. (`isTapeOn` is the engine's own test; assume a tape without it.)
 */
function recording(): boolean {
  const engine = tf.engine() as unknown as { isTapeOn?: () => boolean };
  return typeof engine.isTapeOn === 'function' ? engine.isTapeOn() : true;
}

// ---------------------------------------------------------------------------------------------------------------
// Dropout

/**
 * Inverted dropout, `x ⊙ mask / (1 − rate)`, reproducible from `seed`. On native TensorFlow the mask comes from the
 * Philox generator of `StatelessRandomUniform` in three kernels; tfjs's own `tf.dropout` draws every random number
 * in JavaScript (~7 ns each: ~120 ms a step for the `small` shape) and then spends three more kernels on it. The
 * masks differ between the two generators, so the same seed gives the same run on one backend, not across backends.
 * The gradient is tfjs's own for the final multiply (dy ⊙ mask): the mask is a constant to it.
 */
export function dropout<T extends tf.Tensor>(x: T, rate: number, seed: number): T {
  if (rate === 0) return x;
  const nb = native();
  if (!nb) return tf.dropout(x, rate, undefined, seed) as T;
  return tf.tidy(
    () =>
      tf.mul(
        x,
        Frame.run(nb, (f) => f.adopt(f.dropoutMask(x.shape, rate, seed)))
      ) as T
  );
}

// ---------------------------------------------------------------------------------------------------------------
// RMS norm

/**
 * T5's layer norm, `x · rsqrt(mean(x²) + eps) · weight` over the last axis, with a hand-written gradient:
 * with g = dy·w and x̂ = x·r, dx = r·(g − x̂·mean(g·x̂)) and dw = Σ dy·x̂ (8 kernels; autodiff records ~20).
 * The forward pass is t5.ts's op for op. [.., D], [D] → [.., D]
 */
export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const op = withGradient(([input, w], save) => {
    const r = tf.rsqrt(tf.add(tf.mean(tf.square(input), -1, true), eps)); // [.., 1]
    const normed = tf.mul(input, r); // [.., D]
    save([normed, r, w]);
    return {
      value: tf.mul(normed, w),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xHat, rs, wt] = saved;
        const width = wt.shape[0];
        const g = tf.mul(dy, wt);
        const dw = tf.sum(tf.reshape(tf.mul(dy, xHat), [-1, width]), 0);
        const dx = tf.mul(tf.sub(g, tf.mul(xHat, tf.mean(tf.mul(g, xHat), -1, true))), rs);
        return [dx, dw];
      },
    };
  });
  return op(x, weight);
}

// ---------------------------------------------------------------------------------------------------------------
// Gated GELU

/** GELU's tanh approximation written as a sigmoid: 0.5·(1 + tanh(u)) = sigmoid(2u), u = √(2/π)·(a + 0.044715·a³). */
const GELU_C0 = 2 * Math.sqrt(2 / Math.PI);
const GELU_C1 = GELU_C0 * 0.044715;

/**
 * t5-v1_1's gated feed-forward activation, `gelu_new(a) ⊙ b` (HF's tanh-approximate GELU), with a hand-written
 * gradient: da = dy·b·(s + s(1−s)·a·(C0 + 3·C1·a²)), db = dy·gelu(a), where s = sigmoid(a·(C0 + C1·a²)).
 * Forward 7 kernels and backward 9 (native: s(1−s)·q is TensorFlow's one-kernel `SigmoidGrad`), where the
 * op-by-op formula and its autodiff take about 30. Equal to HF's formula to float32 rounding. [.., F], [.., F] → [.., F]
 */
export function gatedGelu(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const op = withGradient(([x, gate], save) => {
    const s = tf.sigmoid(tf.mul(x, tf.add(tf.mul(tf.square(x), GELU_C1), GELU_C0)));
    const gelu = tf.mul(x, s);
    save([x, gate, s, gelu]);
    return {
      value: tf.mul(gelu, gate),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, gs, ss, gl] = saved;
        const dGate = tf.mul(dy, gl);
        const slope = tf.mul(xs, tf.add(tf.mul(tf.square(xs), 3 * GELU_C1), GELU_C0)); // d(2u)/da · a
        const nb = native();
        const sigmoidPart = nb
          ? nb.executeSingleOutput('SigmoidGrad', [typeAttr(nb, 'T', 'float32')], [ss, slope])
          : tf.mul(slope, tf.mul(ss, tf.sub(1, ss)));
        const dx = tf.mul(tf.mul(dy, gs), tf.add(ss, sigmoidPart));
        return [dx, dGate];
      },
    };
  });
  return op(a, b);
}

// ---------------------------------------------------------------------------------------------------------------
// Fused sublayers

/** Where a sublayer's dropout masks come from: the rate and a fresh seed per mask (undefined: no dropout). */
export interface SublayerDropout {
  rate: number;
  nextSeed(): number;
}

/** One attention sublayer's weights, compute layout ([in, out]). */
export interface AttentionWeights {
  norm: tf.Tensor;
  q: tf.Tensor;
  k: tf.Tensor;
  v: tf.Tensor;
  o: tf.Tensor;
}

/** One feed-forward sublayer's weights: `wi` holds wi_0 and wi_1 for gated-GELU, wi alone for ReLU. */
export interface FeedForwardWeights {
  norm: tf.Tensor;
  wi: tf.Tensor[];
  wo: tf.Tensor;
}

/** RMS norm of rows [N, D]: the forward of {@link rmsNorm} on raw handles; keeps r and x̂ for the backward. */
function normRows(f: Ops, x: Handle, w: Handle, eps: number): { r: Handle; xHat: Handle; normed: Handle } {
  const squares = f.unary('Square', x);
  const meanSquare = f.meanLast(squares);
  f.free(squares);
  const shifted = f.add(meanSquare, f.scalar(eps));
  f.free(meanSquare);
  const r = f.unary('Rsqrt', shifted);
  f.free(shifted);
  const xHat = f.mul(x, r);
  return { r, xHat, normed: f.mul(xHat, w) };
}

/** The backward of {@link normRows} (as {@link rmsNorm}'s): dw = Σ dy·x̂, dx = r·(g − x̂·mean(g·x̂)) with g = dy·w. */
function normRowsGrad(f: Ops, dy: Handle, xHat: Handle, r: Handle, w: Handle): { dx: Handle; dw: Handle } {
  const dyx = f.mul(dy, xHat);
  const dw = f.sum(dyx, [0], false);
  f.free(dyx);
  const g = f.mul(dy, w);
  const gx = f.mul(g, xHat);
  const m = f.meanLast(gx);
  f.free(gx);
  const xm = f.mul(xHat, m);
  f.free(m);
  const centred = f.sub(g, xm);
  f.free(g, xm);
  const dx = f.mul(centred, r);
  f.free(centred);
  return { dx, dw };
}

/** [N, n·H·K] projections → n tensors [B, H, L, K] (N = B·L): one reshape, one transpose and one unpack. */
function splitHeads(f: Ops, x: Handle, batch: number, length: number, n: number, heads: number): Handle[] {
  const headDim = x.shape[1] / (n * heads);
  const grouped = f.reshape(x, [batch, length, n, heads, headDim]);
  const moved = f.transpose(grouped, [2, 0, 3, 1, 4]); // [n, B, H, L, K]
  f.free(grouped);
  const parts = f.unpack(moved, n, 0);
  f.free(moved);
  return parts;
}

/** The inverse of {@link splitHeads} for gradients: n tensors [B, H, L, K] → [B·L, n·H·K]. */
function mergeHeads(f: Ops, parts: Handle[]): Handle {
  const [batch, heads, length, headDim] = parts[0].shape;
  const stacked = parts.length === 1 ? parts[0] : f.pack(parts, 0); // [n, B, H, L, K]
  const moved = parts.length === 1 ? f.transpose(stacked, [0, 2, 1, 3]) : f.transpose(stacked, [1, 3, 0, 2, 4]); // [B, L, n, H, K]
  if (stacked !== parts[0]) f.free(stacked);
  const flat = f.reshape(moved, [batch * length, parts.length * heads * headDim]);
  f.free(moved);
  return flat;
}

/**
 * Runs a sublayer body and hands back the handles it returns as tfjs tensors: as one graph session
 * ({@link GraphFrame}) when {@link graphSublayers} is on and ops run on the CPU, else op by op in a {@link Frame}.
 */
function runBody(nb: NativeBackend, body: (f: Ops) => Handle[]): tf.Tensor[] {
  const kernels = kernelsOf(nb);
  if (graphSublayers && !kernels.onGpu) return GraphFrame.run(nb, kernels.halfDraws, body);
  return Frame.run(nb, (f) => body(f).map((h) => f.adopt(h)));
}

/**
 * A fused sublayer as one differentiable op: `forward` alone when no gradient is being recorded; otherwise one tape
 * node that keeps what `forward` saved (`keep`) and runs `backward` on it, borrowed into the backward's own frame,
 * with dy. `backward` returns the gradients of `inputs`, in order. Each handle returned is returned once.
 */
function fusedOp(
  nb: NativeBackend,
  inputs: tf.Tensor[],
  forward: (f: Ops, keep: boolean) => { out: Handle; saved: Handle[] },
  backward: (f: Ops, saved: Handle[], dy: tf.Tensor) => Handle[]
): tf.Tensor {
  if (!recording()) return runBody(nb, (f) => [forward(f, false).out])[0];
  const op = withGradient(((_: tf.Tensor[], save: tf.GradSaveFunc) => {
    const [out, ...saved] = runBody(nb, (f) => {
      const result = forward(f, true);
      return [result.out, ...result.saved];
    });
    save(saved);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor, kept: tf.Tensor[]) => runBody(nb, (f) => backward(f, f.borrowAll(kept), dy)),
    };
  }) as Parameters<typeof withGradient>[0]);
  return op(...inputs);
}

/**
 * A whole pre-norm attention sublayer as one differentiable op on native TensorFlow, `x + drop(attention(norm(x)))`
 * (t5.ts's formulas: position bias and masks already in `bias`, no 1/√K, dropout on the attention weights and on
 * the output), with a hand-written backward pass. Against the same ops through tfjs's autodiff it runs about half
 * the kernels (the three projections of self-attention are one matMul against the weights side by side, heads split
 * and merge in one reshape, transpose and (un)pack, the softmax gradient is four kernels) and records one tape node
 * instead of ~40.
 *
 * x [B, T, D]; `memory` [B, S, D] for cross-attention (keys and values from it, differentiable), absent for
 * self-attention; `bias` broadcasts onto the scores [B, H, T, S]: differentiable when it has their full shape (it
 * carries the learned position bias), a constant (the source padding mask) otherwise. → [B, T, D], or undefined
 * when the native backend is not in use (the caller runs the op-by-op formulas).
 */
export function attentionSublayer(
  x: tf.Tensor,
  w: AttentionWeights,
  memory: tf.Tensor | undefined,
  bias: tf.Tensor,
  heads: number,
  eps: number,
  drop: SublayerDropout | undefined
): tf.Tensor | undefined {
  const nb = noFusedSublayers ? undefined : native();
  if (!nb) return undefined;
  const [batch, length, width] = x.shape as [number, number, number];
  const sourceLength = memory ? (memory.shape[1] as number) : length;
  const scoreShape = [batch, heads, length, sourceLength];
  const biasGrad = bias.shape.length === 4 && bias.shape.every((d, i) => d === scoreShape[i]);
  const seeds = drop ? [drop.nextSeed(), drop.nextSeed()] : undefined;
  const cross = memory !== undefined;
  const inputs = [x, w.norm, w.q, w.k, w.v, w.o, ...(memory ? [memory] : []), ...(biasGrad ? [bias] : [])];

  // Forward on raw handles; `keep` lists what the backward needs (adopted as tfjs tensors when a tape records).
  const forward = (f: Ops, keep: boolean) => {
    const [X, G, Q, K, V, O] = f.borrowAll(inputs.slice(0, 6));
    const rows = f.reshape(X, [batch * length, width]);
    const { r, xHat, normed } = normRows(f, rows, G, eps);
    let q: Handle, k: Handle, v: Handle;
    let projection: Handle; // self: [D, 3HK] q|k|v; cross: [D, 2HK] k|v
    let memoryRows: Handle | undefined;
    if (!cross) {
      projection = f.concat([Q, K, V], 1);
      const qkv = f.matMul(normed, projection);
      [q, k, v] = splitHeads(f, qkv, batch, length, 3, heads);
      f.free(qkv);
    } else {
      const qRows = f.matMul(normed, Q);
      [q] = splitHeads(f, qRows, batch, length, 1, heads);
      f.free(qRows);
      memoryRows = f.reshape(f.borrow(memory), [batch * sourceLength, width]);
      projection = f.concat([K, V], 1);
      const kv = f.matMul(memoryRows, projection);
      [k, v] = splitHeads(f, kv, batch, sourceLength, 2, heads);
      f.free(kv);
    }
    const raw = f.matMul(q, k, false, true); // [B, H, T, S]
    const scores = f.add(raw, f.borrow(bias));
    f.free(raw);
    const probs = f.unary('Softmax', scores);
    f.free(scores);
    const weightMask = seeds && f.dropoutMask(scoreShape, drop!.rate, seeds[0]);
    const dropped = weightMask ? f.mul(probs, weightMask) : probs;
    const context = f.matMul(dropped, v); // [B, H, T, K]
    const contextRows = mergeHeads(f, [context]); // [B·T, H·K]
    f.free(context);
    const projected = f.matMul(contextRows, O);
    const outMask = seeds && f.dropoutMask([batch * length, width], drop!.rate, seeds[1]);
    const update = outMask ? f.mul(projected, outMask) : projected;
    if (outMask) f.free(projected);
    const sum = f.add(rows, update);
    f.free(update);
    const out = f.reshape(sum, [batch, length, width]);
    if (!keep) return { out, saved: [] };
    // Without dropout `dropped` is `probs`: each handle is returned once.
    const saved = [r, xHat, normed, projection, q, k, v, probs, contextRows];
    if (memoryRows) saved.push(memoryRows);
    if (weightMask) saved.push(weightMask, dropped, outMask!);
    return { out, saved };
  };

  return fusedOp(nb, inputs, forward, (f, h, dy) => {
    const [r, xHat, normed, projection, q, k, v, probs, contextRows] = h;
    const memoryRows = cross ? h[9] : undefined;
    const [weightMask, dropped, outMask] = seeds ? h.slice(cross ? 10 : 9) : [undefined, probs, undefined];
    const [G, Q, O] = f.borrowAll([w.norm, w.q, w.o]);
    const dRows = f.reshape(f.borrow(dy), [batch * length, width]);
    const dUpdate = outMask ? f.mul(dRows, outMask) : dRows;
    const dO = f.matMul(contextRows, dUpdate, true); // [H·K, D]
    const dContextRows = f.matMul(dUpdate, O, false, true); // [B·T, H·K]
    if (outMask) f.free(dUpdate);
    const grouped = f.reshape(dContextRows, [batch, length, heads, q.shape[3]]);
    f.free(dContextRows);
    const dContext = f.transpose(grouped, [0, 2, 1, 3]); // [B, H, T, K]
    f.free(grouped);
    const dDropped = f.matMul(dContext, v, false, true); // [B, H, T, S]
    const dv = f.matMul(dropped, dContext, true); // [B, H, S, K]
    f.free(dContext);
    const dProbs = weightMask ? f.mul(dDropped, weightMask) : dDropped;
    if (weightMask) f.free(dDropped);
    // Softmax: ds = p ⊙ (dp − Σ dp ⊙ p).
    const dpp = f.mul(dProbs, probs);
    const rowSum = f.sum(dpp, [3], true);
    f.free(dpp);
    const centred = f.sub(dProbs, rowSum);
    f.free(dProbs, rowSum);
    const dScores = f.mul(centred, probs);
    f.free(centred);
    const dq = f.matMul(dScores, k); // [B, H, T, K]
    const dk = f.matMul(dScores, q, true); // [B, H, S, K]
    let dNormed: Handle, dMemory: Handle | undefined;
    let dQ: Handle, dK: Handle, dV: Handle;
    if (!cross) {
      const dQkv = mergeHeads(f, [dq, dk, dv]); // [B·T, 3HK]
      f.free(dq, dk, dv);
      const dProjection = f.matMul(normed, dQkv, true);
      [dQ, dK, dV] = f.split(dProjection, 1, 3);
      f.free(dProjection);
      dNormed = f.matMul(dQkv, projection, false, true);
      f.free(dQkv);
    } else {
      const dqRows = mergeHeads(f, [dq]); // [B·T, HK]
      f.free(dq);
      dQ = f.matMul(normed, dqRows, true);
      dNormed = f.matMul(dqRows, Q, false, true);
      f.free(dqRows);
      const dKv = mergeHeads(f, [dk, dv]); // [B·S, 2HK]
      f.free(dk, dv);
      const dProjection = f.matMul(memoryRows!, dKv, true);
      [dK, dV] = f.split(dProjection, 1, 2);
      f.free(dProjection);
      const dMemoryRows = f.matMul(dKv, projection, false, true);
      f.free(dKv);
      dMemory = f.reshape(dMemoryRows, [batch, sourceLength, width]);
    }
    const { dx, dw } = normRowsGrad(f, dNormed, xHat, r, G);
    f.free(dNormed);
    const dSum = f.add(dRows, dx);
    f.free(dx);
    return [
      f.reshape(dSum, [batch, length, width]),
      dw,
      dQ,
      dK,
      dV,
      dO,
      ...(dMemory ? [dMemory] : []),
      ...(biasGrad ? [dScores] : []),
    ];
  });
}

/**
 * A whole pre-norm feed-forward sublayer as one differentiable op on native TensorFlow,
 * `x + drop(wo · drop(act(norm(x))))` with act gated-GELU (`gelu_new(x·wi_0) ⊙ x·wi_1`, {@link gatedGelu}'s
 * formula) or ReLU, and a hand-written backward pass. x [B, T, D] → [B, T, D], or undefined when the native backend
 * is not in use (the caller runs the op-by-op formulas).
 */
export function feedForwardSublayer(
  x: tf.Tensor,
  w: FeedForwardWeights,
  eps: number,
  drop: SublayerDropout | undefined
): tf.Tensor | undefined {
  const nb = noFusedSublayers ? undefined : native();
  if (!nb) return undefined;
  const [batch, length, width] = x.shape as [number, number, number];
  const gated = w.wi.length === 2;
  const seeds = drop ? [drop.nextSeed(), drop.nextSeed()] : undefined;
  const inputs = [x, w.norm, ...w.wi, w.wo];

  const forward = (f: Ops, keep: boolean) => {
    const [X, G, ...rest] = f.borrowAll(inputs);
    const WO = rest[rest.length - 1];
    const rows = f.reshape(X, [batch * length, width]);
    const { r, xHat, normed } = normRows(f, rows, G, eps);
    const a = f.matMul(normed, rest[0]); // [N, F]
    let hidden: Handle;
    let kept: Handle[];
    if (gated) {
      const b = f.matMul(normed, rest[1]);
      // gelu_new(a) = a·sigmoid(a·(C0 + C1·a²)), as gatedGelu computes it.
      const squares = f.unary('Square', a);
      const scaled = f.mul(squares, f.scalar(GELU_C1));
      f.free(squares);
      const inner = f.add(scaled, f.scalar(GELU_C0));
      f.free(scaled);
      const z = f.mul(a, inner);
      f.free(inner);
      const s = f.unary('Sigmoid', z);
      f.free(z);
      const gelu = f.mul(a, s);
      hidden = f.mul(gelu, b);
      kept = [a, b, s, gelu];
    } else {
      hidden = f.unary('Relu', a);
      f.free(a);
      // ReluGrad needs only where the activation is positive, and where the mask dropped it the gradient is 0
      // anyway: the dropped activation serves as its features.
      kept = [];
    }
    const hiddenMask = seeds && f.dropoutMask(hidden.shape, drop!.rate, seeds[0]);
    const dropped = hiddenMask ? f.mul(hidden, hiddenMask) : hidden;
    if (hiddenMask) f.free(hidden);
    const projected = f.matMul(dropped, WO);
    const outMask = seeds && f.dropoutMask([batch * length, width], drop!.rate, seeds[1]);
    const update = outMask ? f.mul(projected, outMask) : projected;
    if (outMask) f.free(projected);
    const sum = f.add(rows, update);
    f.free(update);
    const out = f.reshape(sum, [batch, length, width]);
    if (!keep) return { out, saved: [] };
    return { out, saved: [r, xHat, normed, dropped, ...kept, ...(hiddenMask ? [hiddenMask, outMask!] : [])] };
  };

  return fusedOp(nb, inputs, forward, (f, h, dy) => {
    const [r, xHat, normed, dropped] = h;
    const acts = gated ? h.slice(4, 8) : [dropped];
    const [hiddenMask, outMask] = seeds ? h.slice(gated ? 8 : 4) : [undefined, undefined];
    const [G, ...rest] = f.borrowAll([w.norm, ...w.wi, w.wo]);
    const WO = rest[rest.length - 1];
    const dRows = f.reshape(f.borrow(dy), [batch * length, width]);
    const dUpdate = outMask ? f.mul(dRows, outMask) : dRows;
    const dWo = f.matMul(dropped, dUpdate, true);
    const dDropped = f.matMul(dUpdate, WO, false, true);
    if (outMask) f.free(dUpdate);
    const dHidden = hiddenMask ? f.mul(dDropped, hiddenMask) : dDropped;
    if (hiddenMask) f.free(dDropped);
    let dNormed: Handle;
    let dWi: Handle[];
    if (gated) {
      const [a, b, s, gelu] = acts;
      const db = f.mul(dHidden, gelu);
      // d gelu/da = s + s(1−s)·a·(C0 + 3·C1·a²) (gatedGelu's gradient).
      const squares = f.unary('Square', a);
      const scaled = f.mul(squares, f.scalar(3 * GELU_C1));
      f.free(squares);
      const inner = f.add(scaled, f.scalar(GELU_C0));
      f.free(scaled);
      const slope = f.mul(a, inner);
      f.free(inner);
      const sigmoidPart = f.grad('SigmoidGrad', s, slope);
      f.free(slope);
      const derivative = f.add(s, sigmoidPart);
      f.free(sigmoidPart);
      const dGelu = f.mul(dHidden, b);
      const da = f.mul(dGelu, derivative);
      f.free(dGelu, derivative);
      dWi = [f.matMul(normed, da, true), f.matMul(normed, db, true)];
      const fromA = f.matMul(da, rest[0], false, true);
      const fromB = f.matMul(db, rest[1], false, true);
      f.free(da, db);
      dNormed = f.add(fromA, fromB);
      f.free(fromA, fromB);
    } else {
      const da = f.grad('ReluGrad', dHidden, acts[0]);
      dWi = [f.matMul(normed, da, true)];
      dNormed = f.matMul(da, rest[0], false, true);
      f.free(da);
    }
    f.free(dHidden);
    const { dx, dw } = normRowsGrad(f, dNormed, xHat, r, G);
    f.free(dNormed);
    const dSum = f.add(dRows, dx);
    f.free(dx);
    return [f.reshape(dSum, [batch, length, width]), dw, ...dWi, dWo];
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Loss

/**
 * Mean token cross-entropy of `logits` [N, V] against `labels` [N] (int32) over the rows whose `weights` [N] are
 * non-zero, weighted by them: tfjs's `softmaxCrossEntropy(oneHot(labels), logits, weights, 0, SUM_BY_NONZERO_WEIGHTS)`.
 * Native: TensorFlow's `SparseSoftmaxCrossEntropyWithLogits` computes the loss and its gradient in one kernel and
 * no one-hot [N, V] matrix is built. → scalar
 */
export function maskedCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor, weights: tf.Tensor): tf.Scalar {
  const nb = native();
  const [, vocab] = logits.shape;
  if (!nb) {
    return tf.losses.softmaxCrossEntropy(
      tf.oneHot(labels, vocab),
      logits,
      weights,
      0,
      tf.Reduction.SUM_BY_NONZERO_WEIGHTS
    ) as tf.Scalar;
  }
  const op = withGradient<tf.Scalar>(([input], save) => {
    const [rowLoss, backprop] = nb.executeMultipleOutputs(
      'SparseSoftmaxCrossEntropyWithLogits',
      [typeAttr(nb, 'T', 'float32'), typeAttr(nb, 'Tlabels', 'int32')],
      [input, labels],
      2
    ); // [N], [N, V]
    const count = tf.sum(tf.cast(tf.notEqual(weights, 0), 'float32'));
    const rowScale = tf.div(weights, count); // [N]
    save([backprop, rowScale]);
    return {
      value: tf.sum(tf.mul(rowLoss, rowScale)) as tf.Scalar,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [bp, scale] = saved;
        return tf.mul(bp, tf.expandDims(tf.mul(scale, dy), 1));
      },
    };
  });
  return op(logits) as tf.Scalar;
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient clipping

/**
 * The global L2 norm of `grads` as a scalar tensor (nothing is read back). Native: one `L2Loss` (Σx²/2) kernel per
 * gradient instead of a square and a sum.
 */
export function globalNorm(grads: readonly tf.Tensor[]): tf.Scalar {
  return tf.tidy(() => {
    const nb = native();
    if (!nb) return tf.sqrt(tf.addN(grads.map((g) => tf.sum(tf.square(g))))) as tf.Scalar;
    const halves = grads.map((g) => nb.executeSingleOutput('L2Loss', [typeAttr(nb, 'T', 'float32')], [g]));
    return tf.sqrt(tf.mul(tf.addN(halves), 2)) as tf.Scalar;
  });
}

/**
 * Gradients scaled so their global L2 norm is at most `maxNorm` (torch `clip_grad_norm_`: coefficient
 * maxNorm / (norm + 1e-6), capped at 1). New tensors; the caller disposes them and the inputs.
 */
export function clipByGlobalNorm(grads: readonly tf.Tensor[], maxNorm: number): tf.Tensor[] {
  const coef = clipScale(grads, maxNorm);
  // Under the limit the coefficient is exactly 1, and multiplying by it would only copy every gradient.
  if (coef === 1) return grads.map((g) => g.clone());
  return tf.tidy(() => {
    const c = tf.scalar(coef);
    return grads.map((g) => tf.mul(g, c));
  });
}

/**
 * The coefficient {@link clipByGlobalNorm} scales by, computed on the device in float32 and read back (one number:
 * nothing waits where ops run synchronously). Training passes it to the optimiser instead of scaling: on native
 * TensorFlow the fused AdamW applies it in its single pass, which saves a pass over every gradient.
 */
export function clipScale(grads: readonly tf.Tensor[], maxNorm: number): number {
  const coef = tf.tidy(() => tf.minimum(tf.div(maxNorm, tf.add(globalNorm(grads), 1e-6)), 1));
  try {
    return coef.dataSync()[0];
  } finally {
    coef.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Adam

/** One AdamW update's hyperparameters. `step` counts updates from 1 (bias correction depends on it). */
export interface AdamUpdate {
  lr: number;
  step: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay of the i-th variable (0 for none; HF exempts layer norms). */
  weightDecay(i: number): number;
}

/**
 * Adam's moments for a fixed list of tfjs variables, and the AdamW update that uses them, exactly as
 * torch.optim.AdamW computes it: decoupled weight decay shrinks the weight first, then the bias-corrected step
 * with eps added to the corrected √v. An optimiser class owns one of these and keeps the step count, the
 * hyperparameters and the checkpoint format.
 *
 * On native TensorFlow the moments live in TF resource variables and each variable's update is one
 * `ResourceApplyAdam` kernel (measured on the `small` shape: ~65 ms a step against ~220 ms for the same update op by
 * op, and no temporaries the size of the model), or, with Stepwise's kernels loaded, one `StepwiseApplyAdamW`,
 * which also applies the clip coefficient and the decoupled decay: its single pass replaces a Mul over every
 * gradient and an assign per decayed weight (measured, `small` capped at AVX2, alternated runs: the clip and update
 * took 42-44 ms a step against 62-64, and whole steps 727-734 ms against 750-771). Its moments equal
 * `ResourceApplyAdam`'s bit for bit; the weights differ by float rounding of the step size only.
 *
 * The variable has a resource twin that shares its buffer. TF updates that buffer in place only while nothing else
 * holds it, so the tfjs variable lets go of its handle for the update
 * and then takes a read of the result (a copy of every parameter a step saved). A variable assigned from outside
 * between updates (a checkpoint loaded, say) is noticed and its twin refreshed first.
 * Elsewhere (wasm, cpu) the moments are tfjs variables updated by a handful of ops with the bias correction folded
 * into the step size.
 */
export class FusedAdam {
  private readonly impl: NativeAdam | PortableAdam;

  constructor(variables: readonly tf.Variable[]) {
    const nb = native();
    this.impl = nb ? new NativeAdam(nb, variables) : new PortableAdam(variables);
  }

  /**
   * One update; `grads[i]` belongs to the i-th variable, scaled by `gradScale` first (a clip coefficient: the
   * update is the one the scaled gradients would give). The gradients are neither kept nor disposed.
   */
  update(grads: readonly tf.Tensor[], h: AdamUpdate, gradScale = 1): void {
    if (grads.length !== this.impl.size) {
      throw new Error(`FusedAdam: ${grads.length} gradients for ${this.impl.size} variables`);
    }
    if (gradScale <= 0 || gradScale > 1) throw new Error(`FusedAdam: gradScale ${gradScale} is not in (0, 1]`);
    const correction2 = Math.sqrt(1 - h.beta2 ** h.step);
    this.impl.apply(grads, {
      gradScale,
      lr: h.lr,
      beta1: h.beta1,
      beta2: h.beta2,
      beta1Power: h.beta1 ** h.step,
      beta2Power: h.beta2 ** h.step,
      // torch divides √v by √(1−β2^t) and adds eps; multiplying through gives eps·√(1−β2^t) beside the raw √v.
      epsHat: h.eps * correction2,
      stepSize: (h.lr * correction2) / (1 - h.beta1 ** h.step),
      decayFactor: (i) => 1 - h.lr * h.weightDecay(i),
    });
  }

  /** Copies of the first and second moments, in variable order (for a checkpoint). The caller disposes them. */
  moments(): { m: tf.Tensor[]; v: tf.Tensor[] } {
    return this.impl.moments();
  }

  /**
   * Overwrites the moments (from a checkpoint); the tensors are copied and stay the caller's.
   * @throws Error when the count or a shape does not match the variables.
   */
  setMoments(m: readonly tf.Tensor[], v: readonly tf.Tensor[]): void {
    if (m.length !== this.impl.size || v.length !== this.impl.size) {
      throw new Error(`FusedAdam: ${m.length}/${v.length} moments for ${this.impl.size} variables`);
    }
    this.impl.variables.forEach((p, i) => {
      for (const t of [m[i], v[i]]) {
        if (t.shape.join() !== p.shape.join()) {
          throw new Error(`FusedAdam: moment ${i} has shape [${t.shape}]; expected [${p.shape}]`);
        }
      }
    });
    this.impl.setMoments(m, v);
  }

  dispose(): void {
    this.impl.dispose();
  }
}

interface UpdateScalars {
  /** The gradients' clip coefficient, a float32 value (1: unscaled). */
  gradScale: number;
  lr: number;
  beta1: number;
  beta2: number;
  beta1Power: number;
  beta2Power: number;
  epsHat: number;
  stepSize: number;
  decayFactor(i: number): number;
}

/** Moments as tfjs variables, updated op by op (wasm, cpu). */
class PortableAdam {
  private readonly m: tf.Variable[];
  private readonly v: tf.Variable[];
  constructor(readonly variables: readonly tf.Variable[]) {
    const zeros = (p: tf.Variable) => tf.tidy(() => tf.variable(tf.zerosLike(p), false));
    this.m = variables.map(zeros);
    this.v = variables.map(zeros);
  }
  get size(): number {
    return this.variables.length;
  }
  apply(grads: readonly tf.Tensor[], s: UpdateScalars): void {
    tf.tidy(() => {
      this.variables.forEach((p, i) => {
        const g = s.gradScale !== 1 ? tf.mul(grads[i], s.gradScale) : grads[i];
        const m = tf.add(tf.mul(this.m[i], s.beta1), tf.mul(g, 1 - s.beta1));
        const v = tf.add(tf.mul(this.v[i], s.beta2), tf.mul(tf.square(g), 1 - s.beta2));
        this.m[i].assign(m);
        this.v[i].assign(v);
        const factor = s.decayFactor(i);
        const decayed = factor !== 1 ? tf.mul(p, factor) : p;
        p.assign(tf.sub(decayed, tf.div(tf.mul(m, s.stepSize), tf.add(tf.sqrt(v), s.epsHat))));
      });
    });
  }
  moments(): { m: tf.Tensor[]; v: tf.Tensor[] } {
    return { m: this.m.map((t) => t.clone()), v: this.v.map((t) => t.clone()) };
  }
  setMoments(m: readonly tf.Tensor[], v: readonly tf.Tensor[]): void {
    tf.tidy(() => {
      this.m.forEach((x, i) => x.assign(m[i].clone()));
      this.v.forEach((x, i) => x.assign(v[i].clone()));
    });
  }
  dispose(): void {
    tf.dispose([...this.m, ...this.v]);
  }
}

let resourceCounter = 0;

/**
 * Moments (and a twin of each parameter) as TensorFlow resource variables, updated by Stepwise's `StepwiseApplyAdamW`
 * where it is loaded, else by `ResourceApplyAdam`.
 */
class NativeAdam {
  private readonly paramHandles: tf.Tensor[];
  private readonly mHandles: tf.Tensor[];
  private readonly vHandles: tf.Tensor[];
  /** The tfjs data each parameter held after the last update: another value means it was assigned from outside. */
  private readonly synced: unknown[];
  private readonly floatAttr: OpAttr;

  constructor(
    private readonly nb: NativeBackend,
    readonly variables: readonly tf.Variable[]
  ) {
    this.floatAttr = typeAttr(nb, 'dtype', 'float32');
    this.paramHandles = variables.map((p) => this.newVariable(p.shape));
    this.mHandles = variables.map((p) => this.newVariable(p.shape));
    this.vHandles = variables.map((p) => this.newVariable(p.shape));
    tf.tidy(() => {
      variables.forEach((p, i) => {
        const zeros = tf.zerosLike(p);
        this.assignVariable(this.mHandles[i], zeros);
        this.assignVariable(this.vHandles[i], zeros);
      });
    });
    this.synced = variables.map(() => undefined);
  }

  get size(): number {
    return this.variables.length;
  }

  apply(grads: readonly tf.Tensor[], s: UpdateScalars): void {
    const nb = this.nb;
    // Stepwise's kernel (kernels/stepwise_ops.cc) scales, decays and updates in one pass.
    const fused = usesStepwiseKernels();
    const attrs = fused
      ? []
      : [typeAttr(nb, 'T', 'float32'), boolAttr(nb, 'use_locking', false), boolAttr(nb, 'use_nesterov', false)];
    tf.tidy(() => {
      const scalars = fused
        ? []
        : [s.beta1Power, s.beta2Power, s.lr, s.beta1, s.beta2, s.epsHat].map((x) => tf.scalar(x));
      // The fused kernel's hyperparameters, one tensor per decay factor (decayed weights, and norms with none).
      const hyper = new Map<number, tf.Tensor>();
      const hyperFor = (factor: number): tf.Tensor => {
        let t = hyper.get(factor);
        if (!t) {
          t = tf.tensor1d([s.gradScale, s.beta1, s.beta2, s.epsHat, s.stepSize, factor]);
          hyper.set(factor, t);
        }
        return t;
      };
      const scale = !fused && s.gradScale !== 1 ? tf.scalar(s.gradScale) : undefined;
      this.variables.forEach((p, i) => {
        const factor = s.decayFactor(i);
        if (!fused && factor !== 1) {
          // Decoupled decay (torch AdamW) shrinks the weight before the Adam step; no TF kernel has it (ours does).
          this.assignVariable(this.paramHandles[i], tf.mul(p, factor));
        } else if (this.synced[i] !== dataIdOf(p)) {
          this.assignVariable(this.paramHandles[i], p);
        }
        // TF updates the resource's buffer in place only when nothing else holds it, and copies it first otherwise
        // (208 MB a step for the `small` shape). The parameter's own handle is the other holder: it lets go of it
        // for the update and takes a read of the result, when the parameter alone owns its data in tfjs.
        const data = this.soleData(p);
        if (data) {
          nb.binding.deleteTensor(data.id);
          data.id = -1;
        }
        try {
          if (fused) {
            // g = grad·scale, then as below with var·decay in place of var: one pass over the four arrays.
            const inputs = [this.paramHandles[i], this.mHandles[i], this.vHandles[i], grads[i], hyperFor(factor)];
            nb.executeMultipleOutputs('StepwiseApplyAdamW', [], inputs, 0);
          } else {
            // lr_t = lr·√(1−β2^t)/(1−β1^t); m += (g−m)(1−β1); v += (g²−v)(1−β2); var −= lr_t·m/(√v + ε̂).
            const g = scale ? tf.mul(grads[i], scale) : grads[i];
            nb.executeMultipleOutputs(
              'ResourceApplyAdam',
              attrs,
              [this.paramHandles[i], this.mHandles[i], this.vHandles[i], ...scalars, g],
              0
            );
            if (g !== grads[i]) g.dispose();
          }
        } finally {
          if (data) {
            const [handle] = nb.getInputTensorIds([this.paramHandles[i]]);
            data.id = nb.binding.executeOp('ReadVariableOp', [this.floatAttr], [handle], 1)[0].id;
          } else {
            p.assign(this.readVariable(this.paramHandles[i]));
          }
        }
        this.synced[i] = dataIdOf(p);
      });
    });
  }

  moments(): { m: tf.Tensor[]; v: tf.Tensor[] } {
    // A read shares the variable's buffer; TF copies it before the next update writes, so the copy stays valid.
    return { m: this.mHandles.map((h) => this.readVariable(h)), v: this.vHandles.map((h) => this.readVariable(h)) };
  }

  setMoments(m: readonly tf.Tensor[], v: readonly tf.Tensor[]): void {
    this.variables.forEach((_, i) => {
      this.assignVariable(this.mHandles[i], m[i]);
      this.assignVariable(this.vHandles[i], v[i]);
    });
  }

  dispose(): void {
    const handles = [...this.paramHandles, ...this.mHandles, ...this.vHandles];
    for (const h of handles) {
      // A resource lives in TF's resource manager until destroyed, whatever happens to the handle tensor.
      this.nb.executeMultipleOutputs('DestroyResourceOp', [boolAttr(this.nb, 'ignore_lookup_error', true)], [h], 0);
    }
    tf.dispose(handles);
  }

  /**
   * tfjs-node's record of the parameter's data (its native handle `id`) when the parameter is its only holder in
   * tfjs (no clone shares it) and the data lives in the native library; undefined otherwise.
   */
  private soleData(p: tf.Variable): { id: number } | undefined {
    const map = (this.nb as unknown as { tensorMap?: { get(dataId: unknown): unknown } }).tensorMap;
    if (typeof map?.get !== 'function') return undefined;
    this.nb.getInputTensorIds([p]); // writes data still held in JS into the library
    const data = map.get(dataIdOf(p)) as { id?: unknown; refCount?: unknown } | undefined;
    return data && data.refCount === 1 && typeof data.id === 'number' && data.id >= 0
      ? (data as { id: number })
      : undefined;
  }

  private newVariable(shape: number[]): tf.Tensor {
    const nb = this.nb;
    return tf.tidy(() =>
      nb.executeSingleOutput(
        'VarHandleOp',
        [
          { name: 'container', type: nb.binding.TF_ATTR_STRING, value: '' },
          // Unique per process, like TF's own anonymous variables: a shared name would alias another variable.
          {
            name: 'shared_name',
            type: nb.binding.TF_ATTR_STRING,
            value: `stepwise-adam-${process.pid}-${resourceCounter++}`,
          },
          this.floatAttr,
          { name: 'shape', type: nb.binding.TF_ATTR_SHAPE, value: shape },
        ],
        []
      )
    );
  }

  private assignVariable(handle: tf.Tensor, value: tf.Tensor): void {
    this.nb.executeMultipleOutputs('AssignVariableOp', [this.floatAttr], [handle, value], 0);
  }

  private readVariable(handle: tf.Tensor): tf.Tensor {
    return this.nb.executeSingleOutput('ReadVariableOp', [this.floatAttr], [handle]);
  }
}

function dataIdOf(t: tf.Tensor): unknown {
  return (t as unknown as { dataId: unknown }).dataId;
}
