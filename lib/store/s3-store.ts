import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

import { InputError } from '../errors';
import {
  IntegrityError,
  NotFoundError,
  StoreUnavailableError,
  type BlobBackend,
  type BlobBody,
  type PutOptions,
} from './artifact-store';
import { assertValidKey, assertValidPrefix, compareKeys } from './keys';
import { settings } from '../../infra/config';

/** Options of {@link S3Backend}. Everything but `bucket` has a default from the environment. */
export interface S3BackendOptions {
  bucket: string;
  /** Key prefix inside the bucket ('' or e.g. `stepwise/prod`), so several stores can share one bucket. */
  prefix?: string;
  /** Endpoint URL of an S3-compatible service; default `$AWS_ENDPOINT_URL_S3`, `$AWS_ENDPOINT_URL`, else AWS. */
  endpoint?: string;
  /** Default `$AWS_REGION`, `$AWS_DEFAULT_REGION`, else `us-east-1`. */
  region?: string;
  /**
   * Path-style URLs (`endpoint/bucket/key`). Default: on whenever an endpoint is set, since local gateways, Ceph and
   * most S3-compatible services need it; off for AWS itself, which prefers virtual-hosted style.
   */
  forcePathStyle?: boolean;
  /** Explicit credentials; by default the SDK's chain (`AWS_ACCESS_KEY_ID`..., profiles, instance roles). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Multipart part size in bytes (S3's minimum, 5 MiB, by default): bodies larger than one part go multipart. */
  partSize?: number;
  /**
   * Server-side encryption of every object written: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS, with `kmsKeyId` or the
   * bucket's default key). Default `$STEPWISE_STORE_SSE` / `$STEPWISE_STORE_KMS_KEY_ID`; none when unset.
   */
  sse?: S3Encryption;
  kmsKeyId?: string;
  /**
   * How long one store call keeps retrying transient failures (connection refused or reset, 5xx, throttling) before
   * giving up, in ms. Default 60 s: long enough to ride out a gateway restart, so a short outage costs a stage a
   * pause rather than a failed attempt (the activity's retry policy still covers longer ones).
   */
  retryForMs?: number;
}

/** The server-side encryption modes S3 offers for objects (`x-amz-server-side-encryption`). */
export const S3_ENCRYPTIONS = ['AES256', 'aws:kms'] as const;
export type S3Encryption = (typeof S3_ENCRYPTIONS)[number];

const MIN_PART_SIZE = 5 * 1024 * 1024;
const DEFAULT_RETRY_FOR_MS = 60_000;
/** Network failures that say "the server is not there right now", not "the request is wrong". */
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNABORTED',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);
const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'ThrottlingException',
]);
/** S3 asks clients to retry a conditional write that raced an in-flight one (409 ConditionalRequestConflict). */
const CONFLICT_RETRIES = 4;

type SdkError = Error & { $metadata?: { httpStatusCode?: number } };
type WriteParams = { ServerSideEncryption?: S3Encryption; SSEKMSKeyId?: string };
type PutParams = {
  Bucket: string;
  Key: string;
  ContentType?: string;
  IfNoneMatch?: string;
  IfMatch?: string;
} & WriteParams;

/** The SDK's own uploader's default: four parts in flight. */
const DEFAULT_PART_CONCURRENCY = 4;

function partConcurrencyOf(value: number | undefined): number {
  if (value === undefined) return DEFAULT_PART_CONCURRENCY;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new Error(`artifact store: partConcurrency is ${JSON.stringify(value)}; expected a whole number ≥ 1`);
  }
  return value;
}

/**
 * A Buffer over the bytes the SDK collected, not a copy of them: `Buffer.from(bytes)` copied every object read once
 * more, one whole extra copy of a checkpoint or a 100k-example split at the moment of reading.
 */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The SDK checks a full object's stored checksum as its body arrives: bytes altered at rest fail there, before our
 * own hash check. The same corruption gets the same error, which is never retried into success.
 */
function alteredAtRest(err: unknown, key: string): IntegrityError | undefined {
  const checksum = /^Checksum mismatch: expected "?([^"\s]+)"?.*received "?([^"\s]+)"?/i.exec(
    (err as Error).message ?? ''
  );
  if (!checksum) return undefined;
  const altered = new IntegrityError(key, checksum[1], checksum[2]);
  altered.message = `artifact store: object '${key}' fails its stored checksum (expected ${checksum[1]}, got ${checksum[2]}): altered at rest`;
  return altered;
}

/** How many times a whole-object read starts over because its key was rewritten while it read. */
const MAX_READ_RESTARTS = 3;

/** A resumed read found another version under the key than the one it began reading. */
class ChangedWhileReadError extends Error {
  constructor(location: string, key: string) {
    super(`artifact store: object '${location}/${key}' was rewritten while being read`);
    this.name = 'ChangedWhileReadError';
  }
}

/** Reads exactly `length` bytes at `position` into the start of `buffer`. */
async function readAt(file: FileHandle, buffer: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length;) {
    const { bytesRead } = await file.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) throw new Error(`file ended ${length - done} bytes early (it changed while being stored)`);
    done += bytesRead;
  }
}

function statusOf(err: unknown): number | undefined {
  return (err as SdkError).$metadata?.httpStatusCode;
}

function isPreconditionFailed(err: unknown): boolean {
  return (err as Error).name === 'PreconditionFailed' || statusOf(err) === 412;
}

function isConditionalConflict(err: unknown): boolean {
  return (err as Error).name === 'ConditionalRequestConflict' || statusOf(err) === 409;
}

function isNotFound(err: unknown): boolean {
  const name = (err as Error).name;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(err) === 404;
}

/** Worth retrying: the service was unreachable, dropped the connection, or said it was overloaded or failing. */
export function isTransientS3Error(err: unknown): boolean {
  const e = err as SdkError & { code?: string; cause?: unknown };
  const status = statusOf(err);
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  if (e.code && TRANSIENT_CODES.has(e.code)) return true;
  if (TRANSIENT_NAMES.has(e.name)) return true;
  // A cancellation is not an outage.
  if (e.name === 'AbortError') return false;
  // A connection cut mid-response surfaces as a plain Error from the body stream ('aborted', 'socket hang up').
  if (/^aborted$|socket hang up|premature close|other side closed/i.test(e.message ?? '')) return true;
  return e.cause !== undefined && e.cause !== err && isTransientS3Error(e.cause);
}

/** The encryption settings, checked: a typo must not silently store objects unencrypted. */
function encryptionOf(sse: string | undefined, kmsKeyId: string | undefined): WriteParams {
  if (sse === undefined) {
    if (kmsKeyId !== undefined) {
      throw new InputError(
        'STEPWISE_STORE_KMS_KEY_ID: a KMS key id is set but STEPWISE_STORE_SSE is not; expected STEPWISE_STORE_SSE=aws:kms',
        'STEPWISE_STORE_KMS_KEY_ID'
      );
    }
    return {};
  }
  if (!(S3_ENCRYPTIONS as readonly string[]).includes(sse)) {
    throw new InputError(
      `STEPWISE_STORE_SSE: ${JSON.stringify(sse)} is not a server-side encryption mode: expected ${S3_ENCRYPTIONS.join(' or ')}`,
      'STEPWISE_STORE_SSE'
    );
  }
  if (kmsKeyId !== undefined && sse !== 'aws:kms') {
    throw new InputError(
      `STEPWISE_STORE_KMS_KEY_ID: a KMS key id needs STEPWISE_STORE_SSE=aws:kms (got ${JSON.stringify(sse)})`,
      'STEPWISE_STORE_KMS_KEY_ID'
    );
  }
  return { ServerSideEncryption: sse as S3Encryption, ...(kmsKeyId ? { SSEKMSKeyId: kmsKeyId } : {}) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A {@link BlobBackend} on S3 or any S3-compatible service (versitygw, Cloudflare R2, GCS interop, Ceph RGW).
 * Conditional creates use `If-None-Match: *`, which these services evaluate atomically on the server.
 */
export class S3Backend implements BlobBackend {
  readonly location: string;
  readonly bucket: string;
  /** Normalised prefix without slashes at either end ('' for the bucket root). */
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly partSize: number;
  private readonly retryForMs: number;
  /** Encryption parameters of every write (PutObject, CreateMultipartUpload); no ACL is ever sent. */
  private readonly writeParams: WriteParams;

  constructor(opts: S3BackendOptions) {
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(opts.bucket ?? '')) {
      throw new InputError(
        `store.bucket: ${JSON.stringify(opts.bucket)} is not a valid S3 bucket name: expected 3-63 characters of ` +
          `lower-case letters, digits, '.' and '-'`,
        'store.bucket'
      );
    }
    this.bucket = opts.bucket;
    this.prefix = (opts.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (this.prefix) assertValidKey(this.prefix);
    this.location = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
    this.partSize = Math.max(opts.partSize ?? MIN_PART_SIZE, MIN_PART_SIZE);
    const all = settings();
    const env = all.s3;
    this.writeParams = encryptionOf(opts.sse ?? all.storeSse, opts.kmsKeyId ?? all.storeKmsKeyId);
    this.retryForMs = opts.retryForMs ?? DEFAULT_RETRY_FOR_MS;
    const endpoint = opts.endpoint ?? env.endpoint;
    const config: S3ClientConfig = {
      region: opts.region ?? env.region,
      forcePathStyle: opts.forcePathStyle ?? Boolean(endpoint),
      // The SDK otherwise rebuilds and sorts each command's middleware stack at every send. A teacher call makes two
      // or three small requests (a cache lookup, a cache write, its share of a journal segment), and that was a
      // quarter of each one's main-thread time (a PutObject with 16 in flight against versitygw: 1.7-2.2 ms, 1.3-1.6
      // ms with the cache). The teacher stage on S3 at 250 ms latency ran at 0.52-0.63 of its ideal rate, 0.59-0.74
      // with it (bench:teacher, two runs each). Safe because nothing here changes a client's or a command's
      // middleware after the first request, and no send passes per-call options (those bypass the cache).
      cacheMiddleware: true,
    };
    if (endpoint) config.endpoint = endpoint;
    if (opts.credentials) config.credentials = opts.credentials;
    this.client = new S3Client(config);
  }

  private fullKey(key: string): string {
    assertValidKey(key);
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  private paramsOf(key: string, opts: PutOptions): PutParams {
    return {
      Bucket: this.bucket,
      Key: this.fullKey(key),
      ContentType: opts.contentType,
      ...this.writeParams,
      ...(opts.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
      ...(opts.ifMatch !== undefined ? { IfMatch: opts.ifMatch } : {}),
    };
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}) {
    const params = this.paramsOf(key, opts);
    // A one-shot stream cannot be replayed, so it gets one attempt (the SDK still retries each buffered part); a
    // stream factory is reopened from the start for each attempt.
    if (body instanceof Readable) return this.putOnce(key, params, body);
    return this.retrying('PUT', key, () => this.putOnce(key, params, typeof body === 'function' ? body() : body));
  }

  /**
   * A file written as `put` writes a stream of it, without the SDK's uploader: a body up to one part goes as one
   * PutObject, a larger one as a multipart upload whose parts are read from the file straight into
   * `partConcurrency` buffers of one part each, reused part after part. The uploader gathers a stream's 64 KiB chunks
   * and concatenates them into a fresh buffer per part: a 25 MB file's upload raised the resident set by ~35 MiB,
   * most of it garbage awaiting collection (measured).
   */
  async putFile(key: string, path: string, opts: PutOptions = {}): Promise<boolean> {
    if (opts.ifMatch !== undefined) throw new Error('artifact store: a compare-and-swap write needs the bytes');
    const params = this.paramsOf(key, opts);
    const concurrency = partConcurrencyOf(opts.partConcurrency);
    return this.retrying('PUT', key, async () => {
      const file = await open(path, 'r');
      try {
        const { size } = await file.stat();
        if (size <= this.partSize) {
          const body = Buffer.allocUnsafe(size);
          await readAt(file, body, size, 0);
          return await this.putOnce(key, params, body);
        }
        return await this.putParts(key, params, file, size, concurrency);
      } finally {
        await file.close();
      }
    });
  }

  /** One multipart upload of `size` bytes of `file`; see {@link putFile}. */
  private async putParts(
    key: string,
    params: PutParams,
    file: FileHandle,
    size: number,
    concurrency: number
  ): Promise<boolean> {
    const { IfNoneMatch, ...createParams } = params;
    // As the SDK's uploader does: parts carry the checksum the client computes for each request anyway, and the
    // upload must be created with that algorithm for the completion to accept them.
    const checksum =
      (await this.client.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED'
        ? { ChecksumAlgorithm: 'CRC32' as const }
        : {};
    const { UploadId } = await this.client.send(new CreateMultipartUploadCommand({ ...createParams, ...checksum }));
    if (!UploadId) throw new Error(`S3 CreateMultipartUpload ${this.location}/${key} returned no upload id`);
    const target = { Bucket: params.Bucket, Key: params.Key, UploadId };
    try {
      const count = Math.ceil(size / this.partSize);
      const parts: CompletedPart[] = new Array<CompletedPart>(count);
      let next = 0;
      let failed = false;
      const uploader = async () => {
        const buffer = Buffer.allocUnsafe(this.partSize);
        while (next < count && !failed) {
          const index = next++;
          const offset = index * this.partSize;
          const length = Math.min(this.partSize, size - offset);
          await readAt(file, buffer, length, offset);
          // The SDK is done with the body (retries included) when send settles, so the buffer is free again.
          const out = await this.client.send(
            new UploadPartCommand({ ...target, PartNumber: index + 1, Body: buffer.subarray(0, length) })
          );
          if (!out.ETag) throw new Error(`S3 UploadPart ${this.location}/${key} returned no ETag`);
          parts[index] = {
            PartNumber: index + 1,
            ETag: out.ETag,
            ...(out.ChecksumCRC32 ? { ChecksumCRC32: out.ChecksumCRC32 } : {}),
          };
        }
      };
      // Every uploader ends before the upload is completed or aborted, and before the caller closes the file.
      const ended = await Promise.allSettled(
        Array.from({ length: Math.min(concurrency, count) }, () =>
          uploader().catch((err: unknown) => {
            failed = true;
            throw err;
          })
        )
      );
      const failure = ended.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failure) throw failure.reason;
      await this.client.send(
        new CompleteMultipartUploadCommand({ ...target, MultipartUpload: { Parts: parts }, IfNoneMatch })
      );
      return true;
    } catch (err) {
      // Nothing appears under the key: the parts are dropped (or expire with the bucket's lifecycle rules).
      await this.client.send(new AbortMultipartUploadCommand(target)).catch(() => undefined);
      if (IfNoneMatch && isPreconditionFailed(err)) return false;
      if (IfNoneMatch && isConditionalConflict(err) && (await this.exists(key))) return false;
      throw err;
    }
  }

  private async putOnce(key: string, params: PutParams, body: Uint8Array | Readable): Promise<boolean> {
    const ifNoneMatch = params.IfNoneMatch !== undefined;
    if (params.IfMatch !== undefined) return this.swapOnce(params, body);
    if (body instanceof Readable || body.byteLength > this.partSize) {
      // Multipart: the object appears under its key only when CompleteMultipartUpload succeeds, so an upload cut off
      // midway leaves nothing there (its parts are aborted, or expire with the bucket's lifecycle rules).
      try {
        await new Upload({ client: this.client, params: { ...params, Body: body }, partSize: this.partSize }).done();
        return true;
      } catch (err) {
        if (body instanceof Readable) body.destroy();
        if (ifNoneMatch && isPreconditionFailed(err)) return false;
        // A stream cannot be replayed, so a 409 conflict is settled by looking rather than by retrying.
        if (ifNoneMatch && isConditionalConflict(err) && (await this.exists(key))) return false;
        throw err;
      }
    }
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.send(new PutObjectCommand({ ...params, Body: body }));
        return true;
      } catch (err) {
        if (ifNoneMatch && isPreconditionFailed(err)) return false;
        if (ifNoneMatch && isConditionalConflict(err)) {
          if (attempt < CONFLICT_RETRIES) {
            await sleep(50 * 2 ** attempt);
            continue;
          }
          // Still conflicting: another writer keeps winning the race, so the key exists or is about to.
          if (await this.exists(key)) return false;
        }
        throw err;
      }
    }
  }

  /**
   * A compare-and-swap (`If-Match`), for small named objects only. A mismatched tag (412) or a key deleted meanwhile
   * (404) is a lost race: false. A 409 means another conditional write was in flight; the tag it raced for is what
   * decides, so the write is simply tried again. A retried swap whose first attempt landed (its response lost) also
   * answers false: callers tell that apart by reading back what is there (the registry's records carry their id).
   */
  private async swapOnce(params: PutParams, body: Uint8Array | Readable): Promise<boolean> {
    if (body instanceof Readable)
      throw new Error('artifact store: a compare-and-swap write needs the bytes, not a stream');
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.send(new PutObjectCommand({ ...params, Body: body }));
        return true;
      } catch (err) {
        if (isPreconditionFailed(err) || isNotFound(err)) return false;
        if (isConditionalConflict(err) && attempt < CONFLICT_RETRIES) {
          await sleep(50 * 2 ** attempt);
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * Run one store call, retrying transient failures with capped exponential backoff for up to `retryForMs`; then
   * a {@link StoreUnavailableError} naming the store. A retried conditional create whose first attempt landed
   * (its response lost) answers "exists", which for content-addressed keys is the truth.
   */
  private async retrying<T>(operation: string, key: string, op: () => Promise<T>): Promise<T> {
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        return await op();
      } catch (err) {
        if (!isTransientS3Error(err)) throw err;
        // Jittered, so the workers of a cluster do not all knock at once when the service comes back.
        const wait = Math.min(5_000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
        if (Date.now() - started + wait > this.retryForMs) {
          throw new StoreUnavailableError(this.location, operation, key, Date.now() - started, err);
        }
        await sleep(wait);
      }
    }
  }

  /**
   * The whole object, read through {@link read}: a connection cut mid-download goes on from the first byte not yet
   * delivered instead of starting over, which for a multi-gigabyte checkpoint is the difference between finishing
   * and not. Bytes land in one buffer of the announced size, so the read holds one copy plus the chunk in flight,
   * not the chunks and their concatenation. A key rewritten between a cut and the resume (only mutable keys can be)
   * is read again from the start: the resumed range asks for the version it began with and is refused for another.
   */
  async get(key: string): Promise<Buffer> {
    for (let restarts = 0; ; restarts++) {
      let whole: Buffer | undefined;
      const parts: Uint8Array[] = [];
      let filled = 0;
      try {
        for await (const chunk of this.read(
          key,
          (size) => (whole = size === undefined ? undefined : Buffer.allocUnsafe(size))
        )) {
          if (whole) whole.set(chunk, filled);
          else parts.push(chunk);
          filled += chunk.byteLength;
        }
      } catch (err) {
        if (err instanceof ChangedWhileReadError && restarts < MAX_READ_RESTARTS) continue;
        throw err;
      }
      return whole ?? Buffer.concat(parts, filled);
    }
  }

  /**
   * The object's bytes as the connection delivers them, through {@link read}. Callers read content-addressed
   * objects this way (splits), which never change, so a resume refused as changed is an error, not a restart.
   */
  async *getChunks(key: string): AsyncGenerator<Uint8Array> {
    yield* this.read(key);
  }

  /**
   * An object's bytes as they arrive. A connection cut midway is opened again at the first byte not yet delivered:
   * a ranged GET conditional on the first response's ETag, so the bytes after the cut are the same version's as
   * those before it (another version is refused with {@link ChangedWhileReadError}). Each reopening is retried as
   * any call; the read gives up with {@link StoreUnavailableError} after `retryForMs` without a byte of progress.
   * `onStart` hears the object's size (when the server sends it) before the first byte.
   */
  private async *read(key: string, onStart?: (size: number | undefined) => void): AsyncGenerator<Uint8Array> {
    const Key = this.fullKey(key);
    let offset = 0;
    let size: number | undefined;
    let etag: string | undefined;
    let stalledSince: number | undefined;
    let failures = 0;
    for (;;) {
      const resume = offset > 0 ? { Range: `bytes=${offset}-`, ...(etag ? { IfMatch: etag } : {}) } : {};
      const out = await this.retrying('GET', key, async () => {
        try {
          const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, ...resume }));
          if (!answer.Body) throw new Error(`S3 GetObject ${this.location}/${key} returned no body`);
          return answer;
        } catch (err) {
          if (isNotFound(err)) throw new NotFoundError(key);
          if (offset > 0 && statusOf(err) === 412) throw new ChangedWhileReadError(this.location, key);
          throw err;
        }
      });
      if (offset === 0) {
        size = out.ContentLength;
        etag = out.ETag;
        onStart?.(size);
      }
      try {
        for await (const chunk of out.Body as AsyncIterable<Uint8Array>) {
          if (size !== undefined && offset + chunk.byteLength > size) {
            throw new Error(`S3 GetObject ${this.location}/${key} sent more than the ${size} bytes it announced`);
          }
          offset += chunk.byteLength;
          stalledSince = undefined;
          failures = 0;
          yield chunk;
        }
        if (size === undefined || offset >= size) return;
        // The body ended short without an error: a cut like any other.
        throw Object.assign(new Error('premature close'), { code: 'ECONNRESET' });
      } catch (err) {
        const altered = alteredAtRest(err, key);
        if (altered) throw altered;
        if (!isTransientS3Error(err)) throw err;
        stalledSince ??= Date.now();
        const waited = Date.now() - stalledSince;
        if (waited > this.retryForMs) throw new StoreUnavailableError(this.location, 'GET', key, waited, err);
        // Every byte arrived and only the end failed: there is nothing left to ask for (a range past the end is
        // refused), and the caller's hash of what arrived decides.
        if (size !== undefined && offset >= size) return;
        // A connection that keeps breaking right after it opens is not hammered: the waits grow as for any call.
        failures += 1;
        await sleep(Math.min(5_000, 125 * 2 ** failures) * (0.5 + Math.random() / 2));
      }
    }
  }

  async getTagged(key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    const Key = this.fullKey(key);
    return this.retrying('GET', key, async () => {
      try {
        const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
        if (!out.Body || !out.ETag) throw new Error(`S3 GetObject ${this.location}/${key} returned no body or ETag`);
        return { body: asBuffer(await out.Body.transformToByteArray()), etag: out.ETag };
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  async exists(key: string): Promise<boolean> {
    const Key = this.fullKey(key);
    return this.retrying('HEAD', key, async () => {
      try {
        await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    });
  }

  async list(prefix: string): Promise<string[]> {
    assertValidPrefix(prefix);
    const base = this.prefix ? `${this.prefix}/` : '';
    const keys: string[] = [];
    let ContinuationToken: string | undefined;
    do {
      const token = ContinuationToken;
      const page = await this.retrying('LIST', prefix, () =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base + prefix, ContinuationToken: token })
        )
      );
      for (const object of page.Contents ?? []) {
        // Folder markers ('a/') made by other tools are not objects of this store.
        if (object.Key && !object.Key.endsWith('/')) keys.push(object.Key.slice(base.length));
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
    return keys.sort(compareKeys);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
