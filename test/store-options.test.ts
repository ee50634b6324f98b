/**
 * Store security options, checked on the wire: a recording proxy between the S3 backend and a real versitygw shows
 * the headers every write really sends. Objects are never written with an ACL (so they stay as private as the
 * bucket), and server-side encryption (`STEPWISE_STORE_SSE`, `STEPWISE_STORE_KMS_KEY_ID`) is requested on every
 * PutObject and CreateMultipartUpload.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ensureBucket, startS3Server, type S3Server } from '../infra/s3-server';
import { InputError } from '../lib/errors';
import { openStore, S3Backend, type ArtifactStore } from '../lib/store';
import { startS3Proxy, type HttpHead, type S3Proxy } from './helpers/s3-proxy';

const BUCKET = 'stepwise-options';
let s3: S3Server | undefined;
let proxy: S3Proxy | undefined;
let tmp: string | undefined;

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-store-options-'));
  s3 = await startS3Server({ dataDir: join(tmp, 's3') });
  await ensureBucket(s3, BUCKET);
  proxy = await startS3Proxy(Number(new URL(s3.endpoint).port));
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  process.env.AWS_REGION = s3.region;
  process.env.AWS_ENDPOINT_URL_S3 = proxy.endpoint;
});

test.after.always(async () => {
  await proxy?.close();
  await s3?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The tests change process-wide variables, so they run one at a time. */
async function withEnv<T>(vars: Record<string, string | undefined>, body: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await body();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/**
 * Writes through a store opened as workers open it: a small object (PutObject), a named key, and a 6 MiB file
 * (multipart: CreateMultipartUpload, UploadPart, CompleteMultipartUpload). Returns the write requests it sent.
 */
async function writeSome(prefix: string): Promise<{ writes: HttpHead[]; store: ArtifactStore; key: string }> {
  const store = openStore(`s3://${BUCKET}/${prefix}`);
  const first = proxy!.requests.length;
  const small = await store.put(randomBytes(1024));
  await store.putKey('runs/r1/manifest.json', '{}', { createOnly: true });
  const file = join(tmp!, `${prefix}.bin`);
  await writeFile(file, randomBytes(6 * 1024 * 1024));
  await store.putFile(file);
  const writes = proxy!.requests.slice(first).filter((r) => r.method === 'PUT' || r.method === 'POST');
  return { writes, store, key: `${prefix}/objects/sha256/${small.sha256.slice(0, 2)}/${small.sha256}` };
}

const isPutObject = (r: HttpHead) => r.method === 'PUT' && !/[?&]partNumber=/.test(r.path ?? '');
const isCreateMultipart = (r: HttpHead) => r.method === 'POST' && /[?&]uploads(=|&|$)/.test(r.path ?? '');
const aclHeaders = (r: HttpHead) =>
  Object.keys(r.headers).filter((h) => h === 'x-amz-acl' || h.startsWith('x-amz-grant'));

test.serial('objects are written without ACLs and cannot be read anonymously', async (t) => {
  await withEnv({ STEPWISE_STORE_SSE: undefined, STEPWISE_STORE_KMS_KEY_ID: undefined }, async () => {
    const { writes, store, key } = await writeSome('plain');
    try {
      const puts = writes.filter(isPutObject);
      const creates = writes.filter(isCreateMultipart);
      // Single-part PUTs for the small object and the manifest, one multipart upload for the file.
      t.is(creates.length, 1, 'the 6 MiB file goes multipart');
      t.true(puts.length >= 2);
      for (const request of writes) {
        t.deepEqual(aclHeaders(request), [], `${request.method} ${request.path} sends no ACL`);
        t.false('x-amz-server-side-encryption' in request.headers, 'no encryption header unless asked for');
      }
      // The bucket is private and the object did not open it up: an unsigned GET is refused.
      const anonymous = await fetch(`${s3!.endpoint}/${BUCKET}/${key}`);
      t.is(anonymous.status, 403);
      t.true((await store.listKeys('objects/')).length === 2);
    } finally {
      await store.close();
    }
  });
});

test.serial('STEPWISE_STORE_SSE=AES256 asks for SSE-S3 on every PutObject and CreateMultipartUpload', async (t) => {
  await withEnv({ STEPWISE_STORE_SSE: 'AES256', STEPWISE_STORE_KMS_KEY_ID: undefined }, async () => {
    const { writes, store } = await writeSome('sse-s3');
    await store.close();
    const encrypted = writes.filter((r) => isPutObject(r) || isCreateMultipart(r));
    t.true(encrypted.length >= 3);
    for (const request of encrypted) {
      t.is(request.headers['x-amz-server-side-encryption'], 'AES256', `${request.method} ${request.path}`);
      t.false('x-amz-server-side-encryption-aws-kms-key-id' in request.headers);
      t.deepEqual(aclHeaders(request), []);
    }
  });
});

test.serial('STEPWISE_STORE_SSE=aws:kms with a key id sends both on every write that creates an object', async (t) => {
  const keyId = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  await withEnv({ STEPWISE_STORE_SSE: 'aws:kms', STEPWISE_STORE_KMS_KEY_ID: keyId }, async () => {
    const { writes, store } = await writeSome('sse-kms');
    await store.close();
    const encrypted = writes.filter((r) => isPutObject(r) || isCreateMultipart(r));
    t.true(encrypted.length >= 3);
    for (const request of encrypted) {
      t.is(request.headers['x-amz-server-side-encryption'], 'aws:kms', `${request.method} ${request.path}`);
      t.is(request.headers['x-amz-server-side-encryption-aws-kms-key-id'], keyId);
      t.deepEqual(aclHeaders(request), []);
    }
  });
});

test.serial('bad encryption settings are rejected naming the variable, before anything is written', async (t) => {
  const cases: [Record<string, string | undefined>, string, RegExp][] = [
    [{ STEPWISE_STORE_SSE: 'aes256', STEPWISE_STORE_KMS_KEY_ID: undefined }, 'STEPWISE_STORE_SSE', /AES256 or aws:kms/],
    [{ STEPWISE_STORE_SSE: 'SSE-KMS', STEPWISE_STORE_KMS_KEY_ID: undefined }, 'STEPWISE_STORE_SSE', /"SSE-KMS"/],
    [{ STEPWISE_STORE_SSE: undefined, STEPWISE_STORE_KMS_KEY_ID: 'k1' }, 'STEPWISE_STORE_KMS_KEY_ID', /aws:kms/],
    [{ STEPWISE_STORE_SSE: 'AES256', STEPWISE_STORE_KMS_KEY_ID: 'k1' }, 'STEPWISE_STORE_KMS_KEY_ID', /needs/],
  ];
  const before = proxy!.requests.length;
  for (const [vars, field, message] of cases) {
    await withEnv(vars, async () => {
      const err = t.throws(() => openStore(`s3://${BUCKET}/bad`), { instanceOf: InputError, message });
      t.is((err as InputError).field, field);
    });
  }
  // Options given in code are checked the same way.
  t.throws(() => new S3Backend({ bucket: BUCKET, sse: 'none' as 'AES256' }), { instanceOf: InputError });
  t.is(proxy!.requests.length, before, 'nothing was sent');
});
