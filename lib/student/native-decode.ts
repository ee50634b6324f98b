/**
 * Incremental decoding on native TensorFlow, one decoder step as one TensorFlow graph run. A step multiplies each
 * weight matrix by a handful of rows, so it is bound by per-op dispatch, not arithmetic: through tfjs every op costs
 * ~25 µs (engine bookkeeping; `tf.matMul` alone is three reshapes around a BatchMatMul), an eager op called straight
 * through tfjs-node's binding ~14 µs, and a step of the `small` shape is ~400 ops. As a graph (tf-graph.ts) the same
 * ops cost ~1 µs each, plus ~3 µs per fed tensor. The step graph takes the token of every row, the model's weights
 * (fed as they are, never copied), the key/value cache and this step's row of the position bias, and gives the new
 * cache entries and either each row's best token (greedy) or the logits (beam search).
 *
 * The graph computes t5.ts's formulas op for op (RMS norm, gated GELU, attention without 1/√K), so it gives the
 * tokens of `T5Model.decodeStep`. Self-attention keys are kept as [B, H, t, K] and multiplied with `adj_y`, so a new
 * key needs no transpose. What runs once per batch (cross-attention keys and values, the position-bias table, row
 * selection) runs as eager ops. Intermediate handles are freed as soon as they are used, the cache's by
 * {@link NativeDecoder.dispose}; only the logits of {@link NativeDecoder.logits} become a tfjs tensor.
 */
import { scalesOutputs, type T5Config } from './config';
import type { EncoderOutput, T5Model } from './t5';
import { relativePositionBuckets } from './t5';
import { tf } from './tf';
import { GraphBuilder, GraphSession, type SessionBinding } from './tf-graph';
import { nativeBackend, type Binding, type NativeBackend, type OpAttr } from './tf-native';

/** Step-graph weights of this many elements or more are multiplied with BatchMatMulV2, smaller ones with MatMul. */
const BATCH_MATMUL_FROM = 1 << 17;

/** TensorFlow tensor handles alive in the native library (tests check that decoding leaves none behind). */
export function nativeHandleCount(): number | undefined {
  return nativeBackend()?.binding.getNumOfTensors();
}

/** The weights of a decoder block the step graph takes, by feed name suffix and HF name suffix. */
function blockWeights(config: T5Config): [string, string][] {
  const ff =
    config.feed_forward_proj === 'gated-gelu'
      ? [
          ['wi0', 'wi_0'],
          ['wi1', 'wi_1'],
        ]
      : [['wi', 'wi']];
  return [
    ['norm0', 'layer.0.layer_norm.weight'],
    ['q', 'layer.0.SelfAttention.q.weight'],
    ['k', 'layer.0.SelfAttention.k.weight'],
    ['v', 'layer.0.SelfAttention.v.weight'],
    ['o', 'layer.0.SelfAttention.o.weight'],
    ['norm1', 'layer.1.layer_norm.weight'],
    ['cq', 'layer.1.EncDecAttention.q.weight'],
    ['co', 'layer.1.EncDecAttention.o.weight'],
    ['norm2', 'layer.2.layer_norm.weight'],
    ...ff.map(([feed, hf]): [string, string] => [feed, `layer.2.DenseReluDense.${hf}.weight`]),
    ['wo', 'layer.2.DenseReluDense.wo.weight'],
  ];
}

/**
 * Step graphs' sessions by model config. `GraphSession.load` finds a graph loaded before by its hash, but building
 * and serialising the graph to hash it is work a decoder need not repeat for every batch of the same model.
 */
const stepSessions = new Map<string, GraphSession>();

function stepSession(binding: SessionBinding, config: T5Config): GraphSession {
  const key = JSON.stringify(config);
  let session = stepSessions.get(key);
  if (!session) {
    session = GraphSession.load(binding, stepGraph(config));
    stepSessions.set(key, session);
  }
  return session;
}

/**
 * One decoder step as a graph. Feeds: `tokens` [B] (int32), `bias_table` [1, H, L, L], `bias_begin` / `bias_size`
 * (int32 [4], this step's row of the table), `source_bias` [B, 1, 1, S], `shared`, `final_norm`, `lm_head` (untied
 * heads), `no_eos` [1, V], and per block i `k{i}` / `v{i}` (the cache, [B, H, t, K]), `ck{i}` / `cv{i}` (cross
 * attention, [B, H, S, K]) and its weights `w{i}_<name>`. Fetches: `k{i}_out` / `v{i}_out`, `logits` [B, V],
 * `next` and `next_no_eos` (int32 [B]).
 */
function stepGraph(config: T5Config): GraphBuilder {
  const g = new GraphBuilder();
  const { num_heads: H, d_kv: K } = config;
  const T = { T: { type: 'float32' as const } };
  const f = (name: string) => g.placeholder(name, 'float32');
  const int32 = (values: number[], shape = [values.length]) => g.constant('int32', values, shape);
  const axis0 = int32([0], []);
  const axis1 = int32([1], []);
  const axis2 = int32([2], []);
  const lastAxis = int32([1]);
  const toHeads = int32([-1, H, 1, K]);
  const toFlat = int32([-1, H * K]);
  const eps = g.constant('float32', [config.layer_norm_epsilon]);
  // fast-ops.ts's GELU constants: gelu_new(a) = a · sigmoid(a · (C0 + C1·a²)).
  const c0 = 2 * Math.sqrt(2 / Math.PI);
  const geluC0 = g.constant('float32', [c0]);
  const geluC1 = g.constant('float32', [c0 * 0.044715]);
  const binary = (op: string, a: string, b: string, name?: string) => g.op(op, [a, b], T, name);
  const unary = (op: string, a: string) => g.op(op, [a], T);
  /**
   * x [B, k] · w [k, n] (wᵀ with `transposeB`), w having `size` = k·n elements. MatMul and BatchMatMulV2 (2-D operands,
   * no batch) give the same product, and which runs faster depends on the weight's size. Measured on 2 cores (the
   * oneDNN build, 8 rows, the two variants alternated in one process, the same tokens every call): BatchMatMulV2 for
   * every weight made a 64-token generate call of the `small` shape (512×384 projections) 9% faster, but the d256
   * 4+4 shape's 6% slower; with its 256×256 attention projections left on MatMul, that shape was even (per-round
   * median 0.999) and `small` still 10% faster (0.902), `tiny` even (0.968, noisy). Hence the line between them.
   */
  const batchMatMul = (a: string, b: string, adjY: boolean, name?: string) =>
    g.op('BatchMatMulV2', [a, b], { ...T, adj_x: { bool: false }, adj_y: { bool: adjY } }, name);
  const matMul = (a: string, b: string, size: number, transposeB = false, name?: string) =>
    size >= BATCH_MATMUL_FROM
      ? batchMatMul(a, b, transposeB, name)
      : g.op('MatMul', [a, b], { ...T, transpose_a: { bool: false }, transpose_b: { bool: transposeB } }, name);
  const attention = config.d_model * H * K;
  const feedForward = config.d_model * config.d_ff;
  const reshape = (a: string, shape: string) => g.op('Reshape', [a, shape], { ...T, Tshape: { type: 'int32' } });
  // t5.ts's rmsNorm op for op: x · rsqrt(mean(x²) + eps) · w.
  const norm = (x: string, w: string) => {
    const meanSquare = g.op('Mean', [unary('Square', x), lastAxis], {
      ...T,
      Tidx: { type: 'int32' },
      keep_dims: { bool: true },
    });
    return binary('Mul', binary('Mul', x, unary('Rsqrt', binary('AddV2', meanSquare, eps))), w);
  };
  /** One query per row: q [B, H, 1, K] over keys and values [B, H, Tk, K], additive mask → [B, H·K]. */
  const attend = (q: string, keys: string, values: string, mask: string) => {
    const weights = unary('Softmax', binary('AddV2', batchMatMul(q, keys, true), mask)); // [B, H, 1, Tk]
    return reshape(batchMatMul(weights, values, false), toFlat);
  };
  const concat = (a: string, b: string, name: string) =>
    g.op('ConcatV2', [a, b, axis2], { ...T, N: { int: 2 }, Tidx: { type: 'int32' } }, name);

  const shared = f('shared');
  const tokens = g.placeholder('tokens', 'int32');
  const gatherAttrs = { Tparams: { type: 'float32' as const }, Tindices: { type: 'int32' as const } };
  let y = g.op('GatherV2', [shared, tokens, axis0], { ...gatherAttrs, Taxis: { type: 'int32' } }); // [B, D]
  const bias = g.op(
    'Slice',
    [f('bias_table'), g.placeholder('bias_begin', 'int32'), g.placeholder('bias_size', 'int32')],
    {
      ...T,
      Index: { type: 'int32' },
    }
  ); // [1, H, 1, t+1]
  const sourceBias = f('source_bias');
  const weights = blockWeights(config);
  for (let i = 0; i < config.num_decoder_layers; i++) {
    const w = Object.fromEntries(weights.map(([name]) => [name, f(`w${i}_${name}`)]));
    const n0 = norm(y, w.norm0);
    const q = reshape(matMul(n0, w.q, attention), toHeads);
    const keys = concat(f(`k${i}`), reshape(matMul(n0, w.k, attention), toHeads), `k${i}_out`); // [B, H, t+1, K]
    const values = concat(f(`v${i}`), reshape(matMul(n0, w.v, attention), toHeads), `v${i}_out`);
    y = binary('AddV2', y, matMul(attend(q, keys, values, bias), w.o, attention));
    const n1 = norm(y, w.norm1);
    const q1 = reshape(matMul(n1, w.cq, attention), toHeads);
    y = binary('AddV2', y, matMul(attend(q1, f(`ck${i}`), f(`cv${i}`), sourceBias), w.co, attention));
    const n2 = norm(y, w.norm2);
    let hidden: string;
    if (w.wi0 !== undefined) {
      const a = matMul(n2, w.wi0, feedForward);
      const inner = binary('Mul', a, binary('AddV2', binary('Mul', unary('Square', a), geluC1), geluC0));
      hidden = binary('Mul', binary('Mul', a, unary('Sigmoid', inner)), matMul(n2, w.wi1, feedForward));
    } else {
      hidden = unary('Relu', matMul(n2, w.wi, feedForward));
    }
    y = binary('AddV2', y, matMul(hidden, w.wo, feedForward));
  }
  let states = norm(y, f('final_norm'));
  // t5.ts's logits(): a tied head rescales by d_model^-0.5 (when the config says so) and multiplies by Eᵀ.
  if (config.tie_word_embeddings && scalesOutputs(config)) {
    states = binary('Mul', states, g.constant('float32', [config.d_model ** -0.5]));
  }
  const logits = matMul(
    states,
    config.tie_word_embeddings ? shared : f('lm_head'),
    config.d_model * config.vocab_size,
    config.tie_word_embeddings,
    'logits'
  ); // [B, V]
  const argMaxAttrs = { ...T, Tidx: { type: 'int32' as const }, output_type: { type: 'int32' as const } };
  g.op('ArgMax', [logits, axis1], argMaxAttrs, 'next');
  g.op('ArgMax', [binary('AddV2', logits, f('no_eos')), axis1], argMaxAttrs, 'next_no_eos');
  return g;
}

/**
 * Incremental decoding of one batch on native TensorFlow, the counterpart of `T5Model.startDecoding` +
 * `decodeStep` + `logits`. Built per batch and disposed after it; it borrows the model's weights, which must not
 * change meanwhile.
 */
export class NativeDecoder {
  private readonly b: Binding;
  private readonly session: GraphSession;
  /** Handles this decoder owns (freed by dispose). */
  private readonly owned = new Set<number>();
  /** Every feed of the step graph but the per-step ones, by placeholder name. */
  private readonly feeds = new Map<string, number>();
  private readonly layers: number;
  private readonly heads: number;
  /** [1, V]: added to the logits where eos may not be chosen (owned; made on first use). */
  private noEos?: number;
  private length = 0;
  rows: number;

  /**
   * The decoder of an encoded batch, or undefined when the current backend is not native TensorFlow.
   * @param maxLength the most steps it will run (sizes the position-bias table)
   */
  static start(model: T5Model, encoded: EncoderOutput, maxLength: number): NativeDecoder | undefined {
    const backend = nativeBackend();
    return backend && new NativeDecoder(backend, model, encoded, maxLength);
  }

  private constructor(
    private readonly backend: NativeBackend,
    private readonly model: T5Model,
    encoded: EncoderOutput,
    private readonly maxLength: number
  ) {
    const b = (this.b = backend.binding);
    const c = model.config;
    this.layers = c.num_decoder_layers;
    this.heads = c.num_heads;
    this.rows = encoded.hidden.shape[0];
    this.session = stepSession(b, c);
    try {
      const weight = (name: string) => backend.getInputTensorIds([model.variables.get(name)!])[0];
      this.feeds.set('shared', weight('shared.weight'));
      this.feeds.set('final_norm', weight('decoder.final_layer_norm.weight'));
      if (!c.tie_word_embeddings) this.feeds.set('lm_head', weight('lm_head.weight'));
      const blockNames = blockWeights(c);
      for (let i = 0; i < this.layers; i++) {
        for (const [feed, hf] of blockNames) this.feeds.set(`w${i}_${feed}`, weight(`decoder.block.${i}.${hf}`));
      }
      const [hidden, sourceBias] = backend.getInputTensorIds([encoded.hidden, encoded.sourceBias]);
      this.feeds.set('source_bias', this.own(this.exec('Identity', [this.floatAttr()], [sourceBias])));
      this.crossAttention(hidden, encoded.hidden.shape as [number, number, number], weight);
      this.feeds.set('bias_table', this.own(this.positionBiasTable(weight)));
      const empty = new Float32Array(0);
      for (let i = 0; i < this.layers; i++) {
        this.feeds.set(`k${i}`, this.own(b.createTensor([this.rows, this.heads, 0, c.d_kv], b.TF_FLOAT, empty)));
        this.feeds.set(`v${i}`, this.own(b.createTensor([this.rows, this.heads, 0, c.d_kv], b.TF_FLOAT, empty)));
      }
    } catch (err) {
      this.dispose();
      throw err;
    }
  }

  /**
   * One step for every row (`tokens`: each row's next decoder input) → the logits [rows, V] as a tfjs tensor, which
   * the caller owns.
   */
  logits(tokens: readonly number[]): tf.Tensor2D {
    const id = this.step(tokens, 'logits', false);
    return this.backend.createOutputTensor({
      id,
      shape: [this.rows, this.model.config.vocab_size],
      dtype: this.b.TF_FLOAT,
    }) as tf.Tensor2D;
  }

  /** One step for every row → each row's highest-scoring token (never eos when `noEos`). */
  argMax(tokens: readonly number[], noEos = false): Int32Array {
    const id = this.step(tokens, noEos ? 'next_no_eos' : 'next', noEos);
    try {
      return Int32Array.from(this.b.tensorDataSync(id) as Int32Array);
    } finally {
      this.b.deleteTensor(id);
    }
  }

  /** Keeps (and reorders) whole rows, cross-attention entries included: `rows[i]` is the old row of new row i. */
  select(rows: readonly number[]): void {
    const names = ['source_bias'];
    for (let i = 0; i < this.layers; i++) names.push(`k${i}`, `v${i}`, `ck${i}`, `cv${i}`);
    this.gatherRows(rows, names);
  }

  /** Reorders the self-attention entries only (beams within an input share its cross-attention entries). */
  reorder(rows: readonly number[]): void {
    if (rows.length !== this.rows) {
      throw new Error(`NativeDecoder.reorder: ${rows.length} rows for ${this.rows}; use select() to drop rows`);
    }
    const names: string[] = [];
    for (let i = 0; i < this.layers; i++) names.push(`k${i}`, `v${i}`);
    this.gatherRows(rows, names);
  }

  dispose(): void {
    for (const id of this.owned) this.b.deleteTensor(id);
    this.owned.clear();
  }

  // -------------------------------------------------------------------------------------------------------------

  /** Runs the step graph; returns the handle of `fetch` (the caller's) and moves the cache on. */
  private step(tokens: readonly number[], fetch: 'logits' | 'next' | 'next_no_eos', noEos: boolean): number {
    const b = this.b;
    const c = this.model.config;
    if (tokens.length !== this.rows) throw new Error(`NativeDecoder: ${tokens.length} tokens for ${this.rows} rows`);
    if (this.length >= this.maxLength) {
      throw new Error(`NativeDecoder: step ${this.length + 1} beyond maxLength ${this.maxLength}`);
    }
    const position = this.length;
    const perStep = [
      b.createTensor([tokens.length], b.TF_INT32, Int32Array.from(tokens)),
      b.createTensor([4], b.TF_INT32, Int32Array.of(0, 0, position, 0)),
      b.createTensor([4], b.TF_INT32, Int32Array.of(1, this.heads, 1, position + 1)),
    ];
    const feeds = new Map(this.feeds);
    feeds.set('tokens', perStep[0]).set('bias_begin', perStep[1]).set('bias_size', perStep[2]);
    // Fed only when fetched: each set of feeds and fetches is its own executor, optimised on first use.
    if (noEos) feeds.set('no_eos', this.noEosRow(c.eos_token_id, c.vocab_size));
    const fetches: string[] = [fetch];
    for (let i = 0; i < this.layers; i++) fetches.push(`k${i}_out`, `v${i}_out`);
    let outputs: { id: number }[];
    try {
      outputs = this.session.run(feeds, fetches);
    } finally {
      for (const id of perStep) b.deleteTensor(id);
    }
    for (let i = 0; i < this.layers; i++) {
      this.replace(`k${i}`, outputs[1 + 2 * i].id);
      this.replace(`v${i}`, outputs[2 + 2 * i].id);
    }
    this.length = position + 1;
    return outputs[0].id;
  }

  /** Cross-attention keys and values of every block, once per batch: hidden [B, S, D] → ck{i}, cv{i} [B, H, S, K]. */
  private crossAttention(
    hidden: number,
    [batch, source, width]: [number, number, number],
    weight: (name: string) => number
  ): void {
    const b = this.b;
    const c = this.model.config;
    const float = this.floatAttr();
    const index = (name: string): OpAttr => ({ name, type: b.TF_ATTR_TYPE, value: b.TF_INT32 });
    const made: number[] = [];
    const temp = (id: number) => (made.push(id), id);
    const ints = (xs: number[]) => temp(b.createTensor([xs.length], b.TF_INT32, Int32Array.from(xs)));
    try {
      const memory = temp(this.exec('Reshape', [float, index('Tshape')], [hidden, ints([batch * source, width])]));
      const toHeads = ints([batch, source, this.heads, c.d_kv]);
      const perm = ints([0, 2, 1, 3]);
      // BatchMatMulV2, not MatMul: TensorFlow's eager MatMul was seen to corrupt the heap when a signal reaches the
      // thread running it (one intra-op thread, under --cpu-prof); BatchMatMulV2, which tfjs itself uses, never did.
      const matMulAttrs = [
        float,
        { name: 'adj_x', type: b.TF_ATTR_BOOL, value: false },
        { name: 'adj_y', type: b.TF_ATTR_BOOL, value: false },
      ];
      for (let i = 0; i < this.layers; i++) {
        for (const [feed, hf] of [
          [`ck${i}`, 'k'],
          [`cv${i}`, 'v'],
        ]) {
          const flat = temp(
            this.exec('BatchMatMulV2', matMulAttrs, [
              memory,
              weight(`decoder.block.${i}.layer.1.EncDecAttention.${hf}.weight`),
            ])
          );
          const split = temp(this.exec('Reshape', [float, index('Tshape')], [flat, toHeads])); // [B, S, H, K]
          const heads = this.exec('Transpose', [float, index('Tperm')], [split, perm]); // [B, H, S, K]
          this.feeds.set(feed, this.own(heads));
        }
      }
    } finally {
      for (const id of made) b.deleteTensor(id);
    }
  }

  /** [1, H, L, L]: the self-attention position bias of query position q over keys k (t5.ts's positionBias, whole). */
  private positionBiasTable(weight: (name: string) => number): number {
    const b = this.b;
    const c = this.model.config;
    const L = this.maxLength;
    const buckets = relativePositionBuckets(
      L,
      L,
      false,
      c.relative_attention_num_buckets,
      c.relative_attention_max_distance
    );
    const table = weight('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'); // [buckets, H]
    const float = this.floatAttr();
    const index = (name: string): OpAttr => ({ name, type: b.TF_ATTR_TYPE, value: b.TF_INT32 });
    const made: number[] = [];
    const temp = (id: number) => (made.push(id), id);
    try {
      const ids = temp(b.createTensor([L * L], b.TF_INT32, buckets));
      const axis = temp(b.createTensor([], b.TF_INT32, Int32Array.of(0)));
      const gatherAttrs = [
        { name: 'Tparams', type: b.TF_ATTR_TYPE, value: b.TF_FLOAT },
        index('Tindices'),
        index('Taxis'),
      ];
      const perPair = temp(this.exec('GatherV2', gatherAttrs, [table, ids, axis])); // [L·L, H]
      const shape = temp(b.createTensor([4], b.TF_INT32, Int32Array.of(1, L, L, this.heads)));
      const grid = temp(this.exec('Reshape', [float, index('Tshape')], [perPair, shape])); // [1, L, L, H]
      const perm = temp(b.createTensor([4], b.TF_INT32, Int32Array.of(0, 3, 1, 2)));
      return this.exec('Transpose', [float, index('Tperm')], [grid, perm]); // [1, H, L, L]
    } finally {
      for (const id of made) b.deleteTensor(id);
    }
  }

  private gatherRows(rows: readonly number[], names: readonly string[]): void {
    const b = this.b;
    const index = b.createTensor([rows.length], b.TF_INT32, Int32Array.from(rows));
    const axis = b.createTensor([], b.TF_INT32, Int32Array.of(0));
    const attrs = [
      { name: 'Tparams', type: b.TF_ATTR_TYPE, value: b.TF_FLOAT },
      { name: 'Tindices', type: b.TF_ATTR_TYPE, value: b.TF_INT32 },
      { name: 'Taxis', type: b.TF_ATTR_TYPE, value: b.TF_INT32 },
    ];
    try {
      for (const name of names) this.replace(name, this.exec('GatherV2', attrs, [this.feeds.get(name)!, index, axis]));
      this.rows = rows.length;
    } finally {
      b.deleteTensor(index);
      b.deleteTensor(axis);
    }
  }

  /** Points feed `name` at a new handle (owned from now on) and frees the old one. */
  private replace(name: string, id: number): void {
    const old = this.feeds.get(name);
    this.feeds.set(name, this.own(id));
    if (old !== undefined && this.owned.delete(old)) this.b.deleteTensor(old);
  }

  private noEosRow(eos: number, vocab: number): number {
    if (this.noEos === undefined) {
      const row = new Float32Array(vocab);
      // As decode.ts's EXCLUDED: finite, so no NaN can arise.
      row[eos] = -1e9;
      this.noEos = this.own(this.b.createTensor([1, vocab], this.b.TF_FLOAT, row));
    }
    return this.noEos;
  }

  private exec(name: string, attrs: OpAttr[], inputs: number[]): number {
    return this.b.executeOp(name, attrs, inputs, 1)[0].id;
  }

  private own(id: number): number {
    this.owned.add(id);
    return id;
  }

  private floatAttr(): OpAttr {
    return { name: 'T', type: this.b.TF_ATTR_TYPE, value: this.b.TF_FLOAT };
  }
}
