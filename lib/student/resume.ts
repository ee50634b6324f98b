/**
 * What makes a resumed run exact: the loop's own state saved beside the tensors of a resume checkpoint, and the
 * checks that a run resuming from one has the options and data the checkpoint was trained with.
 */
import { createHash } from 'node:crypto';
import { InputError } from '../errors';
import type { OptimizerState } from './optim';
import type { LabelSource } from './options';
import type { PairSet } from './pairs';
import type { SamplerState } from './sampler';
import type { LossPoint, TrainOptions, ValidPoint } from './train';

/** The training loop's own state in a resume checkpoint (tensors travel beside it). */
export interface TrainState {
  version: 1;
  step: number;
  sampler: SamplerState;
  optimizer: Omit<OptimizerState, 'tensors'>;
  history: LossPoint[];
  /** Validations so far (absent in checkpoints from before they were recorded). */
  validHistory?: ValidPoint[];
  lastPoint?: LossPoint;
  /** The last ≤ 10 losses, for `finalLoss`. */
  recent: number[];
  validLoss?: number;
  lastEvalStep?: number;
  best?: { step: number; loss: number };
  evalsSinceBest: number;
  /** {@link trajectoryOptions} of the run. */
  options: Record<string, unknown>;
  /** {@link dataHash} of the run. */
  data: string;
}

/** JSON with object keys sorted, so equal values compare equal whatever order they were built in. */
function stableJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
      : v
  );
}

/** The Adafactor settings a run uses: its own, with the run's weight decay (HF's lr-scaled form). */
export function adafactorOf(opts: Pick<TrainOptions, 'adafactor' | 'weightDecay'>) {
  return { ...opts.adafactor, weightDecay: opts.weightDecay };
}

/**
 * The options that decide a run's trajectory (not where it runs or how often it checkpoints). A resumed run must
 * match them: continuing with another batch size or schedule would give a curve no uninterrupted run has.
 */
export function trajectoryOptions(opts: TrainOptions, labelSource: LabelSource): Record<string, unknown> {
  return {
    method: opts.method,
    alpha: opts.alpha,
    labelSource,
    preset: opts.preset,
    config: opts.config ?? {},
    steps: opts.steps,
    batchSize: opts.batchSize,
    learningRate: opts.learningRate,
    warmupSteps: opts.warmupSteps,
    weightDecay: opts.weightDecay,
    maxGradNorm: opts.maxGradNorm,
    seed: opts.seed,
    maxInputLength: opts.maxInputLength,
    maxTargetLength: opts.maxTargetLength,
    maxRationaleLength: opts.maxRationaleLength,
    vocabSize: opts.vocabSize ?? null,
    initFrom: opts.initFrom ? createHash('sha256').update(opts.initFrom).digest('hex') : null,
    optimizer: opts.optimizer,
    adafactor: opts.optimizer === 'adafactor' ? adafactorOf(opts) : null,
    groupByLength: opts.groupByLength,
    evalEvery: opts.evalEvery ?? null,
    earlyStoppingPatience: opts.earlyStoppingPatience ?? null,
    keepBest: opts.keepBest,
  };
}

/** sha256 of the training and validation pairs: a resumed run must see the same data. */
export function dataHash(pairs: PairSet, validPairs: PairSet | undefined): string {
  return createHash('sha256')
    .update(JSON.stringify([pairs, validPairs ?? null]))
    .digest('hex');
}

/**
 * @throws InputError when `state` is not one this version wrote, or belongs to a run with other options, other data,
 *   or a run already at its last step.
 */
export function checkResumable(state: TrainState, options: Record<string, unknown>, data: string, steps: number): void {
  if (state.version !== 1 || !Number.isSafeInteger(state.step) || !state.options || !state.sampler) {
    throw new InputError(`resumeFrom holds training state of an unknown version`, 'resumeFrom');
  }
  for (const [key, value] of Object.entries(options)) {
    const saved = state.options[key];
    if (stableJson(saved) !== stableJson(value)) {
      throw new InputError(
        `${key} is ${stableJson(value)} but resumeFrom was trained with ${stableJson(saved)}; a resumed run needs the options it started with`,
        key
      );
    }
  }
  if (state.data !== data) {
    throw new InputError(
      'records (or valid) differ from those resumeFrom was trained on; a resumed run needs the same data',
      'records'
    );
  }
  if (state.step >= steps) {
    throw new InputError(`resumeFrom is at step ${state.step}, the end of a ${steps}-step run`, 'resumeFrom');
  }
}
