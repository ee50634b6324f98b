import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable } from 'node:stream';

import { InputError } from '../errors';
import { NotFoundError, type BlobBackend } from './artifact-store';
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
}

const MIN_PART_SIZE = 5 * 1024 * 1024;
/** S3 asks clients to retry a conditional write that raced an in-flight one (409 ConditionalRequestConflict). */
const CONFLICT_RETRIES = 4;

type SdkError = Error & { $metadata?: { httpStatusCode?: number } };

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
    const env = settings().s3;
    const endpoint = opts.endpoint ?? env.endpoint;
    const config: S3ClientConfig = {
      region: opts.region ?? env.region,
      forcePathStyle: opts.forcePathStyle ?? Boolean(endpoint),
    };
    if (endpoint) config.endpoint = endpoint;
    if (opts.credentials) config.credentials = opts.credentials;
    this.client = new S3Client(config);
  }

  private fullKey(key: string): string {
    assertValidKey(key);
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  async put(key: string, body: Uint8Array | Readable, opts: { ifNoneMatch?: boolean; contentType?: string } = {}) {
    const Key = this.fullKey(key);
    const params = {
      Bucket: this.bucket,
      Key,
      ContentType: opts.contentType,
      ...(opts.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
    };
    if (body instanceof Readable || body.byteLength > this.partSize) {
      // A stream cannot be replayed, so a 409 conflict is settled by looking rather than by retrying.
      try {
        await new Upload({ client: this.client, params: { ...params, Body: body }, partSize: this.partSize }).done();
        return true;
      } catch (err) {
        if (opts.ifNoneMatch && isPreconditionFailed(err)) return false;
        if (opts.ifNoneMatch && isConditionalConflict(err) && (await this.exists(key))) return false;
        throw err;
      }
    }
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.send(new PutObjectCommand({ ...params, Body: body }));
        return true;
      } catch (err) {
        if (opts.ifNoneMatch && isPreconditionFailed(err)) return false;
        if (opts.ifNoneMatch && isConditionalConflict(err)) {
          if (attempt < CONFLICT_RETRIES) {
            await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
            continue;
          }
          // Still conflicting: another writer keeps winning the race, so the key exists or is about to.
          if (await this.exists(key)) return false;
        }
        throw err;
      }
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }));
      if (!out.Body) throw new Error(`S3 GetObject ${this.location}/${key} returned no body`);
      return Buffer.from(await out.Body.transformToByteArray());
    } catch (err) {
      if (isNotFound(err)) throw new NotFoundError(key);
      throw err;
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  async list(prefix: string): Promise<string[]> {
    assertValidPrefix(prefix);
    const base = this.prefix ? `${this.prefix}/` : '';
    const keys: string[] = [];
    let ContinuationToken: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base + prefix, ContinuationToken })
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
