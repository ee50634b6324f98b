import { ApplicationFailure } from '@temporalio/common';
import type { ArtifactStore, ArtifactRef } from '../lib/store/artifact-store';
import type { Example } from '../lib/data/types';
import { parseCompletion } from '../lib/data/parse';
import { labelsMatch } from '../lib/data/score';
import { checkRationale, resolveRationaleChecks, type LabelContext } from '../lib/data/rationale-checks';
import type { PipelineSpec, TaskKind } from '../lib/pipeline/spec';
import type { ValidateRationalesResult } from './types';
import { mapErrors } from './progress';

export interface ValidateRationalesInput {
  task: TaskKind;
  train: ArtifactRef;
  valid: ArtifactRef;
  responses: ArtifactRef;
  /** The spec's filters; absent means the defaults (only empty rationales are dropped beyond parse failures). */
  validate?: Partial<PipelineSpec['validate']>;
}

interface TeacherResponseRecord {
  id: string;
  completion: string;
  error?: string;
  /** Self-consistency: samples asked, and parsed labels with their vote counts. */
  samples?: number;
  votes?: Record<string, number>;
}

/** A training record: the example, its gold label, and what the teacher said about it. */
export interface RationaleRecord {
  id: string;
  input: string;
  goldLabel: string;
  teacherLabel: string;
  rationale: string;
  /** Self-consistency votes per parsed label, where the teacher was sampled more than once. */
  votes?: Record<string, number>;
}

/** One dropped example as the report shows it: enough to see what went wrong without digging. */
interface DroppedExample {
  id: string;
  split: 'train' | 'valid';
  /** The completion, cut to {@link EXCERPT_CHARS}. */
  completion: string;
  gold: string;
  /** The teacher's label, where the completion parsed. */
  parsedLabel?: string;
  /** What the failed check found. */
  detail?: string;
  /** The teacher stage's reason for giving up on the call. */
  error?: string;
}

/** Examples of each drop reason kept in the report, so a human can see what went wrong without digging. */
const EXAMPLES_PER_REASON = 3;
const EXCERPT_CHARS = 500;

/**
 * A `jsonl` task has no fixed label set; its distinct gold labels serve as one when there are this few. More, and the
 * "labels" are free text, where a rationale stating one of them means nothing.
 */
const MAX_JSONL_LABELS = 20;

/**
 * Parse every completion into (rationale, label) with the task's rules, apply the spec's validation filters, drop
 * what cannot be used, and report why. Teacher accuracy counts every example whatever the filters: a completion we
 * could not parse is a wrong answer, a filtered one is scored on its parsed label.
 */
export async function validateRationalesStage(
  store: ArtifactStore,
  input: ValidateRationalesInput
): Promise<ValidateRationalesResult> {
  return mapErrors(async () => {
    const filters = resolveRationaleChecks(input.validate ?? {});
    const [train, valid, responses] = await Promise.all([
      store.getJsonl<Example>(input.train),
      store.getJsonl<Example>(input.valid),
      store.getJsonl<TeacherResponseRecord>(input.responses),
    ]);
    const byId = new Map(responses.map((r) => [r.id, r]));
    const labels = input.task === 'jsonl' ? jsonlLabelSet([...train, ...valid]) : undefined;
    const dropped: Record<string, number> = {};
    const droppedExamples: Record<string, DroppedExample[]> = {};
    let correct = 0;
    let scored = 0;

    const drop = (reason: string, example: Omit<DroppedExample, 'completion'> & { completion?: string }) => {
      dropped[reason] = (dropped[reason] ?? 0) + 1;
      const list = (droppedExamples[reason] ??= []);
      if (list.length < EXAMPLES_PER_REASON) {
        list.push({ ...example, completion: (example.completion ?? '').slice(0, EXCERPT_CHARS) });
      }
    };

    const keep = (examples: Example[], split: 'train' | 'valid'): RationaleRecord[] => {
      const kept: RationaleRecord[] = [];
      for (const ex of examples) {
        const response = byId.get(ex.id);
        scored += 1;
        const seen = { id: ex.id, split, gold: ex.label };
        if (!response) {
          drop('no-response', seen);
          continue;
        }
        if (response.error) {
          // Never asked (the budget ran out) is not the teacher failing: counted apart, so the report tells them apart.
          const reason = response.error.startsWith('not sent') ? 'not-sent' : 'teacher-error';
          drop(reason, { ...seen, completion: response.completion, error: response.error });
          continue;
        }
        const parsed = parseCompletion(input.task, response.completion);
        if (!parsed.ok) {
          drop(parsed.reason, { ...seen, completion: response.completion });
          continue;
        }
        if (labelsMatch(input.task, parsed.label, ex.label)) correct += 1;
        const context: LabelContext = { input: ex.input, labels };
        const failed = checkRationale(input.task, parsed, ex.label, filters, context);
        if (failed) {
          drop(failed.reason, {
            ...seen,
            completion: response.completion,
            parsedLabel: parsed.label,
            detail: failed.detail,
          });
          continue;
        }
        kept.push({
          id: ex.id,
          input: ex.input,
          goldLabel: ex.label,
          teacherLabel: parsed.label,
          rationale: parsed.rationale,
          ...(response.votes ? { votes: response.votes } : {}),
        });
      }
      return kept;
    };

    const keptTrain = keep(train, 'train');
    const keptValid = keep(valid, 'valid');
    const kept = keptTrain.length + keptValid.length;
    const teacherAccuracy = scored ? correct / scored : undefined;
    const [trainRef, validRef, reportRef] = await Promise.all([
      store.putJsonl(keptTrain),
      store.putJsonl(keptValid),
      store.putJson({
        task: input.task,
        total: scored,
        kept,
        keptTrain: keptTrain.length,
        keptValid: keptValid.length,
        // JSON has no undefined: an unset limit is written as null so the report shows every setting.
        filters: { ...filters, maxRationaleChars: filters.maxRationaleChars ?? null },
        dropped,
        droppedExamples,
        teacherCorrect: correct,
        teacherAccuracy: teacherAccuracy ?? null,
      }),
    ]);
    if (keptTrain.length === 0) {
      // Nothing to learn from: retrying the same completions gives the same answer, so fail for good.
      const reasons = Object.entries(dropped)
        .map(([r, n]) => `${r}: ${n}`)
        .join(', ');
      throw ApplicationFailure.nonRetryable(
        `validateRationales: no usable rationale among ${scored} teacher responses (${reasons}); see report ${reportRef.sha256}`,
        'NoUsableRationales'
      );
    }
    return { train: trainRef, valid: validRef, report: reportRef, kept, dropped, teacherAccuracy };
  });
}

/** The distinct gold labels of a `jsonl` data set, when few enough to be a label set (see {@link MAX_JSONL_LABELS}). */
function jsonlLabelSet(examples: readonly Example[]): string[] | undefined {
  const labels = new Set<string>();
  for (const ex of examples) {
    const label = ex.label.trim();
    if (label === '') continue;
    labels.add(label);
    if (labels.size > MAX_JSONL_LABELS) return undefined;
  }
  return labels.size >= 2 ? [...labels] : undefined;
}
