import test, { type ExecutionContext } from 'ava';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';

import { ensureBucket, startS3Server, type S3Server } from '../infra/s3-server';
import { InputError } from '../lib/errors';
import {
  ArtifactStore,
  FsBackend,
  IntegrityError,
  NotFoundError,
  objectKey,
  openStore,
  parseStoreLocation,
  S3Backend,
  StoreUnavailableError,
  type BlobBackend,
} from '../lib/store';
import { isTransientS3Error } from '../lib/store/s3-store';
import { startStoreProxy } from './faults/store-proxy';

/** A fresh, empty store for one test, and how to dispose of it. */
interface Fixture {
  store: ArtifactStore;
  backend: BlobBackend;
  dispose(): Promise<void>;
}

const BUCKET = 'stepwise-test';
let s3: S3Server | undefined;
let s3Data: string | undefined;

test.before(async () => {
  s3Data = await mkdtemp(join(tmpdir(), 'stepwise-s3-'));
  s3 = await startS3Server({ dataDir: s3Data });
  await ensureBucket(s3, BUCKET);
  // The S3 backend takes credentials from the SDK's default chain, as it does in a deployment.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
});

test.after.always(async () => {
  await s3?.stop();
  if (s3Data) await rm(s3Data, { recursive: true, force: true });
});

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex');

/**
 * The one behavioural contract every backend must meet. Each test gets its own empty store (a temp folder, or a
 * fresh prefix in the shared bucket), so tests run concurrently.
 */
function storeContract(name: string, fresh: () => Promise<Fixture>): void {
  test(`${name}: put returns the sha256 and size of the bytes, and get returns the same bytes`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      const bytes = randomBytes(4096);
      const ref = await store.put(bytes);
      t.deepEqual(ref, { sha256: sha256(bytes), size: bytes.byteLength });
      t.true(Buffer.compare(await store.get(ref), bytes) === 0);
      t.is(store.uri(ref), `${store.location}/${objectKey(ref.sha256)}`);
    } finally {
      await dispose();
    }
  });

  test(`${name}: storing the same bytes twice yields one object and equal references`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      const first = await store.put('the same text');
      const second = await store.put('the same text');
      t.deepEqual(second, first);
      t.deepEqual(await store.listKeys('objects/'), [objectKey(first.sha256)]);
      t.true(await store.has(first));
    } finally {
      await dispose();
    }
  });

  test(`${name}: putFile stores a file larger than one multipart part intact`, async (t) => {
    const { store, dispose } = await fresh();
    const dir = await mkdtemp(join(tmpdir(), 'stepwise-file-'));
    try {
      const bytes = randomBytes(6 * 1024 * 1024 + 12345);
      const file = join(dir, 'checkpoint.bin');
      await writeFile(file, bytes);
      const ref = await store.putFile(file, 'application/octet-stream');
      t.is(ref.sha256, sha256(bytes));
      t.is(ref.size, bytes.byteLength);
      t.true(Buffer.compare(await store.get(ref), bytes) === 0);
      t.deepEqual(await store.putFile(file), ref);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await dispose();
    }
  });

  test(`${name}: putJson gives equal values the same hash whatever their key order`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      const a = await store.putJson({ alpha: 0.5, model: { layers: 4, dModel: 256 }, tasks: ['label', 'rationale'] });
      const b = await store.putJson({ tasks: ['label', 'rationale'], model: { dModel: 256, layers: 4 }, alpha: 0.5 });
      t.deepEqual(a, b);
      t.deepEqual(await store.getJson(a), {
        alpha: 0.5,
        model: { dModel: 256, layers: 4 },
        tasks: ['label', 'rationale'],
      });
      const c = await store.putJson({ alpha: 0.5, model: { layers: 4, dModel: 512 }, tasks: ['label', 'rationale'] });
      t.not(c.sha256, a.sha256);
    } finally {
      await dispose();
    }
  });

  test(`${name}: reading an object whose bytes were corrupted throws IntegrityError`, async (t) => {
    const { store, backend, dispose } = await fresh();
    try {
      const ref = await store.put('original bytes');
      await backend.put(objectKey(ref.sha256), Buffer.from('tampered bytes'));
      const err = await t.throwsAsync(store.get(ref), { instanceOf: IntegrityError });
      t.is(err?.expected, ref.sha256);
      t.is(err?.actual, sha256('tampered bytes'));
    } finally {
      await dispose();
    }
  });

  test(`${name}: iterJsonl reads a split of many chunks record by record (iterJsonlBatches a read at a time), and a corrupted one throws at its end`, async (t) => {
    const { store, backend, dispose } = await fresh();
    try {
      // ~3 MiB over several reads, with multi-byte characters and lines longer than a read, so lines and characters
      // fall across chunk boundaries.
      const records = Array.from({ length: 3000 }, (_, i) => ({
        id: `ex-${i}`,
        input: `${'é€🙂'.repeat(i % 300 === 0 ? 40_000 : 3)} #${i}`,
      }));
      const ref = await store.putJsonl(records);
      t.true(ref.size > 3 * 1024 * 1024, 'larger than three reads');
      const read = [];
      for await (const r of store.iterJsonl<(typeof records)[number]>(ref)) read.push(r);
      t.deepEqual(read, records);
      // A read's records at a time: the same records in order, in one non-empty batch per read of the file.
      const batches = [];
      for await (const batch of store.iterJsonlBatches<(typeof records)[number]>(ref)) batches.push(batch);
      t.true(batches.length >= 3, `a batch per read (${batches.length})`);
      t.true(
        batches.every((b) => b.length > 0),
        'no empty batch'
      );
      t.deepEqual(batches.flat(), records);
      // The same length of other bytes, still valid JSON lines: every record parses, and the hash decides.
      const other = records.map((r) => ({ ...r, id: r.id.replace('ex', 'xe') }));
      await backend.put(objectKey(ref.sha256), Buffer.from(other.map((r) => JSON.stringify(r)).join('\n') + '\n'));
      let yielded = 0;
      const err = await t.throwsAsync(
        (async () => {
          for await (const _ of store.iterJsonl(ref)) yielded++;
        })(),
        { instanceOf: IntegrityError }
      );
      t.is(yielded, records.length, 'the records were read before the hash was known');
      t.is(err?.expected, ref.sha256);
      await t.throwsAsync(
        (async () => {
          for await (const _ of store.iterJsonl({ sha256: sha256('never stored'), size: 12 })) yielded++;
        })(),
        { instanceOf: NotFoundError }
      );
    } finally {
      await dispose();
    }
  });

  test(`${name}: absent objects throw NotFoundError and read as undefined by name`, async (t) => {
    const { store, backend, dispose } = await fresh();
    try {
      await t.throwsAsync(backend.get('runs/none/manifest.json'), { instanceOf: NotFoundError });
      t.false(await backend.exists('runs/none/manifest.json'));
      t.is(await store.getKey('runs/none/manifest.json'), undefined);
      await t.throwsAsync(store.get({ sha256: sha256('never stored'), size: 12 }), { instanceOf: NotFoundError });
      t.false(await store.has({ sha256: sha256('never stored'), size: 12 }));
    } finally {
      await dispose();
    }
  });

  test(`${name}: of 8 concurrent create-only writes of one key exactly one succeeds`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => store.putKey('registry/model/v1.json', `writer ${i}`, { createOnly: true }))
      );
      t.is(results.filter(Boolean).length, 1);
      const winner = results.indexOf(true);
      t.is((await store.getKey('registry/model/v1.json'))?.toString(), `writer ${winner}`);
      t.false(await store.putKey('registry/model/v1.json', 'late writer', { createOnly: true }));
      t.true(await store.putKey('registry/model/v1.json', 'overwrite'));
      t.is((await store.getKey('registry/model/v1.json'))?.toString(), 'overwrite');
    } finally {
      await dispose();
    }
  });

  test(`${name}: a create-only stream write to an existing key writes nothing`, async (t) => {
    const { backend, dispose } = await fresh();
    try {
      t.true(
        await backend.put('runs/r1/log.txt', Readable.from([Buffer.from('first '), Buffer.from('writer')]), {
          ifNoneMatch: true,
        })
      );
      t.false(await backend.put('runs/r1/log.txt', Readable.from([Buffer.from('second')]), { ifNoneMatch: true }));
      t.is((await backend.get('runs/r1/log.txt')).toString(), 'first writer');
    } finally {
      await dispose();
    }
  });

  test(`${name}: a body stream that fails midway leaves nothing under its key`, async (t) => {
    const { backend, dispose } = await fresh();
    try {
      // More than one multipart part reaches the backend before the source fails (a disk error, a killed reader).
      async function* failing() {
        yield randomBytes(6 * 1024 * 1024);
        throw new Error('source read failed');
      }
      await t.throwsAsync(backend.put('objects/partial.bin', Readable.from(failing()), { ifNoneMatch: true }), {
        message: /source read failed/,
      });
      t.false(await backend.exists('objects/partial.bin'));
      t.deepEqual(await backend.list(''), []);
    } finally {
      await dispose();
    }
  });

  test(`${name}: a stream factory body is stored like the bytes it streams`, async (t) => {
    const { backend, dispose } = await fresh();
    try {
      const bytes = randomBytes(64 * 1024);
      let opened = 0;
      const body = () => {
        opened += 1;
        return Readable.from([bytes.subarray(0, 1000), bytes.subarray(1000)]);
      };
      t.true(await backend.put('objects/factory.bin', body, { ifNoneMatch: true }));
      t.true((await backend.get('objects/factory.bin')).equals(bytes));
      t.is(opened, 1, 'opened once when nothing failed');
      // A create-only write of a key that exists writes nothing, whatever the body.
      t.false(await backend.put('objects/factory.bin', body, { ifNoneMatch: true }));
    } finally {
      await dispose();
    }
  });

  test(`${name}: list returns every key under a prefix, recursively and sorted`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      const keys = ['runs/b/1', 'runs/a/2', 'runs/a/1', 'runs/ab/x/1', 'other/x'];
      for (const key of keys) await store.putKey(key, key);
      t.deepEqual(await store.listKeys('runs/a/'), ['runs/a/1', 'runs/a/2']);
      t.deepEqual(await store.listKeys('runs/a'), ['runs/a/1', 'runs/a/2', 'runs/ab/x/1']);
      t.deepEqual(await store.listKeys(''), [...keys].sort());
      t.deepEqual(await store.listKeys('missing/'), []);
    } finally {
      await dispose();
    }
  });

  test(`${name}: a compare-and-swap succeeds only against the tag it read, and one of 16 racers wins`, async (t) => {
    const { store, dispose } = await fresh();
    try {
      t.is(await store.getKeyTagged('heads/a.json'), undefined);
      t.true(await store.swapKey('heads/a.json', '{"n":0}', undefined), 'created when absent');
      t.false(await store.swapKey('heads/a.json', '{"n":9}', undefined), 'a create finds it present');
      const first = (await store.getKeyTagged<{ n: number }>('heads/a.json'))!;
      t.deepEqual(first.value, { n: 0 });
      t.false(await store.swapKey('heads/a.json', '{"n":9}', '"not-its-tag"'), 'a wrong tag writes nothing');
      t.false(await store.swapKey('heads/missing.json', '{"n":9}', first.etag), 'a tag never matches a missing key');
      t.deepEqual((await store.getKeyTagged('heads/a.json'))!.value, { n: 0 });
      let tag = first.etag;
      for (let round = 1; round <= 3; round++) {
        const results = await Promise.all(
          Array.from({ length: 16 }, (_, i) => store.swapKey('heads/a.json', JSON.stringify({ n: round, by: i }), tag))
        );
        t.is(results.filter(Boolean).length, 1, `round ${round}: exactly one winner`);
        const now = (await store.getKeyTagged<{ n: number; by: number }>('heads/a.json'))!;
        t.is(now.value.n, round);
        t.true(results[now.value.by], 'the winner is the one whose bytes are there');
        t.not(now.etag, tag);
        tag = now.etag;
      }
      t.deepEqual(await store.listKeys('heads/'), ['heads/a.json'], 'no lock or scratch file is ever listed');
    } finally {
      await dispose();
    }
  });

  test(`${name}: keys that could escape the store or differ between backends are rejected`, async (t) => {
    const { backend, dispose } = await fresh();
    try {
      for (const key of ['../outside', 'a/../../b', '/absolute', 'a//b', 'trailing/', '', 'a\\b']) {
        await t.throwsAsync(backend.put(key, Buffer.from('x')), { instanceOf: InputError }, key);
        await t.throwsAsync(backend.get(key), { instanceOf: InputError }, key);
      }
    } finally {
      await dispose();
    }
  });
}

storeContract('FsBackend', async () => {
  const root = await mkdtemp(join(tmpdir(), 'stepwise-store-'));
  const store = openStore(root);
  return {
    store,
    backend: store.backend,
    dispose: async () => {
      await store.close();
      await rm(root, { recursive: true, force: true });
    },
  };
});

storeContract('S3Backend', async () => {
  if (!s3) throw new Error('the S3 gateway did not start');
  const prefix = `t/${randomBytes(6).toString('hex')}`;
  const store = openStore({ kind: 's3', bucket: BUCKET, prefix, endpoint: s3.endpoint });
  return { store, backend: store.backend, dispose: () => store.close() };
});

test('FsBackend: folders removed by hand under a live store are made again by the next write, which leaves no temp file', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'stepwise-store-'));
  const backend = new FsBackend(root);
  try {
    t.true(await backend.put('a/b/one.json', Buffer.from('1')));
    t.true(await backend.put('a/b/two.json', Buffer.from('2'), { ifNoneMatch: true }));
    // The backend remembers both folders exist; both are gone now.
    await rm(join(root, 'a'), { recursive: true });
    await rm(join(root, '.stepwise-tmp'), { recursive: true });
    t.true(await backend.put('a/b/three.json', Buffer.from('3')));
    t.is((await backend.get('a/b/three.json')).toString(), '3');
    await rm(join(root, 'a'), { recursive: true });
    t.true(await backend.put('a/b/four.json', Buffer.from('4'), { ifNoneMatch: true }));
    t.is((await backend.get('a/b/four.json')).toString(), '4');
    t.deepEqual(await readdir(join(root, '.stepwise-tmp')), [], 'every temp file was published or removed');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('S3Backend: a body larger than one part is uploaded in several parts', async (t) => {
  if (!s3) throw new Error('the S3 gateway did not start');
  const backend = new S3Backend({ bucket: BUCKET, prefix: 'multipart', endpoint: s3.endpoint });
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey },
  });
  try {
    const bytes = randomBytes(6 * 1024 * 1024 + 1);
    t.true(await backend.put('big.bin', Readable.from([bytes]), { ifNoneMatch: true }));
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'multipart/big.bin' }));
    // A multipart object's ETag is '<md5 of part md5s>-<part count>'.
    t.regex(head.ETag ?? '', /-2"?$/);
    t.false(await backend.put('big.bin', Readable.from([bytes]), { ifNoneMatch: true }));
    t.true(Buffer.compare(await backend.get('big.bin'), bytes) === 0);
  } finally {
    client.destroy();
    await backend.close();
  }
});

test('S3Backend: putFile reads parts straight from the file, at most partConcurrency in flight', async (t) => {
  if (!s3) throw new Error('the S3 gateway did not start');
  // A proxy in front of the gateway that holds each part upload 500 ms, so parts in flight overlap when allowed to.
  let inFlight = 0;
  let most = 0;
  let parts = 0;
  const proxy = await startStoreProxy(s3.endpoint, {
    hold: (req, res) => {
      if (req.method !== 'PUT' || !/[?&]partNumber=/.test(req.url ?? '')) return 0;
      parts++;
      most = Math.max(most, ++inFlight);
      res.on('close', () => inFlight--);
      return 500;
    },
  });
  const endpoint = proxy.endpoint;
  const backend = new S3Backend({ bucket: BUCKET, prefix: `parts-${randomBytes(4).toString('hex')}`, endpoint });
  const store = new ArtifactStore(backend);
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-file-'));
  try {
    for (const concurrency of [1, 2, undefined]) {
      // 4 parts and a bit, new bytes each time so each upload happens.
      const bytes = randomBytes(4 * 5 * 1024 * 1024 + 777);
      const file = join(dir, `f-${concurrency}.bin`);
      await writeFile(file, bytes);
      most = 0;
      parts = 0;
      const ref = await store.putFile(file, 'application/octet-stream', { partConcurrency: concurrency });
      t.is(parts, 5, 'five parts');
      t.is(most, Math.min(concurrency ?? 4, 5), `at most ${concurrency ?? 'the default 4'} parts in flight`);
      t.is(ref.sha256, sha256(bytes));
      t.true(Buffer.compare(await store.get(ref), bytes) === 0, 'stored intact');
      // A create-only write of the same key over the finished object writes nothing.
      t.false(await backend.putFile!(objectKey(ref.sha256), file, { ifNoneMatch: true }));
    }
    const fresh = join(dir, 'fresh.bin');
    await writeFile(fresh, randomBytes(6 * 1024 * 1024));
    await t.throwsAsync(store.putFile(fresh, undefined, { partConcurrency: 0 }), {
      message: /partConcurrency is 0/,
    });
  } finally {
    await backend.close();
    await proxy.close();
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * A proxy in front of the gateway that cuts the first GET whose path matches `path` after ~1 MiB of its body, and
 * records every matching GET's Range and If-Match headers. `onCut` runs as the connection is cut; the GETs after it
 * are held until what it returns has settled.
 */
async function cuttingProxy(path: RegExp, onCut?: () => Promise<unknown>) {
  if (!s3) throw new Error('the S3 gateway did not start');
  const gets: { range?: string; ifMatch?: string }[] = [];
  let cut = false;
  let cutDone: Promise<unknown> | undefined;
  const proxy = await startStoreProxy(s3.endpoint, {
    hold: (req, res) => {
      if (req.method !== 'GET' || !path.test(req.url ?? '')) return 0;
      gets.push({ range: req.headers.range, ifMatch: req.headers['if-match'] });
      if (cut) return cutDone ?? 0;
      cut = true;
      let sent = 0;
      const write = res.write.bind(res) as (chunk: Buffer) => boolean;
      res.write = ((chunk: Buffer) => {
        sent += chunk.length;
        if (sent > 1024 * 1024) {
          cutDone = onCut?.();
          res.destroy();
          return false;
        }
        return write(chunk);
      }) as typeof res.write;
      return 0;
    },
  });
  return { proxy, gets, wasCut: () => cut };
}

/** The first byte a ranged GET asks for, checked to lie where a cut after ~1 MiB leaves off. */
function resumedFrom(t: ExecutionContext, range: string | undefined): void {
  const from = Number(/^bytes=(\d+)-$/.exec(range ?? '')?.[1]);
  t.true(from > 0 && from <= 1024 * 1024 + 64 * 1024, `the second GET starts where the first broke (${range})`);
}

test('S3Backend: a read cut off midway goes on from the first byte not yet delivered', async (t) => {
  const { proxy, gets, wasCut } = await cuttingProxy(/\/objects\//);
  const backend = new S3Backend({
    bucket: BUCKET,
    prefix: `cut-${randomBytes(4).toString('hex')}`,
    endpoint: proxy.endpoint,
  });
  const store = new ArtifactStore(backend);
  try {
    const records = Array.from({ length: 40_000 }, (_, i) => ({ id: i, text: randomBytes(48).toString('base64') }));
    const ref = await store.putJsonl(records);
    const read = [];
    for await (const r of store.iterJsonl(ref)) read.push(r);
    t.deepEqual(read, records, 'every record, once, in order');
    t.true(wasCut());
    t.is(gets.length, 2, 'one GET cut off, one more to finish');
    t.is(gets[0]!.range, undefined);
    resumedFrom(t, gets[1]!.range);
  } finally {
    await backend.close();
    await proxy.close();
  }
});

test('S3Backend: a whole-object get cut off midway also goes on from where it broke', async (t) => {
  const { proxy, gets, wasCut } = await cuttingProxy(/\/objects\//);
  const backend = new S3Backend({
    bucket: BUCKET,
    prefix: `cut-get-${randomBytes(4).toString('hex')}`,
    endpoint: proxy.endpoint,
  });
  const store = new ArtifactStore(backend);
  try {
    // A checkpoint-like blob: one get, not a stream of records.
    const bytes = randomBytes(3 * 1024 * 1024 + 123);
    const ref = await store.put(bytes);
    t.true(Buffer.compare(await store.get(ref), bytes) === 0, 'the same bytes');
    t.true(wasCut());
    t.is(gets.length, 2, 'one GET cut off, one more to finish');
    resumedFrom(t, gets[1]!.range);
    t.truthy(gets[1]!.ifMatch, 'the resumed range asks for the version it began with');
  } finally {
    await backend.close();
    await proxy.close();
  }
});

test('S3Backend: a key rewritten between a cut and the resume is read again whole, never spliced', async (t) => {
  if (!s3) throw new Error('the S3 gateway did not start');
  const prefix = `rewrite-${randomBytes(4).toString('hex')}`;
  const before = Buffer.alloc(3 * 1024 * 1024, 'a');
  const after = Buffer.alloc(3 * 1024 * 1024 + 10, 'b');
  // Another writer rewrites the key, straight to the gateway, as the reader's connection is cut; the reader's next
  // GET reaches the gateway only once that write is done.
  const direct = new S3Backend({ bucket: BUCKET, prefix, endpoint: s3.endpoint });
  const { proxy, gets } = await cuttingProxy(/\/mutable\//, () => direct.put('mutable/state.bin', after));
  const backend = new S3Backend({ bucket: BUCKET, prefix, endpoint: proxy.endpoint });
  try {
    await direct.put('mutable/state.bin', before);
    const body = await backend.get('mutable/state.bin');
    t.true(
      Buffer.compare(body, after) === 0,
      `the new version whole, not the old one's first MiB and the new one's rest`
    );
    t.is(gets.length, 3, 'cut, refused as another version, read again');
    resumedFrom(t, gets[1]!.range);
    t.truthy(gets[1]!.ifMatch, 'the resume asks for the version it began with');
    t.is(gets[2]!.range, undefined, 'the fresh read starts at byte 0');
  } finally {
    await Promise.all([backend.close(), direct.close()]);
    await proxy.close();
  }
});

test('S3Backend: list follows continuation tokens past one page of 1000 keys', async (t) => {
  if (!s3) throw new Error('the S3 gateway did not start');
  const backend = new S3Backend({
    bucket: BUCKET,
    prefix: `paged-${randomBytes(4).toString('hex')}`,
    endpoint: s3.endpoint,
  });
  try {
    const keys = Array.from({ length: 1005 }, (_, i) => `k/${String(i).padStart(4, '0')}`);
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(keys.slice(i, i + 50).map((k) => backend.put(k, Buffer.from(k))));
    }
    t.deepEqual(await backend.list('k/'), keys);
  } finally {
    await backend.close();
  }
});

test('S3Backend: an unreachable store is retried for its budget, then fails naming the store', async (t) => {
  // A port nothing listens on: every attempt is refused at once, as during a gateway restart.
  const closed = await new Promise<number>((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
  const backend = new S3Backend({
    bucket: BUCKET,
    prefix: 'down',
    endpoint: `http://127.0.0.1:${closed}`,
    retryForMs: 2_000,
  });
  try {
    const started = Date.now();
    const err = await t.throwsAsync(backend.get('objects/x'), { instanceOf: StoreUnavailableError });
    const elapsed = Date.now() - started;
    t.true(elapsed >= 1_000 && elapsed < 20_000, `gave up after ${elapsed} ms`);
    t.true(err!.message.includes(`s3://${BUCKET}/down`), err!.message);
    t.regex(err!.message, /GET 'objects\/x' failed for [\d.]+ s \(.*ECONNREFUSED/);
    // Not-found and bad requests are answers, not outages: never retried.
    t.true(isTransientS3Error(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })));
    t.true(isTransientS3Error(Object.assign(new Error('x'), { $metadata: { httpStatusCode: 503 } })));
    t.false(
      isTransientS3Error(Object.assign(new Error('x'), { name: 'NoSuchKey', $metadata: { httpStatusCode: 404 } }))
    );
    t.false(
      isTransientS3Error(Object.assign(new Error('x'), { name: 'AccessDenied', $metadata: { httpStatusCode: 403 } }))
    );
  } finally {
    await backend.close();
  }
});

test('parseStoreLocation reads s3 URLs, file URLs and plain paths', (t) => {
  t.deepEqual(parseStoreLocation('s3://my-bucket/stepwise/runs/'), {
    kind: 's3',
    bucket: 'my-bucket',
    prefix: 'stepwise/runs',
  });
  t.deepEqual(parseStoreLocation('s3://my-bucket'), { kind: 's3', bucket: 'my-bucket', prefix: '' });
  t.deepEqual(parseStoreLocation('file:///var/stepwise'), { kind: 'fs', root: '/var/stepwise' });
  t.deepEqual(parseStoreLocation('relative/store'), { kind: 'fs', root: join(process.cwd(), 'relative/store') });
  t.is(new FsBackend('/var/stepwise').location, 'file:///var/stepwise');
  t.deepEqual(parseStoreLocation(new FsBackend('/tmp/a b').location), { kind: 'fs', root: '/tmp/a b' });
});

test('parseStoreLocation rejects malformed locations with an InputError naming the store field', (t) => {
  for (const bad of ['', 'gs://bucket/x', 's3://Bad_Bucket/x', 's3://ab', 's3://bucket/a//b', 'file://relative']) {
    const err = t.throws(() => parseStoreLocation(bad), { instanceOf: InputError }, bad);
    t.is(err?.field, 'store');
    t.true(err?.message.includes(JSON.stringify(bad)));
  }
});
