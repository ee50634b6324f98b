import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';

import { readVersionManifest } from '../lib/registry/manifest';
import { runManifestKey, type ModelVersion } from '../lib/registry/registry';
import { openStore } from '../lib/store';
import { objectKey } from '../lib/store/artifact-store';

/** A store in a fresh folder, and a version whose lineage points at `manifest` for run `runId`. */
async function setUp(t: { teardown(fn: () => Promise<void>): void }) {
  const root = await mkdtemp(join(tmpdir(), 'stepwise-manifest-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const store = openStore(`file://${root}`);
  const versionOf = (manifest: string, runId = 'run-a') =>
    ({ name: 'm', version: 1, lineage: { manifest, runId, workflowId: 'wf' } }) as unknown as ModelVersion;
  return { root, store, versionOf };
}

const manifestOf = (runId: string) => ({
  workflowId: 'wf',
  runId,
  codeVersion: '0.1.0',
  spec: {},
  artifacts: [{ role: 'split/test', sha256: 'a'.repeat(64), size: 3, uri: 'file:///x' }],
});

test('a content-addressed manifest is read by its hash, and one altered or gone says so', async (t) => {
  const { root, store, versionOf } = await setUp(t);
  const ref = await store.putJson(manifestOf('run-a'));
  const v = versionOf(store.uri(ref));
  const read = await readVersionManifest(store, v);
  t.deepEqual(read, { manifest: manifestOf('run-a'), named: false });

  await writeFile(join(root, objectKey(ref.sha256)), JSON.stringify(manifestOf('run-b')));
  const altered = await readVersionManifest(store, v);
  t.false(altered.named);
  t.regex('problem' in altered ? altered.problem : '', /^altered \(its bytes hash to [0-9a-f]{64}\)$/);

  await rm(join(root, objectKey(ref.sha256)));
  t.deepEqual(await readVersionManifest(store, v), { problem: 'missing', named: false });
});

test("a named manifest is read only while it is still the version's own run's", async (t) => {
  const { store, versionOf } = await setUp(t);
  const key = runManifestKey('wf');
  const v = versionOf(store.uri(key), 'run-a');
  t.deepEqual(await readVersionManifest(store, v), { problem: 'missing', named: true });

  await store.putKey(key, JSON.stringify(manifestOf('run-a')));
  t.deepEqual(await readVersionManifest(store, v), { manifest: manifestOf('run-a'), named: true });

  // A later run of the same workflow writes its own manifest under the same key.
  await store.putKey(key, JSON.stringify(manifestOf('run-b')));
  t.deepEqual(await readVersionManifest(store, v), {
    problem: 'overwritten by run run-b of the same workflow',
    named: true,
  });

  await store.putKey(key, '{ not json');
  t.deepEqual(await readVersionManifest(store, v), { problem: 'unparsable', named: true });
});

test('a named manifest in another store is not looked for in this one', async (t) => {
  const { store, versionOf } = await setUp(t);
  const read = await readVersionManifest(store, versionOf('s3://elsewhere/runs/wf/manifest.json'));
  t.true(read.named);
  t.regex('problem' in read ? read.problem : '', /^not in this store \(file:\/\//);
});
