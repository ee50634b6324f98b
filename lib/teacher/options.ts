/**
 * How the teacher is called: every choice, bound and default once. The pipeline spec's `teacher` section is the
 * union of {@link teacherSchema}'s kinds (lib/pipeline/spec.ts adds the checks that need the data section too).
 *
 * Imported by the workflow bundle through the spec: zod only, no Node built-ins, no I/O.
 */
import { z } from 'zod';
import { oneOf } from '../schema';

/** The teacher key's variable when a spec names none: the one the OpenAI SDK itself reads. */
export const DEFAULT_API_KEY_ENV = 'OPENAI_API_KEY';

/** `batch` sends each shard through the provider's batch API (OpenAI `/v1/batches`) and waits on durable timers. */
export const TEACHER_MODES = ['direct', 'batch'] as const;
export type TeacherMode = (typeof TEACHER_MODES)[number];

/** When the budget stops the stage: `train` on what was received, or `fail` the run (results stay cached). */
export const BUDGET_OUTCOMES = ['train', 'fail'] as const;

/** US dollars per million tokens, as the provider bills them (batch rates for batch mode). */
export const priceSchema = z
  .object({
    inputPerMillionTokens: z.number().min(0),
    outputPerMillionTokens: z.number().min(0),
  })
  .strict();

/** How the stage splits its work: shards of examples run as separate activities, on whichever workers serve it. */
export const shardingFields = {
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
export const callingFields = {
  /** Default 0: the teacher's best answer. Must be > 0 with `samples` > 1. */
  temperature: z.number().min(0).max(2).default(0),
  /** Completion tokens a call may return. */
  maxTokens: z.number().int().min(1).max(32_768).default(256),
  /** Requests in flight at once for the whole stage (divided among the shards in flight). */
  concurrency: z.number().int().min(1).max(4096).default(8),
  /** Client-side limits for the whole stage, as the provider states them; unset means unlimited. */
  requestsPerMinute: z.number().positive().optional(),
  /** Prompt plus completion tokens a minute, for the whole stage; unset means unlimited. */
  tokensPerMinute: z.number().positive().optional(),
  /** Per attempt; a call that takes longer is abandoned and retried. */
  timeoutSeconds: z.number().positive().max(3600).default(120),
  /** Retries of one call after transient failures (429, 5xx, timeouts, dropped connections, empty completions). */
  maxRetries: z.number().int().min(0).max(100).default(5),
  /** Self-consistency: ask each example this many times (seeds 0..k-1) and keep a rationale of the majority label. */
  samples: z.number().int().min(1).max(64).default(1),
  /** See {@link TEACHER_MODES}. */
  mode: oneOf(TEACHER_MODES).default('direct'),
  /** How often batch mode asks the provider whether a batch is done. */
  batchPollSeconds: z.number().positive().max(86_400).default(60),
  /** Prices, to turn tokens into dollars in the stage result, the manifest and lineage. */
  price: priceSchema.optional(),
  /** Stop sending once this many dollars are spent (needs `price`); what was received is kept. */
  maxCost: z.number().min(0).optional(),
  /** See {@link BUDGET_OUTCOMES}. */
  onBudgetExhausted: oneOf(BUDGET_OUTCOMES).default('train'),
  ...shardingFields,
};

export const teacherSchema = z.discriminatedUnion('kind', [
  /** The built-in teacher for the demo task, served over the OpenAI API by a local server of ours. */
  z
    .object({
      kind: z.literal('scripted'),
      /** Share of answers the scripted teacher gets wrong on purpose, as a real teacher sometimes does. */
      errorRate: z.number().min(0).max(1).default(0.1),
      ...callingFields,
    })
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
        .default(DEFAULT_API_KEY_ENV),
      ...callingFields,
    })
    .strict(),
  /** Recorded completions from the reference layout (`<dir>/<task>/llm/<split>_CoT_<i>.json`): no LLM needed. */
  z.object({ kind: z.literal('replay'), dir: z.string().min(1).optional(), ...shardingFields }).strict(),
]);

/** A validated teacher section, every default filled in. */
export type TeacherOptions = z.output<typeof teacherSchema>;
export type TeacherKind = TeacherOptions['kind'];

/** `scripted`: our local server for the demo task; `openai`: any OpenAI-compatible endpoint; `replay`: recordings. */
export const TEACHER_KINDS: readonly TeacherKind[] = teacherSchema.options.map((o) => o.shape.kind.value);

/**
 * The checks that span calling options. Run on the parsed section (the spec calls it from its own refinement, after
 * every field has passed), since they compare fields whose defaults must be filled in first.
 */
export function checkTeacherOptions(t: TeacherOptions, addIssue: (path: string, message: string) => void): void {
  if (t.kind === 'replay') return;
  if (t.samples > 1 && t.temperature === 0) {
    addIssue(
      'temperature',
      `self-consistency (teacher.samples ${t.samples}) needs temperature > 0, or every sample is the same`
    );
  }
  if (t.maxCost !== undefined && t.price === undefined) {
    addIssue('price', 'teacher.maxCost needs teacher.price (dollars per million input and output tokens)');
  }
}
