import test from 'ava';
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { checkSpecPaths, resolveInRoots, specPaths } from '../lib/data/roots';
import { InputError } from '../lib/errors';
import { parseSpec } from '../lib/pipeline/spec';
import { encodeSafetensors } from '../lib/student/checkpoint';
import { settings } from '../infra/config';

let base = '';
let root = '';
let outside = '';

test.before(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), 'stepwise-data-roots-')));
  root = join(base, 'root');
  outside = join(base, 'outside');
  await mkdir(join(root, 'sub'), { recursive: true });
  await mkdir(outside);
  await writeFile(join(root, 'sub', 'train.jsonl'), '{"input":"a","label":"b"}\n');
  await writeFile(join(outside, 'secret.txt'), 'secret');
  await symlink(join(outside, 'secret.txt'), join(root, 'link-out'));
  await symlink(outside, join(root, 'dir-out'));
  await symlink(join(root, 'sub', 'train.jsonl'), join(root, 'link-in'));
});

test.after.always(() => rm(base, { recursive: true, force: true }));

test('a path under a root resolves to its real path, through a symlink that stays inside', async (t) => {
  t.is(await resolveInRoots(join(root, 'sub', 'train.jsonl'), 'data.train', [root]), join(root, 'sub', 'train.jsonl'));
  t.is(await resolveInRoots(join(root, 'link-in'), 'data.train', [root]), join(root, 'sub', 'train.jsonl'));
  // A file that does not exist yet is placed by its folder: inside, so the reader reports it missing instead.
  t.is(await resolveInRoots(join(root, 'sub', 'none.jsonl'), 'data.train', [root]), join(root, 'sub', 'none.jsonl'));
  // The second of several roots counts as much as the first.
  t.is(await resolveInRoots(join(outside, 'secret.txt'), 'data.train', [root, outside]), join(outside, 'secret.txt'));
});

for (const [what, path] of [
  ['an absolute path elsewhere', () => '/etc/passwd'],
  ['a ../.. walk out', () => `${root}/sub/../../outside/secret.txt`],
  ['a symlinked file pointing out', () => join(root, 'link-out')],
  ['a missing file under a symlinked folder pointing out', () => join(root, 'dir-out', 'none.jsonl')],
  ['a root-named prefix that is not the root', () => `${root}-evil/x.jsonl`],
] as const) {
  test(`${what} is refused with an InputError naming the field`, async (t) => {
    const err = await t.throwsAsync(resolveInRoots(path(), 'data.train', [root]), { instanceOf: InputError });
    t.is(err!.field, 'data.train');
    t.regex(err!.message, /^data\.train: .* is outside the data roots \(/);
    t.true(err!.message.includes(root));
  });
}

test('a relative path is resolved against the current folder, so ../.. leaves the default root', async (t) => {
  const cwd = process.cwd();
  t.deepEqual(settings({}).dataRoots, [cwd]);
  await t.throwsAsync(resolveInRoots('../../../../../../../etc/passwd', 'data.dir', settings({}).dataRoots), {
    instanceOf: InputError,
    message: /data\.dir: \.\.\/.*etc\/passwd \(it resolves to \/etc\/passwd\) is outside the data roots/,
  });
});

test('STEPWISE_DATA_ROOTS is a PATH-like list; empty entries do not mean "/"', (t) => {
  t.deepEqual(settings({ STEPWISE_DATA_ROOTS: ['/a', '', '/b/c'].join(delimiter) }).dataRoots, ['/a', '/b/c']);
  t.deepEqual(settings({ STEPWISE_DATA_ROOTS: delimiter }).dataRoots, [process.cwd()]);
});

test('specPaths lists every file a spec makes a worker read, by the field that names it', (t) => {
  const spec = parseSpec({
    name: 'p',
    data: { kind: 'jsonl', train: 'a.jsonl', test: 'b.jsonl', valid: 'c.jsonl' },
    teacher: { kind: 'replay', dir: 'rec' },
    student: { init: 'init.safetensors' },
  });
  t.deepEqual(
    specPaths(spec).map((p) => `${p.field}=${p.path}`),
    [
      'data.train=a.jsonl',
      'data.test=b.jsonl',
      'data.valid=c.jsonl',
      'teacher.dir=rec',
      'student.init=init.safetensors',
    ]
  );
});

test('checkSpecPaths accepts a real checkpoint header and refuses one without Stepwise metadata', async (t) => {
  const metadata = { config: '{}', tokenizer: '{}', training: '{"method":"standard-finetune"}' };
  const weights = [{ name: 'w', shape: [2], data: new Float32Array([1, 2]) }];
  await writeFile(join(root, 'good.safetensors'), encodeSafetensors(weights, metadata));
  await writeFile(join(root, 'plain.safetensors'), encodeSafetensors(weights, {}));
  const spec = (init: string) => ({
    ...parseSpec({ name: 'c', data: { kind: 'demo' }, teacher: { kind: 'scripted' } }),
    student: { ...parseSpec({ name: 'c', data: { kind: 'demo' }, teacher: { kind: 'scripted' } }).student, init },
  });
  await t.notThrowsAsync(checkSpecPaths(spec(join(root, 'good.safetensors')), [root]));
  const err = await t.throwsAsync(checkSpecPaths(spec(join(root, 'plain.safetensors')), [root]), {
    instanceOf: InputError,
  });
  t.is(err!.field, 'student.init');
  t.regex(err!.message, /is not a Stepwise checkpoint \(its metadata has no config, tokenizer, training\)/);
  const folder = await t.throwsAsync(checkSpecPaths(spec(join(root, 'sub')), [root]), { instanceOf: InputError });
  t.regex(folder!.message, /student\.init: .*sub is a folder; expected a file/);
});
