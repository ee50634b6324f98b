/**
 * Encrypted payloads: the AES-256-GCM codec (round trip, tampering, key rotation, key configuration), a real pipeline
 * whose history on the Temporal server holds no plaintext of its spec, and the codec server the Temporal UI calls.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { Client, Connection } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { CPU_TASK_QUEUE, type PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { settings } from '../infra/config';
import { InputError } from '../lib/errors';
import { generateDemoTask } from '../lib/data/demo-task';
import { startLocalTeacherServer } from '../lib/teacher';
import {
  AesGcmPayloadCodec,
  ENCRYPTED_ENCODING,
  KEY_ID_METADATA,
  PayloadCodecError,
  parsePayloadKeys,
  payloadDataConverter,
  payloadKeysFromSettings,
  type PayloadKey,
} from '../workers/codec';
import { startCodecServer } from '../workers/codec-server';
import { allHistories, bytesAsText, decodedPayloadText } from './helpers/history-text';
import { servicesForFile, startWorkerProcess } from './helpers/services';
import { tempDir } from './helpers/temp';

const key = (id: string): PayloadKey => ({ id, key: randomBytes(32) });
const ring = (...keys: PayloadKey[]) => keys.map((k) => `${k.id}:${k.key.toString('base64')}`).join(',');
const jsonPayload = (value: unknown): Payload => ({
  metadata: { encoding: Buffer.from('json/plain') },
  data: Buffer.from(JSON.stringify(value)),
});
const text = (p: Payload) => Buffer.from(p.data!).toString('utf8');

const KEYS = [key('k-2026')];
// Workers start per test: in-process for the pipeline run, a `stepwise worker` process for the CLI run.
const services = servicesForFile({ workers: [], dataConverter: payloadDataConverter(KEYS) });
const BIN = join(__dirname, '..', 'bin', 'stepwise.js');

test('a payload round-trips sealed: encrypted encoding, key id in the metadata, no plaintext, a fresh IV each time', async (t) => {
  const codec = new AesGcmPayloadCodec(KEYS);
  const original = jsonPayload({ name: 'plaintext-spec-name' });
  const [a, b] = await codec.encode([original, original]);
  t.is(Buffer.from(a.metadata!.encoding).toString(), ENCRYPTED_ENCODING);
  t.is(Buffer.from(a.metadata![KEY_ID_METADATA]).toString(), 'k-2026');
  t.false(bytesAsText(a).includes('plaintext-spec-name'));
  t.false(bytesAsText(a).includes('json/plain'), 'the inner metadata is sealed too');
  t.notDeepEqual(Buffer.from(a.data!), Buffer.from(b.data!));
  const [back] = await codec.decode([a]);
  t.is(text(back), JSON.stringify({ name: 'plaintext-spec-name' }));
  t.is(Buffer.from(back.metadata!.encoding).toString(), 'json/plain');
  // Payloads written before encryption was switched on still read.
  t.is(text((await codec.decode([original]))[0]), text(original));
});

test('a tampered payload, or one relabelled with another key id, fails authentication with a named error', async (t) => {
  const other = key('k-other');
  const codec = new AesGcmPayloadCodec([...KEYS, other]);
  const [sealed] = await codec.encode([jsonPayload('secret')]);
  const flipped = Buffer.from(sealed.data!);
  flipped[20] ^= 0x01;
  await t.throwsAsync(codec.decode([{ ...sealed, data: flipped }]), {
    instanceOf: PayloadCodecError,
    message: /failed authentication under key id k-2026/,
  });
  const relabelled = { ...sealed, metadata: { ...sealed.metadata, [KEY_ID_METADATA]: Buffer.from('k-other') } };
  await t.throwsAsync(codec.decode([relabelled]), { message: /failed authentication under key id k-other/ });
  await t.throwsAsync(codec.decode([{ ...sealed, data: flipped.subarray(0, 10) }]), { message: /too short/ });
});

test('keys rotate: a new primary seals, the old key still opens what it sealed, a ring without the key names it', async (t) => {
  const old = key('k-old');
  const fresh = key('k-new');
  const [before] = await new AesGcmPayloadCodec([old]).encode([jsonPayload('written under the old key')]);
  const rotated = new AesGcmPayloadCodec(parsePayloadKeys(ring(fresh, old), 'STEPWISE_PAYLOAD_KEYS'));
  t.is(text((await rotated.decode([before]))[0]), '"written under the old key"');
  const [after] = await rotated.encode([jsonPayload('new')]);
  t.is(Buffer.from(after.metadata![KEY_ID_METADATA]).toString(), 'k-new');
  await t.throwsAsync(new AesGcmPayloadCodec([old]).decode([after]), {
    instanceOf: PayloadCodecError,
    message: /key id "k-new", which is not among this process's keys \(k-old\)/,
  });
});

test('bad key configuration is an InputError naming the variable, without echoing the key', (t) => {
  const secret = randomBytes(16).toString('base64');
  const cases: [string, RegExp][] = [
    ['', /holds no keys/],
    [' , ', /holds no keys/],
    [secret, /entry 1 has no ':'/],
    [`bad id!:${randomBytes(32).toString('base64')}`, /key id "bad id!"/],
    [`k1:${secret}`, /entry 1 \(key id k1\) is 16 bytes; expected 32/],
    ['k1:not base64 at all', /is not base64/],
    [`${ring(key('k1'))},${ring(key('k1'))}`, /entry 2 repeats key id k1/],
  ];
  for (const [value, message] of cases) {
    const err = t.throws(() => parsePayloadKeys(value, 'STEPWISE_PAYLOAD_KEYS'), { instanceOf: InputError, message });
    t.is(err?.field, 'STEPWISE_PAYLOAD_KEYS');
    t.true(err?.message.includes('STEPWISE_PAYLOAD_KEYS'));
    t.false(err?.message.includes(secret), 'the key material is not echoed');
  }
});

test('keys come from the variable or from a file, never both', async (t) => {
  const dir = await tempDir(t, 'stepwise-keys-');
  const file = join(dir, 'keys');
  const a = key('file-a');
  const b = key('file-b');
  await writeFile(file, `# rotated 2026-11\n${ring(a)}\n${ring(b)}\n`);
  const fromFile = payloadKeysFromSettings(settings({ STEPWISE_PAYLOAD_KEYS_FILE: file }));
  t.deepEqual(
    fromFile?.map((k) => k.id),
    ['file-a', 'file-b']
  );
  t.deepEqual(fromFile?.[0].key, a.key);
  t.is(payloadKeysFromSettings(settings({})), undefined);
  t.throws(
    () => payloadKeysFromSettings(settings({ STEPWISE_PAYLOAD_KEYS: ring(a), STEPWISE_PAYLOAD_KEYS_FILE: file })),
    {
      message: /both set/,
    }
  );
  t.throws(() => payloadKeysFromSettings(settings({ STEPWISE_PAYLOAD_KEYS_FILE: join(dir, 'missing') })), {
    instanceOf: InputError,
    message: /STEPWISE_PAYLOAD_KEYS_FILE names .*missing, which cannot be read/,
  });
});

test.serial('a pipeline run with keys leaves no plaintext of its spec on the Temporal server', async (t) => {
  t.teardown(await services().startWorkers());
  const tag = randomUUID().slice(0, 8);
  const name = `classified-model-${tag}`;
  const teacherModel = `classified-teacher-${tag}`;
  const dir = await tempDir(t, 'stepwise-codec-');
  const examples = generateDemoTask({ n: 60, seed: 5 }).map(({ input, label }) => ({ input, label }));
  const [train, testFile] = [join(dir, `classified-train-${tag}.jsonl`), join(dir, `classified-test-${tag}.jsonl`)];
  const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
  await writeFile(train, jsonl(examples.slice(0, 48)));
  await writeFile(testFile, jsonl(examples.slice(48)));
  const teacher = await startLocalTeacherServer({ model: teacherModel });
  t.teardown(() => teacher.close());

  const workflowId = `codec-${tag}`;
  const result = (await services().client.workflow.execute(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [
      {
        name,
        data: { kind: 'jsonl', train, test: testFile },
        teacher: { kind: 'openai', url: teacher.url, model: teacherModel },
        student: { preset: 'tiny', steps: 2, batchSize: 8 },
      },
    ],
  })) as PipelineResult;
  // The encrypting client decodes the result as usual.
  t.is(result.name, name);

  // A plain client, with no codec, sees what the server stores.
  const connection = await Connection.connect({ address: services().temporal.address });
  t.teardown(() => connection.close());
  const plain = new Client({ connection, namespace: services().temporal.namespace });
  const histories = (await allHistories(plain)).filter((h) => h.workflowId.startsWith(workflowId));
  t.deepEqual(histories.map((h) => h.workflowId).sort(), [workflowId, `${workflowId}/teacher`]);
  const secrets = [name, teacherModel, train, `classified-train-${tag}`, teacher.url];
  for (const { workflowId: id, history } of histories) {
    const raw = bytesAsText(history);
    t.true(raw.includes(ENCRYPTED_ENCODING), `${id} holds encrypted payloads`);
    for (const secret of secrets) t.false(raw.includes(secret), `${id} shows ${secret} in plaintext`);
  }
  // The check can fail: with the keys, the same histories show the spec.
  const decoded = await decodedPayloadText(
    histories.find((h) => h.workflowId === workflowId)!.history,
    new AesGcmPayloadCodec(KEYS)
  );
  for (const secret of [name, teacherModel, train])
    t.true(decoded.includes(secret), `decrypted history shows ${secret}`);

  // Nor does the server's database, byte for byte (its write-ahead log included).
  const db = services().temporal.dbFile;
  const stored = Buffer.concat(
    await Promise.all([db, `${db}-wal`].map((f) => readFile(f).catch(() => Buffer.alloc(0))))
  );
  t.true(stored.includes(workflowId), 'the database file is read: it names the run');
  for (const secret of secrets) t.false(stored.includes(secret), `the server's database holds ${secret}`);
});

test.serial(
  'through the CLI and a worker process, a failure reaches the user decrypted and the history sealed',
  async (t) => {
    const tag = randomUUID().slice(0, 8);
    const missing = join(tmpdir(), `classified-missing-${tag}.jsonl`);
    const workflowId = `codec-failure-${tag}`;
    const env = {
      ...process.env,
      TEMPORAL_ADDRESS: services().temporal.address,
      TEMPORAL_NAMESPACE: services().temporal.namespace,
      STEPWISE_STORE: services().storeLocation,
      STEPWISE_PAYLOAD_KEYS: ring(...KEYS),
    };
    const log: string[] = [];
    const worker = await startWorkerProcess(services(), 'cpu', log, { env: { STEPWISE_PAYLOAD_KEYS: ring(...KEYS) } });
    t.teardown(async () => {
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      worker.kill('SIGTERM');
      await exited;
    });
    t.regex(log.join(''), /payloads encrypted \(key id k-2026\)/);
    const specFile = join(services().tmp, `failing-${tag}.json`);
    await writeFile(
      specFile,
      JSON.stringify({
        name: `failing-${tag}`,
        data: { kind: 'jsonl', train: missing, test: missing },
        teacher: { kind: 'openai', url: 'http://127.0.0.1:9/v1', model: 'm' },
      })
    );
    const cli = await promisify(execFile)(process.execPath, [BIN, 'run', specFile, '--id', workflowId], { env }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err
    );
    t.is(cli.code, 1, cli.stderr);
    // The CLI decrypts the failure: its message names the file.
    t.regex(cli.stderr, new RegExp(`classified-missing-${tag}`));
    const connection = await Connection.connect({ address: services().temporal.address });
    t.teardown(() => connection.close());
    const plain = new Client({ connection, namespace: services().temporal.namespace });
    const history = await plain.workflow.getHandle(workflowId).fetchHistory();
    const raw = bytesAsText(history);
    t.true(raw.includes('Encoded failure'), 'failure messages are moved into encoded attributes');
    t.false(raw.includes(`classified-missing-${tag}`));
    // Search attributes are indexed by the server, so no codec can seal them: the model name is there by design (the
    // README says so), and nowhere else.
    t.true(raw.includes(`failing-${tag}`), 'the model name is a search attribute');
    const sealed = bytesAsText(history, new Set(['searchAttributes']));
    t.false(sealed.includes(`failing-${tag}`), 'nor is the spec in plaintext outside the search attributes');
  }
);

test('stepwise codec-server serves the configured keys, and refuses to start without any', async (t) => {
  const origin = 'http://localhost:8233';
  const missing = await promisify(execFile)(
    process.execPath,
    [BIN, 'codec-server', '--port', '0', '--origin', origin],
    {
      env: { ...process.env, STEPWISE_PAYLOAD_KEYS: '' },
    }
  ).then(
    () => ({ code: 0, stderr: '' }),
    (err: { code: number; stderr: string }) => err
  );
  t.is(missing.code, 1);
  t.regex(missing.stderr, /codec-server needs the payload keys: set STEPWISE_PAYLOAD_KEYS/);

  const server = spawn(process.execPath, [BIN, 'codec-server', '--port', '0', '--origin', origin], {
    env: { ...process.env, STEPWISE_PAYLOAD_KEYS: ring(...KEYS) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => server.once('exit', resolve));
  t.teardown(async () => {
    server.kill('SIGTERM');
    await exited;
  });
  const url = await new Promise<string>((resolve, reject) => {
    server.stdout.on('data', (chunk: Buffer) => resolve(chunk.toString().trim().split('\n')[0]));
    server.once('exit', (code) => reject(new Error(`codec-server exited ${code}`)));
  });
  const [sealed] = await new AesGcmPayloadCodec(KEYS).encode([jsonPayload('from a worker')]);
  const answer = await fetch(`${url}/decode`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Namespace': 'default', Origin: origin },
    body: JSON.stringify({
      payloads: [
        {
          metadata: Object.fromEntries(
            Object.entries(sealed.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])
          ),
          data: Buffer.from(sealed.data!).toString('base64'),
        },
      ],
    }),
  });
  t.is(answer.status, 200);
  t.is(answer.headers.get('access-control-allow-origin'), origin);
  const { payloads } = (await answer.json()) as { payloads: { data: string }[] };
  t.is(Buffer.from(payloads[0].data, 'base64').toString(), '"from a worker"');
});

test('the codec server encodes and decodes over HTTP, with CORS for the UI origin only', async (t) => {
  const origin = 'https://temporal-ui.example';
  const server = await startCodecServer({ codec: new AesGcmPayloadCodec(KEYS), origin });
  t.teardown(() => server.close());
  const post = (path: string, body: unknown, from = origin) =>
    fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Namespace': 'default', Origin: from },
      body: JSON.stringify(body),
    });
  const plainJson = {
    metadata: { encoding: Buffer.from('json/plain').toString('base64') },
    data: Buffer.from('"hello UI"').toString('base64'),
  };

  const encoded = await post('/encode', { payloads: [plainJson] });
  t.is(encoded.status, 200);
  t.is(encoded.headers.get('access-control-allow-origin'), origin);
  const { payloads: sealed } = (await encoded.json()) as {
    payloads: { metadata: Record<string, string>; data: string }[];
  };
  t.is(Buffer.from(sealed[0].metadata.encoding, 'base64').toString(), ENCRYPTED_ENCODING);
  t.false(Buffer.from(sealed[0].data, 'base64').toString('latin1').includes('hello UI'));

  // What the codec server sealed, a worker's codec opens, and the other way round.
  const asPayload = {
    metadata: {
      encoding: Buffer.from(sealed[0].metadata.encoding, 'base64'),
      [KEY_ID_METADATA]: Buffer.from(sealed[0].metadata[KEY_ID_METADATA], 'base64'),
    },
    data: Buffer.from(sealed[0].data, 'base64'),
  };
  t.is(text((await new AesGcmPayloadCodec(KEYS).decode([asPayload]))[0]), '"hello UI"');
  const decoded = await post('/decode', { payloads: sealed });
  t.is(decoded.status, 200);
  t.deepEqual(((await decoded.json()) as { payloads: unknown[] }).payloads, [plainJson]);

  // The browser's preflight from the UI is answered; another page gets no CORS header to act on.
  const preflight = await fetch(`${server.url}/decode`, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'content-type,x-namespace',
    },
  });
  t.is(preflight.status, 204);
  t.is(preflight.headers.get('access-control-allow-origin'), origin);
  t.regex(preflight.headers.get('access-control-allow-headers') ?? '', /X-Namespace/i);
  const evilPreflight = await fetch(`${server.url}/decode`, {
    method: 'OPTIONS',
    headers: { Origin: 'https://evil.example' },
  });
  t.is(evilPreflight.status, 403);
  t.is(evilPreflight.headers.get('access-control-allow-origin'), null);
  const evil = await post('/decode', { payloads: sealed }, 'https://evil.example');
  t.is(evil.headers.get('access-control-allow-origin'), null);
  await evil.body?.cancel();

  // Bad requests are named, not crashes.
  const bad = await post('/decode', { payloads: [{ data: 'not base64!' }] });
  t.is(bad.status, 400);
  t.regex(((await bad.json()) as { message: string }).message, /payloads\[0\]\.data: expected a base64 string/);
  const tampered = await post('/decode', {
    payloads: [{ ...sealed[0], data: Buffer.from('x'.repeat(40)).toString('base64') }],
  });
  t.is(tampered.status, 400);
  t.regex(((await tampered.json()) as { message: string }).message, /failed authentication/);
  const get = await fetch(`${server.url}/decode`);
  t.is(get.status, 405);
  await get.body?.cancel();
});

test('the codec server accepts only an origin, not a URL with a path or a wildcard', async (t) => {
  const codec = new AesGcmPayloadCodec(KEYS);
  for (const origin of ['*', 'https://ui.example/namespaces', 'ftp://ui.example']) {
    await t.throwsAsync(startCodecServer({ codec, origin }), { instanceOf: InputError, message: /--origin/ });
  }
});
