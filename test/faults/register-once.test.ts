/**
 * Registration exactly once. The register stage is five writes (a version claim, the run's by-run record, the
 * manifest as an immutable object and under the workflow's name, then the version record); whatever happens at any
 * of them — the write failing, the write landing but its caller crashing, the process SIGKILLed, a second attempt of
 * the same activity overtaking the first — the run ends with exactly one version, and no version is ever visible
 * before the manifest it points at. Every case runs on the filesystem store and on a real S3 server.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { ensureBucket, startS3Server, type S3Server } from '../../infra/s3-server';
import { getVersion, listVersions } from '../../lib/registry/registry';
import { registerRun, type RegisterModelResult } from '../../lib/registry/run';
import { modelHistory, versionStatus } from '../../lib/registry/audit';
import { openStore } from '../../lib/store';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { faultMode, recordFigures } from '../helpers/figures';
import { hooked, registerInput, type WriteHooks } from './register-fixture';

const KINDS = ['fs', 's3'] as const;
type Kind = (typeof KINDS)[number];
/**
 * The register stage's writes: claim, by-run record, manifest object, named manifest, version record, then the
 * version's status head (a candidate) and its registration record in the audit log.
 */
const WRITES = 7;
const full = faultMode() === 'full';

let tmp: string;
let s3: S3Server;
const stores = {} as Record<Kind, ArtifactStore>;
const locations = {} as Record<Kind, string>;
const figures = { faultsTried: 0, faultsSurvived: 0, registryDuplicates: 0 };

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'stepwise-register-once-'));
  s3 = await startS3Server({ dataDir: join(tmp, 's3') });
  await ensureBucket(s3, 'register-once');
  // The S3 backend (and the child process, which inherits these) reads the standard AWS variables.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
  process.env.AWS_REGION = s3.region;
  locations.fs = `file://${join(tmp, 'fs')}`;
  locations.s3 = 's3://register-once/r';
  for (const kind of KINDS) stores[kind] = openStore(locations[kind]);
});

test.after.always(async () => {
  // Recorded whatever passed: a fault not survived is a figure too.
  recordFigures('register-once', figures);
  await Promise.all(Object.values(stores).map((s) => s.close()));
  await s3?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The sha256 a content-addressed URI ends in. */
const shaOf = (uri: string) => /\/objects\/sha256\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(uri)?.[1];

/**
 * What is wrong with model `name`'s registry, for run `runId`: its versions beyond one (or none), and any version
 * whose manifest is missing or names another version. Computed, not asserted, so the figures count what happened.
 */
async function audit(store: ArtifactStore, name: string, runId: string) {
  const problems: string[] = [];
  let versionsOfRun = 0;
  for (const number of await listVersions(store, name)) {
    const version = (await getVersion(store, name, number))!;
    if (version.lineage.runId === runId) versionsOfRun += 1;
    const sha256 = shaOf(version.lineage.manifest);
    const manifest =
      sha256 &&
      (await store
        .getJson<{ runId: string; model: { name: string; version: number } }>({ sha256, size: 0 })
        .catch(() => undefined));
    if (!manifest) problems.push(`v${number}: manifest ${version.lineage.manifest} is missing`);
    else if (manifest.model.version !== number || manifest.runId !== version.lineage.runId) {
      problems.push(`v${number}: its manifest names v${manifest.model.version} of run ${manifest.runId}`);
    }
  }
  return { versionsOfRun, problems };
}

/** The run has exactly one version, it is `expected`'s, and its manifests (immutable and named) name it. */
async function registeredOnce(
  t: ExecutionContext,
  store: ArtifactStore,
  runId: string,
  expected: RegisterModelResult,
  what: string
): Promise<boolean> {
  const { versionsOfRun, problems } = await audit(store, expected.name, runId);
  const named = await store.getKeyJson<{ model: { version: number } }>(expected.manifestKey);
  figures.registryDuplicates += Math.max(0, versionsOfRun - 1);
  t.deepEqual(problems, [], what);
  t.is(versionsOfRun, 1, what);
  t.deepEqual(await listVersions(store, expected.name), [expected.version], what);
  t.is(named?.model.version, expected.version, `${what}: the named manifest`);
  // The registration is in the audit log exactly once, and the version is a candidate.
  const registrations = (await modelHistory(store, expected.name)).filter(
    (r) => r.action === 'register' && r.version === expected.version
  );
  t.is(registrations.length, 1, `${what}: one registration record`);
  t.is((await versionStatus(store, expected.name, expected.version))?.status, 'candidate', what);
  return (
    problems.length === 0 &&
    versionsOfRun === 1 &&
    named?.model.version === expected.version &&
    registrations.length === 1
  );
}

/** One injected fault: counted as tried, and as survived when `check` says the registry came out right. */
async function fault(check: () => Promise<boolean>): Promise<void> {
  figures.faultsTried += 1;
  if (await check()) figures.faultsSurvived += 1;
}

/** Hooks that throw at write `k`: before it (the write is lost) or after it (the write landed, the caller died). */
function failAt(k: number, when: 'before' | 'after'): WriteHooks {
  return {
    [when]: (index: number, key: string) => {
      if (index === k) throw new Error(`injected fault ${when} write ${index} (${key})`);
    },
  };
}

for (const kind of KINDS) {
  test(`${kind}: a failure at any write of the register stage, then a retry, leaves exactly one version`, async (t) => {
    const store = stores[kind];
    for (const when of ['before', 'after'] as const) {
      for (let k = 0; k < WRITES; k++) {
        const name = `fail-${when}-${k}`;
        const input = registerInput(name, `run-${name}`);
        const faulty = hooked(store, failAt(k, when));
        await t.throwsAsync(registerRun(faulty, input, 'v1'), { message: /^injected fault/ }, name);
        // Whatever the failure left, no version is visible without its manifest.
        t.deepEqual((await audit(store, name, input.runId)).problems, [], `${name}: after the failure`);
        await fault(async () => {
          const result = await registerRun(store, input, 'v1');
          t.is(result.version, 1, name);
          const again = await registerRun(store, input, 'v1');
          t.deepEqual(again, result, `${name}: registering once more`);
          return (await registeredOnce(t, store, input.runId, result, name)) && result.version === 1;
        });
      }
    }
    // The count of writes above is the stage's: one more fault point would never be reached.
    const counted = hooked(store, {});
    await registerRun(counted, registerInput('count-writes', 'run-count'), 'v1');
    t.is(counted.backend.writes.length, WRITES, counted.backend.writes.join(', '));
  });
}

for (const kind of KINDS) {
  // Full mode: a second failure during the retry, at every write, before the retry that succeeds.
  if (!full) continue;
  test(`${kind}: two failures in a row at any pair of writes, then a retry, leave exactly one version`, async (t) => {
    const store = stores[kind];
    for (const first of ['before', 'after'] as const) {
      for (const second of ['before', 'after'] as const) {
        for (let k = 0; k < WRITES; k++) {
          for (let j = 0; j < WRITES; j++) {
            const name = `twice-${first}${k}-${second}${j}`;
            const input = registerInput(name, `run-${name}`);
            await registerRun(hooked(store, failAt(k, first)), input, 'v1').catch(() => undefined);
            await registerRun(hooked(store, failAt(j, second)), input, 'v1').catch(() => undefined);
            await fault(async () => {
              const result = await registerRun(store, input, 'v1');
              return (await registeredOnce(t, store, input.runId, result, name)) && result.version === 1;
            });
          }
        }
      }
    }
  });
}

/** A rendezvous for `parties` attempts; an attempt that finishes without arriving stops being waited for. */
function rendezvous(parties: number) {
  let arrived = 0;
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return {
    arrive() {
      if (++arrived >= parties) open();
      return opened;
    },
    leave() {
      if (arrived >= --parties) open();
    },
  };
}

/** Two attempts of one run, both paused just before their write `k` until both are there, then let go together. */
async function together(store: ArtifactStore, name: string, k: number) {
  const input = registerInput(name, `run-${name}`);
  const gate = rendezvous(2);
  const attempt = async () => {
    let reached = false;
    const hooks: WriteHooks = {
      before: (index) => {
        if (index !== k) return;
        reached = true;
        return gate.arrive();
      },
    };
    try {
      return await registerRun(hooked(store, hooks), input, 'v1');
    } finally {
      if (!reached) gate.leave();
    }
  };
  return { input, results: await Promise.all([attempt(), attempt()]) };
}

/** Attempt A paused before (or after) its write `k`; attempt B runs start to finish; then A goes on. */
async function overtaken(store: ArtifactStore, name: string, k: number, when: 'before' | 'after') {
  const input = registerInput(name, `run-${name}`);
  let held!: () => void;
  const isHeld = new Promise<void>((resolve) => (held = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const pause = (index: number) => {
    if (index !== k) return;
    held();
    return released;
  };
  const a = registerRun(hooked(store, { [when]: pause }), input, 'v1');
  await Promise.race([isHeld, a]);
  const b = await registerRun(store, input, 'v1');
  release();
  return { input, results: [await a, b] };
}

for (const kind of KINDS) {
  test(`${kind}: overlapping attempts of one run's registration, interleaved at every write, make one version`, async (t) => {
    const store = stores[kind];
    for (let k = 0; k < WRITES; k++) {
      const races = [
        ['together', () => together(store, `together-${k}`, k)],
        ['overtaken-before', () => overtaken(store, `overtaken-before-${k}`, k, 'before')],
        ['overtaken-after', () => overtaken(store, `overtaken-after-${k}`, k, 'after')],
      ] as const;
      for (const [mode, race] of races) {
        await fault(async () => {
          const { input, results } = await race();
          const what = `${mode} at write ${k}`;
          // Both attempts report the same version, the first number, with no number skipped by the race.
          t.deepEqual(results[0], results[1], what);
          t.is(results[0].version, 1, what);
          return (await registeredOnce(t, store, input.runId, results[0], what)) && results[0].version === 1;
        });
      }
    }
  });

  test(`${kind}: different runs registering at once, each with two overlapping attempts, get consecutive versions`, async (t) => {
    const store = stores[kind];
    const runs = full ? 16 : 6;
    const name = 'many-runs';
    const attempts = Array.from({ length: runs * 2 }, (_, i) =>
      registerRun(store, registerInput(name, `run-${i % runs}`), 'v1')
    );
    const results = await Promise.all(attempts);
    for (let i = 0; i < runs; i++) t.deepEqual(results[i], results[i + runs], `both attempts of run-${i} agree`);
    t.deepEqual(
      results
        .slice(0, runs)
        .map((r) => r.version)
        .sort((a, b) => a - b),
      Array.from({ length: runs }, (_, i) => i + 1)
    );
    for (let i = 0; i < runs; i++) {
      const { versionsOfRun, problems } = await audit(store, name, `run-${i}`);
      t.is(versionsOfRun, 1, `run-${i}`);
      t.deepEqual(problems, []);
      figures.registryDuplicates += Math.max(0, versionsOfRun - 1);
    }
  });
}

/** Run the register stage in a child process that SIGKILLs itself right after write `killAfter` lands. */
function registerAndDie(kind: Kind, name: string, runId: string, killAfter: number) {
  const script = join(__dirname, 'register-once-child.ts');
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', script, JSON.stringify({ store: locations[kind], name, runId, killAfter })],
    { cwd: join(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'pipe'] }
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise<{ signal: NodeJS.Signals | null; code: number | null; out: string; err: string }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, out, err }))
  );
}

for (const kind of KINDS) {
  test(`${kind}: a process SIGKILLed between claiming a version and recording it, then a retry, leaves one version`, async (t) => {
    const store = stores[kind];
    // Quick mode kills at the write the issue names (right after the claim); full mode after every write.
    const points = full ? Array.from({ length: WRITES }, (_, k) => k) : [0];
    await Promise.all(
      points.map(async (k) => {
        const name = `killed-after-${k}`;
        const runId = `run-${name}`;
        const died = await registerAndDie(kind, name, runId, k);
        t.is(died.signal, 'SIGKILL', `exit ${died.code}: ${died.out}${died.err}`);
        const said = JSON.parse(died.out.split('\n')[0]) as { killedAfter: number; key: string };
        t.is(said.killedAfter, k);
        if (k === 0) {
          // It died holding a claim that nothing else records yet: no by-run record, no version.
          t.regex(said.key, new RegExp(`^registry/${name}/claims/000001\\.json$`));
          t.truthy(await store.getKey(said.key));
          t.is(await store.getKey(`registry/${name}/by-run/${runId}.json`), undefined);
          t.deepEqual(await listVersions(store, name), []);
        }
        await fault(async () => {
          const result = await registerRun(store, registerInput(name, runId), 'v1');
          return (await registeredOnce(t, store, runId, result, `killed after write ${k}`)) && result.version === 1;
        });
      })
    );
  });
}
