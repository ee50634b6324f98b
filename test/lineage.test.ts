/**
 * `stepwise lineage` and `stepwise verify`, run as users run them (the real CLI, one process per command), on a version
 * a real pipeline run registered: the Temporal dev server, in-process workers, and the versitygw S3 store.
 */
import { execFile } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { CPU_TASK_QUEUE, type PipelineResult } from '../contract';
import { parseSpec } from '../lib/pipeline/spec';
import { getVersion, runManifestKey, type ModelVersion } from '../lib/registry/registry';
import {
  exemplarsHash,
  LINEAGE_KINDS,
  lineageObjects,
  lineageTree,
  parseCodeVersion,
  redact,
  renderDot,
  redactUrl,
  type LineageKind,
  type LineageNode,
} from '../lib/registry/lineage';
import { objectKey, sha256Hex } from '../lib/store/artifact-store';
import { readCheckpointMeta } from '../lib/student/checkpoint';
import { getTemplate, templateHash } from '../lib/teacher/templates';
import { ensureGraphviz } from '../infra/graphviz';
import { startPipelineRun } from '../workers/search-attributes';
import { servicesForFile } from './helpers/services';

const exec = promisify(execFile);
const root = resolve(__dirname, '..');
const BIN = join(root, 'bin', 'stepwise.js');
const services = servicesForFile();

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function stepwise(args: string[]): Promise<Ran> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [BIN, ...args], {
      env: { ...process.env, STEPWISE_STORE: services().storeLocation },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const nodes = (tree: LineageNode): LineageNode[] => [tree, ...tree.children.flatMap(nodes)];
const one = (tree: LineageNode, kind: LineageKind) => {
  const found = nodes(tree).filter((n) => n.kind === kind);
  if (found.length !== 1) throw new Error(`expected one ${kind} node, found ${found.length}`);
  return found[0];
};

/** The version one small distill-step-by-step run registered (every stage runs, the gate included). */
let registered: Promise<ModelVersion> | undefined;
function version(): Promise<ModelVersion> {
  registered ??= (async () => {
    const { client, store } = services();
    const spec = parseSpec({
      name: `lineage-${Date.now()}`,
      data: { kind: 'demo', size: 60, seed: 7 },
      teacher: { kind: 'scripted' },
      student: { preset: 'tiny', steps: 20, batchSize: 16, method: 'distill-step-by-step' },
    });
    const handle = await startPipelineRun(
      client,
      spec,
      { taskQueue: CPU_TASK_QUEUE, workflowId: `lineage-${Date.now()}` },
      () => undefined
    );
    const result = (await handle.result()) as PipelineResult;
    return (await getVersion(store, result.name, result.version))!;
  })();
  return registered;
}

/**
 * Tests that need the version's objects intact. ava runs a file's tests concurrently, and the verify test damages
 * objects on purpose: it waits for every one of these to finish first.
 */
const readersDone: Promise<void>[] = [];
function readerTest(title: string, body: (t: ExecutionContext) => Promise<void>): void {
  let done!: () => void;
  readersDone.push(new Promise<void>((r) => (done = r)));
  test(title, async (t) => {
    try {
      await body(t);
    } finally {
      done();
    }
  });
}

readerTest(
  'lineage --json names every link from dataset bytes to run ids, each hash equal to what the store holds',
  async (t) => {
    const v = await version();
    const { store } = services();
    const r = await stepwise(['lineage', `${v.name}@${v.version}`, '--json']);
    t.is(r.code, 0, r.stderr);
    const tree = JSON.parse(r.stdout) as LineageNode;

    const kinds = new Set(nodes(tree).map((n) => n.kind));
    const expected: LineageKind[] = [
      'model',
      'dataset',
      'sample',
      'split',
      'prompt-template',
      'exemplars',
      'teacher',
      'responses',
      'validation',
      'rationales',
      'tokenizer',
      'training-config',
      'backend',
      'code',
      'checkpoint',
      'train-log',
      'metrics',
      'predictions',
      'gate',
      'approval',
      'run',
      'manifest',
    ];
    t.deepEqual(
      expected.filter((k) => !kinds.has(k)),
      []
    );
    t.true([...kinds].every((k) => (LINEAGE_KINDS as readonly string[]).includes(k)));

    // Every stored object the tree names hashes, as stored, to the hash it is named by.
    const stored = nodes(tree).filter((n) => n.uri && n.role);
    t.true(stored.length >= 12, `${stored.length} stored objects`);
    for (const n of stored) {
      t.is(sha256Hex(await store.backend.get(objectKey(n.hash!))), n.hash!, n.role!);
      t.true(n.uri!.endsWith(objectKey(n.hash!)), n.uri!);
    }
    const manifest = JSON.parse((await store.backend.get(objectKey(one(tree, 'manifest').hash!))).toString()) as {
      artifacts: { role: string; sha256: string }[];
    };
    t.is(manifest.artifacts.length, 11);
    for (const a of manifest.artifacts) {
      t.is(stored.find((n) => n.role === a.role)?.hash, a.sha256, `manifest role ${a.role} is in the tree`);
    }

    // The recorded hashes: the version's, and those recomputed here from the code and the checkpoint's bytes.
    t.is(one(tree, 'checkpoint').hash, v.checkpoint.sha256);
    t.is(one(tree, 'dataset').hash, v.lineage.dataset.datasetHash);
    t.is(one(tree, 'sample').hash, v.lineage.dataset.sampleHash);
    t.is(one(tree, 'prompt-template').hash, templateHash('demo'));
    t.is(one(tree, 'exemplars').hash, exemplarsHash(getTemplate('demo').exemplars));
    t.is(one(tree, 'responses').hash, v.lineage.teacher!.responses);
    t.is(one(tree, 'validation').hash, v.lineage.validation!.report);
    const meta = readCheckpointMeta(await store.get(v.checkpoint));
    t.is(one(tree, 'tokenizer').hash, sha256Hex(meta.tokenizer));
    t.is(one(tree, 'backend').label, `backend ${v.lineage.training.backend}`);

    // Code version: the worker's git commit and whether its tree had uncommitted changes, taken apart from the string
    // the worker recorded. The commit is a real one of this repository (HEAD or, when someone committed while the run
    // was under way, an ancestor of it); the tree's state now says nothing reliable about its state then.
    const git = async (...args: string[]) => (await exec('git', args, { cwd: root })).stdout.trim();
    const code = one(tree, 'code').details as { version: string; commit: string; dirty: boolean };
    const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string };
    t.is(v.lineage.codeVersion, `${pkg.version}+${code.commit}${code.dirty ? '.dirty' : ''}`);
    t.is(await git('rev-parse', '--short=12', `${code.commit}^{commit}`), code.commit);
    await t.notThrowsAsync(exec('git', ['merge-base', '--is-ancestor', code.commit, 'HEAD'], { cwd: root }));
    t.deepEqual(v.lineage.code, code);

    // Teacher: endpoint, model and parameters from the spec; the gate's decision; the run.
    const teacher = one(tree, 'teacher').details as { model: string; parameters: Record<string, unknown> };
    t.is(teacher.model, v.lineage.teacher!.model);
    t.like(teacher.parameters, { temperature: 0, maxTokens: 256, samples: 1 });
    t.regex(one(tree, 'gate').label, /^gate: (pass|fail) /);
    t.like(one(tree, 'run').details, { workflowId: v.lineage.workflowId, runId: v.lineage.runId });

    // The readable tree says the same.
    const text = await stepwise(['lineage', `${v.name}@${v.version}`]);
    t.is(text.code, 0, text.stderr);
    t.regex(text.stdout, new RegExp(`^model: ${v.name} v${v.version} `));
    t.true(text.stdout.includes(v.checkpoint.sha256));
    t.true(text.stdout.includes(v.lineage.dataset.datasetHash));
    t.regex(text.stdout, /teacher: teacher scripted .* \(temperature 0, maxTokens 256, samples 1, errorRate 0\.1\)/);
  }
);

readerTest(
  'a version registered before exemplars, the code split and hashed manifests still reads, and verifies all but its manifest',
  async (t) => {
    const v = await version();
    const { exemplarsHash: _e, exemplarsCount: _c, ...teacher } = v.lineage.teacher!;
    const { code: _code, ...lineage } = v.lineage;
    // Older still: its manifest is the workflow's named one, which has no hash of its own.
    const { store } = services();
    const manifest = store.uri(runManifestKey(v.lineage.workflowId));
    const old: ModelVersion = { ...v, lineage: { ...lineage, teacher, manifest } };
    const tree = await lineageTree(store, old);
    t.like(one(tree, 'exemplars').details, { recorded: false });
    t.like(one(tree, 'manifest'), { uri: manifest, hash: undefined });
    // Its artifacts are still read from it, so verify still re-reads them: every object but the manifest itself.
    const current = lineageObjects(await lineageTree(store, v));
    t.deepEqual(
      lineageObjects(tree).map((o) => o.sha256),
      current.filter((o) => !o.roles.includes('run/manifest')).map((o) => o.sha256)
    );
    t.deepEqual(one(tree, 'code').details, parseCodeVersion(v.lineage.codeVersion));
    t.deepEqual(one(tree, 'code').details, v.lineage.code);
    t.deepEqual(parseCodeVersion('0.1.0+6d88a9344c67.dirty'), {
      version: '0.1.0',
      commit: '6d88a9344c67',
      dirty: true,
    });
    t.deepEqual(parseCodeVersion('0.1.0+6d88a9344c67'), { version: '0.1.0', commit: '6d88a9344c67', dirty: false });
    // A deployment's own STEPWISE_CODE_VERSION: nothing is invented.
    t.deepEqual(parseCodeVersion('release-2026-03'), { version: 'release-2026-03' });
  }
);

readerTest('lineage --dot renders with Graphviz, and the picture names the checkpoint hash', async (t) => {
  const v = await version();
  const dot = await ensureGraphviz();
  const r = await stepwise(['lineage', `${v.name}@latest`, '--dot']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^digraph lineage \{/);
  const file = join(services().tmp, 'lineage.dot');
  await writeFile(file, r.stdout);
  const { stdout: raw } = await exec(dot, ['-Tsvg', file], { maxBuffer: 16 * 1024 * 1024 });
  t.regex(raw, /<svg/);
  // SVG writes some characters as entities (Graphviz writes `-` as `&#45;`).
  const svg = raw.replace(/&#(\d+);/g, (_m, code: string) => String.fromCharCode(Number(code)));
  t.true(svg.includes(v.checkpoint.sha256));
  t.true(svg.includes(v.lineage.runId));
});

test('verify passes on an intact version, then names exactly the deleted and the altered object', async (t) => {
  const v = await version();
  const ref = `${v.name}@${v.version}`;
  const ok = await stepwise(['verify', ref]);
  t.is(ok.code, 0, ok.stderr + ok.stdout);
  const count = Number(/all (\d+) objects verified/.exec(ok.stdout)?.[1]);
  t.true(count >= 12, ok.stdout);

  const tree = JSON.parse((await stepwise(['lineage', ref, '--json'])).stdout) as LineageNode;
  const report = one(tree, 'validation');
  const responses = one(tree, 'responses');
  const { store, tmp, bucket } = services();
  // Deleted in the S3 server's own folder, as a lost disk or a careless hand would; altered by a plain overwrite of
  // its key through the S3 API, which the content-addressed store itself never does.
  const path = (hash: string) => join(tmp, 's3', bucket, 'e2e', ...objectKey(hash).split('/'));
  await Promise.all(readersDone);
  await rm(path(report.hash!));
  const forged = Buffer.concat([await store.backend.get(objectKey(responses.hash!)), Buffer.from('{"id":"x"}\n')]);
  await store.backend.put(objectKey(responses.hash!), forged);

  const bad = await stepwise(['verify', ref]);
  t.is(bad.code, 3, bad.stderr);
  const problems = (out: string) => out.split('\n').filter((l) => /^(MISSING|ALTERED) /.test(l));
  t.deepEqual(problems(bad.stdout).sort(), [
    `ALTERED  teacher/responses  ${responses.uri} (expected sha256 ${responses.hash}, found ${sha256Hex(forged)})`,
    `MISSING  rationales/report  ${report.uri}`,
  ]);
  t.regex(bad.stdout, new RegExp(`2 of ${count} objects missing or altered`));

  const json = JSON.parse((await stepwise(['verify', ref, '--json'])).stdout) as {
    ok: boolean;
    objects: { roles: string[]; status: string }[];
  };
  t.false(json.ok);
  t.deepEqual(
    json.objects
      .filter((o) => o.status !== 'ok')
      .map((o) => `${o.roles.join()} ${o.status}`)
      .sort(),
    ['rationales/report missing', 'teacher/responses altered']
  );

  // Bytes flipped on the server's disk under its stored checksum: the S3 client refuses them before we hash them;
  // still reported as altered.
  const log = one(tree, 'train-log');
  const bytes = await readFile(path(log.hash!));
  bytes[0] ^= 0xff;
  await writeFile(path(log.hash!), bytes);
  const worse = await stepwise(['verify', ref]);
  t.is(worse.code, 3, worse.stderr);
  t.is(problems(worse.stdout).length, 3);
  t.true(
    problems(worse.stdout).some((l) =>
      l.startsWith(`ALTERED  student/train-log  ${log.uri} (expected sha256 ${log.hash}, `)
    ),
    worse.stdout
  );
});

test('lineage and verify name a reference that resolves to nothing, and exit 1', async (t) => {
  await version();
  const r = await stepwise(['verify', 'no-such-model@3']);
  t.is(r.code, 1);
  t.regex(r.stderr, /^stepwise: ref: no-such-model@3: no version 3 of model no-such-model/);
  const l = await stepwise(['lineage', 'no-such-model@champion']);
  t.is(l.code, 1);
  t.regex(l.stderr, /no alias "champion"/);
});

test('DOT labels are quoted so that any text renders as written', async (t) => {
  const dot = await ensureGraphviz();
  const label = 'say "hi" \\ then } { -> n0; and\na second line';
  const file = join(services().tmp, 'quoted.dot');
  await writeFile(
    file,
    renderDot({ kind: 'gate', label, children: [{ kind: 'run', label: '<b>not html</b>', children: [] }] })
  );
  const { stdout } = await exec(dot, ['-Tsvg', file]);
  const text = [...stdout.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) =>
    m[1]
      .replace(/&#(\d+);/g, (_m, c: string) => String.fromCharCode(Number(c)))
      .replace(/&quot;/g, '"')
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&amp;/g, '&')
  );
  t.deepEqual(text.sort(), ['a second line', 'gate: say "hi" \\ then } { -> n0; and', 'run: <b>not html</b>'].sort());
});

test('a teacher URL prints without its credentials, and secret-named fields never print', (t) => {
  t.is(
    redactUrl('https://alice:s3cret@llm.example.com/v1?api_key=abc&model=x'),
    'https://llm.example.com/v1?api_key=REDACTED&model=x'
  );
  t.deepEqual(
    redact({ url: 'https://u:p@h.example/v1', apiKeyEnv: 'OPENAI_API_KEY', apiKey: 'sk-123', temperature: 0 }),
    { url: 'https://h.example/v1', apiKeyEnv: 'OPENAI_API_KEY', apiKey: 'REDACTED', temperature: 0 }
  );
});
