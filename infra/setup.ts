import { ensureVersitygw } from './s3-server';
import { ensureGraphviz } from './graphviz';
import { ensureChromium } from './chromium';
import { ensureTemporalCli } from './temporal';
import { ensureTfjsNative, type TfjsNativeStatus } from './tfjs-native';
import { ensureOpenLineageSchemas } from './openlineage-schemas';
import { ensureKustomize } from './kustomize';
import { ensureMlflow } from './mlflow';
import type { Log } from './cache';

export { cacheDir } from './cache';

export interface SetupOptions {
  /** Fetch the pinned Temporal CLI (dev server). */
  temporal?: boolean;
  /** Build the pinned S3 gateway (versitygw). */
  s3?: boolean;
  /** Graphviz's dot (pinned Debian package), which renders `stepwise lineage --dot` in tests. */
  graphviz?: boolean;
  /** Headless Chromium (pinned Debian package), which the web UI's browser test drives. */
  chromium?: boolean;
  /** Make the TensorFlow native backend loadable; a failure is reported, not thrown. */
  tfjsNative?: boolean;
  /** Fetch the published OpenLineage JSON schemas the lineage tests validate events against. */
  openLineageSchemas?: boolean;
  /** Build the pinned kustomize, which renders deploy/k8s/ for the manifest test (no cluster runs in CI). */
  kustomize?: boolean;
  /** A virtual environment with the pinned MLflow, whose tracking server the MLflow export is tested against. */
  mlflow?: boolean;
  log?: Log;
}

export interface SetupResult {
  temporalCli?: string;
  versitygw?: string;
  dot?: string;
  chromium?: string;
  tfjsNative?: TfjsNativeStatus;
  openLineageSchemas?: string;
  kustomize?: string;
  /** The Python of the MLflow virtual environment (`python -m mlflow server`). */
  mlflow?: string;
}

/**
 * Ensure the dev services and native pieces a run needs. Idempotent: everything is cached per user, so a second
 * call (or one after `npm ci`) takes about a second. The Temporal CLI and versitygw are required by what asks for
 * them, so their failures throw; the native backend is optional (the student falls back to wasm).
 */
export async function setup(opts: SetupOptions): Promise<SetupResult> {
  const result: SetupResult = {};
  // Sequential on purpose: on a 2-core machine the go build and the addon compile would only fight each other.
  if (opts.temporal) result.temporalCli = await ensureTemporalCli(opts.log);
  if (opts.s3) result.versitygw = await ensureVersitygw(opts.log);
  if (opts.graphviz) result.dot = await ensureGraphviz(opts.log);
  if (opts.chromium) result.chromium = await ensureChromium(opts.log);
  if (opts.tfjsNative) result.tfjsNative = await ensureTfjsNative(opts.log);
  if (opts.openLineageSchemas) result.openLineageSchemas = await ensureOpenLineageSchemas(opts.log);
  if (opts.kustomize) result.kustomize = await ensureKustomize(opts.log);
  if (opts.mlflow) result.mlflow = await ensureMlflow(opts.log);
  return result;
}
