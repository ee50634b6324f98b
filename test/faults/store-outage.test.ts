/**
 * The S3 server stops mid-transfer and comes back on the same port and data folder: stages ride the outage out and the
 * run completes, and no partial object is ever visible under a final key.
 *
 * A proxy between the workers and versitygw (test/helpers/s3-proxy.ts) picks the moment: it lets half of a chosen
 * body through, then the gateway is SIGKILLed with the rest in flight. What recovers is the store's own retry of
 * transient failures (lib/store/s3-store.ts: up to 60 s per call, from the start of the body); the activities' retry
 * policies are the second line for longer outages. Full mode stops the server for 30 s, quick mode for 6 s: the same
 * path either way (both are inside the store's retry budget), only the wait differs.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { defaultPayloadConverter } from '@temporalio/common';

import { CPU_TASK_QUEUE, type PipelineResult, type SampleResult } from '../../contract';
import { distillationPipeline } from '../../workflows';
import { objectKey, S3Backend, sha256Hex, type ArtifactStore } from '../../lib/store';
import { faultMode } from '../helpers/figures';
import { figuresOnOutcome } from '../helpers/figures-hook';
import { servicesForFile } from '../helpers/services';
import { startS3Proxy, type HttpHead, type S3Proxy } from '../helpers/s3-proxy';

const OUTAGE_MS = faultMode() === 'full' ? 30_000 : 6_000;
const services = servicesForFile({ workers: [] });

const expectFigures = figuresOnOutcome();
let proxy: S3Proxy | undefined;

let workersStarted: Promise<void> | undefined;
/**
 * Workers reach the gateway through the proxy; the test's own store (services().store) talks to it directly. Set up
 * by the first test, since ava runs `before` hooks concurrently and this needs the services running.
 */
function withProxy(): Promise<void> {
  workersStarted ??= (async () => {
    proxy = await startS3Proxy(Number(new URL(services().s3.endpoint).port));
    process.env.AWS_ENDPOINT_URL_S3 = proxy.endpoint;
    await services().startWorkers();
  })();
  return workersStarted;
}

test.after.always(async () => {
  await proxy?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Every file versitygw holds under the bucket's `prefix` (its temp folders aside) hashes to its content-addressed
 * key: read from its data folder, so it can be checked while the server is down. Returns how many were checked.
 */
async function assertObjectsComplete(t: ExecutionContext, prefix: string): Promise<number> {
  const root = join(services().tmp, 's3', services().bucket, prefix, 'objects');
  const files = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  let checked = 0;
  for (const file of files) {
    if (!file.isFile() || file.parentPath.includes('/.')) continue;
    const bytes = await readFile(join(file.parentPath, file.name));
    t.is(sha256Hex(bytes), file.name, `objects/.../${file.name} is whole`);
    checked += 1;
  }
  return checked;
}

/** Arrange for the next cut to kill the gateway, check the store while it is down, and restart it after the outage. */
function outageOnCut(t: ExecutionContext, prefix: string, cuts: HttpHead[]): Promise<void> {
  return new Promise((resolve, reject) => {
    proxy!.onCut = async (head) => {
      cuts.push(head);
      await services().s3.kill();
      t.log(
        `cut ${head.status ? `the response to ${head.method}` : head.method} ${head.path} midway; gateway down for ${OUTAGE_MS / 1000} s`
      );
      void (async () => {
        const checked = await assertObjectsComplete(t, prefix);
        t.log(`during the outage: ${checked} object(s) on disk, each whole`);
        await sleep(OUTAGE_MS);
        await services().s3.restart();
      })().then(resolve, reject);
    };
  });
}

test.serial('an upload cut off mid-multipart leaves no object under its key', async (t) => {
  await withProxy();
  const prefix = 'direct';
  const backend = new S3Backend({ bucket: services().bucket, prefix, endpoint: proxy!.endpoint });
  const bytes = randomBytes(12 * 1024 * 1024);
  const key = objectKey(sha256Hex(bytes));
  const onDisk = join(services().tmp, 's3', services().bucket, prefix, key);
  const tried = faultMode() === 'full' ? 2 : 1;
  expectFigures('store-outage-multipart', { faultsTried: tried, faultsSurvived: tried, examplesLost: 0 });
  const isSecondPart = (h: HttpHead) => h.method === 'PUT' && /[?&]partNumber=2(&|$)/.test(h.path ?? '');
  const cuts: HttpHead[] = [];
  try {
    // A one-shot stream cannot be replayed: the put fails, and nothing appears under the key, during the outage
    // (on disk) or after it (through the restarted gateway).
    proxy!.cutRequest = isSecondPart;
    const outage = outageOnCut(t, prefix, cuts);
    await t.throwsAsync(backend.put(key, Readable.from([bytes]), { ifNoneMatch: true }));
    t.false(existsSync(onDisk), 'no file under the final key while the gateway is down');
    await outage;
    t.is(cuts.length, 1, 'the second part was cut');
    t.false(await backend.exists(key), 'nothing under the final key');
    t.deepEqual(await backend.list('objects/'), []);

    // Full mode: a stream factory (what putFile passes) is reopened and uploaded from the start once the gateway is
    // back. Quick mode leaves this to the pipeline test, whose checkpoint upload takes the same path.
    if (faultMode() === 'full') {
      proxy!.cutRequest = isSecondPart;
      const restored = outageOnCut(t, prefix, cuts);
      const started = Date.now();
      t.true(await backend.put(key, () => Readable.from([bytes]), { ifNoneMatch: true }));
      await restored;
      t.is(cuts.length, 2);
      t.true(Date.now() - started >= OUTAGE_MS, 'the put waited the outage out');
      t.true((await backend.get(key)).equals(bytes));
      t.deepEqual(await backend.list('objects/'), [key]);
    }
  } finally {
    await backend.close();
  }
});

/** The sample stage's result, from the history (what the later stages were given). */
async function sampleResultOf(handle: { fetchHistory(): Promise<{ events?: unknown[] | null }> }) {
  const { events } = await handle.fetchHistory();
  type Event = { activityTaskCompletedEventAttributes?: { result?: { payloads?: unknown[] | null } | null } };
  const completed = (events as Event[]).find((e) => e.activityTaskCompletedEventAttributes);
  const payload = completed!.activityTaskCompletedEventAttributes!.result!.payloads![0];
  return defaultPayloadConverter.fromPayload<SampleResult>(payload as never);
}

async function assertStoreComplete(t: ExecutionContext, store: ArtifactStore): Promise<number> {
  const keys = await store.listKeys('objects/');
  for (const key of keys) {
    t.is(sha256Hex((await store.getKey(key))!), key.slice(key.lastIndexOf('/') + 1), `${key} is whole`);
  }
  return keys.length;
}

test.serial(
  'the gateway stopped mid-dataset-download and mid-checkpoint-upload: training retries and the run completes',
  async (t) => {
    const figures = expectFigures('store-outage-pipeline', { faultsTried: 2, faultsSurvived: 2 });
    await withProxy();
    const cuts: HttpHead[] = [];
    // First: the training stage reading its split (the first JSONL download of a run without a teacher).
    proxy!.cutResponse = (h) =>
      h.status === 200 && h.method === 'GET' && /ndjson/.test(h.headers['content-type'] ?? '');
    const downloadOutage = outageOnCut(t, 'e2e', cuts);
    const handle = await services().client.workflow.start(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `store-outage-${Date.now()}`,
      args: [
        {
          name: 'store-outage',
          data: { kind: 'demo', size: 200, seed: 6 },
          teacher: { kind: 'scripted' },
          student: { method: 'standard-finetune', preset: 'tiny', steps: 60, batchSize: 8, checkpointEvery: 10 },
        },
      ],
    });
    await downloadOutage;
    // Then: the first checkpoint upload (a body of tens of KB or more, single-part or a multipart part).
    proxy!.cutRequest = (h) =>
      h.method === 'PUT' &&
      Number(h.headers['content-length'] ?? 0) > 16 * 1024 &&
      (/octet-stream/.test(h.headers['content-type'] ?? '') || /[?&]partNumber=/.test(h.path ?? ''));
    const uploadOutage = outageOnCut(t, 'e2e', cuts);
    const result = (await handle.result()) as PipelineResult;
    await uploadOutage;
    t.is(cuts.length, 2, 'both transfers were cut');
    t.is(cuts[0].status, 200, 'a download was cut');
    t.is(cuts[1].method, 'PUT', 'an upload was cut');

    // Every stage's attempts, from the history: which recoveries took an activity retry rather than the store's own.
    const history = await handle.fetchHistory();
    const retried = (history.events ?? [])
      .map((e) => e.activityTaskStartedEventAttributes)
      .filter((a) => a && (a.attempt ?? 1) > 1).length;
    t.log(`run completed: accuracy ${result.accuracy}, ${retried} activity attempt(s) beyond the first`);

    const sample = await sampleResultOf(handle);
    const trainRecords = (await services().store.getJsonl(sample.train)).length;
    const examplesLost = sample.counts.test - result.total + (sample.counts.train - trainRecords);
    t.is(examplesLost, 0);
    t.true((await services().store.getKey(`runs/${handle.workflowId}/manifest.json`)) !== undefined);
    const objects = await assertStoreComplete(t, services().store);
    t.true(objects > 3, `${objects} objects, each whole`);
    figures.examplesLost = examplesLost;
  }
);
