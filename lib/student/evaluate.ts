/**
 * Inference from a checkpoint: the student answers with the `predict:` task when it was trained step-by-step and
 * with the bare input when it is a baseline, exactly as it saw its inputs in training.
 */
import { initBackend, type BackendName } from './backend';
import { loadCheckpoint, type LoadedCheckpoint } from './checkpoint';
import { greedyDecode } from './decode';
import { EXPLAIN_PREFIX, PREDICT_PREFIX } from './pairs';

export interface PredictOptions {
  /** Most tokens generated per input, eos included. */
  maxLength: number;
  batchSize: number;
  /** Default `auto` (the ladder). */
  backend?: BackendName | 'auto';
  onProgress?(done: number, total: number): void;
}

/** How the student decodes one task: at most `maxLength` tokens per input (eos included), `batchSize` at a time. */
export type DecodeTaskOptions = Pick<PredictOptions, 'maxLength' | 'batchSize' | 'onProgress'>;

/** The prefix a checkpoint's student expects in front of an input. */
export function inputPrefix(method: string): string {
  return method === 'distill-step-by-step' ? PREDICT_PREFIX : '';
}

/**
 * A checkpoint's student, loaded once for both of its tasks: an evaluation that predicts every input and explains a
 * few reads and builds the model once, not once per task. {@link dispose} frees its weights.
 */
export class Student {
  private constructor(
    private readonly loaded: LoadedCheckpoint,
    /** The backend it runs on: the one asked for, or the rung of the ladder `auto` reached. */
    readonly backend: BackendName
  ) {}

  /**
   * Loads `checkpoint` on the backend asked for (default `auto`, the ladder).
   * @throws InputError when the checkpoint is malformed.
   */
  static async load(checkpoint: Uint8Array, backend: BackendName | 'auto' = 'auto'): Promise<Student> {
    const init = await initBackend(backend);
    return new Student(loadCheckpoint(checkpoint), init.backend);
  }

  /** Greedy predictions for `inputs`, in order. */
  predict(inputs: readonly string[], opts: DecodeTaskOptions): Promise<string[]> {
    return this.decode(inputs, inputPrefix(this.loaded.training.method), opts);
  }

  /**
   * The rationales the student generates for `inputs` with the `explain:` task, in order; undefined when it was not
   * trained to explain (a baseline's method). At most `maxLength` tokens each, eos included: the training's own
   * `maxRationaleLength` unless told.
   */
  async explain(
    inputs: readonly string[],
    opts: Omit<DecodeTaskOptions, 'maxLength'> & { maxLength?: number }
  ): Promise<string[] | undefined> {
    const { training } = this.loaded;
    if (training.method !== 'distill-step-by-step') return undefined;
    const trained = typeof training.maxRationaleLength === 'number' ? training.maxRationaleLength : 128;
    return this.decode(inputs, EXPLAIN_PREFIX, { ...opts, maxLength: opts.maxLength ?? trained });
  }

  dispose(): void {
    this.loaded.model.dispose();
  }

  private decode(inputs: readonly string[], prefix: string, opts: DecodeTaskOptions): Promise<string[]> {
    const { model, tokenizer, training } = this.loaded;
    // Inputs are cut as they were in training, so the student never sees more of one than it learned from.
    const maxInputLength = typeof training.maxInputLength === 'number' ? training.maxInputLength : undefined;
    return greedyDecode(model, tokenizer, inputs, {
      maxLength: opts.maxLength,
      batchSize: opts.batchSize,
      prefix,
      maxInputLength,
      onProgress: opts.onProgress,
    });
  }
}

/**
 * Greedy predictions of a checkpoint's student for `inputs`, in order: {@link Student} loaded for one task.
 * @throws InputError when the checkpoint is malformed or the options are bad.
 */
export async function predict(
  checkpoint: Uint8Array,
  inputs: readonly string[],
  opts: PredictOptions
): Promise<string[]> {
  const student = await Student.load(checkpoint, opts.backend);
  try {
    return await student.predict(inputs, opts);
  } finally {
    student.dispose();
  }
}
