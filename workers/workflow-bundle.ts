/**
 * The workflow bundle, built once per version of the code and kept on disk. Webpack takes seconds of CPU at every
 * worker start (three on a busy 2-core machine), which every `stepwise run`, every worker process and every test
 * file paid again for the same bytes.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { bundleWorkflowCode, type BundleOptions, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { cacheDir } from '../infra/cache';

/** What the bundle can depend on besides its options: the code webpack may reach, and the installed packages. */
const SOURCE_DIRS = ['workflows', 'contract', 'lib', 'workers'];
const LOCKFILES = ['package-lock.json', 'package.json'];
/** Bundles kept: one per checkout a machine runs, a few versions back. */
const KEEP = 8;

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries
    .filter((e) => e.isFile() && /\.(ts|js|mjs|cjs|json)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/**
 * A key that changes whenever the bundle could: every source file under the folders the workflows import from (a
 * superset of what webpack reaches, so a stale bundle is never reused; a change elsewhere costs one rebuild), the
 * lockfile, the SDK's version and the bundle options.
 */
export async function workflowBundleKey(
  root: string,
  options: Pick<
    BundleOptions,
    'workflowsPath' | 'failureConverterPath' | 'payloadConverterPath' | 'workflowInterceptorModules'
  >
): Promise<string> {
  const hash = createHash('sha256');
  const { workflowsPath, failureConverterPath, payloadConverterPath, workflowInterceptorModules } = options;
  // Absent and empty mean the same bundle: normalised, so they share one key (and one build).
  const modules = workflowInterceptorModules?.length ? workflowInterceptorModules : [];
  hash.update(JSON.stringify([workflowsPath, failureConverterPath ?? null, payloadConverterPath ?? null, modules]));
  hash.update(JSON.stringify(require('@temporalio/worker/package.json').version));
  const files = [
    ...(await Promise.all(SOURCE_DIRS.map((d) => sourceFiles(join(root, d))))).flat(),
    ...LOCKFILES.map((f) => join(root, f)),
  ];
  for (const file of files) {
    const bytes = await readFile(file).catch(() => undefined);
    hash
      .update(file.slice(root.length))
      .update('\0')
      .update(bytes ?? '(absent)')
      .update('\0');
  }
  return hash.digest('hex').slice(0, 32);
}

/**
 * The bundle for these options from the cache, built and stored when it is not there. Any failure to read or write
 * the cache (a read-only image, a full disk) falls back to bundling in memory: the cache only ever saves time.
 */
export async function cachedWorkflowBundle(
  options: Omit<BundleOptions, 'logger'> & { logger?: BundleOptions['logger']; dir?: string }
): Promise<WorkflowBundleWithSourceMap> {
  const { dir: dirOption, ...bundleOptions } = options;
  const root = dirname(dirname(require.resolve('../workflows')));
  const dir = dirOption ?? join(cacheDir(), 'workflow-bundles');
  let path: string | undefined;
  try {
    const { workflowsPath, failureConverterPath, payloadConverterPath, workflowInterceptorModules } = bundleOptions;
    const key = await workflowBundleKey(root, {
      workflowsPath,
      failureConverterPath,
      payloadConverterPath,
      workflowInterceptorModules,
    });
    path = join(dir, `${key}.json`);
    const cached = JSON.parse(await readFile(path, 'utf8')) as WorkflowBundleWithSourceMap;
    if (typeof cached.code === 'string' && typeof cached.sourceMap === 'string') return cached;
  } catch {
    // Not cached yet (or unreadable): build it below.
  }
  const bundle = await bundleWorkflowCode(bundleOptions);
  if (path) {
    try {
      await mkdir(dir, { recursive: true });
      // Several processes may build the same bundle at once: each writes its own file and renames it into place.
      const partial = `${path}.partial-${process.pid}`;
      await writeFile(partial, JSON.stringify({ code: bundle.code, sourceMap: bundle.sourceMap }));
      await rename(partial, path);
      await prune(dir);
    } catch {
      // Caching is best effort.
    }
  }
  return bundle;
}

/** Keeps the {@link KEEP} newest bundles. */
async function prune(dir: string): Promise<void> {
  const names = (await readdir(dir)).filter((n) => n.endsWith('.json'));
  if (names.length <= KEEP) return;
  const dated = await Promise.all(
    names.map(async (n) => ({ path: join(dir, n), mtime: (await stat(join(dir, n))).mtimeMs }))
  );
  dated.sort((a, b) => b.mtime - a.mtime);
  await Promise.all(dated.slice(KEEP).map((f) => unlink(f.path).catch(() => undefined)));
}
