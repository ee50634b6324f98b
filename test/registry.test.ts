import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure } from '@temporalio/common';
import { registerModel } from '../activities/register-model';
import { ensureBucket, startS3Server, type S3Server } from '../infra/s3-server';
import { openStore } from '../lib/store';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { InputError } from '../lib/errors';
import {
  getVersion,
  latestVersion,
  listModels,
  listVersions,
  registerVersion,
  runManifestKey,
  versionKey,
  type ModelVersion,
} from '../lib/registry/registry';
import { registerRun, type RegisterModelInput } from '../lib/registry/run';
import { registerInput } from './faults/register-fixture';

let tmp: string;
let s3: S3Server;
const stores: Record<string, ArtifactStore> = {};

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-registry-'));
  s3 = await startS3Server({ dataDir: join(tmp, 's3') });
  await ensureBucket(s3, 'registry-test');
  stores.fs = openStore(join(tmp, 'fs'));
  // Credentials and endpoint come from the standard AWS variables, as in production.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
  process.env.AWS_REGION = s3.region;
  stores.s3 = openStore('s3://registry-test/r');
});

test.after.always(async () => {
  await Promise.all(Object.values(stores).map((s) => s.close()));
  await s3?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function entry(runId: string): Omit<ModelVersion, 'version' | 'createdAt'> {
  return {
    name: 'concurrent',
    metrics: { accuracy: 0.5, correct: 1, total: 2, majorityBaseline: 0.5 },
    checkpoint: { sha256: 'a'.repeat(64), size: 1, uri: 'file:///x' },
    lineage: {
      dataset: { kind: 'demo', task: 'demo', source: 'demo', datasetHash: 'd', sampleHash: 's', counts: { train: 1 } },
      training: {
        method: 'distill-step-by-step',
        labelSource: 'gold',
        config: {},
        backend: 'cpu',
        steps: 1,
        finalLoss: 1,
        params: 1,
      },
      codeVersion: 'test',
      workflowId: `wf-${runId}`,
      runId,
      manifest: 'm',
    },
  };
}

for (const kind of ['fs', 's3']) {
  test(`concurrent registrations on the ${kind} store lose none: each gets its own version`, async (t) => {
    const store = stores[kind];
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => registerVersion(store, entry(`run-${i}`))));
    t.deepEqual(
      results.map((r) => r.version).sort((a, b) => a - b),
      [1, 2, 3, 4, 5, 6, 7, 8]
    );
    t.deepEqual(await listVersions(store, 'concurrent'), [1, 2, 3, 4, 5, 6, 7, 8]);
    const runIds = await Promise.all(
      [1, 2, 3, 4, 5, 6, 7, 8].map(async (v) => (await getVersion(store, 'concurrent', v))!.lineage.runId)
    );
    t.deepEqual(
      runIds.sort(),
      Array.from({ length: 8 }, (_, i) => `run-${i}`)
    );
    t.is((await latestVersion(store, 'concurrent'))!.version, 8);
    t.true((await listModels(store)).includes('concurrent'));
  });

  test(`registering the same run twice on the ${kind} store returns its existing version`, async (t) => {
    const store = stores[kind];
    const first = await registerVersion(store, { ...entry('retried'), name: 'idempotent' });
    const again = await registerVersion(store, { ...entry('retried'), name: 'idempotent' });
    t.is(again.version, first.version);
    t.deepEqual(await listVersions(store, 'idempotent'), [first.version]);
  });
}

/** Names that would leave their prefix (or are no name at all), each with why. */
const BAD_NAMES: [string, unknown][] = [
  ['a parent segment', '..'],
  ['a path up and out', '../../etc'],
  ['a slash', 'a/versions'],
  ['an absolute path', '/etc/passwd'],
  ['empty', ''],
  ['a leading dot', '.hidden'],
  ['a newline', 'model\nx'],
  ['a NUL', 'model\u0000'],
  ['a backslash', 'a\\..\\b'],
  ['too long', 'm'.repeat(201)],
  ['not a string', 42],
];

/** A hand-built input (as a client starting the workflow with its own JSON could send), bypassing the spec parser. */
function withIds(base: RegisterModelInput, ids: { name?: unknown; workflowId?: unknown; runId?: unknown }) {
  return {
    ...base,
    spec: { ...base.spec, ...(ids.name === undefined ? {} : { name: ids.name }) },
    ...(ids.workflowId === undefined ? {} : { workflowId: ids.workflowId }),
    ...(ids.runId === undefined ? {} : { runId: ids.runId }),
  } as RegisterModelInput;
}

for (const field of ['name', 'workflowId', 'runId'] as const) {
  test(`registration refuses a ${field} that could leave its store prefix, naming the field and writing nothing`, async (t) => {
    const store = openStore(join(tmp, `names-${field}`));
    try {
      for (const [why, bad] of BAD_NAMES) {
        const err = await t.throwsAsync(registerRun(store, withIds(registerInput('ok', 'r1'), { [field]: bad }), 'v'), {
          instanceOf: InputError,
        });
        t.is(err?.field, field, why);
        t.true(err?.message.startsWith(`${field}: must match `), why);
      }
      t.deepEqual(await store.listKeys(''), [], 'nothing was written for any of them');
    } finally {
      await store.close();
    }
  });
}

test('reads and keys of the registry refuse a model name outside its prefix', async (t) => {
  const store = stores.fs;
  for (const [why, bad] of BAD_NAMES) {
    const name = bad as string;
    for (const read of [
      () => listVersions(store, name),
      () => getVersion(store, name, 1),
      () => latestVersion(store, name),
    ]) {
      const err = await t.throwsAsync(read(), { instanceOf: InputError });
      t.is(err?.field, 'name', why);
    }
    t.throws(() => versionKey(name, 1), { instanceOf: InputError }, why);
    t.throws(() => runManifestKey(name), { instanceOf: InputError }, why);
  }
  // What a name may be: letters, digits, ".", "_", "-", starting alphanumeric; ".." inside one segment stays inside.
  for (const good of ['m', 'Model.v2_final-1', 'a..b', 'x'.repeat(128)]) {
    t.deepEqual(await listVersions(store, good), []);
  }
  await t.throwsAsync(listVersions(store, 'x'.repeat(129)), { instanceOf: InputError, message: /^name: must match/ });
});

test('the register activity fails a bad name at once: non-retryable, with the field in its message', async (t) => {
  const store = openStore(join(tmp, 'names-activity'));
  try {
    const err = await t.throwsAsync(
      new MockActivityEnvironment().run(
        registerModel,
        { store, codeVersion: 'test' },
        withIds(registerInput('ok', 'r1'), { name: '../../etc' })
      ),
      { instanceOf: ApplicationFailure }
    );
    t.true((err as ApplicationFailure).nonRetryable);
    t.is((err as ApplicationFailure).type, 'InputError');
    t.regex(err!.message, /^name: must match/);
    t.deepEqual(await store.listKeys(''), []);
  } finally {
    await store.close();
  }
});

for (const kind of ['fs', 's3']) {
  test(`versions registered before claims existed on the ${kind} store still list, read and count`, async (t) => {
    const store = stores[kind];
    // The layout of earlier releases: the version record, then a by-run record naming it; no claim, no other key.
    const legacy: ModelVersion = {
      ...entry('legacy-run'),
      name: 'legacy',
      version: 1,
      createdAt: '2025-01-01T00:00:00.000Z',
    };
    await store.putKey(versionKey('legacy', 1), JSON.stringify(legacy, null, 2), { createOnly: true });
    await store.putKey('registry/legacy/by-run/legacy-run.json', JSON.stringify({ version: 1 }));

    t.deepEqual(await listVersions(store, 'legacy'), [1]);
    t.deepEqual(await getVersion(store, 'legacy', 1), legacy);
    t.deepEqual(await latestVersion(store, 'legacy'), legacy);
    // The old run registered again (an activity retried across the upgrade) keeps its version...
    t.deepEqual(await registerVersion(store, { ...entry('legacy-run'), name: 'legacy' }), legacy);
    // ...and a new run's number continues past it.
    const next = await registerVersion(store, { ...entry('new-run'), name: 'legacy' });
    t.is(next.version, 2);
    t.deepEqual(await listVersions(store, 'legacy'), [1, 2]);
    t.is((await latestVersion(store, 'legacy'))?.lineage.runId, 'new-run');
  });

  test(`a registered run on the ${kind} store names an immutable manifest that names its version`, async (t) => {
    const store = stores[kind];
    const input = registerInput('manifested', 'run-m');
    const result = await registerRun(store, input, 'code-1');
    t.is(result.version, 1);
    const version = (await getVersion(store, 'manifested', 1))!;
    t.is(version.lineage.manifest, result.manifestUri);
    const sha256 = /\/objects\/sha256\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(result.manifestUri)?.[1];
    t.truthy(sha256, result.manifestUri);
    const manifest = await store.getJson<{ runId: string; model: { name: string; version: number } }>({
      sha256: sha256!,
      size: 0,
    });
    t.deepEqual(manifest.model, { name: 'manifested', version: 1 });
    t.is(manifest.runId, 'run-m');
    // The workflow's named copy says the same.
    const named = await store.getKeyJson<typeof manifest>(result.manifestKey);
    t.deepEqual(named?.model, manifest.model);
    // Registering again (a retry on a worker with newer code) returns the version as it was, rewriting nothing.
    const keysOfRun = async () => [
      ...(await store.listKeys('registry/manifested/')),
      ...(await store.listKeys('runs/wf-run-m/')),
    ];
    const keysBefore = await keysOfRun();
    t.deepEqual(await registerRun(store, input, 'code-2'), result);
    t.deepEqual(await keysOfRun(), keysBefore);
    t.is((await store.getKeyJson<{ codeVersion: string }>(result.manifestKey))?.codeVersion, 'code-1');
  });
}
