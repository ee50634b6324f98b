/**
 * The student's optimisers, each with an explicit state that a checkpoint can hold and a resumed run restore bit for
 * bit: AdamW (the reference's, via HF `Trainer`) and Adafactor (T5's own, Shazeer & Stern 2018, as HF's
 * `transformers.optimization.Adafactor` computes it). Both update every variable in a handful of fused-ish ops kept on
 * the device; nothing is read back during a step.
 *
 * State tensors are kept in the variables' compute layout (T5Model stores linear weights as [in, out], the transpose
 * of HF's [out, in]). For Adafactor that swaps which factored statistic is the "row" and which the "column"; the
 * factored estimate row_i·col_j / mean(row) is symmetric under that swap (mean(row) = mean(col) = the mean of all
 * squared gradients), so the updates are HF's.
 */
import { InputError } from '../errors';
import { clipScale, FusedAdam } from './fast-ops';
import { OPTIMIZERS, type OptimizerName } from './options';
import type { TensorSource } from './checkpoint-file';
import type { NamedWeight } from './t5';
import { tf } from './tf';

export { OPTIMIZERS, type OptimizerName };

export function isOptimizerName(value: unknown): value is OptimizerName {
  return typeof value === 'string' && (OPTIMIZERS as readonly string[]).includes(value);
}

/** One variable to optimise, by name (the key of its state), and whether weight decay applies to it. */
export interface OptimizedParam {
  name: string;
  variable: tf.Variable;
  /** HF's Trainer exempts layer norms (and biases, which T5 has none of) from weight decay. */
  decay: boolean;
}

/** AdamW's hyperparameters; defaults are torch's and HF Trainer's. */
export interface AdamWOptions {
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay (default 0). */
  weightDecay?: number;
}

/**
 * Adafactor's hyperparameters, under HF's names in camelCase; defaults are HF's class defaults. HF's Trainer with
 * `optim="adafactor"` turns `scaleParameter` and `relativeStep` off and drives the learning rate by its schedule,
 * which is what the training loop does unless told otherwise.
 */
export interface AdafactorOptions {
  /** Added to squared gradients (default 1e-30). */
  eps1?: number;
  /** Floor of the parameter scale when `scaleParameter` is on (default 1e-3). */
  eps2?: number;
  /** Updates are scaled down so their RMS is at most this (default 1). */
  clipThreshold?: number;
  /** The second-moment decay is 1 − t^decayRate (default −0.8). */
  decayRate?: number;
  /** First-moment decay; null (default) keeps no first moment, which is what makes Adafactor memory-light. */
  beta1?: number | null;
  /** Weight decay, multiplied by the step's learning rate as HF does (default 0). */
  weightDecay?: number;
  /** Multiply the step size by max(eps2, RMS(param)) (default true). */
  scaleParameter?: boolean;
  /** Ignore the given learning rate and use min(1e-2, 1/√t) (default true). */
  relativeStep?: boolean;
  /** With `relativeStep`, warm up as min(1e-6·t, 1/√t) instead (default false). */
  warmupInit?: boolean;
}

/** Everything an optimiser needs to continue exactly where it stopped. JSON fields plus float32 tensors. */
export interface OptimizerState {
  name: OptimizerName;
  /** Updates applied so far (bias correction and Adafactor's decay depend on it). */
  step: number;
  /** The resolved hyperparameters, so a resumed run can check it is continuing the same optimiser. */
  hyper: Record<string, number | boolean | null>;
  /** Slot tensors named `<slot>.<param name>`, in the variables' compute layout. */
  tensors: NamedWeight[];
}

/**
 * The state with its slot tensors unread: each source reads one slot back when a checkpoint writer reaches it, so a
 * checkpoint streamed to a file never holds a copy of the whole state. Valid until the next update; `release` frees
 * what the sources hold.
 */
export interface OptimizerStateSources extends Omit<OptimizerState, 'tensors'> {
  tensors: TensorSource[];
  release(): void;
}

export interface Optimizer {
  readonly name: OptimizerName;
  /** Updates applied so far. */
  readonly step: number;
  /**
   * One update; `grads[i]` belongs to the i-th parameter. `lr` is the schedule's learning rate; `gradScale` (default
   * 1) scales every gradient first, as a clip coefficient from {@link clipScale} does.
   */
  apply(grads: readonly tf.Tensor[], lr: number, gradScale?: number): void;
  /** A copy of the state (read back from the device). */
  getState(): OptimizerState;
  /** The state, its tensors read back one at a time as a checkpoint writer asks (see {@link OptimizerStateSources}). */
  stateSources(): OptimizerStateSources;
  /**
   * Overwrites the state with a saved one.
   * @throws InputError when the state belongs to another optimiser, other hyperparameters or other parameters.
   */
  setState(state: OptimizerState): void;
  dispose(): void;
}

/** A state slot: one float32 variable per parameter (or per factor of one). */
class Slots {
  readonly vars = new Map<string, tf.Variable>();
  add(name: string, shape: number[]): tf.Variable {
    const init = tf.zeros(shape);
    const v = tf.variable(init, false);
    init.dispose();
    this.vars.set(name, v);
    return v;
  }
  sources(): TensorSource[] {
    return [...this.vars].map(([name, v]) => ({ name, shape: [...v.shape], read: () => v.dataSync() as Float32Array }));
  }
  write(tensors: readonly NamedWeight[], owner: string): void {
    const given = new Map(tensors.map((t) => [t.name, t]));
    for (const [name, v] of this.vars) {
      const t = given.get(name);
      if (!t) throw new InputError(`${owner} state has no tensor '${name}'`, 'resumeFrom');
      if (t.shape.join() !== v.shape.join()) {
        throw new InputError(
          `${owner} state tensor '${name}' has shape [${t.shape}]; expected [${v.shape}]`,
          'resumeFrom'
        );
      }
    }
    const extra = tensors.find((t) => !this.vars.has(t.name));
    if (extra) throw new InputError(`${owner} state has tensor '${extra.name}', which no parameter uses`, 'resumeFrom');
    tf.tidy(() => {
      for (const [name, v] of this.vars) v.assign(tf.tensor(given.get(name)!.data, v.shape, 'float32'));
    });
  }
  dispose(): void {
    tf.dispose([...this.vars.values()]);
    this.vars.clear();
  }
}

/** The whole state read back: copies, so they stay valid after later updates (and on backends that share buffers). */
function readAll({ tensors, release, ...state }: OptimizerStateSources): OptimizerState {
  try {
    return { ...state, tensors: tensors.map((t) => ({ name: t.name, shape: t.shape, data: t.read().slice() })) };
  } finally {
    release();
  }
}

function checkHyper(name: string, saved: OptimizerState, hyper: OptimizerState['hyper']): void {
  if (saved.name !== name) {
    throw new InputError(`resumeFrom holds ${saved.name} state; this run's optimizer is ${name}`, 'optimizer');
  }
  for (const [key, value] of Object.entries(hyper)) {
    if (saved.hyper[key] !== value) {
      throw new InputError(
        `resumeFrom was trained with ${name} ${key} ${JSON.stringify(saved.hyper[key])}; this run's is ${JSON.stringify(value)}`,
        key
      );
    }
  }
  if (!Number.isSafeInteger(saved.step) || saved.step < 0) {
    throw new InputError(
      `resumeFrom optimizer step is ${JSON.stringify(saved.step)}; expected an integer ≥ 0`,
      'resumeFrom'
    );
  }
}

/**
 * AdamW (torch's, which HF's Trainer uses): decoupled weight decay on the weight first, then the Adam step, with the
 * bias corrections folded into the step size and epsilon so the update is a handful of ops per variable.
 */
export class AdamW implements Optimizer {
  readonly name = 'adamw';
  private t = 0;
  /**
   * The moments and the update: on native TensorFlow one kernel per variable that also applies the clip coefficient
   * and the decay (fast-ops.ts).
   */
  private readonly adam: FusedAdam;
  private readonly hyper: Required<AdamWOptions>;

  constructor(
    private readonly params: readonly OptimizedParam[],
    opts: AdamWOptions = {}
  ) {
    this.hyper = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, ...opts };
    this.adam = new FusedAdam(params.map((p) => p.variable));
  }

  get step(): number {
    return this.t;
  }

  apply(grads: readonly tf.Tensor[], lr: number, gradScale = 1): void {
    this.t += 1;
    const { beta1, beta2, eps, weightDecay } = this.hyper;
    this.adam.update(
      grads,
      { lr, step: this.t, beta1, beta2, eps, weightDecay: (i) => (this.params[i].decay ? weightDecay : 0) },
      gradScale
    );
  }

  getState(): OptimizerState {
    return readAll(this.stateSources());
  }

  stateSources(): OptimizerStateSources {
    // Reads that share the moments' buffers (fast-ops.ts): nothing is copied until a source is read.
    const { m, v } = this.adam.moments();
    const named = (slot: string, list: tf.Tensor[]): TensorSource[] =>
      list.map((t, i) => ({
        name: `${slot}.${this.params[i].name}`,
        shape: [...t.shape],
        read: () => t.dataSync() as Float32Array,
      }));
    return {
      name: this.name,
      step: this.t,
      hyper: { ...this.hyper },
      tensors: [...named('exp_avg', m), ...named('exp_avg_sq', v)],
      release: () => tf.dispose([...m, ...v]),
    };
  }

  setState(state: OptimizerState): void {
    checkHyper(this.name, state, this.hyper);
    const given = new Map(state.tensors.map((t) => [t.name, t]));
    const expected = new Set(this.params.flatMap((p) => [`exp_avg.${p.name}`, `exp_avg_sq.${p.name}`]));
    const stray = state.tensors.find((t) => !expected.has(t.name));
    if (stray) throw new InputError(`adamw state has tensor '${stray.name}', which no parameter uses`, 'resumeFrom');
    const load = (slot: string) =>
      this.params.map((p) => {
        const t = given.get(`${slot}.${p.name}`);
        if (!t) throw new InputError(`adamw state has no tensor '${slot}.${p.name}'`, 'resumeFrom');
        if (t.shape.join() !== p.variable.shape.join()) {
          throw new InputError(
            `adamw state tensor '${slot}.${p.name}' has shape [${t.shape}]; expected [${p.variable.shape}]`,
            'resumeFrom'
          );
        }
        return tf.tensor(t.data, t.shape, 'float32');
      });
    const m = load('exp_avg');
    const v = load('exp_avg_sq');
    this.adam.setMoments(m, v);
    tf.dispose([...m, ...v]);
    this.t = state.step;
  }

  dispose(): void {
    this.adam.dispose();
  }
}

/** Root mean square of a tensor, on the device. */
function rms(x: tf.Tensor): tf.Tensor {
  return tf.sqrt(tf.mean(tf.square(x)));
}

/**
 * Adafactor: second moments factored into row and column statistics for matrices (memory O(n+m) instead of O(nm)),
 * an RMS-clipped update, optionally a relative step size and a parameter-scaled step (HF's `Adafactor.step`).
 */
export class Adafactor implements Optimizer {
  readonly name = 'adafactor';
  private t = 0;
  private readonly slots = new Slots();
  private readonly hyper: Required<AdafactorOptions>;
  /** Per parameter: its slot variables. */
  private readonly state: { row?: tf.Variable; col?: tf.Variable; sq?: tf.Variable; avg?: tf.Variable }[];

  constructor(
    private readonly params: readonly OptimizedParam[],
    opts: AdafactorOptions = {}
  ) {
    this.hyper = {
      eps1: 1e-30,
      eps2: 1e-3,
      clipThreshold: 1,
      decayRate: -0.8,
      beta1: null,
      weightDecay: 0,
      scaleParameter: true,
      relativeStep: true,
      warmupInit: false,
      ...opts,
    };
    if (this.hyper.warmupInit && !this.hyper.relativeStep) {
      throw new InputError(
        'adafactor.warmupInit is true but relativeStep is false; warmupInit needs relativeStep',
        'adafactor.warmupInit'
      );
    }
    this.state = params.map((p) => {
      const shape = [...p.variable.shape];
      const s: (typeof this.state)[number] = {};
      if (shape.length >= 2) {
        // Mean over the last axis, and over the last but one.
        s.row = this.slots.add(`exp_avg_sq_row.${p.name}`, shape.slice(0, -1));
        s.col = this.slots.add(`exp_avg_sq_col.${p.name}`, [...shape.slice(0, -2), shape[shape.length - 1]]);
      } else {
        s.sq = this.slots.add(`exp_avg_sq.${p.name}`, shape);
      }
      if (this.hyper.beta1 !== null) s.avg = this.slots.add(`exp_avg.${p.name}`, shape);
      return s;
    });
  }

  get step(): number {
    return this.t;
  }

  apply(grads: readonly tf.Tensor[], lr: number, gradScale = 1): void {
    this.t += 1;
    const h = this.hyper;
    const t = this.t;
    const relative = h.relativeStep ? Math.min(h.warmupInit ? 1e-6 * t : 1e-2, 1 / Math.sqrt(t)) : lr;
    const beta2t = 1 - t ** h.decayRate;
    tf.tidy(() => {
      const scale = gradScale !== 1 ? tf.scalar(gradScale) : undefined;
      this.params.forEach((param, i) => {
        const p = param.variable;
        const g = scale ? tf.mul(grads[i], scale) : grads[i];
        const s = this.state[i];
        // The step size, scaled by the parameter's RMS before this update when asked.
        const stepSize: tf.Tensor | number = h.scaleParameter ? tf.mul(tf.maximum(rms(p), h.eps2), relative) : relative;
        const squared = tf.add(tf.square(g), h.eps1);
        let update: tf.Tensor;
        if (s.row && s.col) {
          const row = tf.add(tf.mul(s.row, beta2t), tf.mul(tf.mean(squared, -1), 1 - beta2t));
          const col = tf.add(tf.mul(s.col, beta2t), tf.mul(tf.mean(squared, -2), 1 - beta2t));
          s.row.assign(row);
          s.col.assign(col);
          const rowFactor = tf.expandDims(tf.rsqrt(tf.div(row, tf.mean(row, -1, true))), -1);
          const colFactor = tf.expandDims(tf.rsqrt(col), -2);
          update = tf.mul(tf.mul(rowFactor, colFactor), g);
        } else {
          const sq = tf.add(tf.mul(s.sq!, beta2t), tf.mul(squared, 1 - beta2t));
          s.sq!.assign(sq);
          update = tf.mul(tf.rsqrt(sq), g);
        }
        update = tf.div(update, tf.maximum(tf.div(rms(update), h.clipThreshold), 1));
        update = tf.mul(update, stepSize);
        if (s.avg) {
          const avg = tf.add(tf.mul(s.avg, h.beta1!), tf.mul(update, 1 - h.beta1!));
          s.avg.assign(avg);
          update = avg;
        }
        // HF decays by weight_decay times this step's (scaled) learning rate, then subtracts the update.
        const decayed = h.weightDecay !== 0 && param.decay ? tf.sub(p, tf.mul(p, tf.mul(stepSize, h.weightDecay))) : p;
        p.assign(tf.sub(decayed, update));
      });
    });
  }

  getState(): OptimizerState {
    return readAll(this.stateSources());
  }

  stateSources(): OptimizerStateSources {
    return {
      name: this.name,
      step: this.t,
      hyper: { ...this.hyper },
      tensors: this.slots.sources(),
      release: () => {},
    };
  }

  setState(state: OptimizerState): void {
    checkHyper(this.name, state, this.hyper);
    this.slots.write(state.tensors, 'adafactor');
    this.t = state.step;
  }

  dispose(): void {
    this.slots.dispose();
  }
}

/** An optimiser by name. */
export function createOptimizer(
  name: OptimizerName,
  params: readonly OptimizedParam[],
  opts: { adamw?: AdamWOptions; adafactor?: AdafactorOptions } = {}
): Optimizer {
  if (name === 'adamw') return new AdamW(params, opts.adamw);
  if (name === 'adafactor') return new Adafactor(params, opts.adafactor);
  throw new InputError(`optimizer is ${JSON.stringify(name)}; expected one of ${OPTIMIZERS.join(', ')}`, 'optimizer');
}

/** torch `clip_grad_norm_`'s coefficient, which `apply` takes as `gradScale` (fast-ops.ts). */
export { clipScale };
