import { isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { InputError } from '../errors';
import { ArtifactStore } from './artifact-store';
import { FsBackend } from './fs-store';
import { S3Backend } from './s3-store';

export * from './artifact-store';
export { FsBackend } from './fs-store';
export { S3Backend, type S3BackendOptions } from './s3-store';
export { assertValidKey } from './keys';

/**
 * Where the artifact store lives. Plain JSON on purpose: it is handed to worker processes and passed through
 * Temporal, and each side opens its own client with {@link openStore}. Credentials never travel in it; every
 * process takes them from its own environment.
 */
export type StoreConfig =
  | {
      kind: 'fs';
      /** Absolute path of the root folder. */
      root: string;
    }
  | {
      kind: 's3';
      bucket: string;
      /** Key prefix inside the bucket, without slashes at either end ('' for the whole bucket). */
      prefix: string;
      /** S3-compatible endpoint URL; when absent, `$AWS_ENDPOINT_URL_S3` / `$AWS_ENDPOINT_URL` / AWS. */
      endpoint?: string;
      /** When absent, `$AWS_REGION` or `us-east-1`. */
      region?: string;
      /** Path-style addressing; by default on when an endpoint is set. */
      forcePathStyle?: boolean;
    };

/**
 * Parse a store location as a user writes it: `s3://bucket/prefix`, `file:///abs/path`, or a plain path (relative
 * paths are resolved against the working directory now, so the config means the same folder in every process).
 */
export function parseStoreLocation(location: string): StoreConfig {
  const bad = (expected: string) =>
    new InputError(
      `store (STEPWISE_STORE or --store): ${JSON.stringify(location)} is not a valid store location: expected ${expected}`,
      'store'
    );
  if (typeof location !== 'string' || location.trim() === '') {
    throw bad('s3://bucket/prefix, file:///absolute/path or a folder path');
  }
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(location)?.[1]?.toLowerCase();
  if (scheme === undefined) return { kind: 'fs', root: resolve(location) };
  if (scheme === 'file') {
    let root: string;
    try {
      root = fileURLToPath(location);
    } catch {
      throw bad('a file URL with an absolute path, e.g. file:///var/stepwise');
    }
    if (!isAbsolute(root)) throw bad('a file URL with an absolute path, e.g. file:///var/stepwise');
    return { kind: 'fs', root };
  }
  if (scheme === 's3') {
    const rest = location.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash === -1 ? rest : rest.slice(0, slash);
    const prefix = slash === -1 ? '' : rest.slice(slash + 1).replace(/^\/+|\/+$/g, '');
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw bad(
        `s3://<bucket>/<prefix> with a bucket of 3-63 lower-case letters, digits, '.' or '-' (got "${bucket}")`
      );
    }
    const badSegment = prefix.split('/').some((s) => s === '' || s === '.' || s === '..');
    if (prefix && (prefix.includes('?') || prefix.includes('#') || badSegment)) {
      throw bad('a prefix of "/"-separated names without empty, "." or ".." segments, "?" or "#"');
    }
    return { kind: 's3', bucket, prefix };
  }
  throw bad(`a location with scheme s3:// or file:// (got ${scheme}://)`);
}

/** Open the artifact store a config (or a location string, see {@link parseStoreLocation}) names. */
export function openStore(config: StoreConfig | string): ArtifactStore {
  const resolved = typeof config === 'string' ? parseStoreLocation(config) : config;
  switch (resolved.kind) {
    case 'fs':
      return new ArtifactStore(new FsBackend(resolved.root));
    case 's3':
      return new ArtifactStore(
        new S3Backend({
          bucket: resolved.bucket,
          prefix: resolved.prefix,
          endpoint: resolved.endpoint,
          region: resolved.region,
          forcePathStyle: resolved.forcePathStyle,
        })
      );
    default:
      throw new InputError(
        `store.kind: ${JSON.stringify((resolved as { kind: unknown }).kind)} is not a store kind: expected 'fs' or 's3'`,
        'store.kind'
      );
  }
}
