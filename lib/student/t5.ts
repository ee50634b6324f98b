/**
 * A T5 encoder–decoder (Raffel et al. 2020, with the t5-v1_1 changes) written directly in TensorFlow.js core ops,
 * bottom-up: RMS layer norm → relative position bias → attention → feed-forward → encoder and decoder stacks →
 * output layer → loss, then incremental decoding (one decoder position per step against a key/value cache). It
 * matches HF `T5ForConditionalGeneration` to float32 rounding: test/student-parity.test.ts checks logits and loss
 * against a committed test vector. Parameters carry Hugging Face's names and, in checkpoints, its layouts, so a
 * checkpoint maps one-to-one onto `T5ForConditionalGeneration`'s state dict. On native TensorFlow each pre-norm
 * sublayer of the encoder and decoder runs as one fused op with a hand-written backward pass (fast-ops.ts); the
 * op-by-op formulas here are what it equals, and what the other backends and incremental decoding run.
 *
 * Shapes in comments: B batch, S source length, T target length, D d_model, H heads, K d_kv, F d_ff, V vocabulary.
 */
import { InputError } from '../errors';
import { scalesOutputs, validateConfig, type T5Config } from './config';
import {
  attentionSublayer as fusedAttentionSublayer,
  dropout as fusedDropout,
  feedForwardSublayer as fusedFeedForwardSublayer,
  gatedGelu,
  maskedCrossEntropy,
  rmsNorm as fusedRmsNorm,
  usesNativeKernels,
  type SublayerDropout,
} from './fast-ops';
import { tf } from './tf';

/** A large negative logit for masked attention positions; finite so a fully masked row cannot produce NaN. */
const MASKED = -1e9;

// ---------------------------------------------------------------------------------------------------------------
// Parameters

/** One parameter as Hugging Face stores it. */
export interface ParamSpec {
  name: string;
  /** Shape in HF's layout: `[out, in]` for linear layers, as torch.nn.Linear keeps it. */
  shape: number[];
  /**
   * A linear layer's weight: kept here as `[in, out]` (the transpose of HF's layout) so the forward pass multiplies
   * without a transpose flag, which the wasm backend runs an order of magnitude slower.
   */
  linear: boolean;
  /** Initial values: N(0, std²), or ones for layer norm scales. */
  init: { std: number } | 'ones';
}

/**
 * Every parameter of the model, in a fixed order (the order of HF's state dict), with T5's initialisation
 * (`T5PreTrainedModel._init_weights`) except that an untied `lm_head` starts at std d_model^-0.5 instead of 1:
 * HF's std 1 gives initial logits of scale √d_model and a starting loss near 100 instead of ln V.
 */
export function paramSpecs(config: T5Config): ParamSpec[] {
  const { d_model: D, d_kv: K, num_heads: H, d_ff: F, vocab_size: V, initializer_factor: f } = config;
  const specs: ParamSpec[] = [];
  const linear = (name: string, out: number, inp: number, std: number) =>
    specs.push({ name, shape: [out, inp], linear: true, init: { std } });
  const norm = (name: string) => specs.push({ name, shape: [D], linear: false, init: 'ones' });
  const attention = (prefix: string, withBias: boolean) => {
    // T5 has no 1/√K in attention: the query's smaller initial scale stands in for it.
    linear(`${prefix}.q.weight`, H * K, D, f * (D * K) ** -0.5);
    linear(`${prefix}.k.weight`, H * K, D, f * D ** -0.5);
    linear(`${prefix}.v.weight`, H * K, D, f * D ** -0.5);
    linear(`${prefix}.o.weight`, D, H * K, f * (H * K) ** -0.5);
    if (withBias) {
      specs.push({
        name: `${prefix}.relative_attention_bias.weight`,
        shape: [config.relative_attention_num_buckets, H],
        linear: false,
        init: { std: f * D ** -0.5 },
      });
    }
  };
  const feedForward = (prefix: string) => {
    if (config.feed_forward_proj === 'gated-gelu') {
      linear(`${prefix}.wi_0.weight`, F, D, f * D ** -0.5);
      linear(`${prefix}.wi_1.weight`, F, D, f * D ** -0.5);
    } else {
      linear(`${prefix}.wi.weight`, F, D, f * D ** -0.5);
    }
    linear(`${prefix}.wo.weight`, D, F, f * F ** -0.5);
  };

  // A tied head without T5's rescale (transformers 5's t5-v1_1 head) multiplies states by the embeddings as they
  // are: they start at std d_model^-0.5, as an untied head does, so initial logits are unit-scale there too.
  const unscaledTied = config.tie_word_embeddings && !scalesOutputs(config);
  specs.push({ name: 'shared.weight', shape: [V, D], linear: false, init: { std: unscaledTied ? f * D ** -0.5 : f } });
  for (let i = 0; i < config.num_layers; i++) {
    const block = `encoder.block.${i}`;
    attention(`${block}.layer.0.SelfAttention`, i === 0);
    norm(`${block}.layer.0.layer_norm.weight`);
    feedForward(`${block}.layer.1.DenseReluDense`);
    norm(`${block}.layer.1.layer_norm.weight`);
  }
  norm('encoder.final_layer_norm.weight');
  for (let i = 0; i < config.num_decoder_layers; i++) {
    const block = `decoder.block.${i}`;
    attention(`${block}.layer.0.SelfAttention`, i === 0);
    norm(`${block}.layer.0.layer_norm.weight`);
    attention(`${block}.layer.1.EncDecAttention`, false);
    norm(`${block}.layer.1.layer_norm.weight`);
    feedForward(`${block}.layer.2.DenseReluDense`);
    norm(`${block}.layer.2.layer_norm.weight`);
  }
  norm('decoder.final_layer_norm.weight');
  if (!config.tie_word_embeddings) linear('lm_head.weight', V, D, D ** -0.5);
  return specs;
}

/** Weights as a checkpoint holds them: HF names, HF layouts, float32. */
export interface NamedWeight {
  name: string;
  shape: number[];
  data: Float32Array;
}

// ---------------------------------------------------------------------------------------------------------------
// Building blocks. Each takes the model's parameter lookup and plain tensors; none keeps state.

type Params = (name: string) => tf.Tensor;

/** Dropout with a fresh but reproducible seed per call: same training seed and step → same masks. */
export class Dropout {
  private calls = 0;
  constructor(
    readonly rate: number,
    private readonly seed: number
  ) {}
  apply<T extends tf.Tensor>(x: T): T {
    if (this.rate === 0) return x;
    return fusedDropout(x, this.rate, this.nextSeed());
  }
  /** The seeds a fused sublayer draws its masks from, in the order the op-by-op formulas would (undefined: none). */
  forSublayer(): SublayerDropout | undefined {
    return this.rate === 0 ? undefined : { rate: this.rate, nextSeed: () => this.nextSeed() };
  }
  private nextSeed(): number {
    return this.seed * 7919 + this.calls++;
  }
}

const NO_DROPOUT = new Dropout(0, 0);

/** T5's layer norm: scale by the root mean square, no mean subtraction and no bias. [.., D] → [.., D] */
function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  // Same forward ops as x·rsqrt(mean(x²) + eps)·w, with a hand-written gradient (fast-ops.ts).
  return fusedRmsNorm(x, weight, eps);
}

/** x·W for x [.., in] and W [in, out] → [.., out]. */
function dense(x: tf.Tensor, w: tf.Tensor): tf.Tensor {
  const shape = x.shape as number[];
  const out = tf.matMul(tf.reshape(x, [-1, shape[shape.length - 1]]) as tf.Tensor2D, w as tf.Tensor2D);
  return tf.reshape(out, [...shape.slice(0, -1), (w.shape as number[])[1]]);
}

/**
 * T5's relative position buckets (HF `_relative_position_bucket`): offsets below half the buckets get their own
 * bucket, larger ones share logarithmically wider buckets up to `maxDistance`. Bidirectional (encoder) splits the
 * buckets between keys before and after the query; causal (decoder) only sees keys at or before it. The
 * logarithm is computed in float32 like PyTorch does, so boundary offsets land in the same bucket as HF's.
 * @param queryStart position of the first query (incremental decoding asks for the newest position only)
 * @returns bucket ids, row-major [queryLength, keyLength]
 */
export function relativePositionBuckets(
  queryLength: number,
  keyLength: number,
  bidirectional: boolean,
  numBuckets: number,
  maxDistance: number,
  queryStart = 0
): Int32Array {
  const f = Math.fround;
  const out = new Int32Array(queryLength * keyLength);
  const buckets = bidirectional ? numBuckets >> 1 : numBuckets;
  const maxExact = buckets >> 1;
  const logRange = f(Math.log(maxDistance / maxExact));
  for (let q = 0; q < queryLength; q++) {
    for (let k = 0; k < keyLength; k++) {
      let relative = k - (q + queryStart);
      let bucket = 0;
      if (bidirectional) {
        if (relative > 0) bucket += buckets;
        relative = Math.abs(relative);
      } else {
        relative = -Math.min(relative, 0);
      }
      if (relative < maxExact) {
        bucket += relative;
      } else {
        const large =
          maxExact + Math.trunc(f(f(f(Math.log(f(relative / maxExact))) / logRange) * (buckets - maxExact)));
        bucket += Math.min(large, buckets - 1);
      }
      out[q * keyLength + k] = bucket;
    }
  }
  return out;
}

/** Learned bias per head and relative-position bucket. [buckets, H] → [1, H, Tq, Tk] */
function positionBias(table: tf.Tensor, buckets: Int32Array, queryLength: number, keyLength: number): tf.Tensor {
  const perPair = tf.gather(table, tf.tensor1d(buckets, 'int32')); // [Tq·Tk, H]
  const [, heads] = table.shape;
  return tf.expandDims(tf.transpose(tf.reshape(perPair, [queryLength, keyLength, heads]), [2, 0, 1]), 0);
}

/** One projection of attention, split into heads: x [B, T, D] → [B, H, T, K]. */
function projectHeads(p: Params, name: string, x: tf.Tensor, heads: number): tf.Tensor {
  const [batch, length] = x.shape as number[];
  const w = p(name);
  const headDim = (w.shape as number[])[1] / heads;
  return tf.transpose(tf.reshape(dense(x, w), [batch, length, heads, headDim]), [0, 2, 1, 3]);
}

/**
 * Keys go straight to [B, H, K, Tk] so the score product needs no transpose flag (slow on wasm). memory [B, Tk, D]
 */
function projectKeys(p: Params, prefix: string, memory: tf.Tensor, heads: number): tf.Tensor {
  const [batch, length] = memory.shape as number[];
  const w = p(`${prefix}.k.weight`);
  const headDim = (w.shape as number[])[1] / heads;
  return tf.transpose(tf.reshape(dense(memory, w), [batch, length, heads, headDim]), [0, 2, 3, 1]);
}

/**
 * Attention over projected heads: queries [B, H, Tq, K], keys [B, H, K, Tk], values [B, H, Tk, K], and an additive
 * bias (position bias plus masks, combined by the caller) [B|1, H|1, Tq|1, Tk] → output projection [B, Tq, D].
 * No 1/√K scaling: T5 folds it into the query's initialisation.
 */
function attend(
  p: Params,
  prefix: string,
  q: tf.Tensor,
  kT: tf.Tensor,
  v: tf.Tensor,
  bias: tf.Tensor,
  drop: Dropout
): tf.Tensor {
  const [batch, heads, queryLength, headDim] = q.shape as number[];
  const scores = tf.add(tf.matMul(q, kT), bias); // [B, H, Tq, Tk]
  const weights = drop.apply(tf.softmax(scores)); // [B, H, Tq, Tk]
  const context = tf.transpose(tf.matMul(weights, v), [0, 2, 1, 3]); // [B, Tq, H, K]
  return dense(tf.reshape(context, [batch, queryLength, heads * headDim]), p(`${prefix}.o.weight`)); // [B, Tq, D]
}

/**
 * Multi-head attention with an additive bias (position bias plus masks, already combined by the caller).
 * q from `x` [B, Tq, D], keys and values from `memory` [B, Tk, D], bias [B|1, H|1, Tq|1, Tk] → [B, Tq, D]
 */
function attention(
  p: Params,
  prefix: string,
  x: tf.Tensor,
  memory: tf.Tensor,
  bias: tf.Tensor,
  heads: number,
  drop: Dropout
): tf.Tensor {
  const q = projectHeads(p, `${prefix}.q.weight`, x, heads); // [B, H, Tq, K]
  const kT = projectKeys(p, prefix, memory, heads); // [B, H, K, Tk]
  const v = projectHeads(p, `${prefix}.v.weight`, memory, heads); // [B, H, Tk, K]
  return attend(p, prefix, q, kT, v, bias, drop);
}

/** Gated-GELU (GELU(x·wi_0) ⊙ x·wi_1) or ReLU feed-forward, then wo. [.., D] → [.., D] */
function feedForward(p: Params, prefix: string, x: tf.Tensor, gated: boolean, drop: Dropout): tf.Tensor {
  const hidden = gated
    ? gatedGelu(dense(x, p(`${prefix}.wi_0.weight`)), dense(x, p(`${prefix}.wi_1.weight`))) // [.., F]
    : tf.relu(dense(x, p(`${prefix}.wi.weight`)));
  return dense(drop.apply(hidden), p(`${prefix}.wo.weight`));
}

/** 0 where the token is real, MASKED where it is padding, shaped to add onto attention scores. [B, S] → [B, 1, 1, S] */
function paddingBias(ids: tf.Tensor2D, padId: number): tf.Tensor {
  const isPad = tf.cast(tf.equal(ids, padId), 'float32');
  return tf.reshape(tf.mul(isPad, MASKED), [ids.shape[0], 1, 1, ids.shape[1]]);
}

/** 0 on and below the diagonal, MASKED above: a decoder position sees only itself and earlier ones. [1, 1, T, T] */
function causalBias(length: number): tf.Tensor {
  const mask = new Float32Array(length * length);
  for (let q = 0; q < length; q++) for (let k = q + 1; k < length; k++) mask[q * length + k] = MASKED;
  return tf.tensor4d(mask, [1, 1, length, length]);
}

// ---------------------------------------------------------------------------------------------------------------
// The model

export interface ForwardOptions {
  /** Applies dropout when the config has any. */
  training?: boolean;
  /** Seeds this call's dropout masks (e.g. hash of training seed and step). */
  dropoutSeed?: number;
}

export interface EncoderOutput {
  /** [B, S, D] */
  hidden: tf.Tensor;
  /** [B, 1, 1, S]: the source padding bias the decoder's cross-attention needs. */
  sourceBias: tf.Tensor;
}

/**
 * What incremental decoding keeps between steps, so that generating a token costs one decoder step instead of a pass
 * over the whole prefix: per decoder block, the self-attention keys and values of every position decoded so far, and
 * the cross-attention keys and values of the encoder output (computed once). Rows are batch rows (beams included).
 * Owns its tensors: they survive `tf.tidy` scopes until {@link DecoderCache.dispose}.
 */
export class DecoderCache {
  /** Decoder positions already in the cache (the next step decodes position `length`). */
  length = 0;
  /** Per block: self-attention keys [B, H, K, t] (already transposed for the score product), absent before step 0. */
  selfKeys: (tf.Tensor | undefined)[];
  /** Per block: self-attention values [B, H, t, K]. */
  selfValues: (tf.Tensor | undefined)[];

  constructor(
    /** Per block: cross-attention keys [B, H, K, S]. */
    public crossKeys: tf.Tensor[],
    /** Per block: cross-attention values [B, H, S, K]. */
    public crossValues: tf.Tensor[],
    /** [B, 1, 1, S]: masks the source padding. */
    public sourceBias: tf.Tensor
  ) {
    for (const t of [...crossKeys, ...crossValues, sourceBias]) tf.keep(t);
    this.selfKeys = crossKeys.map(() => undefined);
    this.selfValues = crossKeys.map(() => undefined);
  }

  get rows(): number {
    return this.sourceBias.shape[0];
  }

  /**
   * Reorders the rows of the self-attention entries only (`rows[i]` is the old row of new row i; as many rows as
   * before). Beam search moves beams within their input's block of rows, where the cross-attention entries are all
   * the same, so those need no copy.
   */
  reorder(rows: readonly number[]): void {
    if (rows.length !== this.rows) {
      throw new Error(
        `DecoderCache.reorder: ${rows.length} rows for a cache of ${this.rows}; use select() to drop rows`
      );
    }
    this.reorderSelf(rows);
  }

  private reorderSelf(rows: readonly number[]): void {
    const index = tf.tensor1d(rows as number[], 'int32');
    try {
      const swap = (list: (tf.Tensor | undefined)[]) =>
        list.forEach((t, i) => {
          if (!t) return;
          list[i] = tf.keep(tf.gather(t, index));
          t.dispose();
        });
      swap(this.selfKeys);
      swap(this.selfValues);
    } finally {
      index.dispose();
    }
  }

  /** Keeps (and reorders) whole rows, cross-attention entries included: e.g. drops finished inputs from a batch. */
  select(rows: readonly number[]): void {
    this.reorderSelf(rows);
    const index = tf.tensor1d(rows as number[], 'int32');
    try {
      const gather = (t: tf.Tensor) => {
        const out = tf.keep(tf.gather(t, index));
        t.dispose();
        return out;
      };
      this.crossKeys = this.crossKeys.map(gather);
      this.crossValues = this.crossValues.map(gather);
      this.sourceBias = gather(this.sourceBias);
    } finally {
      index.dispose();
    }
  }

  dispose(): void {
    tf.dispose([...this.crossKeys, ...this.crossValues, this.sourceBias]);
    tf.dispose([...this.selfKeys, ...this.selfValues].filter((t): t is tf.Tensor => t !== undefined));
    this.crossKeys = [];
    this.crossValues = [];
    this.selfKeys = [];
    this.selfValues = [];
  }
}

export class T5Model {
  private readonly weights = new Map<string, tf.Variable>();
  private readonly specs: ParamSpec[];
  private readonly bucketCache = new Map<string, Int32Array>();

  private constructor(
    readonly config: T5Config,
    values: (spec: ParamSpec) => tf.Tensor
  ) {
    validateConfig(config);
    this.specs = paramSpecs(config);
    for (const spec of this.specs) {
      const init = values(spec);
      // Unnamed: tfjs variable names are global to the engine, and tests hold several models at once.
      this.weights.set(spec.name, tf.variable(init, true));
      init.dispose();
    }
  }

  /** A freshly initialised model; `seed` fixes every initial weight (the same on every backend). */
  static init(config: T5Config, seed: number): T5Model {
    return new T5Model(config, (spec) => {
      const size = spec.shape.reduce((a, b) => a * b, 1);
      const data =
        spec.init === 'ones' ? new Float32Array(size).fill(1) : normalSample(size, spec.init.std, seed, spec.name);
      return toComputeLayout(spec, data);
    });
  }

  /**
   * A model from checkpoint weights (HF names and layouts).
   * @throws InputError when a weight is missing, unexpected or of the wrong shape for `config`.
   */
  static fromWeights(config: T5Config, weights: NamedWeight[]): T5Model {
    validateConfig(config);
    const byName = new Map(weights.map((w) => [w.name, w]));
    const expected = paramSpecs(config);
    for (const spec of expected) {
      const w = byName.get(spec.name);
      if (!w) throw new InputError(`checkpoint has no weight '${spec.name}', which the config requires`, 'checkpoint');
      if (w.shape.join() !== spec.shape.join()) {
        throw new InputError(
          `checkpoint weight '${spec.name}' has shape [${w.shape}]; expected [${spec.shape}] from its config`,
          'checkpoint'
        );
      }
    }
    const known = new Set(expected.map((s) => s.name));
    const extra = weights.find((w) => !known.has(w.name));
    if (extra)
      throw new InputError(`checkpoint has weight '${extra.name}', which the config does not use`, 'checkpoint');
    return new T5Model(config, (spec) => toComputeLayout(spec, byName.get(spec.name)!.data));
  }

  /** Trainable variables by HF name, in state-dict order. */
  get variables(): ReadonlyMap<string, tf.Variable> {
    return this.weights;
  }

  /** Number of trainable scalars. */
  get parameterCount(): number {
    return this.specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
  }

  dispose(): void {
    for (const v of this.weights.values()) v.dispose();
    this.weights.clear();
  }

  private readonly param: Params = (name) => {
    const v = this.weights.get(name);
    if (!v) throw new Error(`T5Model: no parameter '${name}'`);
    return v;
  };

  private buckets(queryLength: number, keyLength: number, bidirectional: boolean, queryStart = 0): Int32Array {
    const key = `${queryLength}:${keyLength}:${bidirectional}:${queryStart}`;
    let b = this.bucketCache.get(key);
    if (!b) {
      const c = this.config;
      b = relativePositionBuckets(
        queryLength,
        keyLength,
        bidirectional,
        c.relative_attention_num_buckets,
        c.relative_attention_max_distance,
        queryStart
      );
      this.bucketCache.set(key, b);
    }
    return b;
  }

  private dropout(opts: ForwardOptions, salt: number): Dropout {
    if (!opts.training || this.config.dropout_rate === 0) return NO_DROPOUT;
    return new Dropout(this.config.dropout_rate, (opts.dropoutSeed ?? 0) * 2 + salt);
  }

  /** Source token ids [B, S] (int32, pad-padded) → encoder states. */
  encode(inputIds: tf.Tensor2D, opts: ForwardOptions = {}): EncoderOutput {
    const c = this.config;
    const p = this.param;
    const drop = this.dropout(opts, 0);
    const length = inputIds.shape[1];
    const sourceBias = paddingBias(inputIds, c.pad_token_id); // [B, 1, 1, S]
    // The position bias is learned in the first block only and shared by all (as in T5).
    const table = p('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight');
    const bias = tf.add(positionBias(table, this.buckets(length, length, true), length, length), sourceBias); // [B, H, S, S]
    let h = drop.apply(tf.gather(p('shared.weight'), inputIds)); // [B, S, D]
    for (let i = 0; i < c.num_layers; i++) {
      const block = `encoder.block.${i}`;
      h = this.attentionSublayer(`${block}.layer.0`, 'SelfAttention', h, undefined, bias, drop);
      h = this.feedForwardSublayer(`${block}.layer.1`, h, drop);
    }
    const hidden = drop.apply(rmsNorm(h, p('encoder.final_layer_norm.weight'), c.layer_norm_epsilon));
    return { hidden, sourceBias };
  }

  /** Decoder inputs [B, T] (start token then the target shifted right) → final decoder states [B, T, D]. */
  decode(encoded: EncoderOutput, decoderInputIds: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor {
    const c = this.config;
    const p = this.param;
    const drop = this.dropout(opts, 1);
    const length = decoderInputIds.shape[1];
    const table = p('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight');
    const bias = tf.add(positionBias(table, this.buckets(length, length, false), length, length), causalBias(length));
    // Broadcast over the batch once where the fused sublayers run: they take a bias of the scores' full shape as the
    // one that carries a gradient (the position bias), and the sum over the batch then happens once, not per block.
    // The op-by-op formulas broadcast the [1, H, T, T] bias themselves.
    const selfBias = usesNativeKernels()
      ? tf.broadcastTo(bias, [decoderInputIds.shape[0], c.num_heads, length, length]) // [B, H, T, T]
      : bias;
    let y = drop.apply(tf.gather(p('shared.weight'), decoderInputIds)); // [B, T, D]
    for (let i = 0; i < c.num_decoder_layers; i++) {
      const block = `decoder.block.${i}`;
      y = this.attentionSublayer(`${block}.layer.0`, 'SelfAttention', y, undefined, selfBias, drop);
      y = this.attentionSublayer(`${block}.layer.1`, 'EncDecAttention', y, encoded.hidden, encoded.sourceBias, drop);
      y = this.feedForwardSublayer(`${block}.layer.2`, y, drop);
    }
    return drop.apply(rmsNorm(y, p('decoder.final_layer_norm.weight'), c.layer_norm_epsilon));
  }

  /**
   * Starts incremental decoding of an encoded batch: computes every block's cross-attention keys and values once.
   * The cache holds its own tensors; `encoded` may be disposed after this.
   */
  startDecoding(encoded: EncoderOutput): DecoderCache {
    const c = this.config;
    const p = this.param;
    const cross = tf.tidy(() => {
      const keys: tf.Tensor[] = [];
      const values: tf.Tensor[] = [];
      for (let i = 0; i < c.num_decoder_layers; i++) {
        const prefix = `decoder.block.${i}.layer.1.EncDecAttention`;
        keys.push(projectKeys(p, prefix, encoded.hidden, c.num_heads)); // [B, H, K, S]
        values.push(projectHeads(p, `${prefix}.v.weight`, encoded.hidden, c.num_heads)); // [B, H, S, K]
      }
      return { keys, values, sourceBias: tf.clone(encoded.sourceBias) };
    });
    return new DecoderCache(cross.keys, cross.values, cross.sourceBias);
  }

  /**
   * One step of incremental decoding (inference, no dropout): the next decoder input token of every row [B, 1] →
   * final decoder states at that position [B, 1, D], the same as {@link decode} gives for the last position of the
   * whole prefix. Appends this position's self-attention keys and values to `cache`.
   */
  decodeStep(cache: DecoderCache, tokenIds: tf.Tensor2D): tf.Tensor {
    const c = this.config;
    const p = this.param;
    const position = cache.length;
    const keyLength = position + 1;
    if (tokenIds.shape[0] !== cache.rows || tokenIds.shape[1] !== 1) {
      throw new Error(`decodeStep: token ids are [${tokenIds.shape}]; expected [${cache.rows}, 1]`);
    }
    const [H, D] = [c.num_heads, c.d_model];
    const out = tf.tidy(() => {
      const rows = cache.rows;
      const table = p('decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight');
      // Only the newest query's row of the position bias; no causal mask: every cached key is at or before it.
      const bias = positionBias(table, this.buckets(1, keyLength, false, position), 1, keyLength); // [1, H, 1, t+1]
      // One position per row, so states stay [B, D] and heads split by reshape alone: no transposes, no 3-D matMuls.
      const heads = (x: tf.Tensor, name: string, shape: number[]) =>
        tf.reshape(tf.matMul(x as tf.Tensor2D, p(name) as tf.Tensor2D), shape);
      const headDim = (p('decoder.block.0.layer.0.SelfAttention.q.weight').shape as number[])[1] / H;
      const attendOne = (prefix: string, q: tf.Tensor, kT: tf.Tensor, v: tf.Tensor, mask: tf.Tensor) => {
        const weights = tf.softmax(tf.add(tf.matMul(q, kT), mask)); // [B, H, 1, Tk]
        const context = tf.reshape(tf.matMul(weights, v), [rows, H * headDim]); // [B, H·K]
        return tf.matMul(context as tf.Tensor2D, p(`${prefix}.o.weight`) as tf.Tensor2D); // [B, D]
      };
      let y: tf.Tensor = tf.gather(p('shared.weight'), tf.reshape(tokenIds, [rows])); // [B, D]
      const keys: tf.Tensor[] = [];
      const values: tf.Tensor[] = [];
      for (let i = 0; i < c.num_decoder_layers; i++) {
        const block = `decoder.block.${i}`;
        const self = `${block}.layer.0.SelfAttention`;
        const n0 = rmsNorm(y, p(`${block}.layer.0.layer_norm.weight`), c.layer_norm_epsilon); // [B, D]
        const newKey = heads(n0, `${self}.k.weight`, [rows, H, headDim, 1]);
        const newValue = heads(n0, `${self}.v.weight`, [rows, H, 1, headDim]);
        const kT = position === 0 ? newKey : tf.concat([cache.selfKeys[i]!, newKey], 3); // [B, H, K, t+1]
        const v = position === 0 ? newValue : tf.concat([cache.selfValues[i]!, newValue], 2); // [B, H, t+1, K]
        keys.push(kT);
        values.push(v);
        const q = heads(n0, `${self}.q.weight`, [rows, H, 1, headDim]);
        y = tf.add(y, attendOne(self, q, kT, v, bias));
        const cross = `${block}.layer.1.EncDecAttention`;
        const n1 = rmsNorm(y, p(`${block}.layer.1.layer_norm.weight`), c.layer_norm_epsilon);
        const q1 = heads(n1, `${cross}.q.weight`, [rows, H, 1, headDim]);
        y = tf.add(y, attendOne(cross, q1, cache.crossKeys[i], cache.crossValues[i], cache.sourceBias));
        const n2 = rmsNorm(y, p(`${block}.layer.2.layer_norm.weight`), c.layer_norm_epsilon);
        y = tf.add(y, feedForward(p, `${block}.layer.2.DenseReluDense`, n2, this.gated, NO_DROPOUT));
      }
      const hidden = rmsNorm(y, p('decoder.final_layer_norm.weight'), c.layer_norm_epsilon);
      return { hidden: tf.reshape(hidden, [rows, 1, D]), keys, values };
    });
    for (let i = 0; i < c.num_decoder_layers; i++) {
      cache.selfKeys[i]?.dispose();
      cache.selfValues[i]?.dispose();
      cache.selfKeys[i] = tf.keep(out.keys[i]);
      cache.selfValues[i] = tf.keep(out.values[i]);
    }
    cache.length = keyLength;
    return out.hidden;
  }

  /** Decoder states [.., D] → vocabulary logits [.., V]. */
  logits(hidden: tf.Tensor): tf.Tensor {
    const c = this.config;
    const shape = hidden.shape;
    const flat = tf.reshape(hidden, [-1, c.d_model]) as tf.Tensor2D;
    const out = !c.tie_word_embeddings
      ? tf.matMul(flat, this.param('lm_head.weight') as tf.Tensor2D)
      : scalesOutputs(c)
        ? // Tied: T5 rescales by d_model^-0.5 so unit-variance states against N(0, 1) embeddings give unit-scale logits.
          tf.matMul(tf.mul(flat, c.d_model ** -0.5), this.param('shared.weight') as tf.Tensor2D, false, true)
        : tf.matMul(flat, this.param('shared.weight') as tf.Tensor2D, false, true);
    return tf.reshape(out, [...shape.slice(0, -1), c.vocab_size]);
  }

  /** Teacher-forced logits: source ids [B, S], decoder inputs [B, T] → [B, T, V]. */
  forward(inputIds: tf.Tensor2D, decoderInputIds: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    return tf.tidy(() => this.logits(this.decode(this.encode(inputIds, opts), decoderInputIds, opts))) as tf.Tensor3D;
  }

  /**
   * Mean token cross-entropy over the non-pad label tokens of the batch, as HF's T5 computes it (labels padded with
   * -100 there, with pad here). Source [B, S] and labels [B, T] (each ending in eos, then pad) → scalar.
   */
  loss(inputIds: tf.Tensor2D, labels: tf.Tensor2D, opts: ForwardOptions = {}): tf.Scalar {
    return tf.tidy(() => this.decoderLoss(this.encode(inputIds, opts), labels, opts));
  }

  /**
   * The {@link loss} of two batches of the same B rows, each with its own labels and dropout seed: distill-step-by-
   * step's `predict:` and `explain:` passes. Both sources run through the encoder as one batch of 2B rows, the
   * shorter padded to the longer (the padding bias hides the added positions from every attention, so each row's
   * states are its own pass's up to rounding), then each half through its own decoder pass. One encoder pass in
   * place of two halves the encoder's sublayer calls and sums its weights' gradients once, not twice. The encoder's
   * dropout is drawn once, over the 2B rows, from `first`'s seed.
   */
  pairLoss(
    first: { source: tf.Tensor2D; labels: tf.Tensor2D; opts: ForwardOptions },
    second: { source: tf.Tensor2D; labels: tf.Tensor2D; opts: ForwardOptions }
  ): [tf.Scalar, tf.Scalar] {
    const rows = first.source.shape[0];
    if (second.source.shape[0] !== rows) {
      throw new Error(`pairLoss: ${rows} and ${second.source.shape[0]} rows; the two batches must hold the same rows`);
    }
    return tf.tidy(() => {
      const length = Math.max(first.source.shape[1], second.source.shape[1]);
      const padded = [first.source, second.source].map((s) =>
        s.shape[1] === length
          ? s
          : tf.pad(
              s,
              [
                [0, 0],
                [0, length - s.shape[1]],
              ],
              this.config.pad_token_id
            )
      );
      const both = this.encode(tf.concat(padded, 0) as tf.Tensor2D, first.opts);
      const [hiddenA, hiddenB] = tf.split(both.hidden, 2, 0);
      const [biasA, biasB] = tf.split(both.sourceBias, 2, 0);
      return [
        this.decoderLoss({ hidden: hiddenA, sourceBias: biasA }, first.labels, first.opts),
        this.decoderLoss({ hidden: hiddenB, sourceBias: biasB }, second.labels, second.opts),
      ];
    });
  }

  /** Mean token cross-entropy of `labels` decoded from encoder states (teacher-forced). */
  private decoderLoss(encoded: EncoderOutput, labels: tf.Tensor2D, opts: ForwardOptions): tf.Scalar {
    const c = this.config;
    const hidden = this.decode(encoded, shiftRight(labels, c.decoder_start_token_id), opts);
    const logits = this.logits(hidden); // [B, T, V]
    const flatLabels = tf.reshape(labels, [-1]) as tf.Tensor1D; // [B·T]
    const mask = tf.cast(tf.notEqual(flatLabels, c.pad_token_id), 'float32');
    return maskedCrossEntropy(tf.reshape(logits, [-1, c.vocab_size]) as tf.Tensor2D, flatLabels, mask);
  }

  private get gated(): boolean {
    return this.config.feed_forward_proj === 'gated-gelu';
  }

  /**
   * `x + drop(attention(norm(x)))`: one fused op on native TensorFlow (fast-ops.ts), the op-by-op formulas
   * elsewhere. `memory` (cross-attention) gives the keys and values; self-attention takes them from x.
   */
  private attentionSublayer(
    layer: string,
    kind: 'SelfAttention' | 'EncDecAttention',
    x: tf.Tensor,
    memory: tf.Tensor | undefined,
    bias: tf.Tensor,
    drop: Dropout
  ): tf.Tensor {
    const c = this.config;
    const p = this.param;
    const prefix = `${layer}.${kind}`;
    const norm = p(`${layer}.layer_norm.weight`);
    const weights = { norm, q: p(`${prefix}.q.weight`), k: p(`${prefix}.k.weight`), v: p(`${prefix}.v.weight`) };
    const fused = fusedAttentionSublayer(
      x,
      { ...weights, o: p(`${prefix}.o.weight`) },
      memory,
      bias,
      c.num_heads,
      c.layer_norm_epsilon,
      drop.forSublayer()
    );
    if (fused) return fused;
    const normed = rmsNorm(x, norm, c.layer_norm_epsilon);
    return tf.add(x, drop.apply(attention(p, prefix, normed, memory ?? normed, bias, c.num_heads, drop)));
  }

  /** `x + drop(feedForward(norm(x)))`: one fused op on native TensorFlow, the op-by-op formulas elsewhere. */
  private feedForwardSublayer(layer: string, x: tf.Tensor, drop: Dropout): tf.Tensor {
    const c = this.config;
    const p = this.param;
    const prefix = `${layer}.DenseReluDense`;
    const norm = p(`${layer}.layer_norm.weight`);
    const wi = this.gated ? [p(`${prefix}.wi_0.weight`), p(`${prefix}.wi_1.weight`)] : [p(`${prefix}.wi.weight`)];
    const fused = fusedFeedForwardSublayer(
      x,
      { norm, wi, wo: p(`${prefix}.wo.weight`) },
      c.layer_norm_epsilon,
      drop.forSublayer()
    );
    if (fused) return fused;
    const normed = rmsNorm(x, norm, c.layer_norm_epsilon);
    return tf.add(x, drop.apply(feedForward(p, prefix, normed, this.gated, drop)));
  }
}

/** Teacher forcing: the decoder reads the start token then the labels up to the last but one. [B, T] → [B, T] */
export function shiftRight(labels: tf.Tensor2D, startId: number): tf.Tensor2D {
  return tf.tidy(() => {
    const [batch, length] = labels.shape;
    const start = tf.fill([batch, 1], startId, 'int32');
    return tf.concat([start, tf.slice(labels, [0, 0], [batch, length - 1])], 1) as tf.Tensor2D;
  });
}

function toComputeLayout(spec: ParamSpec, data: Float32Array): tf.Tensor {
  if (data.length !== spec.shape.reduce((a, b) => a * b, 1)) {
    throw new InputError(
      `weight '${spec.name}' holds ${data.length} values; expected shape [${spec.shape}]`,
      'checkpoint'
    );
  }
  const t = tf.tensor(data, spec.shape, 'float32');
  if (!spec.linear) return t;
  const transposed = tf.transpose(t);
  t.dispose();
  return transposed;
}

/**
 * N(0, std²) samples from a generator seeded by (seed, parameter name): reproducible, independent of parameter
 * order and of the backend (tfjs's own random ops differ between backends).
 */
function normalSample(size: number, std: number, seed: number, name: string): Float32Array {
  const random = mulberry32(hashString(`${seed}:${name}`));
  const out = new Float32Array(size);
  for (let i = 0; i < size; i += 2) {
    // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
    const r = Math.sqrt(-2 * Math.log(1 - random())) * std;
    const theta = 2 * Math.PI * random();
    out[i] = r * Math.cos(theta);
    if (i + 1 < size) out[i + 1] = r * Math.sin(theta);
  }
  return out;
}

/** A small, fast 32-bit PRNG: uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a, for deriving seeds from names. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
