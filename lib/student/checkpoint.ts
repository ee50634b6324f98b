/**
 * One-file checkpoints in the safetensors format (8-byte little-endian header length, a JSON header, then raw
 * little-endian float32 data), which `safetensors` and `transformers` read directly: the weights carry HF T5 names
 * and layouts. `__metadata__` (string → string, as the format requires) holds what turns the weights back into a
 * working student: `config` (T5Config JSON), `tokenizer` (tokenizer.json) and `training` (method, alpha, steps,
 * backend, ...).
 *
 * Two kinds share the format. A model checkpoint (`format: stepwise-t5`) is the trained student. A resume checkpoint
 * (`format: stepwise-t5-resume`) is written during training and holds everything needed to continue it exactly: the
 * weights under their HF names, as in a model checkpoint (so it also loads as a model), the optimiser's slot tensors
 * under `optimizer.<slot>.<param>`, the best weights so far under `best.<param>` (absent when they are the current
 * ones), and the loop's own state (step, sampler, loss history, early-stopping counters, options) as JSON in `state`.
 *
 * Both carry `checksum` in their metadata: the sha256 of the header (without it) and the tensor data. A store verifies
 * an object against the reference that named it, but a checkpoint also travels as a plain file (`student.init`, a
 * child's resume file, `stepwise export-t5`), where nothing else would notice a flipped bit; every read here checks it,
 * and checks each model tensor's shape against the config, so a damaged checkpoint is a {@link CheckpointCorruptError}
 * rather than a model that trains on garbage. The file format itself, which needs no TensorFlow.js, is checkpoint-file.ts.
 *
 * A checkpoint is built as {@link CheckpointParts}, its tensors unread, and written to a file one tensor at a time
 * ({@link writeCheckpointFile}): the training child never holds a second copy of the weights and optimiser state (a
 * whole-buffer copy cost ~700 MiB at the `small` preset). {@link checkpointBytes} makes the same bytes as one buffer.
 */
import { InputError } from '../errors';
import {
  assertLittleEndian,
  collectGarbage,
  corrupt,
  decodeSafetensors,
  encodeSafetensors,
  inMemory,
  readSafetensorsFile,
  readTable,
  writeSafetensorsFile,
  type CheckpointSource,
  type TensorSource,
} from './checkpoint-file';
import { validateConfig, type T5Config } from './config';
import { paramSpecs, T5Model, type NamedWeight } from './t5';
import { loadTokenizer, type StudentTokenizer } from './tokenizer';

/** How a checkpoint was trained. `method` decides the prefix at inference; the rest is provenance. */
export interface TrainingMeta {
  method: string;
  alpha: number;
  steps: number;
  backend: string;
  [key: string]: unknown;
}

export interface LoadedCheckpoint {
  model: T5Model;
  tokenizer: StudentTokenizer;
  config: T5Config;
  training: TrainingMeta;
}

const FORMAT = 'stepwise-t5';
const RESUME_FORMAT = 'stepwise-t5-resume';
const OPTIMIZER_PREFIX = 'optimizer.';
const BEST_PREFIX = 'best.';

export {
  CheckpointCorruptError,
  decodeSafetensors,
  encodeSafetensors,
  type CheckpointSource,
  type TensorSource,
} from './checkpoint-file';

/**
 * A checkpoint not yet serialised: its tensors, each read from the device (or wherever it is) only when the writer
 * reaches it, and its metadata. {@link writeCheckpointFile} streams it to a file, so no second copy of the weights and
 * optimiser state ever exists; {@link checkpointBytes} makes one buffer of it, for callers that want bytes.
 */
export interface CheckpointParts {
  tensors: TensorSource[];
  metadata: Record<string, string>;
  /** Frees what the sources hold on the device (the optimiser's slot reads), once they have been written. */
  release?(): void;
}

/**
 * The model's weights as sources, in its state-dict order and with HF's names and layout, each read back when a writer
 * reaches it: a checkpoint of a big model holds one tensor at a time. A linear weight (kept
 * `[in, out]` for compute, t5.ts) is transposed here, into one scratch buffer reused from source to source: a
 * TensorFlow transpose per weight grew the process by hundreds of MiB that it never gave back. So a source's data is
 * valid until the next source of the list is read, which is how the writers consume them.
 */
export function weightSources(model: T5Model): TensorSource[] {
  let scratch = new Float32Array(0);
  return paramSpecs(model.config).map((spec) => ({
    name: spec.name,
    shape: spec.shape,
    read: () => {
      const v = model.variables.get(spec.name);
      if (!v) throw new Error(`T5Model: no parameter '${spec.name}'`);
      const data = v.dataSync() as Float32Array;
      if (!spec.linear) return data;
      const [out, inputs] = spec.shape;
      if (scratch.length < data.length) scratch = new Float32Array(data.length);
      const hf = scratch.subarray(0, data.length);
      // data is [inputs, out], row-major; HF's layout is [out, inputs].
      for (let i = 0; i < inputs; i++) {
        for (let o = 0, from = i * out; o < out; o++) hf[o * inputs + i] = data[from + o];
      }
      return hf;
    },
  }));
}

/**
 * A copy of the model's weights in HF's names and layout, read through {@link weightSources}: no TensorFlow transpose,
 * and what the reads leave behind is collected (`collectGarbage`) rather than left to pile up. What the training loop
 * keeps as the best weights so far, and what `exportT5` writes for a model in memory.
 */
export function copyWeights(model: T5Model): NamedWeight[] {
  const weights = weightSources(model).map((s) => ({ name: s.name, shape: s.shape, data: s.read().slice() }));
  collectGarbage();
  return weights;
}

/** A model checkpoint: the model's weights (or weights already read back), config, tokenizer and training metadata. */
export function modelCheckpoint(
  weights: T5Model | { config: T5Config; weights: readonly NamedWeight[] },
  tokenizer: StudentTokenizer,
  training: TrainingMeta
): CheckpointParts {
  assertLittleEndian();
  const tensors = weights instanceof T5Model ? weightSources(weights) : weights.weights.map(inMemory);
  return {
    tensors,
    metadata: {
      format: FORMAT,
      config: JSON.stringify(weights.config),
      tokenizer: tokenizer.toJSON(),
      training: JSON.stringify(training),
    },
  };
}

/** The model's weights, config, tokenizer and training metadata as safetensors bytes. */
export function serializeCheckpoint(model: T5Model, tokenizer: StudentTokenizer, training: TrainingMeta): Buffer {
  return checkpointBytes(modelCheckpoint(model, tokenizer, training));
}

/** A model checkpoint from weights already read back (e.g. the best weights a training run kept). */
export function serializeWeights(
  config: T5Config,
  weights: readonly NamedWeight[],
  tokenizer: StudentTokenizer,
  training: TrainingMeta
): Buffer {
  return checkpointBytes(modelCheckpoint({ config, weights }, tokenizer, training));
}

/** What a resume checkpoint holds. `state` is the training loop's own JSON (see train.ts). */
export interface ResumeCheckpoint {
  config: T5Config;
  /** tokenizer.json: a resumed run must not retrain its tokenizer. */
  tokenizer: string;
  training: TrainingMeta;
  state: Record<string, unknown>;
  /** Current weights, HF names and layouts. */
  weights: NamedWeight[];
  /** Optimiser slot tensors, named `<slot>.<param>`. */
  optimizer: NamedWeight[];
  /** The best weights by validation loss, when they are not the current ones. */
  best?: NamedWeight[];
}

/** What a resume checkpoint is written from: {@link ResumeCheckpoint}'s parts, its tensors as sources. */
export interface ResumeCheckpointParts extends Omit<ResumeCheckpoint, 'tokenizer' | 'weights' | 'optimizer' | 'best'> {
  tokenizer: StudentTokenizer;
  weights: readonly (NamedWeight | TensorSource)[];
  optimizer: readonly (NamedWeight | TensorSource)[];
  best?: readonly (NamedWeight | TensorSource)[];
  /** Frees what the sources hold once written (see {@link CheckpointParts.release}). */
  release?(): void;
}

/** A resume checkpoint (see the module comment), to be written with {@link writeCheckpointFile} or made bytes. */
export function resumeCheckpoint(parts: ResumeCheckpointParts): CheckpointParts {
  assertLittleEndian();
  const source = (prefix: string) => (w: NamedWeight | TensorSource) => {
    const s = 'read' in w ? w : inMemory(w);
    return prefix ? { ...s, name: prefix + s.name } : s;
  };
  return {
    tensors: [
      ...parts.weights.map(source('')),
      ...parts.optimizer.map(source(OPTIMIZER_PREFIX)),
      ...(parts.best ?? []).map(source(BEST_PREFIX)),
    ],
    metadata: {
      format: RESUME_FORMAT,
      config: JSON.stringify(parts.config),
      tokenizer: parts.tokenizer.toJSON(),
      training: JSON.stringify(parts.training),
      state: JSON.stringify(parts.state),
      hasBest: String(parts.best !== undefined),
    },
    ...(parts.release ? { release: parts.release } : {}),
  };
}

/** Resume checkpoint bytes (see the module comment). */
export function serializeResumeCheckpoint(parts: ResumeCheckpointParts): Buffer {
  return checkpointBytes(resumeCheckpoint(parts));
}

/** A checkpoint as one buffer of safetensors bytes, with the embedded checksum; its sources are released after. */
export function checkpointBytes(parts: CheckpointParts): Buffer {
  try {
    return encodeSafetensors(parts.tensors, parts.metadata, { checksum: true });
  } finally {
    parts.release?.();
  }
}

/**
 * Writes a checkpoint to `path` tensor by tensor: the same bytes as {@link checkpointBytes}, but no more than one
 * tensor is in memory at a time, and the file appears whole or not at all (see `writeSafetensorsFile`). Its sources
 * are released after.
 * @returns the file's size in bytes.
 */
export async function writeCheckpointFile(path: string, parts: CheckpointParts): Promise<number> {
  try {
    return await writeSafetensorsFile(path, parts.tensors, parts.metadata, { checksum: true });
  } finally {
    parts.release?.();
  }
}

/**
 * Parses a resume checkpoint, its checksum and tensor shapes verified.
 * @throws CheckpointCorruptError when the bytes are damaged; InputError when they are not a resume checkpoint (a
 *   model checkpoint cannot be resumed: it has no optimiser state).
 */
export function readResumeCheckpoint(
  buf: Uint8Array,
  from: CheckpointSource = { field: 'resumeFrom' }
): ResumeCheckpoint {
  return resumeFromTensors(decodeSafetensors(buf, from), from);
}

/**
 * {@link readResumeCheckpoint} of a file, read tensor by tensor (`readSafetensorsFile`): the file is never in memory
 * whole beside the tensors decoded from it, and each tensor can be freed once it has been handed on.
 */
export async function readResumeCheckpointFile(
  path: string,
  from: CheckpointSource = { field: 'resumeFrom' }
): Promise<ResumeCheckpoint> {
  return resumeFromTensors(await readSafetensorsFile(path, from), from);
}

function resumeFromTensors(
  { weights, metadata }: { weights: NamedWeight[]; metadata: Record<string, string> },
  from: CheckpointSource
): ResumeCheckpoint {
  const { config, tokenizer, training, state } = resumeMeta(metadata);
  checkShapes(weights, config, metadata.hasBest === 'true', from);
  const strip = (prefix: string) =>
    weights.filter((w) => w.name.startsWith(prefix)).map((w) => ({ ...w, name: w.name.slice(prefix.length) }));
  return {
    config,
    tokenizer,
    training,
    state,
    weights: modelWeights(weights),
    optimizer: strip(OPTIMIZER_PREFIX),
    ...(metadata.hasBest === 'true' ? { best: strip(BEST_PREFIX) } : {}),
  };
}

/** A resume checkpoint's metadata: the model's, plus the training loop's state. */
function resumeMeta(metadata: Record<string, string>) {
  if (metadata.format !== RESUME_FORMAT) {
    throw new InputError(
      `resumeFrom has format ${JSON.stringify(metadata.format)}; expected '${RESUME_FORMAT}' (a checkpoint written during training)`,
      'resumeFrom'
    );
  }
  const meta = parseMeta(metadata);
  let state: unknown;
  try {
    state = JSON.parse(metadata.state ?? '');
  } catch {
    throw new InputError(`resumeFrom metadata 'state' is not JSON`, 'resumeFrom');
  }
  if (state === null || typeof state !== 'object')
    throw new InputError(`resumeFrom has no training state`, 'resumeFrom');
  return { ...meta, state: state as Record<string, unknown> };
}

/** The model's own weights among a file's tensors (a resume checkpoint also holds optimiser and best-so-far ones). */
function modelWeights(weights: NamedWeight[]): NamedWeight[] {
  return weights.filter((w) => !w.name.startsWith(OPTIMIZER_PREFIX) && !w.name.startsWith(BEST_PREFIX));
}

/**
 * Every model tensor (and best-so-far copy) has the name and shape `config` gives it: a header whose shapes were
 * damaged, or tensors of another model under this config, fail here, naming the first tensor that does not fit.
 * Optimiser slots are checked against the model when the optimiser loads them (optim.ts).
 */
function checkShapes(
  tensors: readonly { name: string; shape: number[] }[],
  config: T5Config,
  hasBest: boolean,
  from: CheckpointSource
): void {
  const specs = paramSpecs(config);
  const expected = new Map(specs.map((s) => [s.name, s.shape]));
  const shape = (dims: readonly number[]) => `[${dims.join(', ')}]`;
  for (const t of tensors) {
    if (t.name.startsWith(OPTIMIZER_PREFIX)) continue;
    const name = t.name.startsWith(BEST_PREFIX) ? t.name.slice(BEST_PREFIX.length) : t.name;
    const want = expected.get(name);
    if (!want) throw corrupt(from, `tensor '${t.name}' is not a weight of its config's model`);
    if (want.join() !== t.shape.join()) {
      throw corrupt(
        from,
        `tensor '${t.name}' has shape ${shape(t.shape)}; its config ` +
          `(d_model ${config.d_model}, d_ff ${config.d_ff}, vocab_size ${config.vocab_size}) makes it ${shape(want)}`
      );
    }
  }
  const names = new Set(tensors.map((t) => t.name));
  for (const prefix of hasBest ? ['', BEST_PREFIX] : ['']) {
    const missing = specs.find((s) => !names.has(prefix + s.name));
    if (missing) throw corrupt(from, `it has no tensor '${prefix + missing.name}', which its config requires`);
  }
}

/** What {@link verifyCheckpoint} learnt of a checkpoint that passed. */
export interface VerifiedCheckpoint {
  kind: 'model' | 'resume';
  config: T5Config;
  training: TrainingMeta;
  /** Whether it carries a checksum (checkpoints written by other tools, or before checksums, do not). */
  checksummed: boolean;
}

/**
 * Checks checkpoint bytes without building a model or copying a tensor (a big model's resume checkpoint is gigabytes):
 * well-formed, its checksum, a Stepwise model or resume checkpoint, and every model tensor's shape against its config.
 * A resume checkpoint's training state is parsed too; whether it suits a run is for `train()` to say (resume.ts).
 * @throws CheckpointCorruptError for damaged bytes; InputError for bytes that are not a Stepwise checkpoint.
 */
export function verifyCheckpoint(buf: Uint8Array, from: CheckpointSource = {}): VerifiedCheckpoint {
  assertLittleEndian();
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const { entries, metadata, checksummed } = readTable(bytes, from);
  const kind = metadata.format === RESUME_FORMAT ? 'resume' : 'model';
  const { config, training } = kind === 'resume' ? resumeMeta(metadata) : parseMeta(metadata);
  checkShapes(entries, config, metadata.hasBest === 'true', from);
  return { kind, config, training, checksummed };
}

/** The config, tokenizer JSON and training metadata of a checkpoint, without building the model. */
export function readCheckpointMeta(
  buf: Uint8Array,
  from: CheckpointSource = {}
): { config: T5Config; tokenizer: string; training: TrainingMeta } {
  return parseMeta(decodeSafetensors(buf, from).metadata);
}

function parseMeta(metadata: Record<string, string>): { config: T5Config; tokenizer: string; training: TrainingMeta } {
  const field = (key: string): unknown => {
    const raw = metadata[key];
    if (typeof raw !== 'string') {
      throw new InputError(`checkpoint metadata has no '${key}'; expected a Stepwise student checkpoint`, 'checkpoint');
    }
    if (key === 'tokenizer') return raw;
    try {
      return JSON.parse(raw);
    } catch {
      throw new InputError(`checkpoint metadata '${key}' is not JSON`, 'checkpoint');
    }
  };
  const config = validateConfig(field('config') as T5Config);
  const training = field('training') as TrainingMeta;
  if (training === null || typeof training !== 'object' || typeof training.method !== 'string') {
    throw new InputError(`checkpoint metadata 'training' has no method`, 'checkpoint');
  }
  return { config, tokenizer: field('tokenizer') as string, training };
}

/**
 * A working student from checkpoint bytes (on the current tfjs backend): a model checkpoint, or the current weights of
 * a resume checkpoint. Checksum and shapes are verified first.
 * @throws CheckpointCorruptError for damaged bytes; InputError when they are not a Stepwise student checkpoint.
 */
export function loadCheckpoint(buf: Uint8Array, from: CheckpointSource = {}): LoadedCheckpoint {
  const { weights, metadata } = decodeSafetensors(buf, from);
  const { config, tokenizer: tokenizerJson, training } = parseMeta(metadata);
  checkShapes(weights, config, metadata.hasBest === 'true', from);
  const tokenizer = loadTokenizer(tokenizerJson);
  // Published T5 checkpoints pad their embedding matrix past the tokenizer (32,100 tokens, vocab_size 32,128).
  if (tokenizer.vocabSize > config.vocab_size) {
    throw new InputError(
      `checkpoint tokenizer has ${tokenizer.vocabSize} tokens but its config says vocab_size ${config.vocab_size}`,
      'checkpoint'
    );
  }
  const model = T5Model.fromWeights(config, modelWeights(weights));
  return { model, tokenizer, config, training };
}
