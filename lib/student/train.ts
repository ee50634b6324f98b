/**
 * Training the student with the three methods the paper compares:
 *
 * - `distill-step-by-step`: multi-task training. Every example gives a `predict: <input>` → label pair and an
 *   `explain: <input>` → rationale pair; each step runs both on the same examples and minimises
 *   α·label_loss + (1−α)·rationale_loss (reference: `TaskPrefixTrainer.compute_loss`).
 * - `standard-finetune`: `<input>` → gold label, no prefix, no teacher.
 * - `standard-distill`: `<input>` → the teacher's label, no prefix.
 *
 * The optimisation follows the reference's HF `Seq2SeqTrainer` defaults: AdamW (β 0.9/0.999, ε 1e-8, weight decay 0
 * unless set, never on layer norms), linear warmup then linear decay to 0, gradient clipping at global norm 1; or
 * Adafactor, T5's own optimiser (optim.ts). Batches group examples of similar length; validation every N steps keeps
 * the best weights and can stop early.
 *
 * Resumable: every `checkpointEvery` steps (and `checkpointEveryMinutes`) the loop hands out a resume checkpoint
 * holding weights, optimiser state, step, sampler position, loss history and best-so-far; `resumeFrom` continues
 * from one along exactly the trajectory the uninterrupted run takes. Everything random is a function of the seed
 * and the step (dropout masks) or saved (the sampler's generator), which is what makes that exact.
 */
import { InputError } from '../errors';
import { initBackend, type BackendName } from './backend';
import {
  checkpointBytes,
  loadCheckpoint,
  readResumeCheckpoint,
  readResumeCheckpointFile,
  writeCheckpointFile,
  type ResumeCheckpoint,
  type TrainingMeta,
} from './checkpoint';
import { collectGarbage } from './checkpoint-file';
import { makeConfig, type T5Config } from './config';
import { setLoss } from './loss';
import { TrainingLoop } from './loop';
import { createOptimizer, type OptimizerName } from './optim';
import {
  defaultLabelSource,
  parseStudentOptions,
  type LabelSource,
  type Method,
  type StudentOptions,
  type StudentOptionsInput,
} from './options';
import { buildPairs, encodePairs, exampleLengths, type LengthLimits, type PairSet, type TrainRecord } from './pairs';
import { adafactorOf, checkResumable, dataHash, trajectoryOptions, type TrainState } from './resume';
import { BatchSampler } from './sampler';
import { T5Model } from './t5';
import { loadTokenizer, trainTokenizer, type StudentTokenizer } from './tokenizer';

/** What a run trains on and from, beside its options: data and bytes, not settings a spec could hold. */
export interface TrainInputs {
  /** Validation records: the loss every `evalEvery` steps (and at the end) is computed on them. */
  valid?: TrainRecord[];
  /**
   * A resume checkpoint (from `hooks.onCheckpoint`) of a run with the same records and options: training continues
   * after its step and follows the uninterrupted run's trajectory exactly (same batches, dropout masks, optimiser
   * state; bit for bit on the same backend).
   */
  resumeFrom?: Uint8Array;
  /**
   * `resumeFrom` as a file, read tensor by tensor rather than whole: a resume checkpoint is the weights and optimiser
   * state over again, and the training child (child-main.ts) must not hold it beside them.
   */
  resumeFromFile?: string;
  /**
   * Start from these weights instead of a fresh init: a Stepwise checkpoint (from `stepwise import-t5`, or a trained
   * student). Its config and tokenizer replace `preset`, `config` and `vocabSize`. A resumed run needs it too (its hash
   * is among the options a resume must match) but starts from the weights the resume checkpoint holds.
   */
  initFrom?: Uint8Array;
}

/** What `train()` takes: validated options (options.ts documents each) and the run's inputs. */
export type TrainOptions = StudentOptions & TrainInputs;
/** {@link TrainOptions} as a caller writes them, defaults omitted. */
export type TrainOptionsInput = StudentOptionsInput & TrainInputs;

/**
 * For callers outside the pipeline (whose spec is validated already): validate options and fill their defaults.
 * @throws InputError naming the first bad option, its value and what was expected.
 */
export function parseTrainOptions(input: TrainOptionsInput): TrainOptions {
  const { valid, resumeFrom, resumeFromFile, initFrom, ...options } = input;
  for (const [field, bytes] of [
    ['resumeFrom', resumeFrom],
    ['initFrom', initFrom],
  ] as const) {
    if (bytes !== undefined && !(bytes instanceof Uint8Array)) {
      throw new InputError(`${field} is ${typeof bytes}; expected the bytes of a checkpoint`, field);
    }
  }
  return {
    ...parseStudentOptions(options),
    ...(valid ? { valid } : {}),
    ...(resumeFrom ? { resumeFrom } : {}),
    ...(resumeFromFile !== undefined ? { resumeFromFile } : {}),
    ...(initFrom ? { initFrom } : {}),
  };
}

export interface TrainProgress {
  step: number;
  totalSteps: number;
  /** The objective minimised this step. */
  loss: number;
  labelLoss: number;
  rationaleLoss?: number;
  /** The schedule's learning rate this step. */
  learningRate: number;
  /** Non-pad source and target tokens per second over this step. */
  tokensPerSec: number;
  /** Present on steps where the validation loss was computed. */
  validLoss?: number;
}

/** A resume checkpoint handed out during training. */
export interface TrainCheckpoint {
  /** Steps completed when it was taken; resuming from it continues with step + 1. */
  step: number;
  /** Resume checkpoint bytes, for `TrainOptions.resumeFrom`. */
  bytes: Buffer;
}

export interface TrainHooks {
  onProgress?(p: TrainProgress): void;
  /** Polled every step; returning true ends training early with a checkpoint of the steps done. */
  shouldStop?(): boolean;
  /** Receives resume checkpoints (see `checkpointEvery`); awaited, so training waits while it is written. */
  onCheckpoint?(c: TrainCheckpoint): void | Promise<void>;
  /**
   * Resume checkpoints as files instead of bytes, in place of `onCheckpoint`: each is streamed to `path(step)` one
   * tensor at a time (never a second copy of the weights and optimiser state in memory), atomically, and then
   * `written` is awaited.
   */
  checkpointFiles?: {
    path(step: number): string;
    written(c: { step: number; path: string }): void | Promise<void>;
  };
}

export interface LossPoint {
  step: number;
  loss: number;
  labelLoss: number;
  rationaleLoss?: number;
  /** The schedule's learning rate at this step (absent in logs from before it was recorded). */
  learningRate?: number;
}

/** One validation: the set's loss and its parts, after `step` steps. */
export interface ValidPoint {
  step: number;
  loss: number;
  labelLoss: number;
  rationaleLoss?: number;
}

/** Why training ended. */
export type StopReason = 'completed' | 'early-stopping' | 'stopped';

export interface TrainResult {
  /** safetensors bytes: weights (the best by validation loss, see `keepBest`), config, tokenizer and metadata. */
  checkpoint: Buffer;
  backend: string;
  /** The backend's own description (`describeBackend().detail`: device, and whether Stepwise's kernels ran). */
  backendDetail?: string;
  optimizer: OptimizerName;
  /** Steps completed (fewer than asked when stopped early). */
  steps: number;
  stopReason: StopReason;
  /** Mean loss over the last 10 steps (a single step's loss is one batch's noise). */
  finalLoss: number;
  /** Every step for short runs; about 500 evenly spaced points (and the last step) for long ones. */
  lossHistory: LossPoint[];
  /** Every validation of the run, with its label and rationale parts (empty without a validation set). */
  validHistory: ValidPoint[];
  /** Non-pad tokens per second at the loss history's steps, of this call only (a resumed run's start is not in it). */
  throughput: { step: number; tokensPerSec: number }[];
  /** Validation loss of the weights in `checkpoint`. */
  validLoss?: number;
  /** The step whose weights `checkpoint` holds when validation ran. */
  bestStep?: number;
  /** The step this run resumed after (from `resumeFrom`). */
  resumedFrom?: number;
  /** Resume checkpoints handed to `onCheckpoint`. */
  checkpoints: number;
  tokenizerVocab: number;
  /** The model's full T5 config: the preset with `config` overrides and the tokenizer's vocabulary, or the init's. */
  config: T5Config;
  params: number;
  /** Wall time of this call (a resumed run's time before the resume is not included). */
  wallMs: number;
}

/** The resume checkpoint a run continues from, if any: `resumeFrom`'s bytes, or `resumeFromFile`'s, read by tensor. */
async function readSaved(opts: TrainOptions): Promise<ResumeCheckpoint | undefined> {
  if (opts.resumeFromFile !== undefined) {
    if (opts.resumeFrom) {
      throw new InputError('resumeFrom and resumeFromFile are both set; expected at most one', 'resumeFromFile');
    }
    if (typeof opts.resumeFromFile !== 'string' || opts.resumeFromFile === '') {
      throw new InputError(
        `resumeFromFile is ${JSON.stringify(opts.resumeFromFile)}; expected the path of a checkpoint file`,
        'resumeFromFile'
      );
    }
    return readResumeCheckpointFile(opts.resumeFromFile);
  }
  return opts.resumeFrom ? readResumeCheckpoint(opts.resumeFrom) : undefined;
}

/** The run's data and options checked against each other, as pairs, and what a resume must match. */
function prepare(
  records: readonly TrainRecord[],
  opts: TrainOptions,
  saved: ResumeCheckpoint | undefined
): {
  labelSource: LabelSource;
  pairs: PairSet;
  validPairs?: PairSet;
  options: Record<string, unknown>;
  data: string;
  saved?: ResumeCheckpoint;
} {
  if (opts.earlyStoppingPatience !== undefined && !opts.valid?.length) {
    throw new InputError(
      `earlyStoppingPatience is ${opts.earlyStoppingPatience}; expected to be set only with valid records to evaluate on`,
      'earlyStoppingPatience'
    );
  }
  if (!Array.isArray(records) || records.length === 0) {
    throw new InputError(`records has ${Array.isArray(records) ? 0 : 'no'} examples; expected at least one`, 'records');
  }
  const labelSource = opts.labelSource ?? defaultLabelSource(opts.method);
  const pairs = buildPairs(records, opts.method, { labelSource });
  const validPairs = opts.valid?.length ? buildPairs(opts.valid, opts.method, { labelSource }) : undefined;
  const options = trajectoryOptions(opts, labelSource);
  const data = dataHash(pairs, validPairs);
  if (saved) checkResumable(saved.state as unknown as TrainState, options, data, opts.steps);
  return { labelSource, pairs, options, data, ...(validPairs ? { validPairs } : {}), ...(saved ? { saved } : {}) };
}

/**
 * The tokenizer, config and weights training starts from: a resume checkpoint's, a pretrained init's, or new ones
 * (a tokenizer trained on the run's text, T5 initialised from the seed).
 */
async function startingPoint(
  pairs: PairSet,
  opts: TrainOptions,
  saved: ResumeCheckpoint | undefined
): Promise<{ tokenizer: StudentTokenizer; config: T5Config; model: T5Model }> {
  if (saved) {
    // A resumed run reuses the tokenizer it started with: the ids its weights were trained on.
    return {
      tokenizer: loadTokenizer(saved.tokenizer),
      config: saved.config,
      model: T5Model.fromWeights(saved.config, saved.weights),
    };
  }
  if (opts.initFrom) {
    // A pretrained init brings its own tokenizer and shape, for the same reason.
    const init = loadCheckpoint(opts.initFrom, { field: 'initFrom' });
    return { tokenizer: init.tokenizer, config: init.config, model: init.model };
  }
  const tokenizer = await trainTokenizer(
    [pairs.label, pairs.rationale ?? []].flatMap((set) => set.flatMap((p) => [p.source, p.target])),
    { vocabSize: opts.vocabSize }
  );
  const config = makeConfig(opts.preset, tokenizer.vocabSize, opts.config);
  return { tokenizer, config, model: T5Model.init(config, opts.seed) };
}

/**
 * Trains a student: tokenizer on the run's text, T5 initialised from `seed`, then `steps` optimiser steps; or, with
 * `resumeFrom`, continues a run from its checkpoint. The same records, options and seed give the same loss curve on
 * one backend, interrupted and resumed or not.
 * @param opts validated options: a spec's (`studentOptionsOf`), or {@link parseTrainOptions}'s.
 * @throws InputError for records the method cannot use (the message names the record and field), or a
 *   `resumeFrom` that does not belong to these records and options.
 */
export async function train(
  records: readonly TrainRecord[],
  opts: TrainOptions,
  hooks: TrainHooks = {}
): Promise<TrainResult> {
  const started = Date.now();
  return runTraining(await setUp(records, opts), started, hooks, ({ result, checkpoint }) => ({
    ...result,
    checkpoint: checkpointBytes(checkpoint),
  }));
}

/**
 * {@link train}, with the trained checkpoint streamed to `path` (atomically, one tensor at a time) rather than
 * returned as bytes: what a process that must not hold a second copy of a big model's weights calls (child-main.ts).
 */
export async function trainToFile(
  records: readonly TrainRecord[],
  opts: TrainOptions,
  path: string,
  hooks: TrainHooks = {}
): Promise<Omit<TrainResult, 'checkpoint'> & { checkpointPath: string }> {
  const started = Date.now();
  return runTraining(await setUp(records, opts), started, hooks, async ({ result, checkpoint }) => {
    await writeCheckpointFile(path, checkpoint);
    return { ...result, checkpointPath: path };
  });
}

/** A run ready for its first step. */
interface Session {
  loop: TrainingLoop;
  model: T5Model;
  optimizer: ReturnType<typeof createOptimizer>;
}

/**
 * Everything before the first step: data, tokenizer, model, optimiser and loop, restored from the resume checkpoint
 * if there is one. A function of its own, whose caller keeps only the {@link Session}, so that what the run started
 * from (checkpoint bytes, the tensors decoded from them: the weights and optimiser state over again) is unreachable
 * once training begins; a suspended async function would keep its locals, and a resumed run carried its checkpoint.
 */
async function setUp(records: readonly TrainRecord[], opts: TrainOptions): Promise<Session> {
  const { labelSource, pairs, validPairs, options, data, saved } = prepare(records, opts, await readSaved(opts));
  const { backend } = await initBackend(opts.backend);
  const { tokenizer, config, model } = await startingPoint(pairs, opts, saved);
  // The loop keeps its options through the run: without the checkpoint bytes among them.
  const loopOpts = { ...opts, resumeFrom: undefined, resumeFromFile: undefined, initFrom: undefined };
  let optimizer: ReturnType<typeof createOptimizer> | undefined;
  try {
    const trainSet = encodePairs(tokenizer, pairs, opts);
    const validSet = validPairs && encodePairs(tokenizer, validPairs, opts);
    // HF's Trainer exempts layer norms from weight decay.
    const params = [...model.variables].map(([name, variable]) => ({
      name,
      variable,
      decay: !name.includes('layer_norm'),
    }));
    optimizer = createOptimizer(opts.optimizer, params, {
      adamw: { weightDecay: opts.weightDecay },
      adafactor: adafactorOf(opts),
    });
    const loop = new TrainingLoop({
      opts: loopOpts,
      labelSource,
      backend,
      model,
      config,
      tokenizer,
      optimizer,
      variables: params.map((p) => p.variable),
      sampler: new BatchSampler(exampleLengths(trainSet), opts.batchSize, opts.seed, opts.groupByLength),
      trainSet,
      validSet,
      trainExamples: records.length,
      options,
      data,
    });
    if (saved) loop.restore(saved);
    return { loop, model, optimizer };
  } catch (err) {
    optimizer?.dispose();
    model.dispose();
    throw err;
  }
}

/** Trains a session to its end; `output` turns its outcome into the caller's while the model still exists. */
async function runTraining<R>(
  session: Session,
  started: number,
  hooks: TrainHooks,
  output: (outcome: ReturnType<TrainingLoop['finish']>) => R | Promise<R>
): Promise<R> {
  const { loop, model } = session;
  let optimizer: Session['optimizer'] | undefined = session.optimizer;
  try {
    // What the run started from is garbage now (see setUp): collected where the process allows, so that it is not
    // part of training's peak memory.
    collectGarbage();
    await loop.run(hooks);
    // The final checkpoint holds no optimiser state: its slots (twice the weights, for AdamW) are freed first.
    optimizer.dispose();
    optimizer = undefined;
    return await output(loop.finish(started));
  } finally {
    optimizer?.dispose();
    model.dispose();
  }
}

/**
 * The validation loss of a checkpoint's student on `records`, computed as its training run computed it (same
 * method, alpha, label source, truncation and batch size, read from the checkpoint).
 * @throws InputError for a malformed checkpoint or records the method cannot use.
 */
export async function validationLoss(
  checkpoint: Uint8Array,
  records: readonly TrainRecord[],
  opts: { backend?: BackendName | 'auto' } = {}
): Promise<number> {
  await initBackend(opts.backend ?? 'auto');
  const { model, tokenizer, training } = loadCheckpoint(checkpoint);
  try {
    const t = training as TrainingMeta & LengthLimits & { labelSource?: LabelSource; batchSize: number };
    const pairs = buildPairs(records, t.method as Method, { labelSource: t.labelSource });
    const set = encodePairs(tokenizer, pairs, t);
    return setLoss(model, set, t.alpha, Number(t.batchSize));
  } finally {
    model.dispose();
  }
}
