/**
 * The safetensors file format as Stepwise writes and reads it, without TensorFlow.js (a worker that only moves
 * checkpoints between the store and a training child must not pay seconds to load it): 8-byte little-endian header
 * length, a JSON header, then raw little-endian float32 data. Stepwise's own checkpoints (checkpoint.ts) add a
 * `checksum` to the metadata, the sha256 of the header (without it) and the data, which every read verifies.
 */
import { createHash } from 'node:crypto';
import { endianness } from 'node:os';
import { InputError } from '../errors';
import type { NamedWeight } from './t5';

interface TensorEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** Metadata key of the embedded content hash (see the module comment). */
export const CHECKSUM_KEY = 'checksum';

/**
 * Checkpoint bytes that are not what was written: flipped bits (the embedded checksum or the store's hash disagrees),
 * a truncated or garbled file, or tensors whose shapes do not fit the config. An InputError, so an activity that
 * meets one fails at once: reading the same bytes again cannot succeed. Training's resume path catches it and falls
 * back to an older checkpoint (train-stage.ts).
 */
export class CheckpointCorruptError extends InputError {
  constructor(
    message: string,
    /** The spec or option field that named the checkpoint (`student.init`, `resumeFrom`), or `checkpoint`. */
    field: string,
    /** Where the bytes came from: a store URI, a file, or the field again. */
    readonly source: string
  ) {
    super(message, field);
    this.name = 'CheckpointCorruptError';
  }
}

/** Where checkpoint bytes came from, for the errors about them. */
export interface CheckpointSource {
  /** The option or spec field that named them (default `checkpoint`). */
  field?: string;
  /** A URI or path (default: the field). */
  source?: string;
}

/** A {@link CheckpointCorruptError} naming where the bytes came from and `why` they are not what was written. */
export function corrupt(from: CheckpointSource, why: string): CheckpointCorruptError {
  const field = from.field ?? 'checkpoint';
  const source = from.source ?? field;
  const where = source === field ? field : `${field} (${source})`;
  return new CheckpointCorruptError(`${where} is corrupt: ${why}`, field, source);
}

/** @throws Error on a big-endian machine, where Float32Array views would read the little-endian data wrongly. */
export function assertLittleEndian(): void {
  // Float32Array views use the machine's byte order; safetensors is little-endian.
  if (endianness() !== 'LE') throw new Error('checkpoints are little-endian; this machine is big-endian');
}

/** The layout of a safetensors file: its tensor table, and the tensor data after the 8-byte length and the header. */
function tensorTable(weights: readonly NamedWeight[], metadata: Record<string, string>) {
  const header: Record<string, unknown> = { __metadata__: { ...metadata } };
  let offset = 0;
  for (const w of weights) {
    header[w.name] = { dtype: 'F32', shape: w.shape, data_offsets: [offset, offset + w.data.byteLength] };
    offset += w.data.byteLength;
  }
  return { header, dataLength: offset };
}

const bytesOf = (w: NamedWeight) => new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength);

/**
 * The checksum of a file: sha256 over its header JSON without the checksum key, then its data. The header is hashed
 * as `JSON.stringify` writes it, which a parse and a re-stringify reproduce (key order and numbers survive).
 */
function checksumOf(header: Record<string, unknown>, data: Iterable<Uint8Array>): string {
  const hash = createHash('sha256').update(JSON.stringify(header));
  for (const chunk of data) hash.update(chunk);
  return `sha256:${hash.digest('hex')}`;
}

/**
 * safetensors bytes of float32 tensors, in the given order, with string metadata; with `checksum`, the metadata also
 * gets the file's checksum, which every read in this module verifies.
 */
export function encodeSafetensors(
  weights: readonly NamedWeight[],
  metadata: Record<string, string>,
  opts: { checksum?: boolean } = {}
): Buffer {
  assertLittleEndian();
  const { [CHECKSUM_KEY]: _stale, ...rest } = metadata;
  const { header, dataLength } = tensorTable(weights, rest);
  if (opts.checksum) {
    (header.__metadata__ as Record<string, string>)[CHECKSUM_KEY] = checksumOf(header, weights.map(bytesOf));
  }
  let json = JSON.stringify(header);
  // The reference writer pads the header with spaces so the data starts 8-byte aligned.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.allocUnsafe(8 + headerBytes.length + dataLength);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const w of weights) {
    out.set(bytesOf(w), at);
    at += w.data.byteLength;
  }
  return out;
}

/** One tensor's entry in the header, checked to fit the data. */
interface TableEntry {
  name: string;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * The header of safetensors bytes, checked: well-formed, float32 tensors that fit the data, and the checksum when the
 * file carries one. Tensor data is not copied.
 * @throws CheckpointCorruptError when the bytes are truncated, garbled or do not match their checksum.
 */
export function readTable(bytes: Buffer, from: CheckpointSource) {
  const bad = (why: string): never => {
    throw corrupt(from, `not a valid safetensors file: ${why}`);
  };
  if (bytes.length < 8) bad(`${bytes.length} bytes is shorter than the 8-byte header length`);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > bytes.length - 8) bad(`header length ${headerLength} exceeds the ${bytes.length} bytes given`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  } catch (err) {
    return bad(`header is not JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) return bad('header is not an object');
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  const entries: TableEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const entry = value as TensorEntry;
    if (entry?.dtype !== 'F32') bad(`tensor '${name}' has dtype ${JSON.stringify(entry?.dtype)}; expected F32`);
    const [begin, end] = entry.data_offsets ?? [];
    const count = Array.isArray(entry.shape) ? entry.shape.reduce((a, b) => a * b, 1) : NaN;
    if (
      !Number.isSafeInteger(begin) ||
      !Number.isSafeInteger(end) ||
      begin < 0 ||
      end > dataLength ||
      end - begin !== count * 4
    ) {
      bad(`tensor '${name}' has offsets ${JSON.stringify(entry.data_offsets)} that do not fit shape [${entry.shape}]`);
    }
    entries.push({ name, shape: entry.shape, begin: dataStart + begin, end: dataStart + end });
  }
  const written = metadata[CHECKSUM_KEY];
  if (written !== undefined) {
    delete metadata[CHECKSUM_KEY];
    const actual = checksumOf(header, [bytes.subarray(dataStart)]);
    if (actual !== written) throw corrupt(from, `its content hashes to ${actual}, but it was written as ${written}`);
  }
  return { entries, metadata, checksummed: written !== undefined };
}

/**
 * Parses safetensors bytes: float32 tensors (copied out, so the buffer may be released) and the metadata, the
 * checksum verified when the file has one (`checksum` is then not among the metadata returned).
 * @throws CheckpointCorruptError when the bytes are not a well-formed float32 safetensors file, or not the bytes their
 *   checksum was computed over.
 */
export function decodeSafetensors(
  buf: Uint8Array,
  from: CheckpointSource = {}
): { weights: NamedWeight[]; metadata: Record<string, string> } {
  assertLittleEndian();
  const bytes = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const { entries, metadata } = readTable(bytes, from);
  const weights = entries.map(({ name, shape, begin, end }) => {
    // Copied into a fresh, aligned buffer: a Float32Array view needs 4-byte alignment, which file reads don't promise.
    const data = new Float32Array((end - begin) / 4);
    new Uint8Array(data.buffer).set(bytes.subarray(begin, end));
    return { name, shape, data };
  });
  return { weights, metadata };
}
