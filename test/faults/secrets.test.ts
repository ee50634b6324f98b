/**
 * Secrets never stored: a whole pipeline runs with canary values for the teacher's API key, the S3 credentials and
 * the Temporal API key, through the CLI and worker processes as a user runs them, with metrics, traces and JSON logs
 * on as in production. Then every place a run leaves data is searched for the canaries: each workflow history, the
 * Temporal server's database, every stored object (registry entries, manifests and the run report among them), every
 * file the services wrote, the worker and CLI logs, both workers' Prometheus scrapes, every OTLP request the trace
 * exporters sent, `stepwise report`'s output and file, every page of `stepwise ui`, and what the teacher server
 * counted. None may hold one.
 */
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Client, Connection } from '@temporalio/client';
import { freePort } from '../../infra/cache';
import { getVersion, listVersions } from '../../lib/registry/registry';
import { startLocalTeacherServer, type LocalTeacherServer } from '../../lib/teacher';
import { recordFigures } from '../helpers/figures';
import { startUi, stepwise } from '../helpers/cli';
import { scrapeMetrics } from '../helpers/metrics';
import { allHistories, bytesAsText } from '../helpers/history-text';
import { servicesForFile, startWorkerProcess } from '../helpers/services';

const tag = randomUUID().replace(/-/g, '').slice(0, 16);
/** Distinct, unguessable values: a hit can only be a copy of the secret, never a coincidence. */
const CANARIES = {
  teacherApiKey: `sk-canaryteacher${tag}`,
  s3AccessKey: `CANARYACCESS${tag.toUpperCase()}`,
  s3SecretKey: `canary-s3-secret-${tag}`,
  temporalApiKey: `canary-temporal-key-${tag}`,
};
const TEACHER_KEY_ENV = 'STEPWISE_CANARY_TEACHER_KEY';
const MODEL = 'canary-teacher-model';
/** The secrets reach the processes as a deployment hands them over: in the environment. */
const SECRET_ENV = {
  [TEACHER_KEY_ENV]: CANARIES.teacherApiKey,
  TEMPORAL_API_KEY: CANARIES.temporalApiKey,
  // The dev server speaks plaintext gRPC; with an API key the SDK would otherwise insist on TLS.
  TEMPORAL_TLS: 'false',
};

/** An OTLP/HTTP endpoint that keeps every request body as it arrived: the bytes a trace backend would store. */
async function rawOtlpReceiver(): Promise<{ url: string; bodies: Buffer[]; server: Server }> {
  const bodies: Buffer[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      bodies.push(Buffer.concat([Buffer.from(`${req.method} ${req.url} ${JSON.stringify(req.headers)}\n`), ...chunks]));
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies, server };
}

const services = servicesForFile({
  workers: [],
  s3Credentials: { accessKey: CANARIES.s3AccessKey, secretKey: CANARIES.s3SecretKey },
});

/**
 * The secret as it would look anywhere: verbatim, or inside base64 at any of the three byte alignments (the middle
 * characters of its encoding, which do not depend on the bytes around it).
 */
function forms(secret: string): string[] {
  const out = [secret];
  for (let pad = 0; pad < 3; pad++) {
    const encoded = Buffer.concat([Buffer.alloc(pad), Buffer.from(secret)]).toString('base64');
    out.push(encoded.slice(pad === 0 ? 0 : 4, -4));
  }
  return out;
}

/** Which canaries `text` holds (by name), in any of their forms. */
function canariesIn(text: string | Buffer): string[] {
  const haystack = typeof text === 'string' ? text : text.toString('latin1');
  return Object.entries(CANARIES)
    .filter(([, secret]) => forms(secret).some((form) => haystack.includes(form)))
    .map(([name]) => name);
}

/** What the proxy accepts (`expected`, changeable between runs) and what it saw. */
interface KeyCheck {
  expected: string;
  seen: { authorized: number; refused: number };
}

/**
 * The teacher as a provider fronts it: only requests bearing the expected key get through to the server behind. It
 * also shows the key really was in use, so "no canary found" cannot come from a run that never held one.
 */
async function keyCheckingProxy(target: LocalTeacherServer): Promise<KeyCheck & { url: string; server: Server }> {
  const upstream = new URL(target.url);
  const check: KeyCheck = { expected: CANARIES.teacherApiKey, seen: { authorized: 0, refused: 0 } };
  const { seen } = check;
  const server = createServer((req, res) => {
    if (req.headers.authorization !== `Bearer ${check.expected}`) {
      seen.refused++;
      res.writeHead(401, { 'Content-Type': 'application/json' });
      res.end(
        JSON.stringify({
          error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' },
        })
      );
      return;
    }
    seen.authorized++;
    const forward = request(
      { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      }
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(check, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, server });
}

/** Every file under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

/** Every object in the bucket, read through the S3 API with the (canary) credentials the run used, or others. */
async function storedObjects(
  credentials: { accessKey: string; secretKey: string } = services().s3
): Promise<Map<string, Buffer>> {
  const s = services();
  const s3 = new S3Client({
    endpoint: s.s3.endpoint,
    region: s.s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: credentials.accessKey, secretAccessKey: credentials.secretKey },
  });
  const objects = new Map<string, Buffer>();
  try {
    let token: string | undefined;
    do {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: s.bucket, ContinuationToken: token }));
      for (const { Key } of page.Contents ?? []) {
        const body = await s3.send(new GetObjectCommand({ Bucket: s.bucket, Key: Key! }));
        objects.set(Key!, Buffer.from(await body.Body!.transformToByteArray()));
      }
      token = page.NextContinuationToken;
    } while (token);
  } finally {
    s3.destroy();
  }
  return objects;
}

test('no canary secret is stored, logged or recorded anywhere by a pipeline run, nor by one whose key is refused', async (t) => {
  const s = services();
  const teacher = await startLocalTeacherServer({ model: MODEL });
  t.teardown(() => teacher.close());
  const proxy = await keyCheckingProxy(teacher);
  t.teardown(() => new Promise<void>((resolve) => proxy.server.close(() => resolve())));

  const otlp = await rawOtlpReceiver();
  t.teardown(() => new Promise<void>((resolve) => otlp.server.close(() => resolve())));
  // Observability on, as a production worker runs: traces exported, metrics served, logs as JSON.
  const telemetryEnv = { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_BSP_SCHEDULE_DELAY: '200' };
  const log: string[] = [];
  const workers: ChildProcess[] = [];
  const metricsAt: string[] = [];
  t.teardown(() => Promise.all(workers.map((w) => stopProcess(w))).then(() => undefined));
  for (const queue of ['cpu', 'gpu'] as const) {
    const port = await freePort();
    metricsAt.push(`127.0.0.1:${port}`);
    const env = {
      ...SECRET_ENV,
      ...telemetryEnv,
      STEPWISE_LOG_FORMAT: 'json',
      STEPWISE_METRICS_PORT: String(port),
      STEPWISE_METRICS_HOST: '127.0.0.1',
    };
    workers.push(await startWorkerProcess(s, queue, log, { env }));
  }
  const specFile = join(s.tmp, 'spec.json');
  await writeFile(
    specFile,
    JSON.stringify({
      name: 'secrets-canary',
      data: { kind: 'demo', size: 60, seed: 11 },
      teacher: { kind: 'openai', url: proxy.url, model: MODEL, apiKeyEnv: TEACHER_KEY_ENV, concurrency: 4 },
      student: { preset: 'tiny', steps: 2, batchSize: 8 },
    })
  );

  // First the provider refuses the key: error paths are where secrets leak into messages.
  proxy.expected = `sk-another-key-${tag}`;
  const refused = await stepwiseRun(specFile, `secrets-refused-${tag}`, telemetryEnv);
  t.is(refused.code, 1, refused.stderr);
  t.regex(refused.stderr, new RegExp(`teacher\\.apiKeyEnv.*refused.*${TEACHER_KEY_ENV}`));
  t.true(proxy.seen.refused > 0);

  proxy.expected = CANARIES.teacherApiKey;
  proxy.seen.refused = 0;
  const workflowId = `secrets-${tag}`;
  const cli = await stepwiseRun(specFile, workflowId, telemetryEnv);
  t.is(cli.code, 0, cli.stderr);
  t.like(JSON.parse(cli.stdout.trim().split('\n').at(-1)!), { name: 'secrets-canary', version: 1 });
  // The run held the secrets: the teacher saw the key on every call, and the S3 server knows only the canary pair.
  t.true(proxy.seen.authorized > 0);
  t.is(proxy.seen.refused, 0);
  await t.throwsAsync(
    storedObjects({ accessKey: 'stepwise', secretKey: 'stepwise-dev-secret' }),
    undefined,
    'dev pair'
  );
  // (The dev server accepts any TEMPORAL_API_KEY; what is shown here is that the key given is kept nowhere.)
  t.true(canariesIn(`Bearer ${CANARIES.teacherApiKey}`).includes('teacherApiKey'), 'the search finds a canary');
  const scrapes = await Promise.all(metricsAt.map((at) => scrapeMetrics(at)));
  t.true(
    scrapes.every((text) => /^stepwise_/m.test(text) && /^temporal_/m.test(text)),
    'both workers served their series'
  );
  // Stopping flushes each worker's trace exporter.
  for (const w of workers) await stopProcess(w);
  t.true(otlp.bodies.length > 0, 'traces were exported');
  const jsonLines = log
    .join('')
    .split('\n')
    .filter((line) => line.startsWith('{'));
  t.true(jsonLines.length > 0 && jsonLines.every((line) => typeof JSON.parse(line) === 'object'), 'JSON logs');

  const report = await stepwiseCli(['report', workflowId, '--out', join(s.tmp, 'report-out.html')]);
  t.is(report.code, 0, report.stderr);
  const reportFile = await readFile(join(s.tmp, 'report-out.html'), 'utf8');
  t.regex(reportFile, /<section id="teacher">/);
  const uiPages = await uiPagesOf(workflowId);

  const searched = await searchEverywhere(t, [
    ['worker logs', log.join('')],
    ['CLI output', cli.stdout + cli.stderr + refused.stdout + refused.stderr],
    ['teacher server stats', JSON.stringify(teacher.stats())],
    ...scrapes.map((text, i): [string, string] => [`the metrics of the ${['cpu', 'gpu'][i]} worker`, text]),
    ...otlp.bodies.map((body, i): [string, Buffer] => [`OTLP request ${i + 1}`, body]),
    ['stepwise report', report.stdout + report.stderr + reportFile],
    ...uiPages,
  ]);
  // Everything the runs left was searched: both runs' histories, the manifest, the registry entry, the database.
  for (const id of [workflowId, `${workflowId}/teacher`, `secrets-refused-${tag}`])
    t.true(searched.workflowIds.includes(id), id);
  t.true(searched.objectKeys.some((k) => k.endsWith(`runs/${workflowId}/manifest.json`)));
  t.true(searched.files.includes(s.temporal.dbFile));
  t.deepEqual(await listVersions(s.store, 'secrets-canary'), [1]);
  recordFigures('secrets', { secretsFound: searched.found.length });
  t.deepEqual(searched.found, []);
});

/** The CLI's environment over this process's: the services', the secrets, and whatever else is given. */
function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  const s = services();
  return {
    ...SECRET_ENV,
    TEMPORAL_ADDRESS: s.temporal.address,
    TEMPORAL_NAMESPACE: s.temporal.namespace,
    STEPWISE_STORE: s.storeLocation,
    ...extra,
  };
}

/** `stepwise <args>` against the services, with the secrets in its environment. */
function stepwiseCli(args: string[], extraEnv: Record<string, string> = {}) {
  return stepwise(args, cliEnv(extraEnv));
}

/** `stepwise run <spec> --id <id> --json`. */
function stepwiseRun(specFile: string, workflowId: string, extraEnv: Record<string, string> = {}) {
  return stepwiseCli(['run', specFile, '--id', workflowId, '--json'], extraEnv);
}

/**
 * Every page `stepwise ui --allow-actions` serves about the run and its model (the real command, holding the
 * secrets in its environment as the workers do), as a browser receives them.
 */
async function uiPagesOf(workflowId: string): Promise<[string, string][]> {
  const ui = await startUi(['--port', '0', '--allow-actions'], cliEnv());
  const { url } = ui;
  try {
    const paths = [
      '',
      `runs/${workflowId}`,
      `runs/${workflowId}/progress.json`,
      `runs/${workflowId}/report`,
      'models',
      'models/secrets-canary',
      'models/secrets-canary/1/lineage',
    ];
    const pages: [string, string][] = [];
    for (const path of paths) {
      const res = await fetch(`${url}${path}`);
      if (res.status !== 200) throw new Error(`GET /${path} answered ${res.status}`);
      pages.push([`the UI page /${path}`, JSON.stringify([...res.headers]) + (await res.text())]);
    }
    return [...pages, ['the UI command output', ui.output()]];
  } finally {
    await ui.stop();
  }
}

/**
 * Where each canary was found (`<canary> in <place>`), searching every execution's history, every stored object, the
 * registry entry, every file the services wrote, and the logs and metrics given; and what was searched.
 */
async function searchEverywhere(t: ExecutionContext, logs: [where: string, text: string | Buffer][]) {
  const s = services();
  const found: string[] = [];
  const check = (where: string, text: string | Buffer) => {
    for (const name of canariesIn(text)) found.push(`${name} in ${where}`);
  };

  // Every execution's history, as the server hands it out (payloads unencoded here: no codec configured).
  const connection = await Connection.connect({ address: s.temporal.address });
  t.teardown(() => connection.close());
  const histories = await allHistories(new Client({ connection, namespace: s.temporal.namespace }));
  for (const h of histories) check(`the history of ${h.workflowId}`, bytesAsText(h.history));

  // Every stored object (datasets, rationales, checkpoints, journals, manifests, registry entries).
  const objects = await storedObjects();
  for (const [key, bytes] of objects) check(`object ${key}`, bytes);
  // The registry entry and lineage as the registry reads them.
  check('registry entry secrets-canary v1', JSON.stringify(await getVersion(s.store, 'secrets-canary', 1)));

  // Every file the services wrote: Temporal's SQLite database and the S3 server's folder, byte for byte.
  const files = await filesUnder(s.tmp);
  for (const file of files) check(`file ${file}`, await readFile(file));

  for (const [where, text] of logs) check(where, text);
  return { found, workflowIds: histories.map((h) => h.workflowId), objectKeys: [...objects.keys()], files };
}

/** SIGTERM (a worker drains and exits), then wait for its exit. */
async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  await exited;
}
