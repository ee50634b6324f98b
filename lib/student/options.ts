/**
 * The student's training options: every choice, bound and default once. The pipeline spec's `student` section is
 * built from {@link studentOptionFields} (lib/pipeline/spec.ts) and `train()` takes what {@link parseStudentOptions}
 * returns, so a spec and a direct caller of `train()` are held to the same rules.
 *
 * Imported by the workflow bundle through the spec: zod only, no Node built-ins, no tfjs.
 */
import { z } from 'zod';
import { InputError } from '../errors';
import { fieldIssues, oneOf, showValue } from '../schema';
import type { ConfigOverrides } from './config';

/** The three methods the paper compares (train.ts describes each). */
export const METHODS = ['distill-step-by-step', 'standard-finetune', 'standard-distill'] as const;
export type Method = (typeof METHODS)[number];

/** Model sizes (their shapes are in config.ts). */
export const PRESET_NAMES = ['tiny', 'small', 'base', 'large'] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/** tfjs backends, fastest first (backend.ts tries them in this order). */
export const BACKEND_NAMES = ['tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
/** A backend, or `auto`: the first of {@link BACKEND_NAMES} that works here. */
export const BACKENDS = ['auto', ...BACKEND_NAMES] as const;
export type BackendChoice = (typeof BACKENDS)[number];

export const OPTIMIZERS = ['adamw', 'adafactor'] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];

/** Where the label a student learns to predict comes from. */
export const LABEL_SOURCES = ['gold', 'teacher'] as const;
export type LabelSource = (typeof LABEL_SOURCES)[number];

/** The tokenizer's smallest vocabulary: its special tokens plus room for a few merges. */
export const MIN_VOCAB_SIZE = 16;

/**
 * The label source a method trains on. Standard finetuning is gold by definition and standard distillation is
 * teacher by definition (the reference's `--model_type standard` with `--label_type gt` / `llm`). For distilling
 * step-by-step the reference's default is `--label_type gt`: gold labels for `predict:` with the teacher's
 * rationales for `explain:` (the paper's comparison against standard finetuning); `--label_type llm` (teacher
 * labels, the comparison against standard distillation on unlabelled data) is `labelSource: 'teacher'`.
 */
export function defaultLabelSource(method: Method): LabelSource {
  return method === 'standard-distill' ? 'teacher' : 'gold';
}

const positive = z.number().int().min(1).max(1_000_000);
/**
 * Overrides of single fields of the preset's T5 shape (HF `T5Config` names), each checked here; across fields only
 * what T5 itself requires is checked: a rescaled output needs a tied head. `d_model` need not equal
 * `num_heads × d_kv` (t5-v1_1's shapes do not), and the vocabulary is `vocabSize`, not a config field.
 */
const configOverrides = z
  .object({
    d_model: positive.optional(),
    d_ff: positive.optional(),
    d_kv: positive.optional(),
    num_heads: positive.optional(),
    num_layers: positive.optional(),
    num_decoder_layers: positive.optional(),
    feed_forward_proj: oneOf(['gated-gelu', 'relu']).optional(),
    tie_word_embeddings: z.boolean().optional(),
    scale_decoder_outputs: z.boolean().optional(),
    dropout_rate: z.number().min(0).lt(1).optional(),
    relative_attention_num_buckets: z.number().int().min(4).max(4096).optional(),
    relative_attention_max_distance: positive.optional(),
  })
  .strict() satisfies z.ZodType<ConfigOverrides>;

/** The options a pipeline spec's `student` section exposes, in the order the spec lists them. */
export const studentOptionFields = {
  method: oneOf(METHODS).default('distill-step-by-step'),
  /** Weight of the label loss; the rationale loss gets 1 − alpha (distill-step-by-step only). The paper's is 0.5. */
  alpha: z.number().min(0).max(1).default(0.5),
  /**
   * Labels `predict:` learns from (see {@link defaultLabelSource}). Default: gold for standard finetuning and for
   * distill-step-by-step, teacher for standard distillation. `teacher` with distill-step-by-step is the paper's
   * unlabelled-data setting (`--label_type llm`).
   */
  labelSource: oneOf(LABEL_SOURCES).optional(),
  /** Model size; `config` overrides single fields of it. */
  preset: oneOf(PRESET_NAMES).default('tiny'),
  /** Overrides of single fields of the preset's shape (`d_model`, `dropout_rate`, …); see configOverrides. */
  config: configOverrides.optional(),
  /** Tokenizer vocabulary size requested (default 8000; a small corpus gives fewer). */
  vocabSize: z.number().int().min(MIN_VOCAB_SIZE).max(1_000_000).optional(),
  /** Optimiser steps (one batch of label pairs, plus its rationale pairs for distill-step-by-step, per step). */
  steps: z.number().int().min(1).max(10_000_000).default(400),
  /** Examples per step (each gives a label pair, and a rationale pair for distill-step-by-step). */
  batchSize: z.number().int().min(1).max(4096).default(32),
  /** Peak learning rate, reached after the warmup. Above 1 is a typo (3 for 3e-3), not a schedule. */
  learningRate: z.number().gt(0).max(1).default(3e-3),
  /** Decides the initial weights, the batches and the dropout masks. */
  seed: z.number().int().default(0),
  /**
   * Tokens kept of a source (eos included); longer ones are truncated like HF's `truncation=True`. At least 8: the
   * `predict: ` / `explain: ` prefix alone takes several, and a shorter limit would leave no input to learn from.
   */
  maxInputLength: z.number().int().min(8).max(4096).default(64),
  /** Tokens kept of a label target, eos included. */
  maxTargetLength: z.number().int().min(2).max(4096).default(16),
  /** Tokens kept of a rationale target, eos included. */
  maxRationaleLength: z.number().int().min(2).max(4096).default(64),
  /** tfjs backend: `auto` walks the ladder tensorflow (native) → wasm → cpu and records the one used. */
  backend: oneOf(BACKENDS).default('auto'),
  /** `adamw` (the reference's, through HF's Trainer) or `adafactor` (T5's own, as HF's `optim="adafactor"` runs it). */
  optimizer: oneOf(OPTIMIZERS).default('adamw'),
  /** Steps of linear learning-rate warmup from 0; the rate then decays linearly to 0 at the last step. */
  warmupSteps: z.number().int().min(0).default(0),
  /** Validation loss every this many steps (and at the end); the best weights by it are kept. Default: at the end. */
  evalEvery: z.number().int().min(1).optional(),
  /** Stop after this many validations in a row without a lower validation loss (needs evalEvery). Default: never. */
  earlyStoppingPatience: z.number().int().min(1).optional(),
  /** A resume checkpoint is handed out every this many steps: at most this many are redone after a crash. */
  checkpointEvery: z.number().int().min(1).default(100),
  /** ... and at least this often, in minutes, however long steps take. */
  checkpointEveryMinutes: z.number().gt(0).default(10),
};

/**
 * Adafactor settings. Defaults: HF Trainer's `optim="adafactor"` (no parameter scaling, no relative step, so the
 * warmup/decay schedule of `learningRate` drives it). With `relativeStep`, Adafactor sets its own step size and
 * `learningRate` and the schedule are unused. optim.ts has the arithmetic.
 */
const adafactorSchema = z
  .object({
    /** Multiply the step size by max(eps2, RMS(param)). */
    scaleParameter: z.boolean().default(false),
    /** Ignore `learningRate` and use min(1e-2, 1/√t). */
    relativeStep: z.boolean().default(false),
    /** With `relativeStep`, warm up as min(1e-6·t, 1/√t) instead. */
    warmupInit: z.boolean().default(false),
    /** null keeps no first moment, which is what makes Adafactor memory-light. */
    beta1: z.number().min(0).lt(1).nullable().default(null),
    /** Updates are scaled down so their RMS is at most this. */
    clipThreshold: z.number().default(1),
    /** The second-moment decay is 1 − t^decayRate. */
    decayRate: z.number().default(-0.8),
  })
  .strict()
  .refine((a) => !a.warmupInit || a.relativeStep, {
    path: ['warmupInit'],
    message: 'expected only with adafactor.relativeStep true (it warms up the relative step)',
  });

/** Tuning the pipeline leaves at its defaults (HF Trainer's); benches, tests and direct callers of train() set it. */
export const studentTuningFields = {
  /** Weight decay, never on layer norms: decoupled for AdamW, HF's lr-scaled form for Adafactor. HF's default 0. */
  weightDecay: z.number().min(0).lt(1).default(0),
  /** Clip gradients to this global norm (HF's default 1). */
  maxGradNorm: z.number().gt(0).default(1),
  adafactor: adafactorSchema.default(adafactorSchema.parse({})),
  /** Batch examples of similar length together, so batches pad less (HF's `group_by_length`). */
  groupByLength: z.boolean().default(true),
  /**
   * Return the weights with the lowest validation loss rather than the last ones (HF's `load_best_model_at_end`);
   * without validation records the last weights are returned.
   */
  keepBest: z.boolean().default(true),
};

type Checked = {
  method: Method;
  config?: ConfigOverrides;
  vocabSize?: number;
  init?: string;
  labelSource?: LabelSource;
  evalEvery?: number;
  earlyStoppingPatience?: number;
};

/** The checks that span options; shared by the spec's student section and {@link studentOptionsSchema}. */
export function checkStudentOptions(s: Checked, ctx: z.core.$RefinementCtx<Checked>): void {
  if (s.earlyStoppingPatience !== undefined && s.evalEvery === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['earlyStoppingPatience'],
      message: 'early stopping counts validations: set evalEvery too',
    });
  }
  const head = s.config;
  if (head?.scale_decoder_outputs === true && head.tie_word_embeddings === false) {
    ctx.addIssue({
      code: 'custom',
      path: ['config', 'scale_decoder_outputs'],
      message: 'only a tied head is rescaled: expected false with tie_word_embeddings false',
    });
  }
  // An init checkpoint's weights fix the shape and its tokenizer the vocabulary: an override would be ignored or
  // would not fit the weights, so it is refused rather than dropped. (Its dropout could be overridden without
  // touching the weights, but train() takes the init's config whole, so that is refused too for now.)
  if (s.init !== undefined && s.config !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['config'],
      message:
        'the init checkpoint brings its own config and fixes the shape: expected no student.config with student.init',
    });
  }
  if (s.init !== undefined && s.vocabSize !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['vocabSize'],
      message: 'the init checkpoint brings its own tokenizer: expected no student.vocabSize with student.init',
    });
  }
  const byDefinition = defaultLabelSource(s.method);
  if (s.labelSource && s.method !== 'distill-step-by-step' && s.labelSource !== byDefinition) {
    ctx.addIssue({
      code: 'custom',
      path: ['labelSource'],
      message: `${s.method} trains on ${byDefinition} labels by definition`,
    });
  }
}

export const studentOptionsSchema = z
  .object({ ...studentOptionFields, ...studentTuningFields })
  .strict()
  .superRefine(checkStudentOptions);

/** Training options as a caller writes them (defaults may be omitted). */
export type StudentOptionsInput = z.input<typeof studentOptionsSchema>;
/** Validated training options, every default filled in: what `train()` takes. */
export type StudentOptions = z.output<typeof studentOptionsSchema>;
/** The spec-exposed options, as the spec's parsed `student` section holds them. */
export type StudentSpecOptions = z.output<z.ZodObject<typeof studentOptionFields>>;

/**
 * Validate training options and fill their defaults.
 * @throws InputError naming the first bad option, its value and what was expected.
 */
export function parseStudentOptions(input: StudentOptionsInput): StudentOptions {
  const result = studentOptionsSchema.safeParse(input);
  if (result.success) return result.data;
  const [first] = fieldIssues(result.error, input, 'options');
  throw new InputError(`${first.field} is ${showValue(first.value)}; ${first.message}`, first.field);
}

const SPEC_OPTION_KEYS = Object.keys(studentOptionFields) as (keyof StudentSpecOptions)[];
const TUNING_DEFAULTS = z.object(studentTuningFields).parse({});

/**
 * The training options of a parsed spec's `student` section (which the spec has validated already), tuning at its
 * defaults. Fields of the section that are not training options (`init`, timeouts) are left out.
 */
export function studentOptionsOf(section: StudentSpecOptions): StudentOptions {
  const picked = Object.fromEntries(
    SPEC_OPTION_KEYS.filter((key) => section[key] !== undefined).map((key) => [key, section[key]])
  ) as StudentSpecOptions;
  return { ...TUNING_DEFAULTS, ...picked };
}
