/**
 * tfjs-node's native binding and kernel backend, declared once for the two places that go past tfjs's public API:
 * fast-ops.ts runs TensorFlow ops by name on raw handles, native-decode.ts runs graph sessions (tf-graph.ts). Only
 * the members they use are declared (dist/tfjs_binding.d.ts and dist/nodejs_kernel_backend.js of the pinned
 * release); {@link nativeBackend} checks for them before either path is taken, so a backend without them (wasm, cpu,
 * or a tfjs-node that changed them) gets the plain tfjs formulation instead of a crash.
 */
import { existsSync } from 'node:fs';

import { settings } from '../../infra/config';
import { opLibraryPath } from '../../infra/tfjs-native';
import { tf } from './tf';
import type { SessionBinding } from './tf-graph';

/** An op attribute as the binding takes it (`type` is one of the binding's TF_ATTR_* codes). */
export interface OpAttr {
  name: string;
  type: number;
  value: unknown;
}

/** A tensor in the native library as the binding's `executeOp` describes it (`dtype` is a TF_* code). */
export interface Handle {
  id: number;
  shape: number[];
  dtype: number;
}

/** The parts of tfjs-node's binding used here. */
export interface Binding extends SessionBinding {
  TF_FLOAT: number;
  TF_INT32: number;
  TF_ATTR_TYPE: number;
  TF_ATTR_BOOL: number;
  TF_ATTR_INT: number;
  TF_ATTR_STRING: number;
  TF_ATTR_SHAPE: number;
  createTensor(shape: number[], dtype: number, values: Float32Array | Int32Array): number;
  deleteTensor(id: number): void;
  tensorDataSync(id: number): Float32Array | Int32Array | Uint8Array;
  getNumOfTensors(): number;
  executeOp(name: string, attrs: OpAttr[], inputs: number[], numOutputs: number): Handle[];
}

/** The parts of tfjs-node's NodeJSKernelBackend used here. */
export interface NativeBackend {
  binding: Binding;
  executeSingleOutput(name: string, attrs: OpAttr[], inputs: tf.Tensor[]): tf.Tensor;
  executeMultipleOutputs(name: string, attrs: OpAttr[], inputs: tf.Tensor[], numOutputs: number): tf.Tensor[];
  /** The native handles of tfjs tensors (still owned by tfjs). */
  getInputTensorIds(tensors: tf.Tensor[]): number[];
  /** A tfjs tensor that takes ownership of a native handle. */
  createOutputTensor(handle: Handle): tf.Tensor;
}

/**
 * The native backend when it is the current one, else undefined. Ops run through it are tracked by tfjs's engine
 * (`tf.tidy` frees them) but not recorded on the gradient tape: callers use them off the differentiated path or
 * inside a `tf.customGrad`.
 */
export function nativeBackend(): NativeBackend | undefined {
  if (tf.getBackend() !== 'tensorflow') return undefined;
  const backend = tf.backend() as unknown as Partial<NativeBackend>;
  const ok =
    typeof backend.executeSingleOutput === 'function' &&
    typeof backend.getInputTensorIds === 'function' &&
    typeof backend.createOutputTensor === 'function' &&
    typeof backend.binding?.executeOp === 'function' &&
    typeof backend.binding.runSavedModel === 'function';
  return ok ? (backend as NativeBackend) : undefined;
}

/** Whether Stepwise's own kernels (kernels/stepwise_ops.cc) are loaded, or why not. */
export type StepwiseOps = { loaded: true } | { loaded: false; reason: string };

let stepwiseOps: StepwiseOps = { loaded: false, reason: 'the native backend was not initialised' };

/**
 * Loads Stepwise's kernel library into this process once, after tfjs-node has loaded TensorFlow: dlopen runs its
 * op and kernel registrations, which TensorFlow's registries (one per process) then know by name. The library is
 * built by `stepwise setup` (infra/tfjs-native.ts) and checked there in a child process; a missing or failing one
 * leaves training on TensorFlow's kernels alone, and the reason is what {@link stepwiseOpsStatus} says.
 */
export function loadStepwiseOps(): StepwiseOps {
  if (stepwiseOps.loaded) return stepwiseOps;
  if (!settings().nativeOps) {
    stepwiseOps = { loaded: false, reason: 'STEPWISE_NATIVE_OPS=0' };
    return stepwiseOps;
  }
  let library: string;
  try {
    library = opLibraryPath();
  } catch (err) {
    stepwiseOps = { loaded: false, reason: `no kernel source: ${(err as Error).message}` };
    return stepwiseOps;
  }
  if (!existsSync(library)) {
    stepwiseOps = { loaded: false, reason: `not built for this source (run stepwise setup): ${library}` };
    return stepwiseOps;
  }
  try {
    process.dlopen({ exports: {} }, library);
    stepwiseOps = { loaded: true };
  } catch (err) {
    stepwiseOps = { loaded: false, reason: `loading ${library} failed: ${(err as Error).message}` };
  }
  return stepwiseOps;
}

export function stepwiseOpsStatus(): StepwiseOps {
  return stepwiseOps;
}
