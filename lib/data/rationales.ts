/**
 * The validate stage's work: parse every teacher completion into (rationale, label) with the task's rules, apply the
 * spec's filters, keep the usable records for training and report every drop with its reason and a few examples.
 */
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import type { Example, TaskKind } from './types';
import { parseCompletion } from './parse';
import { labelsMatch } from './score';
import {
  checkRationale,
  resolveRationaleChecks,
  type LabelContext,
  type RationaleCheckOptions,
} from './rationale-checks';

export interface ValidateRationalesInput {
  task: TaskKind;
  train: ArtifactRef;
  valid: ArtifactRef;
  /** The teacher stage's responses artifact. */
  responses: ArtifactRef;
  /** The spec's filters; absent means the defaults (only empty rationales are dropped beyond parse failures). */
  validate?: Partial<RationaleCheckOptions>;
}

export interface ValidateRationalesResult {
  /** JSONL of training records ({@link RationaleRecord}). */
  train: ArtifactRef;
  valid: ArtifactRef;
  /** JSON report: kept, the filters applied, dropped by reason with examples, teacher accuracy. */
  report: ArtifactRef;
  kept: number;
  dropped: Record<string, number>;
  /** Share of examples whose parsed teacher label matches gold (unparsable counts as wrong). */
  teacherAccuracy?: number;
}

/** Not one training record survived: retrying the same completions gives the same answer. */
export class NoUsableRationalesError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NoUsableRationales';
  }
}

/** One line of the teacher stage's responses artifact, as far as validation reads it. */
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
export interface DroppedExample {
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

/** The validation report the stage stores (`ValidateRationalesResult.report`): what the run report reads back. */
export interface ValidationReport {
  task: TaskKind;
  total: number;
  kept: number;
  keptTrain: number;
  keptValid: number;
  filters: Record<string, unknown>;
  dropped: Record<string, number>;
  droppedExamples: Record<string, DroppedExample[]>;
  teacherCorrect: number;
  teacherAccuracy: number | null;
}

/** Examples of each drop reason kept in the report, so a human can see what went wrong without digging. */
const EXAMPLES_PER_REASON = 3;
const EXCERPT_CHARS = 500;

/**
 * A `jsonl` task has no fixed label set; its distinct gold labels serve as one when there are this few. More, and the
 * "labels" are free text, where a rationale stating one of them means nothing.
 */
const MAX_JSONL_LABELS = 20;

/** Running tally of one validation: what was kept, what was dropped and why, and how often the teacher was right. */
class Tally {
  readonly dropped: Record<string, number> = {};
  readonly droppedExamples: Record<string, DroppedExample[]> = {};
  correct = 0;
  scored = 0;

  drop(reason: string, example: Omit<DroppedExample, 'completion'> & { completion?: string }): void {
    this.dropped[reason] = (this.dropped[reason] ?? 0) + 1;
    const list = (this.droppedExamples[reason] ??= []);
    if (list.length < EXAMPLES_PER_REASON) {
      list.push({ ...example, completion: (example.completion ?? '').slice(0, EXCERPT_CHARS) });
    }
  }
}

interface SortContext {
  task: TaskKind;
  byId: Map<string, TeacherResponseRecord>;
  filters: RationaleCheckOptions;
  labels: string[] | undefined;
  tally: Tally;
}

/** The usable records of one split; every other example is tallied with the reason it was dropped. */
function keep(ctx: SortContext, examples: readonly Example[], split: 'train' | 'valid'): RationaleRecord[] {
  const { task, tally } = ctx;
  const kept: RationaleRecord[] = [];
  for (const ex of examples) {
    const response = ctx.byId.get(ex.id);
    tally.scored += 1;
    const seen = { id: ex.id, split, gold: ex.label };
    if (!response) {
      tally.drop('no-response', seen);
      continue;
    }
    if (response.error) {
      // Never asked (the budget ran out) is not the teacher failing: counted apart, so the report tells them apart.
      const reason = response.error.startsWith('not sent') ? 'not-sent' : 'teacher-error';
      tally.drop(reason, { ...seen, completion: response.completion, error: response.error });
      continue;
    }
    const parsed = parseCompletion(task, response.completion);
    if (!parsed.ok) {
      tally.drop(parsed.reason, { ...seen, completion: response.completion });
      continue;
    }
    if (labelsMatch(task, parsed.label, ex.label)) tally.correct += 1;
    const context: LabelContext = { input: ex.input, labels: ctx.labels };
    const failed = checkRationale(task, parsed, ex.label, ctx.filters, context);
    if (failed) {
      const { reason, detail } = failed;
      tally.drop(reason, { ...seen, completion: response.completion, parsedLabel: parsed.label, detail });
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
}

/**
 * Parse every completion into (rationale, label) with the task's rules, apply the spec's validation filters, drop
 * what cannot be used, and report why. Teacher accuracy counts every example whatever the filters: a completion we
 * could not parse is a wrong answer, a filtered one is scored on its parsed label.
 * @throws NoUsableRationalesError when no training record survives (the report is stored first).
 */
export async function validateRationales(
  store: ArtifactStore,
  input: ValidateRationalesInput
): Promise<ValidateRationalesResult> {
  const filters = resolveRationaleChecks(input.validate ?? {});
  const [train, valid, responses] = await Promise.all([
    store.getJsonl<Example>(input.train),
    store.getJsonl<Example>(input.valid),
    store.getJsonl<TeacherResponseRecord>(input.responses),
  ]);
  const tally = new Tally();
  const ctx: SortContext = {
    task: input.task,
    byId: new Map(responses.map((r) => [r.id, r])),
    filters,
    labels: input.task === 'jsonl' ? jsonlLabelSet([...train, ...valid]) : undefined,
    tally,
  };
  const keptTrain = keep(ctx, train, 'train');
  const keptValid = keep(ctx, valid, 'valid');
  const kept = keptTrain.length + keptValid.length;
  const { dropped, droppedExamples, correct, scored } = tally;
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
    } satisfies ValidationReport),
  ]);
  if (keptTrain.length === 0) {
    const reasons = Object.entries(dropped)
      .map(([r, n]) => `${r}: ${n}`)
      .join(', ');
    throw new NoUsableRationalesError(
      `validateRationales: no usable rationale among ${scored} teacher responses (${reasons}); see report ${reportRef.sha256}`
    );
  }
  return { train: trainRef, valid: validRef, report: reportRef, kept, dropped, teacherAccuracy };
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
