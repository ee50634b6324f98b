/**
 * The one door to TensorFlow.js. Every student module imports `tf` from here, so all of them share one tfjs-core
 * instance (one engine, one kernel registry) whichever backend `initBackend` registers on it.
 */
import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS bundle has no gradients; the union package's bundle registers all of them (the same 101 as
// tfjs-core's ESM register_all_gradients, from the same release) into the global registry this engine reads. It is
// what tfjs-node loads anyway, and it loads in 0.5 s where the ESM tree's ~450 files took 0.9 s through tsx: every
// process that trains or decodes (a student child per stage) starts that much sooner.
import '@tensorflow/tfjs';

export { tf };
export type {
  Tensor,
  Tensor1D,
  Tensor2D,
  Tensor3D,
  Tensor4D,
  Scalar,
  Variable,
  NamedTensorMap,
} from '@tensorflow/tfjs-core';
