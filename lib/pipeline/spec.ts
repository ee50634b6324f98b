/**
 * The pipeline spec: everything a distillation run needs, validated before anything starts.
 *
 * This module is imported by the workflow bundle as well as by the CLI and activities, so it must stay pure:
 * no Node built-ins, no I/O. Checks that need I/O (does the data folder exist?) happen in the `sample` activity.
 */
import { z } from 'zod';
import { InputError } from '../errors';
import { BENCHMARK_TASKS, type TaskKind } from '../data/types';
import { fieldIssues, oneOf, showValue, type FieldIssue } from '../schema';
import { checkStudentOptions, studentOptionFields } from '../student/options';
import { checkTeacherOptions, teacherSchema } from '../teacher/options';
import { MODEL_REF_PATTERN } from './spec-rules';

export type { TaskKind };
// The choices a CLI offers and a spec accepts: one list each, owned by the library that acts on them.
export { BENCHMARK_TASKS } from '../data/types';
export { METHODS, PRESET_NAMES as PRESETS, BACKENDS, OPTIMIZERS, LABEL_SOURCES } from '../student/options';
export { TEACHER_KINDS, TEACHER_MODES, BUDGET_OUTCOMES } from '../teacher/options';
export { taskOf, usesTeacher, labelSourceOf, MODEL_REF_PATTERN, isModelRef, warmStartRef } from './spec-rules';

const modelName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'expected 1-63 characters of a-z, 0-9, ".", "_" or "-", starting alphanumeric');

const dataSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('demo'),
      /** Examples generated for train+test (the test split is 20% of them). */
      size: z.number().int().min(20).max(1_000_000).default(1500),
      seed: z.number().int().default(7),
    })
    .strict(),
  z
    .object({
      kind: z.literal('reference'),
      /** A folder in the layout of the paper's released datasets: `<dir>/<task>/<task>_<split>.json`. */
      dir: z.string().min(1),
      task: oneOf(BENCHMARK_TASKS),
    })
    .strict(),
  z
    .object({
      kind: z.literal('jsonl'),
      train: z.string().min(1),
      test: z.string().min(1),
      valid: z.string().min(1).optional(),
      inputField: z.string().min(1).default('input'),
      labelField: z.string().min(1).default('label'),
      /** A field holding each example's unique id (string or number); default none, ids are `<file>-<row>`. */
      idField: z.string().min(1).optional(),
    })
    .strict(),
]);

const sampleSchema = z
  .object({
    /** Fraction of the training split to keep (the paper's data-size sweeps); test is always kept whole. */
    fraction: z.number().gt(0).max(1).default(1),
    seed: z.number().int().default(0),
    /** Held-out validation share of train where the data has no validation split (the reference uses 10%). */
    validFraction: z.number().gt(0).lt(1).default(0.1),
  })
  .strict();

const { method, alpha, labelSource, preset, ...training } = studentOptionFields;

/** The student's training options (lib/student/options.ts), plus where its weights start and how it is supervised. */
const studentSchema = z
  .object({
    method,
    alpha,
    labelSource,
    preset,
    /**
     * Start from pretrained weights: a Stepwise checkpoint file readable by the GPU workers (`stepwise import-t5`
     * turns a Hugging Face T5 folder into one). Its shape and tokenizer replace `preset`.
     */
    init: z.string().min(1).optional(),
    /**
     * Refreshes start from a registered version's weights and tokenizer instead of from scratch: `champion` is the
     * version the spec's `gate.alias` names (`<name>@<gate.alias>`), or any `NAME@REF`. Where it names no version yet
     * (a model's first run) training starts from scratch, as without it.
     */
    warmStart: z
      .string()
      .refine((v) => v === 'champion' || MODEL_REF_PATTERN.test(v), 'expected "champion" or a NAME@REF reference')
      .optional(),
    /** Training steps when a warm start found its version (default `steps`): a refresh fine-tunes, it need not retrain. */
    warmStartSteps: z.number().int().min(1).max(10_000_000).optional(),
    ...training,
    /**
     * Seconds trainStudent (or evaluate) may go without a heartbeat before Temporal takes its worker for dead and
     * retries it (training from the last checkpoint) elsewhere. The worker heartbeats every second or two whatever a
     * step costs.
     */
    heartbeatTimeoutSeconds: z.number().int().min(5).max(3600).default(120),
  })
  .strict()
  .superRefine(checkStudentOptions)
  .superRefine((s, ctx) => {
    if (s.warmStart !== undefined && s.init !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['warmStart'],
        message: 'training starts from student.init or from a warm start, not both: expected one of them',
      });
    }
    if (s.warmStartSteps !== undefined && s.warmStart === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['warmStartSteps'],
        message: 'counts the steps of a warm start: set student.warmStart too',
      });
    }
  });

/**
 * Checks on each parsed rationale beyond parsing itself. An empty rationale is always dropped; the rest are opt-in
 * (the paper keeps every parsable completion). The validate stage's report counts every drop reason, with examples.
 */
const validateSchema = z
  .object({
    /** Drop a rationale shorter than this many characters (trimmed). Default 1: only empty ones go. */
    minRationaleChars: z.number().int().min(1).default(1),
    /** Drop a rationale longer than this many characters (trimmed): run-on or looping generations. */
    maxRationaleChars: z.number().int().min(1).optional(),
    /** Drop a rationale that itself states a label other than the parsed one ("… the answer is (b). So the answer is (c)."). */
    dropLabelMismatch: z.boolean().default(false),
    /** Drop an example whose teacher label disagrees with its gold label (where the data has gold labels). */
    requireGoldAgreement: z.boolean().default(false),
  })
  .strict()
  .refine((v) => v.maxRationaleChars === undefined || v.maxRationaleChars >= v.minRationaleChars, {
    path: ['maxRationaleChars'],
    message: 'must be at least validate.minRationaleChars',
  });

const evaluateSchema = z
  .object({
    maxLength: z.number().int().min(1).max(4096).default(16),
    batchSize: z.number().int().min(1).max(4096).default(64),
    /**
     * The split scored: `test` (default), or `valid` to choose settings (in a sweep, say) without looking at the test
     * split. Optional rather than defaulted, so specs that leave it out keep their run ids.
     */
    split: oneOf(['test', 'valid']).optional(),
  })
  .strict();

/**
 * The promotion gate, run after registration: the candidate is compared with the version `alias` names, on that
 * version's frozen evaluation set, and promoted to the alias only if it wins by the rules below.
 */
const gateSchema = z
  .object({
    /** Off: the version is registered as a candidate and nothing is promoted. */
    enabled: z.boolean().default(true),
    /** The alias the candidate challenges (and takes when it wins). */
    alias: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'expected a name of letters, digits, ".", "_" or "-"')
      .refine((a) => !/^\d+$/.test(a) && a !== 'latest', 'an alias needs a letter and cannot be "latest"')
      .default('champion'),
    /** What is compared: exact-match accuracy on the frozen evaluation set (the only metric evaluate produces). */
    metric: oneOf(['accuracy']).default('accuracy'),
    /** Accuracy points (0–1) the candidate must gain over the champion; 0 promotes a tie. */
    minImprovement: z.number().min(-1).max(1).default(0),
    /**
     * Require McNemar's exact test on the paired per-example outcomes to reject "no difference" at this level: on a
     * small test set a few examples' difference is noise, and a gate that promotes noise is worse than none.
     */
    mcNemarAlpha: z.number().gt(0).lt(1).optional(),
    /** A model's first version: promoted if it beats the majority-class baseline, or always. */
    firstVersion: oneOf(['beat-majority', 'always']).default('beat-majority'),
    /** Also require the student to match the teacher's accuracy on the same examples (recorded either way). */
    requireBeatTeacher: z.boolean().default(false),
    /**
     * Wait for a person (`stepwise models approve|reject`, a Temporal Update) after the gate passes, up to
     * `timeoutSeconds`, then apply `onTimeout`.
     */
    approval: z
      .object({
        timeoutSeconds: z
          .number()
          .int()
          .min(1)
          .max(365 * 24 * 3600)
          .default(7 * 24 * 3600),
        onTimeout: oneOf(['reject', 'promote']).default('reject'),
      })
      .strict()
      .optional(),
  })
  .strict();

/** The gate's settings when a spec says nothing: on, challenging `champion`. */
export const DEFAULT_GATE = gateSchema.parse({});

export const pipelineSpecSchema = z
  .object({
    /** Registry model name: versions of one name form one model's history. */
    name: modelName,
    data: dataSchema,
    sample: sampleSchema.default({ fraction: 1, seed: 0, validFraction: 0.1 }),
    teacher: teacherSchema,
    validate: validateSchema.default(validateSchema.parse({})),
    student: studentSchema.default(studentSchema.parse({})),
    evaluate: evaluateSchema.default({ maxLength: 16, batchSize: 64 }),
    gate: gateSchema.default(DEFAULT_GATE),
  })
  .strict()
  .superRefine((spec, ctx) => {
    if (spec.teacher.kind === 'replay' && spec.data.kind !== 'reference' && !spec.teacher.dir) {
      ctx.addIssue({
        code: 'custom',
        path: ['teacher', 'dir'],
        message: 'a replay teacher needs recorded completions: use data.kind "reference" or set teacher.dir',
      });
    }
    checkTeacherOptions(spec.teacher, (field, message) =>
      ctx.addIssue({ code: 'custom', path: ['teacher', field], message })
    );
    if (spec.teacher.kind === 'scripted' && spec.data.kind !== 'demo') {
      ctx.addIssue({
        code: 'custom',
        path: ['teacher', 'kind'],
        message: 'the scripted teacher only answers the generated demo task (data.kind "demo")',
      });
    }
  });

/** A spec as a user writes it (defaults may be omitted). */
export type PipelineSpecInput = z.input<typeof pipelineSpecSchema>;
/** A validated spec, every default filled in. */
export type PipelineSpec = z.output<typeof pipelineSpecSchema>;

/** A spec problem, phrased for a user: the field, the value given, and what was expected. */
export type SpecIssue = FieldIssue;

/**
 * A spec that does not validate. An {@link InputError} (whose `field` is the first bad field), so every caller that
 * turns bad input into a clear, non-retryable failure treats it alike; `issues` lists every bad field.
 */
export class SpecError extends InputError {
  constructor(readonly issues: SpecIssue[]) {
    super(
      issues.map((issue) => `spec.${issue.field}: got ${showValue(issue.value)}, ${issue.message}`).join('; '),
      issues[0]?.field ?? '(root)'
    );
    this.name = 'SpecError';
  }
}

/** Validate a spec and fill defaults; throws {@link SpecError} naming every bad field. */
export function parseSpec(input: unknown): PipelineSpec {
  const result = pipelineSpecSchema.safeParse(input);
  if (result.success) return result.data;
  throw new SpecError(fieldIssues(result.error, input, '(root)'));
}

/** The zero-config demo: a generated task, the scripted teacher, the tiny student. */
export function demoSpec(): PipelineSpecInput {
  return { name: 'demo-reviews', data: { kind: 'demo' }, teacher: { kind: 'scripted' } };
}
export type GateSpec = PipelineSpec['gate'];
