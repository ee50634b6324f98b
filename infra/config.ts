/**
 * The one module that reads Stepwise's environment. Everything else takes typed settings from here (entry points
 * read them and hand them down), so a variable's name, default and meaning are written once, and the README's
 * configuration table has one place to be checked against.
 *
 * Settings are read at each call rather than cached: tests and the CLI set variables for child processes, and a
 * read is a handful of property lookups.
 */
import { homedir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Forces one tfjs backend (`tensorflow`, `wasm`, `cpu`) instead of walking the ladder. */
export const BACKEND_ENV = 'STEPWISE_TFJS_BACKEND';

type Env = Record<string, string | undefined>;

export interface StepwiseSettings {
  /** `STEPWISE_HOME`: state of the embedded services (Temporal's SQLite file, the default store). */
  home: string;
  /** `STEPWISE_STORE`: artifact store location (a folder, `file:///…` or `s3://bucket/prefix`); default under home. */
  store: string;
  /** `STEPWISE_CACHE_DIR`, else `$XDG_CACHE_HOME/stepwise`, else `~/.cache/stepwise`: pinned binaries and builds. */
  cacheDir: string;
  /** `STEPWISE_CODE_VERSION`: the code version a deployment records in lineage (else `<version>+<git sha>`). */
  codeVersion?: string;
  /** `STEPWISE_TFJS_BACKEND`: a forced backend, or undefined for the ladder. */
  tfjsBackend?: string;
  /** `STEPWISE_SKIP_NATIVE=1`: never build the native tfjs addon. */
  skipNative: boolean;
  /** `STEPWISE_NATIVE_OPS=0`: never load Stepwise's own TensorFlow kernels (lib/student/kernels). */
  nativeOps: boolean;
  /**
   * `STEPWISE_TMP_EXCLUSIVE=1`: no other process makes scratch folders in this worker's temp dir (a container's own
   * /tmp), so at start it removes every scratch folder it did not make, not only those of provably dead processes.
   */
  tmpExclusive: boolean;
  /** `STEPWISE_WORKER_MEMORY_LOG_SECONDS`: a worker logs its memory this often (0: never). */
  workerMemoryLogSeconds: number;
  /**
   * `STEPWISE_WORKER_HEAP_GROWTH_PERCENT`: how far a worker's JavaScript heap may grow past what the last full
   * collection kept (default 30; 0: V8's own sizing). Raw here; workers/heap.ts checks it, naming the variable.
   */
  workerHeapGrowthPercent?: string;
  /**
   * `STEPWISE_LOG_FORMAT`: `json` (one object per line, the ids of the run, stage and attempt as fields) or `text`.
   * Default: `json` for `stepwise worker`, `text` for the embedded mode's log files and `--verbose`. Raw here;
   * workers/logging.ts checks it, naming the variable.
   */
  logFormat?: string;
  /** `STEPWISE_LOG_LEVEL`: the least severe worker log entry written, `TRACE` to `ERROR` (default `INFO`). */
  logLevel?: string;
  /** `TEMPORAL_CLI_PATH`: a Temporal CLI to use instead of the one on PATH or the pinned download. */
  temporalCliPath?: string;
  /**
   * `STEPWISE_DEV_DB_SYNC`: how the embedded dev server's SQLite commits reach the disk, `normal` (default) or `full`.
   * Raw here; infra/temporal.ts checks it, naming the variable.
   */
  devDbSync?: string;
  /** `VERSITYGW_PATH`: a versitygw binary to use instead of the pinned build. */
  versitygwPath?: string;
  /** `TEMPORAL_ADDRESS` is set: the user points at a cluster, so nothing embedded is started. */
  clusterConfigured: boolean;
  /** `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` and `AWS_REGION` / `AWS_DEFAULT_REGION`, as the AWS CLI reads them. */
  s3: { endpoint?: string; region: string };
  /** `STEPWISE_STORE_SSE`: server-side encryption of S3 store objects, `AES256` (SSE-S3) or `aws:kms`; none when unset. */
  storeSse?: string;
  /** `STEPWISE_STORE_KMS_KEY_ID`: the KMS key of `aws:kms` encryption (default: the bucket's or account's key). */
  storeKmsKeyId?: string;
  /**
   * `STEPWISE_DATA_ROOTS`: the folders (separated like PATH) a worker reads spec-named files under (data, recorded
   * completions, `student.init`); default the worker's current folder. A spec is untrusted input: without this, any
   * user who can start a run could have a worker read any file it can.
   */
  dataRoots: string[];
  /**
   * `STEPWISE_PAYLOAD_KEYS`: `id:base64key,…` (the first encrypts, all decrypt), or `STEPWISE_PAYLOAD_KEYS_FILE`: a file
   * of the same (keys mounted as a secret). Either set: Temporal payloads are encrypted with AES-256-GCM. Raw here;
   * workers/codec.ts parses and checks them, so a bad key fails the process that would use it, not every reader.
   */
  payloadKeys?: string;
  payloadKeysFile?: string;
  /** `STEPWISE_OPENLINEAGE_URL`: an OpenLineage receiver; each stage's events are POSTed to `<url>/api/lineage`. */
  openLineageUrl?: string;
  /** `STEPWISE_OPENLINEAGE_API_KEY`: sent as `Authorization: Bearer …` with each event. */
  openLineageApiKey?: string;
  /** `STEPWISE_OPENLINEAGE_NAMESPACE`: the namespace of the stage jobs and the pipeline job (default `stepwise`). */
  openLineageNamespace: string;
  /**
   * `STEPWISE_WORKER_VERSIONING`: `on` (default) or `off`. On, `stepwise worker` joins a Temporal Worker Deployment and
   * runs pinned workflows; off, it is an unversioned worker (as the embedded mode's always are). Raw here;
   * workers/versioning.ts checks it, so a typo fails the worker that reads it instead of silently meaning "on".
   */
  workerVersioning: string;
  /** `STEPWISE_DEPLOYMENT_NAME`: the Worker Deployment `stepwise worker` joins and `stepwise deploy` manages. */
  deploymentName: string;
  /**
   * `STEPWISE_BUILD_ID`: the worker's build id within the deployment (default: derived from the code version). Checked
   * in workers/versioning.ts, never rewritten: an id an operator chose is refused with the reason, not altered.
   */
  buildId?: string;
  /**
   * `STEPWISE_MLFLOW_URI`: an MLflow tracking server (`http(s)://host:port`, credentials in the URI sent as Basic auth).
   * Set, every registered version is mirrored there (lib/mlflow/export.ts): a run with params, metrics and lineage
   * tags, and a Model Registry version with the registry's aliases. A failing server is a warning, never a failed run.
   */
  mlflowUri?: string;
  /** `STEPWISE_MLFLOW_EXPERIMENT`: the MLflow experiment runs are logged to (default: one per model, its name). */
  mlflowExperiment?: string;
  /**
   * `STEPWISE_METRICS_PORT`: `stepwise worker` serves Prometheus metrics on this port (the `--metrics-port` flag wins);
   * none when unset. Raw here; workers/telemetry.ts checks it, naming the variable or flag.
   */
  metricsPort?: string;
  /** `STEPWISE_METRICS_HOST`: the address the metrics endpoint binds (default `0.0.0.0`: scraped from other hosts). */
  metricsHost: string;
  /**
   * Where traces go, by OTLP/HTTP (JSON bodies): `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else
   * `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, as OpenTelemetry's own SDKs read them. Unset, or with
   * `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, nothing is traced.
   */
  otlpTracesEndpoint?: string;
  /** `OTEL_SERVICE_NAME`: the `service.name` of exported spans (default `stepwise-worker` or `stepwise`). */
  otelServiceName?: string;
}

const nonEmpty = (value: string | undefined) => (value === undefined || value === '' ? undefined : value);

export function settings(env: Env = process.env): StepwiseSettings {
  const home = resolve(nonEmpty(env.STEPWISE_HOME) ?? join(process.cwd(), '.stepwise'));
  const xdg = nonEmpty(env.XDG_CACHE_HOME);
  const memoryLog = Number(env.STEPWISE_WORKER_MEMORY_LOG_SECONDS ?? 0);
  return {
    home,
    store: nonEmpty(env.STEPWISE_STORE) ?? pathToFileURL(join(home, 'artifacts')).href,
    cacheDir: nonEmpty(env.STEPWISE_CACHE_DIR) ?? (xdg ? join(xdg, 'stepwise') : join(homedir(), '.cache', 'stepwise')),
    codeVersion: nonEmpty(env.STEPWISE_CODE_VERSION),
    tfjsBackend: nonEmpty(env[BACKEND_ENV]),
    skipNative: env.STEPWISE_SKIP_NATIVE === '1',
    nativeOps: env.STEPWISE_NATIVE_OPS !== '0',
    tmpExclusive: env.STEPWISE_TMP_EXCLUSIVE === '1',
    workerMemoryLogSeconds: Number.isFinite(memoryLog) && memoryLog > 0 ? memoryLog : 0,
    workerHeapGrowthPercent: nonEmpty(env.STEPWISE_WORKER_HEAP_GROWTH_PERCENT),
    logFormat: nonEmpty(env.STEPWISE_LOG_FORMAT),
    logLevel: nonEmpty(env.STEPWISE_LOG_LEVEL),
    temporalCliPath: nonEmpty(env.TEMPORAL_CLI_PATH),
    devDbSync: nonEmpty(env.STEPWISE_DEV_DB_SYNC),
    versitygwPath: nonEmpty(env.VERSITYGW_PATH),
    storeSse: nonEmpty(env.STEPWISE_STORE_SSE),
    storeKmsKeyId: nonEmpty(env.STEPWISE_STORE_KMS_KEY_ID),
    clusterConfigured: Boolean(env.TEMPORAL_ADDRESS),
    s3: {
      endpoint: nonEmpty(env.AWS_ENDPOINT_URL_S3) ?? nonEmpty(env.AWS_ENDPOINT_URL),
      region: nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION) ?? 'us-east-1',
    },
    dataRoots: dataRootsFrom(env.STEPWISE_DATA_ROOTS),
    payloadKeys: nonEmpty(env.STEPWISE_PAYLOAD_KEYS),
    payloadKeysFile: nonEmpty(env.STEPWISE_PAYLOAD_KEYS_FILE),
    openLineageUrl: nonEmpty(env.STEPWISE_OPENLINEAGE_URL),
    openLineageApiKey: nonEmpty(env.STEPWISE_OPENLINEAGE_API_KEY),
    openLineageNamespace: nonEmpty(env.STEPWISE_OPENLINEAGE_NAMESPACE) ?? 'stepwise',
    workerVersioning: nonEmpty(env.STEPWISE_WORKER_VERSIONING) ?? 'on',
    deploymentName: nonEmpty(env.STEPWISE_DEPLOYMENT_NAME) ?? 'stepwise',
    buildId: nonEmpty(env.STEPWISE_BUILD_ID),
    mlflowUri: nonEmpty(env.STEPWISE_MLFLOW_URI),
    mlflowExperiment: nonEmpty(env.STEPWISE_MLFLOW_EXPERIMENT),
    metricsPort: nonEmpty(env.STEPWISE_METRICS_PORT),
    metricsHost: nonEmpty(env.STEPWISE_METRICS_HOST) ?? '0.0.0.0',
    otlpTracesEndpoint: otlpTracesEndpointFrom(env),
    otelServiceName: nonEmpty(env.OTEL_SERVICE_NAME),
  };
}

/** The OTLP/HTTP traces URL the standard OpenTelemetry variables name, or undefined when tracing is off. */
function otlpTracesEndpointFrom(env: Env): string | undefined {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return undefined;
  if (env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() === 'none') return undefined;
  const traces = nonEmpty(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
  if (traces) return traces;
  // The generic endpoint is a base: each signal appends its own path (the spec's rule for OTLP/HTTP).
  const base = nonEmpty(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  return base ? `${base.replace(/\/+$/, '')}/v1/traces` : undefined;
}

/** The configured data roots, absolute; empty entries (a stray delimiter) are dropped rather than meaning "/". */
function dataRootsFrom(value: string | undefined): string[] {
  const roots = (value ?? '')
    .split(delimiter)
    .filter((root) => root.trim() !== '')
    .map((root) => resolve(root));
  return roots.length > 0 ? roots : [process.cwd()];
}

/**
 * A teacher's API key, from the variable its spec names. Keys are looked up on the worker that makes the calls and
 * never travel in a spec (specs are kept in workflow history, manifests and lineage).
 */
export function apiKeyFrom(variable: string, env: Env = process.env): string | undefined {
  return env[variable];
}
