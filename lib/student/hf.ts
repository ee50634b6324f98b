/**
 * Hugging Face T5 checkpoints in and out. `importT5` reads a checkpoint folder as `save_pretrained` writes it
 * (`config.json`, `model.safetensors` or its shards, and `tokenizer.json` or `spiece.model`) into a student, so
 * training can start from real T5 weights; `exportT5` writes a student back in that layout, float32, which
 * `T5ForConditionalGeneration.from_pretrained` and `AutoTokenizer.from_pretrained` load (checked against
 * transformers 5.24 by scripts/make-t5-test-vector.py --check-export).
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors';
import { copyWeights, decodeSafetensors, encodeSafetensors, readCheckpointMeta } from './checkpoint';
import { configFromHF, scalesOutputs, toHFConfigJson, type T5Config } from './config';
import { paramSpecs, T5Model, type NamedWeight } from './t5';
import { loadTokenizer, sentencePieceToTokenizerJson, type StudentTokenizer } from './tokenizer';

/** A T5 checkpoint read into the student's terms, before any tensor is built. */
export interface T5Checkpoint {
  config: T5Config;
  /** HF names and layouts, float32, exactly the parameters `config` needs. */
  weights: NamedWeight[];
  tokenizer: StudentTokenizer;
  /** Where the tokenizer came from: the checkpoint's tokenizer.json, or its spiece.model converted. */
  tokenizerSource: 'tokenizer.json' | 'spiece.model';
  /** What the importer had to decide, in words (e.g. an lm_head folded with its rescale, tensors ignored). */
  notes: string[];
}

export interface ImportedT5 extends Omit<T5Checkpoint, 'weights'> {
  model: T5Model;
}

/** Tensors HF keeps alongside the ones the model uses: tied copies of the embeddings, a legacy unused bias. */
const IGNORED = new Set([
  'encoder.embed_tokens.weight',
  'decoder.embed_tokens.weight',
  'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',
]);

/**
 * A student from a T5 checkpoint folder (see {@link readT5}), on the current tfjs backend.
 * @throws InputError as {@link readT5} does, or when a weight has the wrong shape for the config.
 */
export async function importT5(dir: string): Promise<ImportedT5> {
  const { weights, ...rest } = await readT5(dir);
  return { ...rest, model: T5Model.fromWeights(rest.config, weights) };
}

/**
 * Reads a T5 checkpoint folder: config, weights (float32, float16 or bfloat16, widened to float32) and tokenizer.
 * @throws InputError when a file is missing or malformed, the config is not a supported T5, or a weight is missing,
 *   unexpected or of the wrong shape.
 */
export async function readT5(dir: string): Promise<T5Checkpoint> {
  const notes: string[] = [];
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath))
    throw new InputError(`${dir} has no config.json; expected a T5 checkpoint folder`, 'dir');
  let hfConfig: unknown;
  try {
    hfConfig = JSON.parse(await readFile(configPath, 'utf8'));
  } catch (err) {
    throw new InputError(`${configPath} is not JSON (${(err as Error).message})`, 'config.json');
  }
  let config = configFromHF(hfConfig);
  const tensors = await readWeights(dir);

  // The output layer: a separate lm_head.weight in the file means untied unless it only repeats the embeddings.
  const shared = tensors.get('shared.weight') ?? tensors.get('encoder.embed_tokens.weight');
  if (!shared) throw new InputError(`${dir} has no shared.weight (the token embeddings)`, 'model.safetensors');
  tensors.set('shared.weight', { ...shared, name: 'shared.weight' });
  const head = tensors.get('lm_head.weight');
  const scaled = config.tie_word_embeddings;
  const separateHead = head !== undefined && !sameValues(head.data, shared.data);
  if (!scaled && head === undefined) {
    // An unscaled head tied to the embeddings (what transformers 5 builds from a t5-v1_1 config): a copy is exact.
    tensors.set('lm_head.weight', { ...shared, name: 'lm_head.weight', data: Float32Array.from(shared.data) });
    notes.push('lm_head: unscaled and tied to the embeddings in the checkpoint; imported as an untied copy');
  } else if (scaled && separateHead) {
    // Original T5's rescale with a head of its own: fold the d_model^-0.5 into the head.
    const factor = config.d_model ** -0.5;
    tensors.set('lm_head.weight', { ...head, data: head.data.map((x) => x * factor) });
    notes.push('lm_head: separate from the embeddings but rescaled; imported untied with the rescale folded in');
  } else if (scaled) {
    tensors.delete('lm_head.weight');
  }
  config = { ...config, tie_word_embeddings: scaled && !separateHead };

  const expected = new Set(paramSpecs(config).map((s) => s.name));
  const weights: NamedWeight[] = [];
  const ignored: string[] = [];
  for (const [name, w] of tensors) {
    if (expected.has(name)) weights.push(w);
    else if (IGNORED.has(name)) ignored.push(name);
    else throw new InputError(`${dir} has weight '${name}', which a T5 of its config.json does not use`, 'model');
  }
  if (ignored.length > 0) notes.push(`ignored ${ignored.join(', ')} (copies of other weights or unused by HF T5)`);

  const { tokenizer, source } = await readTokenizer(dir);
  if (tokenizer.vocabSize > config.vocab_size) {
    throw new InputError(
      `${dir}: the tokenizer has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${config.vocab_size}`,
      'tokenizer'
    );
  }
  if (tokenizer.padId !== config.pad_token_id || tokenizer.eosId !== config.eos_token_id) {
    throw new InputError(
      `${dir}: the tokenizer's pad/eos ids are ${tokenizer.padId}/${tokenizer.eosId} but config.json says ` +
        `${config.pad_token_id}/${config.eos_token_id}`,
      'tokenizer'
    );
  }
  for (const spec of paramSpecs(config)) {
    const w = weights.find((x) => x.name === spec.name);
    if (!w) throw new InputError(`${dir} has no weight '${spec.name}', which its config.json requires`, 'model');
    if (w.shape.join() !== spec.shape.join()) {
      throw new InputError(`${dir}: weight '${spec.name}' has shape [${w.shape}]; expected [${spec.shape}]`, 'model');
    }
  }
  return { config, weights, tokenizer, tokenizerSource: source, notes };
}

async function readTokenizer(
  dir: string
): Promise<{ tokenizer: StudentTokenizer; source: ImportedT5['tokenizerSource'] }> {
  const json = join(dir, 'tokenizer.json');
  if (existsSync(json)) return { tokenizer: loadTokenizer(await readFile(json, 'utf8')), source: 'tokenizer.json' };
  const spiece = join(dir, 'spiece.model');
  if (existsSync(spiece)) {
    // The sentinel count lives in tokenizer_config.json; T5's default is 100.
    let extraIds = 100;
    const tokenizerConfig = join(dir, 'tokenizer_config.json');
    if (existsSync(tokenizerConfig)) {
      const parsed = JSON.parse(await readFile(tokenizerConfig, 'utf8')) as { extra_ids?: unknown };
      if (Number.isSafeInteger(parsed.extra_ids)) extraIds = parsed.extra_ids as number;
    }
    const converted = sentencePieceToTokenizerJson(await readFile(spiece), extraIds);
    return { tokenizer: loadTokenizer(converted), source: 'spiece.model' };
  }
  throw new InputError(`${dir} has neither tokenizer.json nor spiece.model; expected a T5 tokenizer`, 'dir');
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Every tensor of `model.safetensors`, or of the shards `model.safetensors.index.json` lists, widened to float32. */
async function readWeights(dir: string): Promise<Map<string, NamedWeight>> {
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  let files: string[];
  if (existsSync(single)) {
    files = [single];
  } else if (existsSync(index)) {
    const weightMap = (JSON.parse(await readFile(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map;
    if (!weightMap) throw new InputError(`${index} has no weight_map`, 'model.safetensors.index.json');
    files = [...new Set(Object.values(weightMap))].map((f) => join(dir, f));
  } else {
    const legacy = existsSync(join(dir, 'pytorch_model.bin'))
      ? ' (pytorch_model.bin is pickled and not read here)'
      : '';
    throw new InputError(`${dir} has no model.safetensors${legacy}; expected a safetensors checkpoint`, 'dir');
  }
  const out = new Map<string, NamedWeight>();
  for (const file of files) for (const w of readSafetensorsAnyFloat(await readFile(file), file)) out.set(w.name, w);
  return out;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

/**
 * Tensors of a safetensors file in F32, F16 or BF16, as float32.
 * @throws InputError for another dtype or a malformed file.
 */
export function readSafetensorsAnyFloat(buf: Uint8Array, what = 'safetensors file'): NamedWeight[] {
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = (why: string): never => {
    throw new InputError(`${what} is not a valid safetensors file: ${why}`, 'model.safetensors');
  };
  if (bytes.length < 8) bad('shorter than its 8-byte header length');
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > bytes.length - 8) bad(`header length ${headerLength} exceeds the file`);
  let header: Record<string, { dtype?: string; shape?: number[]; data_offsets?: [number, number] }>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  } catch (err) {
    return bad(`header is not JSON (${(err as Error).message})`);
  }
  const start = 8 + headerLength;
  const out: NamedWeight[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const width = DTYPE_BYTES[entry?.dtype ?? ''];
    if (!width) bad(`tensor '${name}' has dtype ${JSON.stringify(entry?.dtype)}; expected F32, F16 or BF16`);
    const shape = entry.shape ?? [];
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = entry.data_offsets ?? [NaN, NaN];
    if (!(begin >= 0 && end === begin + count * width && start + end <= bytes.length)) {
      bad(`tensor '${name}' has offsets ${JSON.stringify(entry.data_offsets)} that do not fit shape [${shape}]`);
    }
    const raw = bytes.subarray(start + begin, start + end);
    const data = new Float32Array(count);
    if (entry.dtype === 'F32') new Uint8Array(data.buffer).set(raw);
    else if (entry.dtype === 'BF16') {
      // bfloat16 is the top half of a float32.
      const bits = new Uint32Array(data.buffer);
      for (let i = 0; i < count; i++) bits[i] = raw.readUInt16LE(2 * i) << 16;
    } else {
      for (let i = 0; i < count; i++) data[i] = halfToFloat(raw.readUInt16LE(2 * i));
    }
    out.push({ name, shape, data });
  }
  return out;
}

/** IEEE 754 binary16 → number (subnormals, infinities and NaN included). */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** What to export: a Stepwise checkpoint's bytes, or a model and its tokenizer in memory. */
export type ExportSource = Uint8Array | { model: T5Model; tokenizer: StudentTokenizer };

/**
 * Writes a student as a HF T5 checkpoint folder: `model.safetensors` (float32, HF names and layouts, `format: pt`
 * metadata as transformers requires), `config.json`, `generation_config.json`, `tokenizer.json` and
 * `tokenizer_config.json`. A tied model writes `shared.weight` only, an untied one `lm_head.weight` too, as
 * `save_pretrained` does.
 * @returns the files written
 * @throws InputError when the bytes are not a Stepwise checkpoint.
 */
export async function exportT5(source: ExportSource, dir: string): Promise<string[]> {
  let config: T5Config;
  let weights: NamedWeight[];
  let tokenizerJson: string;
  if (source instanceof Uint8Array) {
    const meta = readCheckpointMeta(source);
    config = meta.config;
    tokenizerJson = meta.tokenizer;
    // A resume checkpoint also holds optimiser slots and best-so-far weights: keep the model's own.
    const names = new Set(paramSpecs(config).map((s) => s.name));
    weights = decodeSafetensors(source).weights.filter((w) => names.has(w.name));
  } else {
    config = source.model.config;
    weights = copyWeights(source.model);
    tokenizerJson = source.tokenizer.toJSON();
  }
  if (config.tie_word_embeddings && !scalesOutputs(config)) {
    // A tied head without the rescale leaves as an untied copy (toHFConfig says so): transformers 4 would rescale a
    // tied head, and an explicit lm_head.weight means the same logits to transformers 4 and 5.
    const shared = weights.find((w) => w.name === 'shared.weight')!;
    weights = [...weights, { ...shared, name: 'lm_head.weight', data: Float32Array.from(shared.data) }];
  }
  loadTokenizer(tokenizerJson); // throws on a tokenizer HF could not load either
  await mkdir(dir, { recursive: true });
  const files: Record<string, string | Buffer> = {
    'model.safetensors': encodeHfSafetensors(weights),
    'config.json': toHFConfigJson(config),
    'generation_config.json':
      JSON.stringify(
        {
          decoder_start_token_id: config.decoder_start_token_id,
          eos_token_id: config.eos_token_id,
          pad_token_id: config.pad_token_id,
        },
        null,
        2
      ) + '\n',
    'tokenizer.json': tokenizerJson,
    // The generic fast tokenizer reads tokenizer.json as it is (T5Tokenizer would rebuild its own pipeline).
    'tokenizer_config.json':
      JSON.stringify(
        {
          tokenizer_class: 'PreTrainedTokenizerFast',
          pad_token: '<pad>',
          eos_token: '</s>',
          unk_token: '<unk>',
          model_max_length: 512,
        },
        null,
        2
      ) + '\n',
  };
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  return Object.keys(files).map((name) => join(dir, name));
}

/** safetensors as transformers writes it: tensors in name order, `{format: pt}` metadata (which it requires). */
function encodeHfSafetensors(weights: readonly NamedWeight[]): Buffer {
  const sorted = [...weights].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return encodeSafetensors(sorted, { format: 'pt' });
}
