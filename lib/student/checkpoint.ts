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
 */
import { InputError } from '../errors';
import {
  assertLittleEndian,
  corrupt,
  decodeSafetensors,
  encodeSafetensors,
  readTable,
  type CheckpointSource,
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

export { CheckpointCorruptError, decodeSafetensors, encodeSafetensors, type CheckpointSource } from './checkpoint-file';

/** The model's weights, config, tokenizer and training metadata as safetensors bytes. */
export function serializeCheckpoint(model: T5Model, tokenizer: StudentTokenizer, training: TrainingMeta): Buffer {
  assertLittleEndian();
  return encodeCheckpoint(model.exportWeights(), {
    format: FORMAT,
    config: JSON.stringify(model.config),
    tokenizer: tokenizer.toJSON(),
    training: JSON.stringify(training),
  });
}

/** A model checkpoint from weights already read back (e.g. the best weights a training run kept). */
export function serializeWeights(
  config: T5Config,
  weights: readonly NamedWeight[],
  tokenizer: StudentTokenizer,
  training: TrainingMeta
): Buffer {
  return encodeCheckpoint(weights, {
    format: FORMAT,
    config: JSON.stringify(config),
    tokenizer: tokenizer.toJSON(),
    training: JSON.stringify(training),
  });
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

/** Resume checkpoint bytes (see the module comment). */
export function serializeResumeCheckpoint(
  parts: Omit<ResumeCheckpoint, 'tokenizer'> & { tokenizer: StudentTokenizer }
): Buffer {
  const prefixed = (prefix: string, ws: readonly NamedWeight[]) => ws.map((w) => ({ ...w, name: prefix + w.name }));
  return encodeCheckpoint(
    [...parts.weights, ...prefixed(OPTIMIZER_PREFIX, parts.optimizer), ...prefixed(BEST_PREFIX, parts.best ?? [])],
    {
      format: RESUME_FORMAT,
      config: JSON.stringify(parts.config),
      tokenizer: parts.tokenizer.toJSON(),
      training: JSON.stringify(parts.training),
      state: JSON.stringify(parts.state),
      hasBest: String(parts.best !== undefined),
    }
  );
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
  const { weights, metadata } = decodeSafetensors(buf, from);
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

/** A Stepwise checkpoint's safetensors bytes, with the embedded checksum (see the module comment). */
function encodeCheckpoint(weights: readonly NamedWeight[], metadata: Record<string, string>): Buffer {
  return encodeSafetensors(weights, metadata, { checksum: true });
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
