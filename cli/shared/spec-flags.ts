/**
 * `stepwise run`'s flags turned into a pipeline spec. The flags only place values; the spec's own validation
 * (lib/pipeline/spec.ts) judges them, so a flag and the same field in a spec file fail with the same message.
 */
import { readFile } from 'node:fs/promises';
import { demoSpec, type PipelineSpecInput } from '../../lib/pipeline/spec';
import { InputError } from '../../lib/errors';

/** The flags of `stepwise run`, as commander hands them to the action. */
export interface RunFlags {
  demo?: boolean;
  name?: string;
  dataDir?: string;
  task?: string;
  train?: string;
  test?: string;
  teacher?: string;
  teacherUrl?: string;
  teacherModel?: string;
  teacherMode?: string;
  teacherConcurrency?: number;
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  samples?: number;
  maxCost?: number;
  prices?: string;
  method?: string;
  alpha?: number;
  preset?: string;
  steps?: number;
  checkpointEvery?: number;
  batchSize?: number;
  learningRate?: number;
  fraction?: number;
  seed?: number;
  backend?: string;
  store?: string;
  detach?: boolean;
  json?: boolean;
  id?: string;
  newRun?: boolean;
}

/** A spec from a file (if given), the demo otherwise, with flags layered on top. Validated before anything starts. */
export async function specFromFlags(file: string | undefined, flags: RunFlags): Promise<PipelineSpecInput> {
  const base: Record<string, any> = file ? await readSpecFile(file) : flags.dataDir || flags.train ? {} : demoSpec();
  const spec: Record<string, any> = { ...base, student: { ...base.student }, sample: { ...base.sample } };
  if (flags.name) spec.name = flags.name;
  if (flags.dataDir) spec.data = { kind: 'reference', dir: flags.dataDir, task: flags.task };
  else if (flags.train) spec.data = { kind: 'jsonl', train: flags.train, test: flags.test };
  if (flags.teacher === 'openai' || flags.teacherUrl) {
    spec.teacher = { kind: 'openai', url: flags.teacherUrl, model: flags.teacherModel };
  } else if (flags.teacher) {
    spec.teacher = { kind: flags.teacher };
  }
  if (!spec.name && spec.data?.kind === 'reference') spec.name = `${spec.data.task}-student`;
  await teacherFlags(spec, flags);
  studentFlags(spec, flags);
  if (spec.teacher === undefined) throw new InputError(missingTeacher(spec.data?.kind), 'teacher');
  return spec as PipelineSpecInput;
}

/**
 * No teacher at all: the schema's own message ("expected object, received undefined") tells a new user nothing, so
 * this one names the flags that give one, the one that fits the data first.
 */
function missingTeacher(dataKind: unknown): string {
  const live = '--teacher-url <OpenAI-compatible base URL> --teacher-model <model> asks a live teacher';
  if (dataKind === 'reference') {
    return (
      "no teacher: a reference-layout dataset holds the paper's recorded teacher completions, so " +
      `--teacher replay trains on them (no calls, no cost); or ${live} (in a spec file: "teacher": {"kind": "replay"})`
    );
  }
  return (
    `no teacher: ${live}, or a spec file's "teacher": {"kind": "replay", "dir": "<folder>"} replays recorded ` +
    'completions (--demo runs the built-in one on generated data)'
  );
}

/**
 * The spec file as a JSON object.
 * @throws InputError naming the file when it cannot be read, is not JSON, or holds something other than an object.
 */
async function readSpecFile(file: string): Promise<Record<string, any>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new InputError(`spec file ${file} cannot be read (${(err as NodeJS.ErrnoException).code})`, 'spec');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InputError(`spec file ${file} is not valid JSON (${(err as Error).message})`, 'spec');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new InputError(
      `spec file ${file} holds ${JSON.stringify(value)?.slice(0, 40)}; expected a JSON object`,
      'spec'
    );
  }
  return value as Record<string, any>;
}

/** Student and sampling flags onto `spec.student` / `spec.sample`; `--seed` seeds both, so one flag reruns a run. */
function studentFlags(spec: Record<string, any>, flags: RunFlags): void {
  const student: [keyof RunFlags, string][] = [
    ['method', 'method'],
    ['alpha', 'alpha'],
    ['preset', 'preset'],
    ['steps', 'steps'],
    ['checkpointEvery', 'checkpointEvery'],
    ['batchSize', 'batchSize'],
    ['learningRate', 'learningRate'],
    ['backend', 'backend'],
  ];
  for (const [flag, field] of student) if (flags[flag] !== undefined) spec.student[field] = flags[flag];
  if (flags.fraction !== undefined) spec.sample.fraction = flags.fraction;
  if (flags.seed !== undefined) spec.sample.seed = spec.student.seed = flags.seed;
}

/** Teacher flags onto `spec.teacher` (the spec's validation then checks them like any field). */
async function teacherFlags(spec: Record<string, any>, flags: RunFlags): Promise<void> {
  const fields: [keyof RunFlags, string][] = [
    ['teacherMode', 'mode'],
    ['teacherConcurrency', 'concurrency'],
    ['requestsPerMinute', 'requestsPerMinute'],
    ['tokensPerMinute', 'tokensPerMinute'],
    ['samples', 'samples'],
    ['maxCost', 'maxCost'],
  ];
  const given = fields.filter(([flag]) => flags[flag] !== undefined);
  if (given.length === 0 && !flags.prices) return;
  spec.teacher = { ...spec.teacher };
  for (const [flag, field] of given) spec.teacher[field] = flags[flag];
  if (flags.prices) spec.teacher.price = await priceFor(flags.prices, spec.teacher);
}

/** The teacher model's entry in a price list shared by a team: { "<model>": { "inputPerMillionTokens": …, … } }. */
async function priceFor(file: string, teacher: Record<string, any>): Promise<unknown> {
  const list = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  const model = teacher.kind === 'openai' ? teacher.model : undefined;
  if (model === undefined || !(model in list)) {
    throw new InputError(
      `--prices ${file} has no entry for the teacher model ${JSON.stringify(model ?? teacher.kind)}; ` +
        `it lists ${Object.keys(list).join(', ') || 'nothing'}`,
      '--prices'
    );
  }
  return list[model];
}
