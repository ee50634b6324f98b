/**
 * The evaluate stage's work: greedy-decode a test split with the `predict:` task in a student child process and score
 * it (exact match, or equal value of the equation for SVAMP) against gold and the majority-class baseline. Every
 * prediction is stored, so a metric can always be traced back to examples.
 */
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import type { Example, TaskKind } from '../data/types';
import { labelsMatch } from '../data/score';
import { trivialBaselines, type TrivialBaselines } from '../data/baselines';
import type { PipelineSpec } from '../pipeline/spec';
import { runStudentJob } from './child';
import { scratchDir } from '../scratch';

export interface EvaluateInput {
  task: TaskKind;
  checkpoint: ArtifactRef;
  /** The split scored (the test split, or validation with `evaluate.split: "valid"`). */
  test: ArtifactRef;
  /** The training split the trivial baselines are chosen on (absent in histories recorded before: then `test`). */
  train?: ArtifactRef;
  evaluate: PipelineSpec['evaluate'];
  backend: PipelineSpec['student']['backend'];
  /** Examples (the split's first) whose `explain:` rationale is generated for the run report; default {@link EXPLAINED_EXAMPLES}. */
  explain?: number;
}

/**
 * The run report shows the student's own rationale for this many examples: enough to read, and a bounded cost (one
 * more greedy decode of at most `maxRationaleLength` tokens each) whatever the split's size.
 */
export const EXPLAINED_EXAMPLES = 50;

export interface EvaluateResult {
  /** JSONL of `{ id, input, gold, prediction, correct }`. */
  predictions: ArtifactRef;
  metrics: ArtifactRef;
  accuracy: number;
  correct: number;
  total: number;
  /** The majority baseline on the scored value, chosen on train (= `baselines.majority`). */
  majorityBaseline: { label: string; accuracy: number };
  /** Every trivial baseline of the task (absent in results recorded before they existed). */
  baselines?: TrivialBaselines;
  /**
   * JSONL of `{ id, rationale }`: the student's `explain:` output for the split's first examples, and what generating
   * them took (absent for a student not trained to explain, and in results recorded before).
   */
  explanations?: ArtifactRef;
  explainMs?: number;
}

export interface EvaluateHooks {
  /** Aborting kills the decoding child. */
  signal?: AbortSignal;
  /** Examples decoded so far, out of the split's size. */
  onProgress?: (done: number, total: number) => void;
}

/** Decode and score the test split with a stored checkpoint; store predictions and metrics. */
export async function evaluateCheckpoint(
  store: ArtifactStore,
  input: EvaluateInput,
  hooks: EvaluateHooks = {}
): Promise<EvaluateResult> {
  const [test, train, checkpointBytes] = await Promise.all([
    store.getJsonl<Example>(input.test),
    input.train ? store.getJsonl<Example>(input.train) : undefined,
    store.get(input.checkpoint),
  ]);
  hooks.onProgress?.(0, test.length);
  const dir = await scratchDir('eval');
  try {
    const checkpointPath = join(dir, 'checkpoint.safetensors');
    await writeFile(checkpointPath, checkpointBytes);
    const predictions = await runStudentJob(
      {
        kind: 'predict',
        checkpointPath,
        inputs: test.map((ex) => ex.input),
        maxLength: input.evaluate.maxLength,
        batchSize: input.evaluate.batchSize,
        backend: input.backend,
        explain: { count: input.explain ?? EXPLAINED_EXAMPLES },
      },
      { signal: hooks.signal, onProgress: (p) => hooks.onProgress?.(p.step, p.totalSteps) }
    );
    const rows = test.map((ex, i) => {
      const prediction = predictions.outputs[i] ?? '';
      return {
        id: ex.id,
        input: ex.input,
        gold: ex.label,
        prediction,
        correct: labelsMatch(input.task, prediction, ex.label),
      };
    });
    const correct = rows.filter((r) => r.correct).length;
    const accuracy = test.length ? correct / test.length : 0;
    const baselines = trivialBaselines(input.task, test, train ?? test);
    const explained = predictions.explanations?.map((rationale, i) => ({ id: test[i].id, rationale }));
    const [predictionsRef, metricsRef, explanationsRef] = await Promise.all([
      store.putJsonl(rows),
      store.putJson({
        task: input.task,
        accuracy,
        correct,
        total: test.length,
        majorityBaseline: baselines.majority,
        baselines,
      }),
      explained ? store.putJsonl(explained) : undefined,
    ]);
    hooks.onProgress?.(test.length, test.length);
    return {
      predictions: predictionsRef,
      metrics: metricsRef,
      accuracy,
      correct,
      total: test.length,
      majorityBaseline: baselines.majority,
      baselines,
      ...(explanationsRef ? { explanations: explanationsRef, explainMs: predictions.explainMs } : {}),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
