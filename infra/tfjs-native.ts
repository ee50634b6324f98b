import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join, resolve } from 'node:path';

import {
  cacheDir,
  ensureOnce,
  ensureWheel,
  extractZipMembers,
  pinnedWheelPipArgs,
  runCommand,
  withLock,
  type Log,
  type PinnedWheel,
} from './cache';
import { settings } from './config';

/** The TensorFlow release whose C library the addon links against (the tfjs 4.22 binding needs only its C API). */
export const TENSORFLOW_VERSION = '2.21.0';
const PACKAGE = '@tensorflow/tfjs-node-gpu';

const TENSORFLOW_WHEELS: Partial<Record<string, PinnedWheel>> = {
  // The libraries inside do not depend on the Python version; pinning cp311 makes every machine fetch the same file.
  'linux-x64': {
    requirement: `tensorflow==${TENSORFLOW_VERSION}`,
    filename: `tensorflow-${TENSORFLOW_VERSION}-cp311-cp311-manylinux_2_27_x86_64.whl`,
    sha256: '9056fbc9ba04235810b71ae6cbd958a196e8804fb53bbcffbf3e23b56155f124',
    pipArgs: pinnedWheelPipArgs(['manylinux_2_27_x86_64']),
  },
};

/** Members of the wheel the binding needs: the two shared libraries and the C API headers with what they include. */
const WHEEL_MEMBERS = [
  { from: 'tensorflow/libtensorflow_cc.so.2', to: 'lib/libtensorflow_cc.so.2' },
  { from: 'tensorflow/libtensorflow_framework.so.2', to: 'lib/libtensorflow_framework.so.2' },
  { from: 'tensorflow/include/tensorflow/c/', to: 'include/tensorflow/c/' },
  { from: 'tensorflow/include/tensorflow/core/platform/ctstring', to: 'include/tensorflow/core/platform/ctstring' },
  { from: 'tensorflow/include/tsl/', to: 'include/tsl/' },
  { from: 'tensorflow/include/xla/tsl/c/', to: 'include/xla/tsl/c/' },
];

/**
 * The names `binding.gyp` links (`-ltensorflow`) and `scripts/install.js` checks for (it was written for
 * libtensorflow 2.9.1), pointing at the libraries the wheel actually has. The C API lives in libtensorflow_cc.
 */
const LIB_ALIASES: ReadonlyArray<[alias: string, target: string]> = [
  ['libtensorflow.so', 'libtensorflow_cc.so.2'],
  ['libtensorflow.so.2', 'libtensorflow_cc.so.2'],
  ['libtensorflow.so.2.9.1', 'libtensorflow_cc.so.2'],
  ['libtensorflow_framework.so', 'libtensorflow_framework.so.2'],
  ['libtensorflow_framework.so.2.9.1', 'libtensorflow_framework.so.2'],
];

export type OpsStatus = { ok: true; library: string } | { ok: false; reason: string };

export type TfjsNativeStatus =
  | {
      ok: true;
      /** Whether TensorFlow found a CUDA device when verified (false: it runs on the CPU with oneDNN). */
      gpu: boolean;
      /** Path of the linked addon. */
      addon: string;
      /** Stepwise's own kernels (lib/student/kernels): built and checked, or why not (the backend works without). */
      ops: OpsStatus;
    }
  | { ok: false; reason: string };

/** Recorded in the package folder after a successful check, so the next `setup()` costs a few stat calls. */
interface Stamp {
  key: string;
  deps: string;
  gpu: boolean;
}

const projectRoot = resolve(__dirname, '..');

/**
 * Make `@tensorflow/tfjs-node-gpu` loadable without its install script, which downloads libtensorflow from outside
 * the package registries. Once per machine: the pinned TensorFlow wheel's libraries and headers are unpacked into
 * the cache (1.2 GB) and the addon is compiled against them. Per `npm ci`: the package's `deps` becomes a symlink
 * into the cache and the cached addon is copied back (seconds). Never throws for a missing toolchain or platform:
 * callers fall back to the wasm or cpu backend with `reason` in their log. `STEPWISE_SKIP_NATIVE=1` opts out.
 */
export async function ensureTfjsNative(log?: Log): Promise<TfjsNativeStatus> {
  if (settings().skipNative) return { ok: false, reason: 'STEPWISE_SKIP_NATIVE=1 is set' };
  const platformKey = `${process.platform}-${process.arch}`;
  const wheel = TENSORFLOW_WHEELS[platformKey];
  if (!wheel) return { ok: false, reason: `no pinned TensorFlow build for ${platformKey} (supported: linux-x64)` };
  let pkgDir: string;
  try {
    pkgDir = dirname(require.resolve(`${PACKAGE}/package.json`, { paths: [projectRoot] }));
  } catch {
    return { ok: false, reason: `${PACKAGE} is not installed (run npm ci)` };
  }
  try {
    return await ensureInPackage(pkgDir, wheel, log);
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

async function ensureInPackage(pkgDir: string, wheel: PinnedWheel, log?: Log): Promise<TfjsNativeStatus> {
  const pkgVersion = (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
  const root = join(cacheDir(), 'tfjs-native');
  const key = `tfjs-node-gpu-${pkgVersion}-tf${TENSORFLOW_VERSION}-node-abi${process.versions.modules}-${process.platform}-${process.arch}`;
  const stampFile = join(pkgDir, 'lib', '.stepwise-native.json');
  const depsCache = join(root, `tf-${TENSORFLOW_VERSION}`, 'deps');

  const fast = await readStamp(stampFile);
  const depsIntact = (deps: string) =>
    existsSync(join(deps === 'not-a-link' ? join(pkgDir, 'deps') : deps, 'lib', 'libtensorflow_cc.so.2'));
  if (fast && fast.key === key && (await linkTarget(join(pkgDir, 'deps'))) === fast.deps && depsIntact(fast.deps)) {
    const addon = await findAddon(pkgDir);
    if (addon) return { ok: true, gpu: fast.gpu, addon, ops: await ensureOpLibrary(fast.deps, wheel, log) };
  }

  // One project at a time per package folder: concurrent setups would otherwise rebuild over each other.
  const lockName = createHash('sha256').update(pkgDir).digest('hex').slice(0, 16);
  return withLock(
    join(root, 'locks', lockName),
    async () => {
      await ensureOnce(
        depsCache,
        async (scratch) => {
          const wheelPath = await ensureWheel(wheel, log);
          await extractZipMembers(wheelPath, scratch, WHEEL_MEMBERS, log);
          for (const [alias, target] of LIB_ALIASES) await symlink(target, join(scratch, 'lib', alias));
        },
        log
      );

      const depsLink = join(pkgDir, 'deps');
      const current = await linkTarget(depsLink);
      const ownDeps = current === 'not-a-link';
      if (ownDeps) {
        log?.(
          `${PACKAGE}: using the existing ${depsLink} folder instead of the cached TensorFlow ${TENSORFLOW_VERSION}`
        );
      } else if (current !== depsCache) {
        await rm(depsLink, { force: true });
        // npm ci wipes node_modules: a link (not a 1.2 GB copy) makes relinking instant.
        await symlink(depsCache, depsLink, 'dir');
      }

      const addonCache = join(root, 'addons', key);
      let addon = await findAddon(pkgDir);
      if (!addon || fast?.key !== key) {
        const cached = ownDeps ? undefined : await findAddon(addonCache);
        if (cached) {
          const dest = join(pkgDir, 'lib', cached.split('/').slice(-2).join('/'));
          await mkdir(dirname(dest), { recursive: true });
          await copyFile(cached, `${dest}.tmp`);
          await rename(`${dest}.tmp`, dest);
          addon = dest;
        } else {
          addon = await buildAddon(pkgDir, log);
          if (!ownDeps) {
            const dest = join(addonCache, addon.split('/').slice(-2).join('/'));
            await mkdir(dirname(dest), { recursive: true });
            await copyFile(addon, `${dest}.tmp`);
            await rename(`${dest}.tmp`, dest);
          }
        }
      }

      const verified = await verify(log);
      if (!verified.ok) return verified;
      const deps = ownDeps ? 'not-a-link' : depsCache;
      await writeFile(stampFile, JSON.stringify({ key, deps, gpu: verified.gpu }));
      return { ok: true, gpu: verified.gpu, addon, ops: await ensureOpLibrary(deps, wheel, log) };
    },
    { log }
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Stepwise's own kernels

/** The kernels' C++ source (lib/student/kernels/stepwise_ops.cc). */
const OP_LIBRARY_SOURCE = join(projectRoot, 'lib', 'student', 'kernels', 'stepwise_ops.cc');

/**
 * The wheel's header folders a kernel library includes (what `tf.sysconfig.get_include()` holds, less what the
 * kernels do not reach: 55 MB of its 400).
 */
const OP_HEADER_MEMBERS = [
  'Eigen/',
  'unsupported/',
  'absl/',
  'google/',
  'ml_dtypes/',
  'tsl/',
  'xla/tsl/',
  'tensorflow/core/',
].map((dir) => ({ from: `tensorflow/include/${dir}`, to: `include/${dir}` }));

/**
 * `tf.sysconfig.get_compile_flags()` for the pinned wheel (C++17, the new libstdc++ ABI, Eigen's alignment), and the
 * kernels' own: no errno from sqrt (it would keep the loops scalar) and no FMA contraction (each vector-width clone
 * must round as the others do).
 */
const OP_LIBRARY_FLAGS = [
  '-std=c++17',
  '-O3',
  '-fPIC',
  '-shared',
  '-fno-math-errno',
  '-ffp-contract=off',
  '-D_GLIBCXX_USE_CXX11_ABI=1',
  '-DEIGEN_MAX_ALIGN_BYTES=64',
  '-DNODE_GYP_MODULE_NAME=stepwise_ops',
  // TensorFlow's headers warn at length under GCC (deprecations); the kernels' own code is kept warning-free.
  '-w',
];

/**
 * Where the kernel library built from this checkout's source lives (it need not exist yet): in the cache, under a
 * key of the source, the flags and the TensorFlow release, so an edited kernel is a new build and never a stale one.
 */
export function opLibraryPath(): string {
  const key = createHash('sha256')
    .update(readFileSync(OP_LIBRARY_SOURCE))
    .update(JSON.stringify([OP_LIBRARY_FLAGS, TENSORFLOW_VERSION, process.platform, process.arch]))
    .digest('hex')
    .slice(0, 16);
  return join(cacheDir(), 'tfjs-native', `tf-${TENSORFLOW_VERSION}`, 'ops', key, 'stepwise_ops.node');
}

/**
 * Builds the kernel library once per source version and checks it in a fresh process (a crash there must not take
 * the caller down). Never throws: without the library the native backend runs on TensorFlow's kernels alone.
 */
async function ensureOpLibrary(deps: string, wheel: PinnedWheel, log?: Log): Promise<OpsStatus> {
  if (deps === 'not-a-link') {
    return {
      ok: false,
      reason: 'the package has its own deps folder, not the pinned TensorFlow the kernels build against',
    };
  }
  let library: string;
  try {
    library = opLibraryPath();
    await ensureOnce(
      dirname(library),
      async (scratch) => {
        const nodeDir = nodeHeadersDir();
        if (!nodeDir) throw new Error(`no node_api.h beside ${process.execPath} (set npm_config_nodedir)`);
        const nodeInclude = join(nodeDir, 'include', 'node');
        // The headers are needed for the compile alone: unpacked beside it (2 s) and gone with the scratch folder,
        // so neither the cache nor a worker image that copies it keeps 55 MB of them.
        const headers = join(scratch, 'headers');
        await extractZipMembers(await ensureWheel(wheel, log), headers, OP_HEADER_MEMBERS, log);
        log?.(`${PACKAGE}: compiling Stepwise's kernels against TensorFlow ${TENSORFLOW_VERSION}`);
        const out = join(scratch, 'stepwise_ops.node');
        const lib = join(deps, 'lib');
        await runCommand(
          process.env.CXX || 'c++',
          [
            ...OP_LIBRARY_FLAGS,
            `-I${nodeInclude}`,
            `-I${join(headers, 'include')}`,
            OP_LIBRARY_SOURCE,
            join(lib, 'libtensorflow_framework.so.2'),
            `-Wl,-rpath,${lib}`,
            '-o',
            out,
          ],
          { log, timeoutMs: 10 * 60_000 }
        );
        await rm(headers, { recursive: true, force: true });
        await verifyOpLibrary(out);
      },
      log
    );
  } catch (err) {
    const reason = `Stepwise's kernels are not built (${(err as Error).message.split('\n')[0]})`;
    log?.(`${PACKAGE}: ${reason}; training runs on TensorFlow's kernels alone`);
    return { ok: false, reason };
  }
  return { ok: true, library };
}

/** One fused AdamW update on two-element variables in a fresh process, against the formula worked out here. */
async function verifyOpLibrary(library: string): Promise<void> {
  const script = `
    const tf = require(${JSON.stringify(PACKAGE)});
    process.dlopen({ exports: {} }, ${JSON.stringify(library)});
    const b = tf.backend();
    const f = b.binding.TF_FLOAT;
    const dtype = { name: 'dtype', type: b.binding.TF_ATTR_TYPE, value: f };
    const variable = (values) => {
      const h = b.executeSingleOutput('VarHandleOp', [
        { name: 'container', type: b.binding.TF_ATTR_STRING, value: '' },
        { name: 'shared_name', type: b.binding.TF_ATTR_STRING, value: 'stepwise-verify-' + Math.random() },
        dtype,
        { name: 'shape', type: b.binding.TF_ATTR_SHAPE, value: [2] },
      ], []);
      b.executeMultipleOutputs('AssignVariableOp', [dtype], [h, tf.tensor1d(values)], 0);
      return h;
    };
    const [p, m, v] = [variable([1, -2]), variable([0.5, 0]), variable([0.25, 1])];
    const hyper = tf.tensor1d([0.5, 0.9, 0.99, 0.125, 0.25, 0.75]);
    b.executeMultipleOutputs('StepwiseApplyAdamW', [], [p, m, v, tf.tensor1d([2, -4]), hyper], 0);
    const read = (h) => Array.from(b.executeSingleOutput('ReadVariableOp', [dtype], [h]).dataSync());
    console.log('STEPWISE_OPS ' + JSON.stringify([read(p), read(m), read(v)]));
  `;
  const got = await nodeCheck<number[][]>(script, 'STEPWISE_OPS');
  // g = grad·0.5 = [1, −2]; m = m + (g − m)·0.1; v = v + (g² − v)·0.01; p = p·0.75 − 0.25·m/(√v + 0.125), in float32.
  const f = Math.fround;
  const expected = [
    [1, 0.5, 0.25, 1],
    [-2, 0, 1, -2],
  ].map(([p, m, v, g]) => {
    const m1 = f(m + f(f(g - m) * f(1 - f(0.9))));
    const v1 = f(v + f(f(f(g * g) - v) * f(1 - f(0.99))));
    return [f(f(p * 0.75) - f(f(m1 * 0.25) / f(f(Math.sqrt(v1)) + 0.125))), m1, v1];
  });
  const want = [0, 1, 2].map((k) => expected.map((e) => e[k]));
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`the fused AdamW gave ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  }
}

async function readStamp(file: string): Promise<Stamp | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Stamp;
  } catch {
    return undefined;
  }
}

/** Where a symlink points; `'not-a-link'` for a real folder; undefined when absent. */
async function linkTarget(path: string): Promise<string | undefined> {
  try {
    const info = await lstat(path);
    return info.isSymbolicLink() ? await readlink(path) : 'not-a-link';
  } catch {
    return undefined;
  }
}

/** The addon under `<dir>/lib/napi-v*` (package layout) or `<dir>/napi-v*` (cache layout). */
async function findAddon(dir: string): Promise<string | undefined> {
  for (const base of [join(dir, 'lib'), dir]) {
    let entries: string[];
    try {
      entries = await readdir(base);
    } catch {
      continue;
    }
    for (const entry of entries
      .filter((e) => e.startsWith('napi-v'))
      .sort()
      .reverse()) {
      const file = join(base, entry, 'tfjs_binding.node');
      if (existsSync(file)) return file;
    }
  }
  return undefined;
}

/**
 * The folder whose `include/node` holds this Node's headers (`node_api.h`): `npm_config_nodedir` when set, else the
 * running Node's own install prefix when it ships them; undefined when neither does.
 */
function nodeHeadersDir(): string | undefined {
  const dir = process.env.npm_config_nodedir || resolve(dirname(process.execPath), '..');
  return existsSync(join(dir, 'include', 'node', 'node_api.h')) ? dir : undefined;
}

/** Compile the binding with node-gyp against the installed Node's headers (node-gyp would otherwise download them). */
async function buildAddon(pkgDir: string, log?: Log): Promise<string> {
  log?.(`${PACKAGE}: compiling the native addon against TensorFlow ${TENSORFLOW_VERSION} (once per Node ABI)`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: [join(projectRoot, 'node_modules', '.bin'), dirname(process.execPath), process.env.PATH ?? ''].join(
      delimiter
    ),
    npm_config_build_from_source: 'true',
  };
  // An npm_config_nodedir without headers stays as the caller set it: node-gyp then says what is missing.
  const nodeDir = nodeHeadersDir();
  if (nodeDir) env.npm_config_nodedir = nodeDir;
  try {
    await runCommand(process.execPath, ['scripts/install.js', 'gpu'], {
      cwd: pkgDir,
      env,
      log,
      timeoutMs: 15 * 60_000,
    });
  } catch (err) {
    throw new Error(
      `building the ${PACKAGE} addon failed (it needs python3, make and a C++ compiler): ${(err as Error).message}`
    );
  }
  const addon = await findAddon(pkgDir);
  if (!addon) throw new Error(`building the ${PACKAGE} addon produced no lib/napi-v*/tfjs_binding.node in ${pkgDir}`);
  return addon;
}

/**
 * Runs `script` in a fresh Node process (a crash there must not take the caller down) and returns the JSON it printed
 * on the line starting with `tag`.
 * @throws Error when the process fails or prints no such line (the end of its output is in the message).
 */
async function nodeCheck<T>(script: string, tag: string): Promise<T> {
  const output = await runCommand(process.execPath, ['-e', script], {
    cwd: projectRoot,
    env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: process.env.TF_CPP_MIN_LOG_LEVEL ?? '2' },
    timeoutMs: 180_000,
  });
  const line = output.split('\n').find((l) => l.startsWith(`${tag} `));
  if (!line) throw new Error(`the check printed no result:\n${output.slice(-2000)}`);
  return JSON.parse(line.slice(tag.length + 1)) as T;
}

/** Load the package in a fresh Node process and run a matMul. */
async function verify(log?: Log): Promise<{ ok: true; gpu: boolean } | { ok: false; reason: string }> {
  const a = [1, 2, 3, 4, 5, 6]; // [2, 3]
  const b = [7, 8, 9, 10, 11, 12]; // [3, 2]
  const expected = [0, 1, 2, 3].map((i) => {
    const [r, c] = [Math.floor(i / 2), i % 2];
    return [0, 1, 2].reduce((sum, k) => sum + a[r * 3 + k] * b[k * 2 + c], 0);
  });
  const script = `
    const tf = require(${JSON.stringify(PACKAGE)});
    const out = tf.matMul(tf.tensor2d(${JSON.stringify(a)}, [2, 3]), tf.tensor2d(${JSON.stringify(b)}, [3, 2]));
    const gpu = Boolean(tf.backend().isUsingGpuDevice);
    console.log('STEPWISE_NATIVE ' + JSON.stringify({ backend: tf.getBackend(), out: Array.from(out.dataSync()), gpu }));
  `;
  let result: { backend: string; out: number[]; gpu: boolean };
  try {
    result = await nodeCheck(script, 'STEPWISE_NATIVE');
  } catch (err) {
    return { ok: false, reason: `loading ${PACKAGE} failed: ${(err as Error).message}` };
  }
  if (result.backend !== 'tensorflow') {
    return { ok: false, reason: `${PACKAGE} loaded but the backend is '${result.backend}', not 'tensorflow'` };
  }
  if (JSON.stringify(result.out) !== JSON.stringify(expected)) {
    return {
      ok: false,
      reason: `${PACKAGE} matMul gave ${JSON.stringify(result.out)}, expected ${JSON.stringify(expected)}`,
    };
  }
  log?.(`${PACKAGE}: backend tensorflow works (${result.gpu ? 'GPU' : 'CPU'})`);
  return { ok: true, gpu: result.gpu };
}
