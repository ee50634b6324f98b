/**
 * Batches as tensors, and the objective over them: the distill-step-by-step multi-task loss of one batch, and the
 * mean loss over a whole set that validation, early stopping and `validationLoss` use.
 */
import { exampleLengths, type EncodedSet } from './pairs';
import { lengthSortedBatches } from './sampler';
import type { T5Model } from './t5';
import { tf } from './tf';

/** Rows padded with pad (0) to the longest row of the batch: [B, L] int32. */
export function padBatch(rows: readonly (readonly number[])[], padId = 0): tf.Tensor2D {
  const length = Math.max(1, ...rows.map((r) => r.length));
  const data = new Int32Array(rows.length * length).fill(padId);
  rows.forEach((row, i) => data.set(row, i * length));
  return tf.tensor2d(data, [rows.length, length], 'int32');
}

/** The objective and its parts for one batch. Tensors are created and freed inside the caller's tidy. */
export interface BatchLoss {
  total: tf.Scalar;
  label: tf.Scalar;
  rationale?: tf.Scalar;
}

/** Everything a step (or a validation pass) needs, as tensors. */
export interface Batch {
  source: tf.Tensor2D; // [B, source length]
  labels: tf.Tensor2D; // [B, label length]
  explainSource?: tf.Tensor2D; // [B, explain source length]
  rationales?: tf.Tensor2D; // [B, rationale length]
  /** Non-pad tokens in it, for throughput. */
  tokens: number;
}

/** The examples at `indices` as padded tensors; the caller frees them with {@link disposeBatch}. */
export function makeBatch(set: EncodedSet, indices: number[]): Batch {
  const pick = (rows: number[][]) => indices.map((i) => rows[i]);
  const count = (rows: number[][]) => rows.reduce((n, r) => n + r.length, 0);
  const batch: Batch = {
    source: padBatch(pick(set.label.sources)),
    labels: padBatch(pick(set.label.targets)),
    tokens: count(pick(set.label.sources)) + count(pick(set.label.targets)),
  };
  if (set.rationale) {
    batch.explainSource = padBatch(pick(set.rationale.sources));
    batch.rationales = padBatch(pick(set.rationale.targets));
    batch.tokens += count(pick(set.rationale.sources)) + count(pick(set.rationale.targets));
  }
  return batch;
}

export function disposeBatch(b: Batch): void {
  tf.dispose([b.source, b.labels, b.explainSource, b.rationales].filter((t): t is tf.Tensor2D => t !== undefined));
}

/**
 * The loss of one batch: for distill-step-by-step a pass over the `predict:` batch and one over the `explain:` batch
 * of the same examples (their encoder passes run as one: `T5Model.pairLoss`), combined as α·label + (1−α)·rationale,
 * each the mean cross-entropy over its own non-pad target tokens (as HF computes each pass's loss).
 */
export function batchLoss(
  model: T5Model,
  batch: Pick<Batch, 'source' | 'labels' | 'explainSource' | 'rationales'>,
  alpha: number,
  opts: { training?: boolean; dropoutSeed?: number } = {}
): BatchLoss {
  // Each pass's dropout seed: 2s for `predict:`, 2s + 1 for `explain:`.
  const seed = (opts.dropoutSeed ?? 0) * 2;
  const labelOpts = { ...opts, dropoutSeed: seed };
  if (!batch.explainSource || !batch.rationales) {
    const label = model.loss(batch.source, batch.labels, labelOpts);
    return { total: label, label };
  }
  const [label, rationale] = model.pairLoss(
    { source: batch.source, labels: batch.labels, opts: labelOpts },
    { source: batch.explainSource, labels: batch.rationales, opts: { ...opts, dropoutSeed: seed + 1 } }
  );
  const total = tf.add(tf.mul(label, alpha), tf.mul(rationale, 1 - alpha)) as tf.Scalar;
  return { total, label, rationale };
}

/**
 * Mean loss over a set (batches of similar length, each batch's loss weighted by its examples), without dropout.
 * The number the training loop validates with, and early-stops and keeps the best weights by.
 */
export function setLoss(model: T5Model, set: EncodedSet, alpha: number, batchSize: number): number {
  return setLossParts(model, set, alpha, batchSize).loss;
}

/** A set's mean loss and its parts (the `predict:` label loss, and the `explain:` rationale loss where trained). */
export interface SetLoss {
  loss: number;
  labelLoss: number;
  rationaleLoss?: number;
}

/** {@link setLoss} with its parts, each weighted by examples the same way: what a run report plots for validation. */
export function setLossParts(model: T5Model, set: EncodedSet, alpha: number, batchSize: number): SetLoss {
  const sums = [0, 0, 0];
  let n = 0;
  let rationale = false;
  for (const indices of lengthSortedBatches(exampleLengths(set), batchSize)) {
    const batch = makeBatch(set, indices);
    const values = tf.tidy(() => {
      const loss = batchLoss(model, batch, alpha);
      return Array.from(tf.stack([loss.total, loss.label, ...(loss.rationale ? [loss.rationale] : [])]).dataSync());
    });
    disposeBatch(batch);
    rationale = values.length === 3;
    values.forEach((v, i) => (sums[i] += v * indices.length));
    n += indices.length;
  }
  return { loss: sums[0] / n, labelLoss: sums[1] / n, ...(rationale ? { rationaleLoss: sums[2] / n } : {}) };
}
