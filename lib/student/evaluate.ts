/**
 * Inference from a checkpoint: the student answers with the `predict:` task when it was trained step-by-step and
 * with the bare input when it is a baseline, exactly as it saw its inputs in training.
 */
import { initBackend, type BackendName } from './backend';
import { loadCheckpoint } from './checkpoint';
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

/** The prefix a checkpoint's student expects in front of an input. */
export function inputPrefix(method: string): string {
  return method === 'distill-step-by-step' ? PREDICT_PREFIX : '';
}

/**
 * Greedy predictions of a checkpoint's student for `inputs`, in order.
 * @throws InputError when the checkpoint is malformed or the options are bad.
 */
export async function predict(
  checkpoint: Uint8Array,
  inputs: readonly string[],
  opts: PredictOptions
): Promise<string[]> {
  await initBackend(opts.backend ?? 'auto');
  const { model, tokenizer, training } = loadCheckpoint(checkpoint);
  try {
    const maxInputLength = typeof training.maxInputLength === 'number' ? training.maxInputLength : undefined;
    return await greedyDecode(model, tokenizer, inputs, {
      maxLength: opts.maxLength,
      batchSize: opts.batchSize,
      prefix: inputPrefix(training.method),
      maxInputLength,
      onProgress: opts.onProgress,
    });
  } finally {
    model.dispose();
  }
}

/**
 * The rationales a checkpoint's student generates for `inputs` with the `explain:` task, in order; undefined when the
 * student was not trained to explain (a baseline's method). At most `maxLength` tokens each, eos included: the
 * training's own `maxRationaleLength` unless told.
 */
export async function explain(
  checkpoint: Uint8Array,
  inputs: readonly string[],
  opts: Omit<PredictOptions, 'maxLength'> & { maxLength?: number }
): Promise<string[] | undefined> {
  await initBackend(opts.backend ?? 'auto');
  const { model, tokenizer, training } = loadCheckpoint(checkpoint);
  try {
    if (training.method !== 'distill-step-by-step') return undefined;
    const maxInputLength = typeof training.maxInputLength === 'number' ? training.maxInputLength : undefined;
    const trained = typeof training.maxRationaleLength === 'number' ? training.maxRationaleLength : 128;
    return await greedyDecode(model, tokenizer, inputs, {
      maxLength: opts.maxLength ?? trained,
      batchSize: opts.batchSize,
      prefix: EXPLAIN_PREFIX,
      maxInputLength,
      onProgress: opts.onProgress,
    });
  } finally {
    model.dispose();
  }
}
