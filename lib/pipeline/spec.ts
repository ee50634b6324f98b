/**
 * The pipeline spec: everything a distillation run needs, validated before anything starts.
 *
 * This module is imported by the workflow bundle as well as by the CLI and activities, so it must stay pure:
 * no Node built-ins, no I/O. Checks that need I/O (does the data folder exist?) happen in the `sample` activity.
 */
import { z } from 'zod';
import { BENCHMARK_TASKS, type TaskKind } from '../data/types';

export type { TaskKind };
export const METHODS = ['distill-step-by-step', 'standard-finetune', 'standard-distill'] as const;
export const PRESETS = ['tiny', 'small', 'base', 'large'] as const;
export const BACKENDS = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;

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
      task: z.enum(BENCHMARK_TASKS),
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

/** US dollars per million tokens, as the provider bills them (batch rates for batch mode). */
const priceSchema = z
  .object({
    inputPerMillionTokens: z.number().min(0),
    outputPerMillionTokens: z.number().min(0),
  })
  .strict();

/** How the stage splits its work: shards of examples run as separate activities, on whichever workers serve it. */
const shardingFields = {
  /** Examples per shard: one activity's work, and what a killed worker at most has to look up again. */
  shardSize: z.number().int().min(1).max(100_000).default(1000),
  /** Shards in flight at once, across all workers. Concurrency and rate limits are divided among them. */
  parallelShards: z.number().int().min(1).max(1024).default(4),
  /** Shards one workflow run handles before it continues as new, keeping its history bounded at any data size. */
  shardsPerRun: z.number().int().min(1).max(10_000).default(200),
  /** A shard whose worker is silent this long is retried elsewhere, from its journal. */
  heartbeatTimeoutSeconds: z.number().int().min(5).max(3600).default(60),
};

/** How calls are made: shared by the OpenAI endpoint and the demo's scripted one (which is served the same way). */
const callingFields = {
  /** Default 0: the teacher's best answer. Must be > 0 with `samples` > 1. */
  temperature: z.number().min(0).max(2).default(0),
  maxTokens: z.number().int().min(1).max(32_768).default(256),
  /** Requests in flight at once for the whole stage (divided among the shards in flight). */
  concurrency: z.number().int().min(1).max(4096).default(8),
  /** Client-side limits for the whole stage, as the provider states them; unset means unlimited. */
  requestsPerMinute: z.number().positive().optional(),
  tokensPerMinute: z.number().positive().optional(),
  /** Per attempt; a call that takes longer is abandoned and retried. */
  timeoutSeconds: z.number().positive().max(3600).default(120),
  /** Retries of one call after transient failures (429, 5xx, timeouts, dropped connections, empty completions). */
  maxRetries: z.number().int().min(0).max(100).default(5),
  /** Self-consistency: ask each example this many times (seeds 0..k-1) and keep a rationale of the majority label. */
  samples: z.number().int().min(1).max(64).default(1),
  /** `batch` sends each shard through the provider's batch API (OpenAI `/v1/batches`) and waits on durable timers. */
  mode: z.enum(['direct', 'batch']).default('direct'),
  /** How often batch mode asks the provider whether a batch is done. */
  batchPollSeconds: z.number().positive().max(86_400).default(60),
  /** Prices, to turn tokens into dollars in the stage result, the manifest and lineage. */
  price: priceSchema.optional(),
  /** Stop sending once this many dollars are spent (needs `price`); what was received is kept. */
  maxCost: z.number().min(0).optional(),
  /** When the budget stops the stage: `train` on what was received, or `fail` the run (results stay cached). */
  onBudgetExhausted: z.enum(['train', 'fail']).default('train'),
  ...shardingFields,
};

const teacherSchema = z.discriminatedUnion('kind', [
  /** The built-in teacher for the demo task, served over the OpenAI API by a local server of ours. */
  z
    .object({ kind: z.literal('scripted'), errorRate: z.number().min(0).max(1).default(0.1), ...callingFields })
    .strict(),
  z
    .object({
      kind: z.literal('openai'),
      url: z.url(),
      model: z.string().min(1),
      /**
       * The environment variable, on the workers, holding the API key. Keys never go in a spec: specs are stored
       * in workflow history, manifests and lineage.
       */
      apiKeyEnv: z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name')
        .default('OPENAI_API_KEY'),
      ...callingFields,
    })
    .strict(),
  /** Recorded completions from the reference layout (`<dir>/<task>/llm/<split>_CoT_<i>.json`): no LLM needed. */
  z.object({ kind: z.literal('replay'), dir: z.string().min(1).optional(), ...shardingFields }).strict(),
]);

const studentSchema = z
  .object({
    method: z.enum(METHODS).default('distill-step-by-step'),
    /** Weight of the label loss; the rationale loss gets 1 − alpha. The paper's default is 0.5. */
    alpha: z.number().min(0).max(1).default(0.5),
    /**
     * Labels `predict:` learns from. Default: gold for standard finetuning and for distill-step-by-step (the
     * reference's `--label_type gt`), teacher for standard distillation. `teacher` with distill-step-by-step is the
     * paper's unlabelled-data setting (`--label_type llm`).
     */
    labelSource: z.enum(['gold', 'teacher']).optional(),
    preset: z.enum(PRESETS).default('tiny'),
    /**
     * Start from pretrained weights: a Stepwise checkpoint file readable by the GPU workers (`stepwise import-t5`
     * turns a Hugging Face T5 folder into one). Its shape and tokenizer replace `preset`.
     */
    init: z.string().min(1).optional(),
    steps: z.number().int().min(1).max(10_000_000).default(400),
    batchSize: z.number().int().min(1).max(4096).default(32),
    learningRate: z.number().gt(0).max(1).default(3e-3),
    seed: z.number().int().default(0),
    maxInputLength: z.number().int().min(8).max(4096).default(64),
    maxTargetLength: z.number().int().min(2).max(4096).default(16),
    maxRationaleLength: z.number().int().min(2).max(4096).default(64),
    /** tfjs backend: `auto` walks the ladder tensorflow (native) → wasm → cpu and records the one used. */
    backend: z.enum(BACKENDS).default('auto'),
    /** `adamw` (the reference's) or `adafactor` (T5's own, as HF Trainer's `optim="adafactor"` runs it). */
    optimizer: z.enum(['adamw', 'adafactor']).default('adamw'),
    /** Steps of linear learning-rate warmup from 0; the rate then decays linearly to 0 at the last step. */
    warmupSteps: z.number().int().min(0).default(0),
    /** Validation loss every this many steps (and at the end); the best weights by it are kept. Default: at the end. */
    evalEvery: z.number().int().min(1).optional(),
    /** Stop after this many validations in a row without a lower validation loss (needs evalEvery). Default: never. */
    earlyStoppingPatience: z.number().int().min(1).optional(),
    /** A resumable checkpoint goes to the store every this many steps: at most this many are redone after a crash. */
    checkpointEvery: z.number().int().min(1).default(100),
    /** ... and at least this often, in minutes, however long steps take. */
    checkpointEveryMinutes: z.number().gt(0).default(10),
    /**
     * Seconds trainStudent may go without a heartbeat before Temporal takes its worker for dead and retries it (from
     * the last checkpoint) elsewhere. The worker heartbeats every second or two whatever a step costs.
     */
    heartbeatTimeoutSeconds: z.number().int().min(5).max(3600).default(120),
  })
  .strict()
  .refine((s) => s.earlyStoppingPatience === undefined || s.evalEvery !== undefined, {
    path: ['earlyStoppingPatience'],
    message: 'early stopping counts validations: set student.evalEvery too',
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
  })
  .strict();

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
    const { method, labelSource } = spec.student;
    if (
      labelSource &&
      method !== 'distill-step-by-step' &&
      labelSource !== (method === 'standard-finetune' ? 'gold' : 'teacher')
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['student', 'labelSource'],
        message: `${method} trains on ${method === 'standard-finetune' ? 'gold' : 'teacher'} labels by definition`,
      });
    }
    if (spec.teacher.kind !== 'replay') {
      const t = spec.teacher;
      if (t.samples > 1 && t.temperature === 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['teacher', 'temperature'],
          message: `self-consistency (teacher.samples ${t.samples}) needs temperature > 0, or every sample is the same`,
        });
      }
      if (t.maxCost !== undefined && t.price === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['teacher', 'price'],
          message: 'teacher.maxCost needs teacher.price (dollars per million input and output tokens)',
        });
      }
    }
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
export interface SpecIssue {
  field: string;
  value: unknown;
  message: string;
}

export class SpecError extends Error {
  constructor(readonly issues: SpecIssue[]) {
    super(issues.map(formatIssue).join('; '));
    this.name = 'SpecError';
  }
}

function formatIssue(issue: SpecIssue): string {
  const shown = issue.value === undefined ? 'nothing' : JSON.stringify(issue.value);
  return `spec.${issue.field}: got ${shown && shown.length > 80 ? shown.slice(0, 77) + '...' : shown}, ${issue.message}`;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

/** Validate a spec and fill defaults; throws {@link SpecError} naming every bad field. */
export function parseSpec(input: unknown): PipelineSpec {
  const result = pipelineSpecSchema.safeParse(input);
  if (result.success) return result.data;
  throw new SpecError(
    result.error.issues.map((issue) => ({
      field: issue.path.map(String).join('.') || '(root)',
      value: valueAt(input, issue.path),
      message: issue.message.replace(/^Invalid input: /, ''),
    }))
  );
}

/** The task whose parsing rules, prompt template and scoring apply to this spec. */
export function taskOf(spec: PipelineSpec): TaskKind {
  return spec.data.kind === 'reference' ? spec.data.task : spec.data.kind;
}

/** Whether this method learns from the teacher at all (standard finetuning uses gold labels only). */
export function usesTeacher(spec: PipelineSpec): boolean {
  return spec.student.method !== 'standard-finetune';
}

/** The label source a run trains `predict:` on, defaults resolved (recorded in lineage). */
export function labelSourceOf(spec: PipelineSpec): 'gold' | 'teacher' {
  return spec.student.labelSource ?? (spec.student.method === 'standard-distill' ? 'teacher' : 'gold');
}

/** The zero-config demo: a generated task, the scripted teacher, the tiny student. */
export function demoSpec(): PipelineSpecInput {
  return { name: 'demo-reviews', data: { kind: 'demo' }, teacher: { kind: 'scripted' } };
}
