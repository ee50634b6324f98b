/**
 * The training loop: optimiser steps on length-grouped batches, validation every `evalEvery` steps with the best
 * weights kept and early stopping, and resume checkpoints that hold everything needed to continue exactly (see
 * train.ts for the contract and resume.ts for the saved state).
 */
import {
  checkpointBytes,
  copyWeights,
  modelCheckpoint,
  resumeCheckpoint,
  weightSources,
  writeCheckpointFile,
  type CheckpointParts,
  type ResumeCheckpoint,
  type TrainingMeta,
} from './checkpoint';
import type { T5Config } from './config';
import { batchLoss, disposeBatch, makeBatch, setLossParts } from './loss';
import { describeBackend } from './backend';
import { clipScale, type Optimizer } from './optim';
import type { LabelSource } from './options';
import type { EncodedSet } from './pairs';
import { adafactorOf, type TrainState } from './resume';
import type { BatchSampler } from './sampler';
import { hashString, type NamedWeight, type T5Model } from './t5';
import { tf } from './tf';
import type { StudentTokenizer } from './tokenizer';
import type { LossPoint, StopReason, TrainHooks, TrainOptions, TrainResult, ValidPoint } from './train';

/** Linear warmup to the peak, then linear decay to 0 at the last step (HF `get_linear_schedule_with_warmup`). */
export function learningRateAt(step: number, peak: number, warmupSteps: number, totalSteps: number): number {
  if (step < warmupSteps) return (peak * step) / Math.max(1, warmupSteps);
  return peak * Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Everything the loop works with that stays put while it runs. */
export interface LoopSetup {
  opts: TrainOptions;
  labelSource: LabelSource;
  backend: string;
  model: T5Model;
  config: T5Config;
  tokenizer: StudentTokenizer;
  optimizer: Optimizer;
  /** The model's variables, in the order of the optimiser's parameters. */
  variables: tf.Variable[];
  sampler: BatchSampler;
  trainSet: EncodedSet;
  validSet?: EncodedSet;
  trainExamples: number;
  /** What resume checkpoints record of the run, for the checks of a later resume (resume.ts). */
  options: Record<string, unknown>;
  data: string;
}

/** One optimiser step's figures, as `onProgress` reports them. */
interface StepOutcome {
  point: LossPoint;
  lr: number;
  tokens: number;
  seconds: number;
}

/** The loop's state: {@link TrainState} with the live best weights, plus this call's own counters. */
export class TrainingLoop {
  private step = 0;
  private history: LossPoint[] = [];
  /** Every validation, with its parts: the validation curves of the run report. */
  private validHistory: ValidPoint[] = [];
  /**
   * Tokens per second at the history's steps, this call's only: wall-clock figures, kept out of the loss history so
   * that stays a pure function of the data and options (a resumed run's curve equals an uninterrupted one's).
   */
  private throughput: { step: number; tokensPerSec: number }[] = [];
  private recent: number[] = [];
  private lastPoint?: LossPoint;
  private validLoss?: number;
  private lastEvalStep?: number;
  private best?: { step: number; loss: number; weights?: NamedWeight[] };
  private evalsSinceBest = 0;
  private stopReason: StopReason = 'completed';
  private checkpoints = 0;
  private lastCheckpointAt = Date.now();
  private resumedFrom?: number;
  /** About 500 evenly spaced history points, whatever the run's length. */
  private readonly historyEvery: number;

  constructor(private readonly s: LoopSetup) {
    this.historyEvery = Math.max(1, Math.floor(s.opts.steps / 500));
  }

  /** Continue from a resume checkpoint; the model already holds its weights. */
  restore(saved: ResumeCheckpoint): void {
    const state = saved.state as unknown as TrainState;
    this.s.optimizer.setState({ ...state.optimizer, tensors: saved.optimizer });
    this.s.sampler.restore(state.sampler);
    ({
      step: this.step,
      history: this.history,
      recent: this.recent,
      lastPoint: this.lastPoint,
      validLoss: this.validLoss,
      lastEvalStep: this.lastEvalStep,
      evalsSinceBest: this.evalsSinceBest,
    } = state);
    // Resume checkpoints from before validation parts were recorded hold none: the curve starts at the resume.
    this.validHistory = state.validHistory ?? [];
    if (state.best) {
      this.best = { ...state.best, ...(this.s.opts.keepBest ? { weights: saved.best ?? saved.weights } : {}) };
    }
    this.resumedFrom = this.step;
  }

  /** Steps until the last one, an early stop or `hooks.shouldStop`, handing out resume checkpoints on the way. */
  async run(hooks: TrainHooks): Promise<void> {
    const { opts, validSet } = this.s;
    while (this.step < opts.steps) {
      if (hooks.shouldStop?.()) {
        this.stopReason = 'stopped';
        break;
      }
      const { point, lr, tokens, seconds } = this.trainStep();
      const evalNow =
        validSet !== undefined && ((opts.evalEvery && this.step % opts.evalEvery === 0) || this.step === opts.steps);
      if (evalNow) this.evaluate(this.step === opts.steps);
      if (opts.earlyStoppingPatience && this.evalsSinceBest >= opts.earlyStoppingPatience) {
        this.stopReason = 'early-stopping';
      }
      hooks.onProgress?.({
        ...point,
        totalSteps: opts.steps,
        learningRate: lr,
        tokensPerSec: tokens / Math.max(seconds, 1e-6),
        ...(evalNow ? { validLoss: this.validLoss } : {}),
      });
      if (this.stopReason !== 'completed') break;
      await this.checkpointIfDue(hooks);
      // Lets IPC progress messages, parent disconnects and timers through between steps.
      await yieldToEventLoop();
    }
    if (validSet && this.step > 0 && this.lastEvalStep !== this.step) this.evaluate(true);
  }

  /** One optimiser step on the sampler's next batch. */
  private trainStep(): StepOutcome {
    const { opts, model, optimizer } = this.s;
    const started = performance.now();
    const batch = makeBatch(this.s.trainSet, this.s.sampler.next());
    const lr = learningRateAt(this.step, opts.learningRate, opts.warmupSteps, opts.steps);
    let parts: tf.Tensor[] = [];
    const { value, grads } = tf.variableGrads(() => {
      const loss = batchLoss(model, batch, opts.alpha, {
        training: true,
        // Seeded by step, not by a running generator: a resumed run draws the same dropout masks.
        dropoutSeed: hashString(`${opts.seed}:${this.step}`),
      });
      // Kept out of the gradient scope so the parts can be reported after it ends.
      parts = [loss.label, ...(loss.rationale ? [loss.rationale] : [])].map((t) => tf.keep(t));
      return loss.total;
    }, this.s.variables);
    const gradList = this.s.variables.map((p) => grads[p.name]);
    optimizer.apply(gradList, lr, clipScale(gradList, opts.maxGradNorm));
    const readback = tf.tidy(() => tf.stack([value, ...parts]).dataSync());
    tf.dispose([value, ...parts, ...gradList]);
    disposeBatch(batch);
    this.step += 1;

    const [loss, labelLoss, rationaleLoss] = Array.from(readback);
    if (!Number.isFinite(loss)) {
      throw new Error(`training diverged at step ${this.step}: loss is ${loss} (try a lower learningRate)`);
    }
    this.recent = [...this.recent.slice(-9), loss];
    const seconds = (performance.now() - started) / 1000;
    const point: LossPoint = {
      step: this.step,
      loss,
      labelLoss,
      ...(rationaleLoss !== undefined ? { rationaleLoss } : {}),
      // Recorded for the run report's learning-rate chart (deterministic, unlike the throughput kept apart).
      learningRate: lr,
    };
    this.lastPoint = point;
    if (this.step % this.historyEvery === 0 || this.step === opts.steps) {
      this.history.push(point);
      this.throughput.push({ step: this.step, tokensPerSec: batch.tokens / Math.max(seconds, 1e-6) });
    }
    return { point, lr, tokens: batch.tokens, seconds };
  }

  /** Validation; `final` when no step follows (the current weights are then the ones returned anyway). */
  private evaluate(final: boolean): void {
    const { model, validSet, opts } = this.s;
    if (!validSet) return;
    const parts = setLossParts(model, validSet, opts.alpha, opts.batchSize);
    const loss = parts.loss;
    this.validLoss = loss;
    this.validHistory.push({ step: this.step, ...parts });
    this.lastEvalStep = this.step;
    // Strictly lower, as HF's early stopping counts it: a tie is no improvement.
    if (!this.best || loss < this.best.loss) {
      this.best = { step: this.step, loss, ...(opts.keepBest && !final ? { weights: copyWeights(model) } : {}) };
      this.evalsSinceBest = 0;
    } else {
      this.evalsSinceBest += 1;
    }
  }

  private async checkpointIfDue(hooks: TrainHooks): Promise<void> {
    const { checkpointEvery, checkpointEveryMinutes, steps } = this.s.opts;
    const due =
      this.step % checkpointEvery === 0 || Date.now() - this.lastCheckpointAt >= checkpointEveryMinutes * 60_000;
    // None after the last step: the result is the final checkpoint.
    if (!(hooks.onCheckpoint || hooks.checkpointFiles) || !due || this.step >= steps) return;
    if (hooks.checkpointFiles) {
      // Streamed to the file tensor by tensor: the weights and optimiser state are never copied whole.
      const path = hooks.checkpointFiles.path(this.step);
      await writeCheckpointFile(path, this.resumeParts());
      await hooks.checkpointFiles.written({ step: this.step, path });
    } else {
      await hooks.onCheckpoint!({ step: this.step, bytes: checkpointBytes(this.resumeParts()) });
    }
    this.checkpoints += 1;
    this.lastCheckpointAt = Date.now();
  }

  /** The resume checkpoint of this step, its tensors read as it is written. */
  private resumeParts(): CheckpointParts {
    const { tensors, release, ...optimizerState } = this.s.optimizer.stateSources();
    const { best } = this;
    const state: TrainState = {
      version: 1,
      step: this.step,
      sampler: this.s.sampler.state,
      optimizer: optimizerState,
      history: this.history,
      validHistory: this.validHistory,
      ...(this.lastPoint ? { lastPoint: this.lastPoint } : {}),
      recent: this.recent,
      ...(this.validLoss !== undefined ? { validLoss: this.validLoss } : {}),
      ...(this.lastEvalStep !== undefined ? { lastEvalStep: this.lastEvalStep } : {}),
      ...(best ? { best: { step: best.step, loss: best.loss } } : {}),
      evalsSinceBest: this.evalsSinceBest,
      options: this.s.options,
      data: this.s.data,
    };
    return resumeCheckpoint({
      config: this.s.config,
      tokenizer: this.s.tokenizer,
      training: this.meta({ checkpoint: 'resume' }),
      state: state as unknown as Record<string, unknown>,
      weights: weightSources(this.s.model),
      optimizer: tensors,
      // The best weights are the current ones when the best is this step: no need to store them twice.
      ...(best?.weights && best.step !== this.step ? { best: best.weights } : {}),
      release,
    });
  }

  /** The training metadata every checkpoint of this run carries. */
  private meta(extra: Record<string, unknown> = {}): TrainingMeta {
    const { opts } = this.s;
    return {
      method: opts.method,
      alpha: opts.alpha,
      labelSource: this.s.labelSource,
      steps: this.step,
      requestedSteps: opts.steps,
      backend: this.s.backend,
      seed: opts.seed,
      batchSize: opts.batchSize,
      learningRate: opts.learningRate,
      warmupSteps: opts.warmupSteps,
      weightDecay: opts.weightDecay,
      maxGradNorm: opts.maxGradNorm,
      optimizer: opts.optimizer,
      ...(opts.optimizer === 'adafactor' ? { adafactor: adafactorOf(opts) } : {}),
      maxInputLength: opts.maxInputLength,
      maxTargetLength: opts.maxTargetLength,
      maxRationaleLength: opts.maxRationaleLength,
      trainExamples: this.s.trainExamples,
      ...(this.resumedFrom !== undefined ? { resumedFrom: this.resumedFrom } : {}),
      ...extra,
    };
  }

  /**
   * The run's outcome: its figures, and its checkpoint (the best weights by validation loss, see `keepBest`, or the
   * last ones) unread, for the caller to make bytes of or stream to a file.
   */
  finish(started: number): { result: Omit<TrainResult, 'checkpoint'>; checkpoint: CheckpointParts } {
    const { step, best, history, lastPoint, recent } = this;
    const finalLoss = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN;
    if (lastPoint && history[history.length - 1]?.step !== step) history.push(lastPoint);
    const returnBest = this.s.opts.keepBest && best?.weights !== undefined && best.step !== step;
    const validLoss = returnBest ? best!.loss : this.validLoss;
    const wallMs = Date.now() - started;
    const training = this.meta({
      stopReason: this.stopReason,
      finalLoss,
      ...(validLoss !== undefined ? { validLoss } : {}),
      ...(best ? { bestStep: best.step, bestValidLoss: best.loss } : {}),
      ...(returnBest ? { weightsFromStep: best!.step } : {}),
      wallMs,
    });
    const { model, tokenizer, config } = this.s;
    const checkpoint = modelCheckpoint(returnBest ? { config, weights: best!.weights! } : model, tokenizer, training);
    const result = {
      backend: this.s.backend,
      // Where it ran and on whose kernels, e.g. `tensorflow (TF C library, cpu, Stepwise kernels)`.
      backendDetail: describeBackend().detail,
      optimizer: this.s.opts.optimizer,
      steps: step,
      stopReason: this.stopReason,
      finalLoss,
      lossHistory: history,
      validHistory: this.validHistory,
      throughput: this.throughput,
      ...(validLoss !== undefined ? { validLoss } : {}),
      ...(this.s.validSet && step > 0 ? { bestStep: returnBest ? best!.step : step } : {}),
      ...(this.resumedFrom !== undefined ? { resumedFrom: this.resumedFrom } : {}),
      checkpoints: this.checkpoints,
      tokenizerVocab: tokenizer.vocabSize,
      config,
      params: model.parameterCount,
      wallMs,
    };
    return { result, checkpoint };
  }
}
