import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';

import { hashFileInto } from '../../infra/cache';

/**
 * A reference to an immutable, content-addressed artifact. This (not the bytes) is what crosses Temporal:
 * a few dozen bytes however large the artifact is.
 */
export interface ArtifactRef {
  /** Lower-case hex sha256 of the bytes. */
  sha256: string;
  /** Size in bytes. */
  size: number;
}

/** Thrown by `getRef`/`getKey` when an object is absent; callers that expect absence check `code`. */
export class NotFoundError extends Error {
  readonly code = 'NotFound';
  constructor(readonly key: string) {
    super(`artifact store: no object at key '${key}'`);
    this.name = 'NotFoundError';
  }
}

/** Thrown when stored bytes do not hash to the reference they were read by: corruption, never retried into success. */
export class IntegrityError extends Error {
  constructor(
    readonly key: string,
    readonly expected: string,
    readonly actual: string
  ) {
    super(`artifact store: object '${key}' has sha256 ${actual}, expected ${expected}`);
    this.name = 'IntegrityError';
  }
}

/**
 * The store could not be reached for longer than its retry budget (an S3 outage, a network partition). Retryable:
 * the activity's retry policy tries again later; the message names the store, the operation and the cause.
 */
export class StoreUnavailableError extends Error {
  constructor(
    readonly location: string,
    readonly operation: string,
    readonly key: string,
    readonly triedMs: number,
    cause: unknown
  ) {
    const why = cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause);
    super(
      `artifact store ${location} unavailable: ${operation} '${key}' failed for ${(triedMs / 1000).toFixed(1)} s (${why})`,
      { cause }
    );
    this.name = 'StoreUnavailableError';
  }
}

/**
 * The store's disk is full (ENOSPC, or EDQUOT for a quota). Retryable, since freeing space fixes it without a new
 * run, but named so an operator sees at once which store ran out of room; nothing half-written is left behind.
 */
export class StoreFullError extends Error {
  readonly code: string;
  constructor(
    readonly location: string,
    readonly key: string,
    cause: NodeJS.ErrnoException
  ) {
    const code = cause.code ?? 'ENOSPC';
    super(
      `artifact store ${location} is full: no space left to write '${key}' (${code}); free space there or point ` +
        `STEPWISE_STORE at a larger volume`,
      { cause }
    );
    this.name = 'StoreFullError';
    this.code = code;
  }
}

/**
 * What a backend writes: bytes, a one-shot stream, or a function opening a fresh stream of the same bytes, which
 * lets a backend retry a large upload from the start after a dropped connection.
 */
export type BlobBody = Uint8Array | Readable | (() => Readable);

/**
 * How a backend writes. `ifNoneMatch`: a conditional create, `false` when the key exists. `ifMatch`: a
 * compare-and-swap, `false` unless the key exists with exactly that entity tag (from `getTagged`) at the moment of
 * the write, atomically with respect to concurrent writers: of N writers naming one tag, at most one succeeds.
 */
export interface PutOptions {
  ifNoneMatch?: boolean;
  ifMatch?: string;
  contentType?: string;
  /**
   * S3: how many parts of a multipart upload are in flight at once (default 4, as the SDK's own uploader); a file
   * upload holds that many part buffers (5 MiB each by default). The filesystem backend ignores it.
   */
  partConcurrency?: number;
}

/**
 * The few primitives a storage backend must provide; content addressing, integrity checks and JSON helpers are
 * built once on top of them in {@link ArtifactStore}, so the filesystem and S3 backends cannot drift apart.
 */
export interface BlobBackend {
  /** Human-readable base location, e.g. `file:///var/stepwise` or `s3://bucket/prefix`. */
  readonly location: string;
  /**
   * Write `body` at `key`. With `ifNoneMatch`, the write is a conditional create: it returns `false` (and writes
   * nothing) when the key already exists, atomically with respect to concurrent writers. Either the whole body
   * appears under `key` or nothing does: a write cut off midway never leaves a partial object there.
   */
  put(key: string, body: BlobBody, opts?: PutOptions): Promise<boolean>;
  /**
   * Optional: write the file at `path` at `key`, as `put` with a stream of it would, for backends that can read a
   * file more cheaply than a stream gives it to them (S3 reads each multipart part straight into a buffer of its own,
   * where the SDK's uploader gathers a stream's 64 KiB chunks and concatenates them into fresh part-sized buffers).
   */
  putFile?(key: string, path: string, opts?: PutOptions): Promise<boolean>;
  /** Read the whole object, or throw {@link NotFoundError}. */
  get(key: string): Promise<Buffer>;
  /**
   * Optional: read the object as a series of chunks, in order, as they arrive, or throw {@link NotFoundError}: for
   * large artifacts read once front to back (dataset splits), which then never sit whole in memory. A chunk is the
   * caller's to keep. A backend without it is read through `get`.
   */
  getChunks?(key: string): AsyncIterable<Uint8Array>;
  /**
   * Read a small named object with its entity tag, the token a compare-and-swap write (`put` with `ifMatch`) names;
   * `undefined` when it does not exist.
   */
  getTagged(key: string): Promise<{ body: Buffer; etag: string } | undefined>;
  /** Whether an object exists at `key`. */
  exists(key: string): Promise<boolean>;
  /** All keys under `prefix` (recursive), sorted. */
  list(prefix: string): Promise<string[]>;
  /** Release clients / handles. */
  close?(): Promise<void>;
}

/**
 * The JSON records of newline-separated bytes given in chunks of any size, one array per chunk: a line split across
 * chunks is joined once its end arrives (its pieces kept apart until then, so a long line costs no repeated copying)
 * and goes with the chunk that ends it, and is decoded only whole, so a character split between chunks is never
 * broken. An array per chunk rather than a step per record: each step of an async generator is a few promises, which
 * cost the teacher plan over 4,000 examples ~60 ms where parsing them takes a few (bench:teacher).
 */
async function* recordBatchesOf<T>(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): AsyncGenerator<T[]> {
  let pieces: Buffer[] = [];
  for await (const chunk of chunks) {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const batch: T[] = [];
    let start = 0;
    for (let end = bytes.indexOf(10); end !== -1; end = bytes.indexOf(10, start)) {
      let line = bytes.subarray(start, end);
      if (pieces.length > 0) {
        line = Buffer.concat([...pieces, line]);
        pieces = [];
      }
      if (line.length > 0) batch.push(JSON.parse(line.toString('utf8')) as T);
      start = end + 1;
    }
    if (start < bytes.length) pieces.push(bytes.subarray(start));
    if (batch.length > 0) yield batch;
  }
  const last = Buffer.concat(pieces);
  if (last.length > 0) yield [JSON.parse(last.toString('utf8')) as T];
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Stable JSON: object keys sorted, so equal values hash equally whatever order they were built in. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => {
    if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)) {
      return Object.fromEntries(
        Object.keys(v as object)
          .sort()
          .map((k) => [k, (v as Record<string, unknown>)[k]])
      );
    }
    return v;
  });
}

export function objectKey(sha256: string): string {
  return `objects/sha256/${sha256.slice(0, 2)}/${sha256}`;
}

/**
 * The artifact store every stage writes to. Artifacts are immutable and content-addressed (`objects/sha256/..`);
 * a few named keys (run manifests, the model registry) live beside them and are written with conditional creates.
 */
export class ArtifactStore {
  constructor(readonly backend: BlobBackend) {}

  get location(): string {
    return this.backend.location;
  }

  /** The full URI of an artifact, for manifests and humans. */
  uri(ref: ArtifactRef | string): string {
    const key = typeof ref === 'string' ? ref : objectKey(ref.sha256);
    return `${this.backend.location.replace(/\/$/, '')}/${key}`;
  }

  /** Store bytes by their hash. Idempotent: storing the same bytes twice writes once. */
  async put(data: Uint8Array | string, contentType?: string): Promise<ArtifactRef> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const sha256 = sha256Hex(bytes);
    const key = objectKey(sha256);
    // A conditional create doubles as the dedup check: an existing object already has these exact bytes.
    await this.backend.put(key, bytes, { ifNoneMatch: true, contentType });
    return { sha256, size: bytes.byteLength };
  }

  /**
   * Store a file from disk (large checkpoints, a stage's assembled responses): hashed in one pass, uploaded in a
   * second, each through buffers of a fixed size (see {@link BlobBackend.putFile}). `partConcurrency` bounds what an
   * S3 upload holds in memory (see {@link PutOptions}).
   */
  async putFile(path: string, contentType?: string, opts: { partConcurrency?: number } = {}): Promise<ArtifactRef> {
    const hash = createHash('sha256');
    const size = await hashFileInto(path, hash);
    const sha256 = hash.digest('hex');
    const key = objectKey(sha256);
    if (!(await this.backend.exists(key))) {
      const put = { ifNoneMatch: true, contentType, ...opts };
      if (this.backend.putFile) await this.backend.putFile(key, path, put);
      else await this.backend.put(key, () => createReadStream(path), put);
    }
    return { sha256, size };
  }

  async putJson(value: unknown): Promise<ArtifactRef> {
    return this.put(canonicalJson(value), 'application/json');
  }

  /** JSON lines: one record per line, the format of every dataset split and per-example artifact. */
  async putJsonl(records: readonly unknown[]): Promise<ArtifactRef> {
    return this.put(
      records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''),
      'application/x-ndjson'
    );
  }

  /** Read an artifact and verify its hash. */
  async get(ref: ArtifactRef): Promise<Buffer> {
    const key = objectKey(ref.sha256);
    const bytes = await this.backend.get(key);
    const actual = sha256Hex(bytes);
    if (actual !== ref.sha256) throw new IntegrityError(key, ref.sha256, actual);
    return bytes;
  }

  async getJson<T>(ref: ArtifactRef): Promise<T> {
    return JSON.parse((await this.get(ref)).toString('utf8')) as T;
  }

  async getJsonl<T>(ref: ArtifactRef): Promise<T[]> {
    const text = (await this.get(ref)).toString('utf8');
    return text
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => JSON.parse(l) as T);
  }

  /**
   * The records of a JSONL artifact one at a time, parsed line by line as its bytes arrive: for large splits, where
   * an array of every record (or the whole file, even as bytes) would be most of a process's memory. The bytes are
   * hashed as they go and checked at the end, so a corrupted artifact throws {@link IntegrityError} only after the
   * records before the end were yielded: whatever a caller builds from them is provisional until the loop ends.
   */
  async *iterJsonl<T>(ref: ArtifactRef): AsyncGenerator<T> {
    for await (const batch of this.iterJsonlBatches<T>(ref)) yield* batch;
  }

  /**
   * As {@link iterJsonl}, a chunk's records at a time (at most a MiB of the file's bytes): for loops over many
   * records, where a step per record costs more than the record's own work.
   */
  async *iterJsonlBatches<T>(ref: ArtifactRef): AsyncGenerator<T[]> {
    const key = objectKey(ref.sha256);
    if (!this.backend.getChunks) {
      yield* recordBatchesOf<T>([await this.get(ref)]);
      return;
    }
    const hash = createHash('sha256');
    const hashed = async function* (chunks: AsyncIterable<Uint8Array>) {
      for await (const chunk of chunks) {
        hash.update(chunk);
        yield chunk;
      }
    };
    yield* recordBatchesOf<T>(hashed(this.backend.getChunks(key)));
    const actual = hash.digest('hex');
    if (actual !== ref.sha256) throw new IntegrityError(key, ref.sha256, actual);
  }

  async has(ref: ArtifactRef): Promise<boolean> {
    return this.backend.exists(objectKey(ref.sha256));
  }

  /** Write a named key. `createOnly` makes it a conditional create that returns false when the key exists. */
  async putKey(key: string, data: Uint8Array | string, opts: { createOnly?: boolean; contentType?: string } = {}) {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    return this.backend.put(key, bytes, { ifNoneMatch: opts.createOnly, contentType: opts.contentType });
  }

  /**
   * Replace a small named key only if it still holds what was read with `getKeyTagged` (its `etag`), or create it
   * only if absent (`etag` undefined): the compare-and-swap behind registry aliases and statuses. Returns false when
   * another writer got there first, and writes nothing then.
   */
  async swapKey(key: string, data: string, etag: string | undefined, contentType = 'application/json') {
    const bytes = Buffer.from(data, 'utf8');
    return this.backend.put(
      key,
      bytes,
      etag === undefined ? { ifNoneMatch: true, contentType } : { ifMatch: etag, contentType }
    );
  }

  /** Read a named JSON key with its entity tag, or `undefined` when it does not exist. */
  async getKeyTagged<T>(key: string): Promise<{ value: T; etag: string } | undefined> {
    const tagged = await this.backend.getTagged(key);
    return tagged && { value: JSON.parse(tagged.body.toString('utf8')) as T, etag: tagged.etag };
  }

  /** Read a named key, or `undefined` when it does not exist. */
  async getKey(key: string): Promise<Buffer | undefined> {
    try {
      return await this.backend.get(key);
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  /** Read a named key holding JSON, or `undefined` when it does not exist. */
  async getKeyJson<T>(key: string): Promise<T | undefined> {
    const bytes = await this.getKey(key);
    return bytes ? (JSON.parse(bytes.toString('utf8')) as T) : undefined;
  }

  async listKeys(prefix: string): Promise<string[]> {
    return this.backend.list(prefix);
  }

  async close(): Promise<void> {
    await this.backend.close?.();
  }
}
