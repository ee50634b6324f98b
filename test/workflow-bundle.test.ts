/**
 * The on-disk workflow bundle cache: a bundle is reused only for the same code and options, so a worker never runs
 * stale workflow code, and a corrupt cache file is rebuilt rather than trusted.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { cachedWorkflowBundle, workflowBundleKey } from '../workers/workflow-bundle';
import { tempDir } from './helpers/temp';

const quiet = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

test('the key changes with any source file the workflows may import, the lockfile and the options, and only then', async (t) => {
  const root = await tempDir(t, 'stepwise-bundle-key-');
  await mkdir(join(root, 'workflows'));
  await mkdir(join(root, 'lib', 'deep'), { recursive: true });
  await mkdir(join(root, 'test'));
  await writeFile(join(root, 'workflows', 'index.ts'), 'export {};');
  await writeFile(join(root, 'lib', 'deep', 'x.ts'), 'export const x = 1;');
  await writeFile(join(root, 'package-lock.json'), '{}');
  const options = { workflowsPath: join(root, 'workflows') };
  const first = await workflowBundleKey(root, options);
  t.is(await workflowBundleKey(root, options), first, 'deterministic');

  await writeFile(join(root, 'test', 'a.test.ts'), 'export {};');
  t.is(await workflowBundleKey(root, options), first, 'a test file is not bundled');

  await writeFile(join(root, 'lib', 'deep', 'x.ts'), 'export const x = 2;');
  const edited = await workflowBundleKey(root, options);
  t.not(edited, first, 'a nested lib file changed');

  await writeFile(join(root, 'lib', 'deep', 'y.ts'), 'export const y = 1;');
  const added = await workflowBundleKey(root, options);
  t.not(added, edited, 'a file added');

  await writeFile(join(root, 'package-lock.json'), '{"lockfileVersion":3}');
  const locked = await workflowBundleKey(root, options);
  t.not(locked, added, 'the lockfile changed');

  t.not(await workflowBundleKey(root, { ...options, failureConverterPath: '/x' }), locked, 'other options');
});

test('a bundle is built once, then read from the cache; a corrupt cache file is rebuilt', async (t) => {
  const dir = await tempDir(t, 'stepwise-bundles-');
  const workflowsPath = require.resolve('../workflows');
  const built = await cachedWorkflowBundle({ workflowsPath, logger: quiet, dir });
  t.true(built.code.includes('distillationPipeline'));
  const files = (await readdir(dir)).filter((f) => f.endsWith('.json'));
  t.is(files.length, 1);

  // Marked in place: only a bundle read from the file carries the mark.
  await writeFile(
    join(dir, files[0]!),
    JSON.stringify({ code: `${built.code}\n// cached`, sourceMap: built.sourceMap })
  );
  const cached = await cachedWorkflowBundle({ workflowsPath, logger: quiet, dir });
  t.is(cached.code, `${built.code}\n// cached`, 'served from the cache');
  t.is(cached.sourceMap, built.sourceMap);

  await writeFile(join(dir, files[0]!), '{"code": 1');
  const rebuilt = await cachedWorkflowBundle({ workflowsPath, logger: quiet, dir });
  t.is(rebuilt.code, built.code);
});
