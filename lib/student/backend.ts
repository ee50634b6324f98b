/**
 * The backend ladder. TensorFlow.js runs the same model on several backends of very different speed
 * (bench/train-throughput.ts, `small` shape, batch 8 × 64+32 tokens, 2 cores): native TensorFlow through
 * tfjs-node-gpu (GPU when CUDA is usable, else CPU; ~0.6 s a training step with the fused kernels of fast-ops.ts),
 * WebAssembly (~4.4 s, single-threaded, with the fixes below), and pure JS (hundreds of times slower than native).
 * Each rung is tried in that order and falls back cleanly when its module or its kernels are missing, and the
 * attempts are recorded so a run can say which backend it trained on and why the faster ones were skipped.
 */
import { BACKEND_NAMES, type BackendName } from './options';
import { usesStepwiseKernels } from './fast-ops';
import { tf } from './tf';
import { loadStepwiseOps, stepwiseOpsStatus, type StepwiseOps } from './tf-native';
import { BACKEND_ENV, settings } from '../../infra/config';

export type { BackendName };

/** Fastest first (the names live with the other training choices in options.ts). */
export const BACKEND_LADDER: readonly BackendName[] = BACKEND_NAMES;

/** Environment variable that forces one backend (operators, tests, benches); it wins over the caller's choice. */
export { BACKEND_ENV };

export interface BackendAttempt {
  backend: BackendName;
  /** Why this rung was skipped; absent for the rung that was chosen. */
  error?: string;
}

export interface BackendInit {
  backend: BackendName;
  attempts: BackendAttempt[];
}

export interface BackendDescription {
  backend: BackendName;
  device: 'cpu' | 'gpu';
  /** e.g. `wasm (simd, 1 thread)` or `tensorflow (TF C library, cpu, Stepwise kernels)`. */
  detail: string;
  /** Native TensorFlow only: whether Stepwise's own kernels (kernels/stepwise_ops.cc) run, or why not. */
  stepwiseKernels?: StepwiseOps;
}

let current: BackendInit | undefined;
const registered = new Set<BackendName>();

function isBackendName(value: unknown): value is BackendName {
  return typeof value === 'string' && (BACKEND_LADDER as readonly string[]).includes(value);
}

/**
 * Picks the backend: `STEPWISE_TFJS_BACKEND` when set, else `preferred`. `auto` walks the ladder
 * tensorflow → wasm → cpu and takes the first rung that registers, initialises and passes a small training smoke
 * test; a named backend is tried alone and its failure is thrown (a user who asked for native TensorFlow should not
 * silently get a backend 300x slower). Calling it again with the same choice is free.
 * @throws Error when the choice is not a backend name, or no tried backend works (the message lists every attempt).
 */
export async function initBackend(preferred: BackendName | 'auto' = 'auto'): Promise<BackendInit> {
  const forced = settings().tfjsBackend;
  const choice = forced ?? preferred;
  if (choice !== 'auto' && !isBackendName(choice)) {
    const source = forced ? `${BACKEND_ENV}` : 'backend';
    throw new Error(`${source} is ${JSON.stringify(choice)}; expected one of auto, ${BACKEND_LADDER.join(', ')}`);
  }
  if (current && (choice === 'auto' || choice === current.backend) && tf.getBackend() === current.backend) {
    return current;
  }
  const rungs = choice === 'auto' ? BACKEND_LADDER : [choice];
  const attempts: BackendAttempt[] = [];
  for (const backend of rungs) {
    try {
      await activate(backend);
      attempts.push({ backend });
      current = { backend, attempts };
      return current;
    } catch (err) {
      attempts.push({ backend, error: err instanceof Error ? err.message : String(err) });
    }
  }
  const tried = attempts.map((a) => `${a.backend}: ${a.error}`).join('; ');
  throw new Error(`no TensorFlow.js backend could be initialised (${tried})`);
}

/** The backend in use and where it computes. Call after {@link initBackend}. */
export function describeBackend(): BackendDescription {
  const name = tf.getBackend();
  if (!isBackendName(name)) throw new Error(`tfjs backend is '${name}', which initBackend never sets`);
  if (name === 'tensorflow') {
    const gpu = Boolean((tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice);
    const own = usesStepwiseKernels() ? ', Stepwise kernels' : '';
    return {
      backend: name,
      device: gpu ? 'gpu' : 'cpu',
      detail: `tensorflow (TF C library, ${gpu ? 'gpu' : 'cpu'}${own})`,
      stepwiseKernels: stepwiseOpsStatus(),
    };
  }
  if (name === 'wasm') {
    const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
    // tfjs-backend-wasm disables its threaded build under Node (tfjs#3830); forcing it on fails because the build
    // starts its pthread workers from blob: URLs, which Node's worker_threads refuse (ERR_WORKER_PATH). One thread.
    return { backend: name, device: 'cpu', detail: `wasm (${simd ? 'simd' : 'no simd'}, 1 thread)` };
  }
  return { backend: name, device: 'cpu', detail: 'cpu (pure JS)' };
}

async function activate(backend: BackendName): Promise<void> {
  if (!registered.has(backend)) {
    register(backend);
    registered.add(backend);
  }
  if (!(await tf.setBackend(backend))) throw new Error(`tf.setBackend('${backend}') returned false`);
  // Production mode skips tfjs's per-op debug checks, and silences the cpu backend's banner on stdout.
  tf.enableProdMode();
  smokeTest();
}

function register(backend: BackendName): void {
  if (backend === 'tensorflow') {
    // The TF C library logs every CUDA probe at INFO level on stderr; keep warnings and errors only.
    process.env.TF_CPP_MIN_LOG_LEVEL ??= '2';
    // Registers the 'tensorflow' backend on the shared tfjs-core engine (npm dedupes one tfjs-core 4.22) and
    // makes it current; it throws when the native addon is not built.
    require('@tensorflow/tfjs-node-gpu');
    loadStepwiseOps();
    return;
  }
  if (backend === 'wasm') {
    require('@tensorflow/tfjs-backend-wasm');
    patchWasmKernels();
    return;
  }
  require('@tensorflow/tfjs-backend-cpu');
}

/**
 * Runs what training needs once on the fresh backend: a gather whose gradient is UnsortedSegmentSum, a transposed
 * matMul and a softmax cross-entropy, so a backend missing a kernel fails here rather than at step 1.
 */
function smokeTest(): void {
  const value = tf.tidy(() => {
    const table = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]);
    const grad = tf.grad((t: tf.Tensor) => {
      const rows = tf.gather(t, tf.tensor1d([0, 2, 0], 'int32')); // [3, 2]
      const logits = tf.matMul(rows, t, false, true); // [3, 3]
      return tf.losses.softmaxCrossEntropy(tf.oneHot(tf.tensor1d([0, 1, 2], 'int32'), 3), logits);
    })(table);
    return tf.sum(grad).dataSync()[0];
  });
  if (!Number.isFinite(value)) throw new Error(`training smoke test produced ${value}`);
}

/**
 * Two fixes for the wasm backend, registered before it initialises (kernel setup functions run at that point):
 *  - it has no UnsortedSegmentSum, which the gradient of `gather` (the embedding lookup) needs; a plain JS kernel
 *    works and was faster than replacing gather by a one-hot matMul (measured: oneHot·matMul 15% slower);
 *  - its BatchMatMul with a transpose flag runs 11–13x slower than without, and every matMul gradient uses the
 *    flags; transposing explicitly first cut a training step from 15.6 s to 3.3 s with identical losses.
 */
function patchWasmKernels(): void {
  if (tf.getKernel('UnsortedSegmentSum', 'wasm') === undefined) {
    tf.registerKernel({ kernelName: 'UnsortedSegmentSum', backendName: 'wasm', kernelFunc: wasmUnsortedSegmentSum });
  }
  const original = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!original || !transpose || (original as { patched?: boolean }).patched) return;
  const batchMatMul: tf.KernelFunc = ({ inputs, backend, attrs }) => {
    const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
    if (!transposeA && !transposeB) return original.kernelFunc({ inputs, backend, attrs });
    const temporaries: tf.TensorInfo[] = [];
    const materialise = (x: tf.TensorInfo, flag: boolean): tf.TensorInfo => {
      if (!flag) return x;
      const rank = x.shape.length;
      const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
      const out = transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as tf.TensorInfo;
      temporaries.push(out);
      return out;
    };
    const a = materialise(inputs.a as tf.TensorInfo, transposeA);
    const b = materialise(inputs.b as tf.TensorInfo, transposeB);
    const out = original.kernelFunc({
      inputs: { a, b },
      backend,
      attrs: { ...attrs, transposeA: false, transposeB: false },
    });
    for (const t of temporaries) (backend as tf.KernelBackend).disposeData(t.dataId);
    return out;
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({ ...original, kernelFunc: batchMatMul, patched: true } as tf.KernelConfig);
}

interface WasmBackendLike extends tf.KernelBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

const wasmUnsortedSegmentSum: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
  const { numSegments } = attrs as { numSegments: number };
  const wasm = backend as WasmBackendLike;
  if (x.dtype !== 'float32') throw new Error(`UnsortedSegmentSum (wasm, JS kernel): dtype ${x.dtype} unsupported`);
  const values = wasm.readSync(x.dataId) as Float32Array;
  const ids = wasm.readSync(segmentIds.dataId) as Int32Array;
  const innerShape = x.shape.slice(segmentIds.shape.length);
  const inner = innerShape.reduce((a, b) => a * b, 1);
  const out = wasm.makeOutput([numSegments, ...innerShape], 'float32');
  // A view of the wasm heap: valid until the next allocation, and nothing below allocates.
  const sums = wasm.typedArrayFromHeap(out);
  sums.fill(0);
  for (let i = 0; i < ids.length; i++) {
    const segment = ids[i];
    if (segment < 0 || segment >= numSegments) continue;
    const src = i * inner;
    const dst = segment * inner;
    for (let j = 0; j < inner; j++) sums[dst + j] += values[src + j];
  }
  return out;
};
