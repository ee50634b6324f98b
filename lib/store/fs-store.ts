import { createHash, randomUUID } from 'node:crypto';
import fs, { constants as fsConstants } from 'node:fs';
import { copyFile, link, mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';

import { InputError } from '../errors';
import { NotFoundError, StoreFullError, type BlobBackend, type BlobBody, type PutOptions } from './artifact-store';
import { assertValidKey, assertValidPrefix, compareKeys } from './keys';

/** Scratch folder inside the root: same filesystem, so the final rename/link is atomic. Never listed. */
const TMP_DIR = '.stepwise-tmp';

/** Size of each read of {@link FsBackend.getChunks}. */
const CHUNK_BYTES = 1 << 20;

/**
 * A {@link BlobBackend} on a local (or network) folder: the default for single-machine runs and tests.
 * Writes go to a temp file that is fsynced and then renamed (or hard-linked, for conditional creates) into place,
 * so a reader or a crash never leaves a half-written object under a content-addressed key — which `put`'s dedup
 * check would otherwise trust forever.
 *
 * Unlike S3, a folder cannot hold both an object `a` and an object `a/b`; the store's key layout never needs to.
 */
export class FsBackend implements BlobBackend {
  /** Absolute path of the root folder. */
  readonly root: string;
  readonly location: string;
  /**
   * Folders this backend made or found: a write's `mkdir -p` of its temp and target folders is two syscalls, and
   * when they exist Node builds an error inside it (a teacher worker writing two objects per call at 250 calls/s spent
   * ~6% of its CPU there). A folder removed since is noticed by the write that needs it and made again.
   */
  private readonly folders = new Set<string>();

  constructor(root: string) {
    this.root = resolve(root);
    this.location = pathToFileURL(this.root).href;
  }

  private pathOf(key: string): string {
    assertValidKey(key);
    if (key === TMP_DIR || key.startsWith(`${TMP_DIR}/`)) {
      throw new InputError(`artifact store: key ${JSON.stringify(key)} is reserved for temporary files`, 'key');
    }
    return join(this.root, ...key.split('/'));
  }

  async put(key: string, body: BlobBody, opts: PutOptions = {}) {
    const path = this.pathOf(key);
    if (opts.ifMatch !== undefined) {
      if (!(body instanceof Uint8Array)) throw new Error('artifact store: a compare-and-swap write needs the bytes');
      return this.swap(key, path, body, opts.ifMatch);
    }
    if (opts.ifNoneMatch && (await this.exists(key))) {
      // Cheap early exit; the link() below is what makes the create atomic.
      if (body instanceof Readable) body.destroy();
      return false;
    }
    try {
      return await this.writeAtomically(path, typeof body === 'function' ? body() : body, opts.ifNoneMatch ?? false);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT')
        throw new StoreFullError(this.location, key, err as NodeJS.ErrnoException);
      throw err;
    }
  }

  /** Write to a temp file, fsync, then publish at `path`; the temp file is removed whatever happens. */
  private async writeAtomically(path: string, body: Uint8Array | Readable, createOnly: boolean): Promise<boolean> {
    const tmpDir = join(this.root, TMP_DIR);
    const tmp = join(tmpDir, randomUUID());
    let published = false;
    try {
      if (body instanceof Readable) {
        const handle = await this.inFolder(tmpDir, () => open(tmp, 'wx'));
        try {
          for await (const chunk of body) await handle.write(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
          await handle.sync();
        } finally {
          await handle.close();
        }
      } else {
        await this.inFolder(tmpDir, () => writeSynced(tmp, body));
      }
      if (!createOnly) {
        await this.inFolder(dirname(path), () => renameFile(tmp, path));
        published = true;
        return true;
      }
      return await this.inFolder(dirname(path), () => createExclusive(tmp, path));
    } finally {
      if (body instanceof Readable) body.destroy();
      // A renamed temp file is gone; unlinking it anyway would only throw (and cost) ENOENT.
      if (!published) await unlink(tmp).catch(() => undefined);
    }
  }

  /** Runs `op` in `dir`, making the folder first unless known to exist, and again if `op` finds it missing. */
  private async inFolder<T>(dir: string, op: () => Promise<T>): Promise<T> {
    if (!this.folders.has(dir)) {
      await mkdir(dir, { recursive: true });
      this.folders.add(dir);
      return op();
    }
    try {
      return await op();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await mkdir(dir, { recursive: true });
      return op();
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readWhole(this.pathOf(key));
    } catch (err) {
      if (isAbsent(err)) throw new NotFoundError(key);
      throw err;
    }
  }

  async *getChunks(key: string): AsyncGenerator<Uint8Array> {
    let file;
    try {
      file = await open(this.pathOf(key), 'r');
    } catch (err) {
      if (isAbsent(err)) throw new NotFoundError(key);
      throw err;
    }
    // Reads of up to 1 MiB: few syscalls for a large split. The stream gives each read a buffer of its own (the
    // caller may keep a chunk) and closes the file when it ends or fails.
    yield* file.createReadStream({ highWaterMark: CHUNK_BYTES });
  }

  async getTagged(key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    try {
      const body = await this.get(key);
      return { body, etag: etagOf(body) };
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  /**
   * Compare-and-swap on a folder: under an exclusive lock file beside the key, read what is there, compare its tag
   * (the sha256 of its bytes, as `getTagged` gives it) and rename the new bytes into place. Renames are atomic, so
   * readers never need the lock; only swappers of the same key wait for each other, for the milliseconds one takes.
   */
  private async swap(key: string, path: string, body: Uint8Array, etag: string): Promise<boolean> {
    // Locks live in the scratch folder, which listings skip, named by the key's hash.
    const release = await lockFile(join(this.root, TMP_DIR, 'locks', createHash('sha256').update(key).digest('hex')));
    try {
      let current: Buffer;
      try {
        current = await readFile(path);
      } catch (err) {
        if (isAbsent(err)) return false;
        throw err;
      }
      if (etagOf(current) !== etag) return false;
      return await this.writeAtomically(path, body, false);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT')
        throw new StoreFullError(this.location, key, err as NodeJS.ErrnoException);
      throw err;
    } finally {
      await release();
    }
  }

  async exists(key: string): Promise<boolean> {
    try {
      return (await stat(this.pathOf(key))).isFile();
    } catch (err) {
      if (isAbsent(err)) return false;
      throw err;
    }
  }

  async list(prefix: string): Promise<string[]> {
    assertValidPrefix(prefix);
    // Walk only the deepest folder the prefix names completely ('runs/ab' -> 'runs/'), then filter by string prefix
    // as S3 does.
    const base = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const keys: string[] = [];
    const walk = async (dir: string, keyPrefix: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (isAbsent(err)) return;
        throw err;
      }
      for (const entry of entries) {
        if (keyPrefix === '' && entry.name === TMP_DIR) continue;
        const key = keyPrefix + entry.name;
        if (entry.isDirectory()) await walk(join(dir, entry.name), `${key}/`);
        else if (entry.isFile() && key.startsWith(prefix)) keys.push(key);
      }
    };
    await walk(base ? join(this.root, ...base.split('/')) : this.root, base ? `${base}/` : '');
    return keys.sort(compareKeys);
  }
}

/*
 * The small reads and writes every teacher call makes (its cache lookup and entry, its journal segment) go through
 * node:fs's callback API, each as one promise: the promise API's FileHandle costs a promise and an object per step,
 * and each promise more again under the AsyncLocalStorage of a Temporal activity. Measured on the main thread: a
 * write with its fsync 130-180 us against 270-340, a read that misses 26-38 us against 79-89, one that finds the key
 * 79-128 us against 128-192.
 */

/** Creates `path` (which must not exist) holding `bytes`, flushed to disk before it resolves. */
function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.open(path, 'wx', (openErr, fd) => {
      if (openErr) return reject(openErr);
      // Closes the file whatever happened, then settles with the first error.
      const finish = (err: NodeJS.ErrnoException | null) =>
        fs.close(fd, (closeErr) => (err || closeErr ? reject(err ?? closeErr) : resolve()));
      const writeFrom = (offset: number) => {
        if (offset >= bytes.byteLength) return fs.fsync(fd, finish);
        fs.write(fd, bytes, offset, bytes.byteLength - offset, offset, (err, written) =>
          err ? finish(err) : writeFrom(offset + written)
        );
      };
      writeFrom(0);
    });
  });
}

function renameFile(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, (err) => (err ? reject(err) : resolve())));
}

function readWhole(path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => fs.readFile(path, (err, bytes) => (err ? reject(err) : resolve(bytes))));
}

/**
 * Publish `tmp` at `path` only if nothing is there. link() fails with EEXIST atomically, so of N concurrent creators
 * exactly one wins, and the winner's file appears complete.
 */
async function createExclusive(tmp: string, path: string): Promise<boolean> {
  try {
    await link(tmp, path);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS' && code !== 'EOPNOTSUPP') throw err;
  }
  // Filesystems without hard links (some FUSE and SMB mounts): an exclusive copy still yields one winner, though a
  // reader could glimpse the file before the copy completes.
  try {
    await copyFile(tmp, path, fsConstants.COPYFILE_EXCL);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    // The exclusive create succeeded, so a partial file there (the disk filled mid-copy) is ours to remove: left, it
    // would look complete to the next put's dedup check.
    await unlink(path).catch(() => undefined);
    throw err;
  }
}

/** A filesystem object's entity tag: the sha256 of its bytes, so equal content has an equal tag on any machine. */
function etagOf(bytes: Uint8Array): string {
  return `"${createHash('sha256').update(bytes).digest('hex')}"`;
}

/**
 * A lock older than this is taken to be left by a dead process (a swap holds its lock for milliseconds) and is broken.
 * A holder stalled for longer than this could then overlap another swapper: acceptable for the single-machine store.
 */
const STALE_LOCK_MS = 10_000;

/** Take an exclusive lock file (O_EXCL create), waiting for a live holder and breaking a stale one; returns release. */
async function lockFile(lock: string): Promise<() => Promise<void>> {
  await mkdir(dirname(lock), { recursive: true });
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(lock, 'wx');
      await handle.close();
      return () => unlink(lock).catch(() => undefined);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const age = await stat(lock).then(
      (s) => Date.now() - s.mtimeMs,
      () => 0
    );
    if (age > STALE_LOCK_MS) {
      // Renamed away first, so of two processes breaking the same stale lock only one removes it.
      const broken = `${lock}.stale-${randomUUID()}`;
      if (
        await rename(lock, broken).then(
          () => true,
          () => false
        )
      )
        await unlink(broken).catch(() => undefined);
      continue;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(50, 2 + attempt * 2) * (0.5 + Math.random())));
  }
}

function isAbsent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  // ENOTDIR: a path component is a file ('a' exists, asked for 'a/b'); EISDIR: the key names a folder of objects.
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}
