/**
 * The student's architecture, with Hugging Face `T5Config` field names so a checkpoint's `config` reads like a
 * T5 `config.json`, and size presets shaped like Google's t5-v1_1 models.
 */
import { InputError } from '../errors';
import type { PresetName } from './options';

export type { PresetName };

export interface T5Config {
  model_type: 't5';
  /** Set from the tokenizer at train time: the student's vocabulary is trained on the run's own text. */
  vocab_size: number;
  /** Width of the residual stream. */
  d_model: number;
  /** Width of one attention head; d_model need not equal num_heads·d_kv (true of t5-v1_1). */
  d_kv: number;
  /** Width of the feed-forward hidden layer. */
  d_ff: number;
  /** Encoder blocks. */
  num_layers: number;
  /** Decoder blocks. */
  num_decoder_layers: number;
  num_heads: number;
  /** Relative-position buckets: half exact offsets, half logarithmic, up to the max distance. */
  relative_attention_num_buckets: number;
  /** Offsets beyond this share the last bucket. */
  relative_attention_max_distance: number;
  /** Dropout everywhere T5 applies it (embeddings, attention weights, sublayer outputs, FFN hidden). */
  dropout_rate: number;
  layer_norm_epsilon: number;
  /** `gated-gelu` (t5-v1_1: GELU(x·wi_0) ⊙ x·wi_1) or `relu` (original T5). */
  feed_forward_proj: 'gated-gelu' | 'relu';
  /**
   * Share `shared.weight` with the output layer (logits = h·d_model^-0.5·Eᵀ, as T5 does) or learn a separate
   * `lm_head.weight` (t5-v1_1).
   */
  tie_word_embeddings: boolean;
  /**
   * Rescale the decoder's output by d_model^-0.5 before a tied head (transformers 5's name). Absent: the same as
   * `tie_word_embeddings`, which is what every config written before the field existed meant. `false` with a tied
   * head is what transformers 5 builds for a t5-v1_1 config: one matrix for the embeddings and the head, no rescale
   * (its embeddings then start at std d_model^-0.5, so initial logits are unit-scale). Only a tied head is rescaled.
   */
  scale_decoder_outputs?: boolean;
  pad_token_id: number;
  eos_token_id: number;
  /** The decoder's first input, T5 uses pad for it. */
  decoder_start_token_id: number;
  /** Scales every initial standard deviation (HF's `initializer_factor`; 1 keeps initial logits near unit scale). */
  initializer_factor: number;
}

/** Everything but the vocabulary, which comes from the run's tokenizer. */
export type T5Shape = Omit<T5Config, 'vocab_size'>;

const COMMON = {
  model_type: 't5',
  relative_attention_num_buckets: 32,
  relative_attention_max_distance: 128,
  layer_norm_epsilon: 1e-6,
  feed_forward_proj: 'gated-gelu',
  pad_token_id: 0,
  eos_token_id: 1,
  decoder_start_token_id: 0,
  initializer_factor: 1,
} as const;

/**
 * Size presets. small/base/large copy t5-v1_1's shapes (gated-GELU, untied lm_head, d_kv 64): at T5's 32,128-token
 * vocabulary they hold exactly t5-v1_1's 77M/248M/783M parameters, at an 8k vocabulary 52M/211M/734M. `tiny` is for
 * tests and the demo: it trains a few hundred steps in under a minute on two CPU cores, ties its embeddings (fewer
 * parameters, one vocabulary-sized matrix fewer to update) and uses no dropout (a from-scratch model that small
 * underfits; dropout only slows it down).
 */
export const PRESETS: Record<PresetName, T5Shape> = {
  tiny: {
    ...COMMON,
    d_model: 64,
    d_kv: 16,
    d_ff: 128,
    num_layers: 2,
    num_decoder_layers: 2,
    num_heads: 4,
    dropout_rate: 0,
    tie_word_embeddings: true,
  },
  small: {
    ...COMMON,
    d_model: 512,
    d_kv: 64,
    d_ff: 1024,
    num_layers: 8,
    num_decoder_layers: 8,
    num_heads: 6,
    dropout_rate: 0.1,
    tie_word_embeddings: false,
  },
  base: {
    ...COMMON,
    d_model: 768,
    d_kv: 64,
    d_ff: 2048,
    num_layers: 12,
    num_decoder_layers: 12,
    num_heads: 12,
    dropout_rate: 0.1,
    tie_word_embeddings: false,
  },
  large: {
    ...COMMON,
    d_model: 1024,
    d_kv: 64,
    d_ff: 2816,
    num_layers: 24,
    num_decoder_layers: 24,
    num_heads: 16,
    dropout_rate: 0.1,
    tie_word_embeddings: false,
  },
};

export function isPresetName(value: unknown): value is PresetName {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(PRESETS, value);
}

/**
 * A full config: a preset's shape, single fields overridden, and the vocabulary size of the run's tokenizer, with
 * `scale_decoder_outputs` resolved (it defaults to `tie_word_embeddings`).
 * @throws InputError for an unknown preset or a bad field.
 */
export function makeConfig(preset: PresetName, vocabSize: number, overrides: Partial<T5Shape> = {}): T5Config {
  if (!isPresetName(preset)) {
    throw new InputError(
      `preset is ${JSON.stringify(preset)}; expected one of ${Object.keys(PRESETS).join(', ')}`,
      'preset'
    );
  }
  const shape = { ...PRESETS[preset], ...overrides };
  // The rescale written out (not left to default) so a new checkpoint's config and the lineage say which head it has.
  return validateConfig({ ...shape, scale_decoder_outputs: scalesOutputs(shape), vocab_size: vocabSize });
}

const POSITIVE_INTS = [
  'vocab_size',
  'd_model',
  'd_kv',
  'd_ff',
  'num_layers',
  'num_decoder_layers',
  'num_heads',
  'relative_attention_num_buckets',
  'relative_attention_max_distance',
] as const;

/**
 * Checks a config (from a user or a checkpoint) field by field.
 * @throws InputError naming the first bad field, its value and what was expected.
 */
export function validateConfig(config: T5Config): T5Config {
  const bad = (field: string, expected: string): never => {
    const value = (config as unknown as Record<string, unknown>)[field];
    throw new InputError(`config.${field} is ${JSON.stringify(value)}; expected ${expected}`, `config.${field}`);
  };
  if (config === null || typeof config !== 'object') throw new InputError('config is not an object', 'config');
  for (const field of POSITIVE_INTS) {
    const v = config[field];
    if (!Number.isSafeInteger(v) || v < 1) bad(field, 'a positive integer');
  }
  if (config.vocab_size < 3) bad('vocab_size', 'at least 3 (pad, eos, unk)');
  if (config.relative_attention_num_buckets < 4) bad('relative_attention_num_buckets', 'at least 4');
  const { dropout_rate, layer_norm_epsilon, initializer_factor } = config;
  if (typeof dropout_rate !== 'number' || !(dropout_rate >= 0 && dropout_rate < 1))
    bad('dropout_rate', 'a number in [0, 1)');
  if (typeof layer_norm_epsilon !== 'number' || !(layer_norm_epsilon > 0))
    bad('layer_norm_epsilon', 'a positive number');
  if (typeof initializer_factor !== 'number' || !(initializer_factor > 0))
    bad('initializer_factor', 'a positive number');
  if (config.feed_forward_proj !== 'gated-gelu' && config.feed_forward_proj !== 'relu') {
    bad('feed_forward_proj', `'gated-gelu' or 'relu'`);
  }
  if (typeof config.tie_word_embeddings !== 'boolean') bad('tie_word_embeddings', 'true or false');
  const scale = config.scale_decoder_outputs;
  if (scale !== undefined && typeof scale !== 'boolean') bad('scale_decoder_outputs', 'true or false');
  if (scale === true && !config.tie_word_embeddings) {
    bad('scale_decoder_outputs', 'false with tie_word_embeddings false (only a tied head is rescaled)');
  }
  for (const field of ['pad_token_id', 'eos_token_id', 'decoder_start_token_id'] as const) {
    const v = config[field];
    if (!Number.isSafeInteger(v) || v < 0 || v >= config.vocab_size)
      bad(field, `an integer in [0, ${config.vocab_size})`);
  }
  return config;
}

/** Whether the head rescales the decoder's output by d_model^-0.5 (see `scale_decoder_outputs`). */
export function scalesOutputs(config: Pick<T5Config, 'tie_word_embeddings' | 'scale_decoder_outputs'>): boolean {
  return config.scale_decoder_outputs ?? config.tie_word_embeddings;
}

/**
 * The fields of a preset a spec's `student.config` may override: the shape, the head, dropout and the position
 * buckets. Token ids, the epsilon and the initialiser scale stay the preset's; the vocabulary is `student.vocabSize`.
 */
export const CONFIG_OVERRIDE_FIELDS = [
  'd_model',
  'd_ff',
  'd_kv',
  'num_heads',
  'num_layers',
  'num_decoder_layers',
  'feed_forward_proj',
  'tie_word_embeddings',
  'scale_decoder_outputs',
  'dropout_rate',
  'relative_attention_num_buckets',
  'relative_attention_max_distance',
] as const;
export type ConfigOverrides = Partial<Pick<T5Shape, (typeof CONFIG_OVERRIDE_FIELDS)[number]>>;

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face config.json

/**
 * `T5Config`'s defaults in transformers, for the fields a `config.json` leaves out (the original t5-small's omits
 * `feed_forward_proj`, `num_decoder_layers` and `tie_word_embeddings`). mT5 is the same architecture with other
 * defaults.
 */
const HF_DEFAULTS: Record<
  't5' | 'mt5',
  Omit<T5Config, 'model_type' | 'num_decoder_layers' | 'decoder_start_token_id'>
> = {
  t5: {
    vocab_size: 32128,
    d_model: 512,
    d_kv: 64,
    d_ff: 2048,
    num_layers: 6,
    num_heads: 8,
    relative_attention_num_buckets: 32,
    relative_attention_max_distance: 128,
    dropout_rate: 0.1,
    layer_norm_epsilon: 1e-6,
    initializer_factor: 1,
    feed_forward_proj: 'relu',
    tie_word_embeddings: true,
    pad_token_id: 0,
    eos_token_id: 1,
  },
  mt5: {
    vocab_size: 250112,
    d_model: 512,
    d_kv: 64,
    d_ff: 1024,
    num_layers: 8,
    num_heads: 6,
    relative_attention_num_buckets: 32,
    relative_attention_max_distance: 128,
    dropout_rate: 0.1,
    layer_norm_epsilon: 1e-6,
    initializer_factor: 1,
    feed_forward_proj: 'gated-gelu',
    tie_word_embeddings: false,
    pad_token_id: 0,
    eos_token_id: 1,
  },
};

/**
 * A config from a T5 checkpoint's `config.json` (HF `T5Config` fields, its defaults for missing ones).
 *
 * `tie_word_embeddings` here means what it meant in transformers 4 and in every published T5 config: the output
 * layer is the embedding matrix with the d_model^-0.5 rescale (original T5) or a separate, unscaled `lm_head`
 * (t5-v1_1). transformers 5 writes the rescale as `scale_decoder_outputs` and always writes `tie_word_embeddings:
 * true` (keeping a checkpoint's distinct `lm_head.weight` apart on load), so the rescale flag decides when present;
 * whether `lm_head.weight` is really separate is for the importer to see in the weights (see hf.ts).
 * @throws InputError for a config of another architecture or with a field this model does not support.
 */
export function configFromHF(json: unknown): T5Config {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new InputError(`config.json is ${JSON.stringify(json)?.slice(0, 80)}; expected a JSON object`, 'config');
  }
  const hf = json as Record<string, unknown>;
  const modelType = hf.model_type ?? 't5';
  if (modelType !== 't5' && modelType !== 'mt5') {
    throw new InputError(
      `config.model_type is ${JSON.stringify(modelType)}; expected 't5' or 'mt5' (T5ForConditionalGeneration)`,
      'config.model_type'
    );
  }
  const defaults = HF_DEFAULTS[modelType];
  const pick = <K extends keyof typeof defaults>(key: K): (typeof defaults)[K] =>
    (hf[key] ?? defaults[key]) as (typeof defaults)[K];
  const feedForward = pick('feed_forward_proj') as string;
  if (feedForward !== 'gated-gelu' && feedForward !== 'relu') {
    throw new InputError(
      `config.feed_forward_proj is ${JSON.stringify(feedForward)}; expected 'gated-gelu' (t5-v1_1, flan-t5, mT5) or 'relu' (original T5)`,
      'config.feed_forward_proj'
    );
  }
  if (hf.is_decoder === true || hf.is_encoder_decoder === false) {
    throw new InputError('config describes a decoder-only or encoder-only T5; expected an encoder–decoder', 'config');
  }
  const eos = Array.isArray(hf.eos_token_id) ? hf.eos_token_id[0] : pick('eos_token_id');
  const scale =
    typeof hf.scale_decoder_outputs === 'boolean' ? hf.scale_decoder_outputs : pick('tie_word_embeddings') !== false;
  const numLayers = pick('num_layers');
  return validateConfig({
    model_type: 't5',
    vocab_size: pick('vocab_size'),
    d_model: pick('d_model'),
    d_kv: pick('d_kv'),
    d_ff: pick('d_ff'),
    num_layers: numLayers,
    num_decoder_layers: (hf.num_decoder_layers ?? numLayers) as number,
    num_heads: pick('num_heads'),
    relative_attention_num_buckets: pick('relative_attention_num_buckets'),
    relative_attention_max_distance: pick('relative_attention_max_distance'),
    dropout_rate: pick('dropout_rate'),
    layer_norm_epsilon: pick('layer_norm_epsilon'),
    feed_forward_proj: feedForward,
    tie_word_embeddings: scale,
    pad_token_id: pick('pad_token_id'),
    eos_token_id: eos as number,
    // T5 starts decoding from pad; configs written before the field existed leave it out.
    decoder_start_token_id: (hf.decoder_start_token_id ?? pick('pad_token_id')) as number,
    initializer_factor: pick('initializer_factor'),
  });
}

/**
 * The `config.json` transformers writes for this config (`T5ForConditionalGeneration`, float32), readable by
 * transformers 4 and 5 alike: `tie_word_embeddings` false means a separate, unscaled `lm_head`, and
 * `scale_decoder_outputs` says the same to transformers 5.
 */
export function toHFConfig(config: T5Config): Record<string, unknown> {
  validateConfig(config);
  const gated = config.feed_forward_proj === 'gated-gelu';
  return {
    architectures: ['T5ForConditionalGeneration'],
    classifier_dropout: 0,
    d_ff: config.d_ff,
    d_kv: config.d_kv,
    d_model: config.d_model,
    decoder_start_token_id: config.decoder_start_token_id,
    dense_act_fn: gated ? 'gelu_new' : 'relu',
    dropout_rate: config.dropout_rate,
    dtype: 'float32',
    eos_token_id: config.eos_token_id,
    feed_forward_proj: config.feed_forward_proj,
    initializer_factor: config.initializer_factor,
    is_decoder: false,
    is_encoder_decoder: true,
    is_gated_act: gated,
    layer_norm_epsilon: config.layer_norm_epsilon,
    model_type: 't5',
    num_decoder_layers: config.num_decoder_layers,
    num_heads: config.num_heads,
    num_layers: config.num_layers,
    pad_token_id: config.pad_token_id,
    relative_attention_max_distance: config.relative_attention_max_distance,
    relative_attention_num_buckets: config.relative_attention_num_buckets,
    scale_decoder_outputs: scalesOutputs(config),
    // A tied head without the rescale is written as an untied copy (exportT5 writes lm_head.weight): transformers 4
    // would rescale a tied head, so only an explicit lm_head means the same thing to 4 and 5.
    tie_word_embeddings: scalesOutputs(config),
    use_cache: true,
    vocab_size: config.vocab_size,
  };
}

/** T5Config fields transformers 5 types as float and rejects as int, so `1` must be written `1.0`. */
const HF_FLOAT_FIELDS = ['initializer_factor', 'layer_norm_epsilon', 'dropout_rate', 'classifier_dropout'];

/** {@link toHFConfig} as the text of a `config.json`, with float fields written as floats. */
export function toHFConfigJson(config: T5Config): string {
  let text = JSON.stringify(toHFConfig(config), null, 2);
  for (const field of HF_FLOAT_FIELDS) {
    text = text.replace(new RegExp(`("${field}": )(-?\\d+)(,?\\n)`), '$1$2.0$3');
  }
  return text + '\n';
}
