/**
 * The safetensors file format as Stepwise writes and reads it, without TensorFlow.js (a worker that only moves
 * checkpoints between the store and a training child must not pay seconds to load it): 8-byte little-endian header
 * length, a JSON header, then raw little-endian float32 data. Stepwise's own checkpoints (checkpoint.ts) add a
 * `checksum` to the metadata, the sha256 of the header (without it) and the data, which every read verifies.
 */
import { createHash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
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

/**
 * A tensor that a writer reads when it reaches it, so that a file of many tensors (a model's weights, its optimiser's
 * slots, the best weights so far) never needs them all in memory at once: each is read, hashed, written and dropped.
 */
export interface TensorSource {
  name: string;
  shape: number[];
  /**
   * The float32 data, in the shape's row-major order; only read, never kept or changed by the writer, which consumes
   * it before it reads the next source (so a source may reuse one buffer for the next).
   */
  read(): Float32Array;
}

/** A tensor already in memory, as a {@link TensorSource}. */
export const inMemory = (w: NamedWeight): TensorSource => ({ name: w.name, shape: w.shape, read: () => w.data });

/** The sha256 a checksum names is 64 hex digits: a placeholder of the same length fixes the header's length. */
const CHECKSUM_PLACEHOLDER = `sha256:${'0'.repeat(64)}`;

/**
 * A file's layout before any tensor is read: its header is a function of names, shapes and metadata alone, and the
 * checksum is a fixed-length string, so the data's offsets are known first. The header's bytes are padded as the
 * reference writer pads them (data 8-byte aligned); the checksum's hash starts with the header (without the
 * checksum) and takes the data as `data()` reads it.
 */
function planFile(tensors: readonly TensorSource[], metadata: Record<string, string>, checksummed: boolean) {
  const { [CHECKSUM_KEY]: _stale, ...rest } = metadata;
  const table: Record<string, unknown> = { __metadata__: { ...rest } };
  let offset = 0;
  const sizes = tensors.map((t) => {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * 4;
    table[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
    return bytes;
  });
  const hash = checksummed ? createHash('sha256').update(JSON.stringify(table)) : undefined;
  const header = (checksum: string | undefined): Buffer => {
    if (checksum !== undefined) (table.__metadata__ as Record<string, string>)[CHECKSUM_KEY] = checksum;
    let json = JSON.stringify(table);
    json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
    const bytes = Buffer.alloc(8 + Buffer.byteLength(json));
    bytes.writeBigUInt64LE(BigInt(bytes.length - 8), 0);
    bytes.write(json, 8, 'utf8');
    return bytes;
  };
  const headerLength = header(checksummed ? CHECKSUM_PLACEHOLDER : undefined).length;
  return {
    dataLength: offset,
    headerLength,
    /**
     * Each tensor's bytes with where they go in the file, read one at a time (checked against their shape) and hashed
     * as they go: `header()` is final once they all have been.
     */
    *data(): Generator<{ bytes: Uint8Array; at: number }> {
      const readBytes = sourceReader();
      let at = headerLength;
      for (const [i, t] of tensors.entries()) {
        const bytes = readBytes(t, sizes[i]);
        hash?.update(bytes);
        yield { bytes, at };
        at += bytes.byteLength;
      }
    },
    /** The header, with the checksum of the data {@link data} went through. */
    header: (): Buffer => {
      const head = header(hash && `sha256:${hash.digest('hex')}`);
      if (head.length !== headerLength) throw new Error('safetensors header changed length once its checksum was set');
      return head;
    },
  };
}

/**
 * A full collection, where the process exposes `gc` (the training child does, child.ts); otherwise nothing. Tensor
 * data read back from TensorFlow, or checkpoint bytes once handed to it, are ArrayBuffers that V8 frees only when it
 * next collects, which a process allocating little else on the JS heap brings on late.
 */
export function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** How much tensor data is read back between two collections, where the process lets us run them. */
const COLLECT_EVERY_BYTES = 64 * 2 ** 20;

/**
 * Reads sources one after the other, each checked against the size its shape gives. Each tensor read back from
 * TensorFlow is a fresh ArrayBuffer; without collections a whole checkpoint's worth of them piled up (~600 MiB at the
 * `small` preset with AdamW), so one runs every {@link COLLECT_EVERY_BYTES} read ({@link collectGarbage}).
 */
function sourceReader() {
  let sinceCollected = 0;
  return (t: TensorSource, size: number): Uint8Array => {
    if (sinceCollected >= COLLECT_EVERY_BYTES) {
      collectGarbage();
      sinceCollected = 0;
    }
    const data = t.read();
    if (data.byteLength !== size) {
      throw new Error(`tensor '${t.name}' read ${data.byteLength} bytes; its shape [${t.shape}] makes it ${size}`);
    }
    sinceCollected += size;
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  };
}

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
 * gets the file's checksum, which every read in this module verifies. Each source is read once, straight into the
 * one buffer returned. {@link writeSafetensorsFile} writes the same bytes to a file without holding them all.
 */
export function encodeSafetensors(
  tensors: readonly (NamedWeight | TensorSource)[],
  metadata: Record<string, string>,
  opts: { checksum?: boolean } = {}
): Buffer {
  assertLittleEndian();
  const sources = tensors.map((t) => ('read' in t ? t : inMemory(t)));
  const plan = planFile(sources, metadata, opts.checksum === true);
  const out = Buffer.allocUnsafe(plan.headerLength + plan.dataLength);
  for (const { bytes, at } of plan.data()) out.set(bytes, at);
  plan.header().copy(out, 0);
  return out;
}

/**
 * Writes what {@link encodeSafetensors} returns, byte for byte, to `path`, one tensor at a time: the data first, at
 * the offsets the header will give (each tensor hashed as it is written), then the header with the checksum. The
 * file appears whole or not at all (a temporary file beside it, then a rename), even if this process dies mid-write.
 * @returns the file's size in bytes.
 */
export async function writeSafetensorsFile(
  path: string,
  tensors: readonly TensorSource[],
  metadata: Record<string, string>,
  opts: { checksum?: boolean } = {}
): Promise<number> {
  assertLittleEndian();
  const plan = planFile(tensors, metadata, opts.checksum === true);
  const partial = `${path}.partial-${process.pid}`;
  const file = await open(partial, 'w');
  try {
    for (const { bytes, at } of plan.data()) await writeAll(file, bytes, at);
    await writeAll(file, plan.header(), 0);
    await file.close();
    await rename(partial, path);
  } catch (err) {
    await file.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
  return plan.headerLength + plan.dataLength;
}

/** Writes all of `bytes` at `position` (a single write may be short). */
async function writeAll(file: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const { bytesWritten } = await file.write(bytes, done, bytes.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/** One tensor's entry in the header, checked to fit the data. */
interface TableEntry {
  name: string;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * A safetensors header, checked: well-formed, and float32 tensors that fit the `dataLength` bytes after it. Offsets
 * are relative to the data. The checksum, when there is one, is taken out of the metadata (and so out of the header,
 * which is then what it was computed over) and returned as `written`. `byOffset` lists the entries' indexes in the order
 * of their data.
 */
function parseHeader(headerBytes: Buffer, dataLength: number, from: CheckpointSource) {
  const bad = (why: string): never => {
    throw corrupt(from, `not a valid safetensors file: ${why}`);
  };
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(headerBytes.toString('utf8'));
  } catch (err) {
    return bad(`header is not JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) return bad('header is not an object');
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
    entries.push({ name, shape: entry.shape, begin, end });
  }
  // As the format requires: the tensors cover the data exactly, with no bytes between or after them and none shared
  // (a byte no tensor owns could carry anything past every reader). It also lets a reader hash the data tensor by
  // tensor, in offset order.
  const byOffset = entries.map((_, i) => i).sort((x, y) => entries[x].begin - entries[y].begin);
  let covered = 0;
  for (const e of byOffset.map((i) => entries[i])) {
    if (e.begin !== covered) {
      bad(`tensor '${e.name}' starts at data byte ${e.begin}, where ${covered} was expected (no holes or overlaps)`);
    }
    covered = e.end;
  }
  if (covered !== dataLength) bad(`the tensors cover ${covered} of its ${dataLength} data bytes`);
  const written = metadata[CHECKSUM_KEY];
  if (written !== undefined) delete metadata[CHECKSUM_KEY];
  return { header, entries, byOffset, metadata, written };
}

/** The length of the header that follows the 8 bytes of `lengthBytes`, checked to fit a file of `size` bytes. */
function headerLengthOf(lengthBytes: Buffer, size: number, from: CheckpointSource): number {
  const bad = (why: string): never => {
    throw corrupt(from, `not a valid safetensors file: ${why}`);
  };
  if (size < 8) bad(`${size} bytes is shorter than the 8-byte header length`);
  const headerLength = Number(lengthBytes.readBigUInt64LE(0));
  if (headerLength > size - 8) bad(`header length ${headerLength} exceeds the ${size} bytes given`);
  return headerLength;
}

const checksumMismatch = (from: CheckpointSource, actual: string, written: string) =>
  corrupt(from, `its content hashes to ${actual}, but it was written as ${written}`);

/**
 * The header of safetensors bytes, checked: well-formed, float32 tensors that fit the data, and the checksum when the
 * file carries one. Tensor data is not copied.
 * @throws CheckpointCorruptError when the bytes are truncated, garbled or do not match their checksum.
 */
export function readTable(bytes: Buffer, from: CheckpointSource) {
  const headerLength = headerLengthOf(bytes.subarray(0, 8), bytes.length, from);
  const dataStart = 8 + headerLength;
  const { header, entries, metadata, written } = parseHeader(
    bytes.subarray(8, dataStart),
    bytes.length - dataStart,
    from
  );
  if (written !== undefined) {
    const actual = checksumOf(header, [bytes.subarray(dataStart)]);
    if (actual !== written) throw checksumMismatch(from, actual, written);
  }
  const absolute = entries.map((e) => ({ ...e, begin: dataStart + e.begin, end: dataStart + e.end }));
  return { entries: absolute, metadata, checksummed: written !== undefined };
}

/**
 * {@link decodeSafetensors} of a file, without ever holding it whole: each tensor is read into a buffer of its own, so
 * a reader can let go of the tensors it has handed on (to TensorFlow) while it keeps others (a resumed run keeps only
 * the best weights). The checksum is taken over those buffers, in offset order: the header check makes sure the
 * tensors cover the data exactly, so they are its bytes whatever order the header lists them in.
 * @throws CheckpointCorruptError as decodeSafetensors does; the file system's errors for a file it cannot read.
 */
export async function readSafetensorsFile(
  path: string,
  from: CheckpointSource = {}
): Promise<{ weights: NamedWeight[]; metadata: Record<string, string> }> {
  assertLittleEndian();
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const readAt = async (into: Uint8Array, position: number): Promise<void> => {
      for (let done = 0; done < into.byteLength;) {
        const { bytesRead } = await file.read(into, done, into.byteLength - done, position + done);
        if (bytesRead === 0) throw corrupt(from, `it ended at ${position + done} bytes, before its header said`);
        done += bytesRead;
      }
    };
    const lengthBytes = Buffer.alloc(8);
    if (size >= 8) await readAt(lengthBytes, 0);
    const headerLength = headerLengthOf(lengthBytes, size, from);
    const headerBytes = Buffer.alloc(headerLength);
    await readAt(headerBytes, 8);
    const dataStart = 8 + headerLength;
    const dataLength = size - dataStart;
    const { header, entries, byOffset, metadata, written } = parseHeader(headerBytes, dataLength, from);
    const weights: NamedWeight[] = [];
    for (const { name, shape, begin, end } of entries) {
      const data = new Float32Array((end - begin) / 4);
      await readAt(new Uint8Array(data.buffer), dataStart + begin);
      weights.push({ name, shape, data });
    }
    if (written !== undefined) {
      // The header has checked that the tensors tile the data, so they are the data in offset order.
      const actual = checksumOf(
        header,
        byOffset.map((i) => new Uint8Array(weights[i].data.buffer))
      );
      if (actual !== written) throw checksumMismatch(from, actual, written);
    }
    return { weights, metadata };
  } finally {
    await file.close();
  }
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
