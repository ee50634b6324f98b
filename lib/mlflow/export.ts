/**
 * What a registered version looks like in MLflow, and how it gets there: one MLflow run per pipeline run (params from
 * the spec, the training loss curve and the evaluation figures as metrics, the lineage hashes and store URIs as tags)
 * and one Model Registry version per Stepwise version, whose source is the checkpoint's URI in the artifact store and
 * which carries the same aliases. Nothing is uploaded: MLflow holds references, the store holds the bytes.
 *
 * Every step finds what an earlier attempt made before making it (the run by its `stepwise.runId` tag, the model
 * version by its `stepwise.version` tag, each metric point by key and step, each param by key), so an export can be
 * repeated at any point and converges on one run and one version.
 */
import type { ArtifactStore } from '../store/artifact-store';
import { getVersion, type ModelVersion } from '../registry/registry';
import { listAliases, versionHistory } from '../registry/audit';
import { readVersionManifest, type RunManifest } from '../registry/manifest';
import type { LossPoint } from '../student/train';
import {
  MlflowClient,
  MlflowError,
  quote,
  type MlflowMetric,
  type MlflowParam,
  type MlflowRun,
  type MlflowTag,
} from './client';

/** Tags that identify what Stepwise wrote, and find it again. */
export const TAG = {
  runId: 'stepwise.runId',
  model: 'stepwise.model',
  version: 'stepwise.version',
} as const;

/** The longest param value MLflow stores (6000 characters since 2.x); a longer one is cut with a marker. */
const MAX_PARAM = 6000;
/** Tag values MLflow keeps (8000 characters in its SQL store). */
const MAX_TAG = 8000;

export interface ExportOptions {
  /** The experiment to log runs into; default the model's name. */
  experiment?: string;
}

export interface ExportResult {
  experimentId: string;
  /** The MLflow run of the pipeline run that registered the version. */
  runId: string;
  /** The Model Registry version mirroring the Stepwise version (MLflow numbers its own). */
  modelVersion: string;
  /** The aliases set on it: the Stepwise aliases naming this version now. */
  aliases: string[];
  /** What this call wrote; all zero/false on a repeated export. */
  created: { run: boolean; modelVersion: boolean; params: number; metricPoints: number };
}

/** The parts of a run's manifest the export reads; none for a version whose named manifest is gone. */
type Manifest = Partial<Pick<RunManifest, 'spec' | 'artifacts'>>;

/** The train log's fields the export reads (lib/student/train-stage.ts writes it). */
interface TrainLog {
  steps?: number;
  finalLoss?: number;
  validLoss?: number | null;
  bestStep?: number | null;
  wallMs?: number;
  params?: number;
  lossHistory?: LossPoint[];
  /** Validation losses at each evaluation (absent in train logs written before they were recorded). */
  validHistory?: LossPoint[];
}

/**
 * Mirror one registered version into MLflow: its run (params, metrics, tags), its Model Registry version and the
 * aliases that name it in the registry now.
 * @throws MlflowError when the tracking server refuses a call or does not answer; Error when the version is missing.
 */
export async function exportVersion(
  store: ArtifactStore,
  client: MlflowClient,
  name: string,
  version: number,
  opts: ExportOptions = {}
): Promise<ExportResult> {
  const v = await getVersion(store, name, version);
  if (!v) throw new Error(`${name} v${version} is not in the registry at ${store.location}`);
  const manifest = await readManifest(store, v);
  const trainLogRef = manifest.artifacts?.find((a) => a.role === 'student/train-log');
  const trainLog = trainLogRef ? await store.getJson<TrainLog>(trainLogRef) : {};
  const gate = await gateFigures(store, name, version);
  const when = Date.parse(v.createdAt);

  const experimentId = await ensureExperiment(client, opts.experiment ?? name);
  const tags = runTags(v, manifest);
  const found = await client.searchRuns([experimentId], `tags.\`${TAG.runId}\` = ${quote(v.lineage.runId)}`);
  const createdRun = found.length === 0;
  const run: MlflowRun = createdRun
    ? await client.createRun(experimentId, `${name}-v${version}`, when, tags)
    : await client.getRun(oldest(found).info.run_id);
  const runId = run.info.run_id;

  // Params are immutable in MLflow: only the missing ones are logged (a changed value would be refused).
  const logged = new Set((run.data.params ?? []).map((p) => p.key));
  const params = paramsOf(manifest.spec ?? {}).filter((p) => !logged.has(p.key));
  const metrics: MlflowMetric[] = [];
  for (const [key, points] of metricsOf(v, trainLog, gate, when)) {
    // A metric's points are appended, not replaced: a repeated export logs only the steps MLflow does not have yet
    // (a run created just now has none, so it is not asked).
    const have = new Set(createdRun ? [] : (await client.metricHistory(runId, key)).map((m) => m.step));
    metrics.push(...points.filter((p) => !have.has(p.step)));
  }
  await client.logBatch(runId, { params, metrics, tags });
  if (run.info.status !== 'FINISHED') await client.finishRun(runId, when);

  const description = `Stepwise ${name} v${version}, registered ${v.createdAt} by run ${v.lineage.workflowId}`;
  await client.ensureRegisteredModel(name, [{ key: TAG.model, value: name }], `Stepwise model ${name}`);
  const mirrored = (await client.modelVersions(name)).filter((mv) =>
    mv.tags?.some((t) => t.key === TAG.version && t.value === String(version))
  );
  const createdVersion = mirrored.length === 0;
  const modelVersion = createdVersion
    ? await client.createModelVersion({
        name,
        source: modelSource(v.checkpoint.uri, runId),
        runId,
        description,
        tags: [
          { key: TAG.version, value: String(version) },
          { key: TAG.runId, value: v.lineage.runId },
          { key: 'stepwise.checkpoint.sha256', value: v.checkpoint.sha256 },
          { key: 'stepwise.checkpoint.uri', value: v.checkpoint.uri },
        ],
      })
    : mirrored.sort((a, b) => Number(a.version) - Number(b.version))[0];

  // The registry is the truth: whichever aliases name this version there now are set here, so an export that ran
  // late, or twice, or after a later promotion, leaves MLflow's aliases as the registry's.
  const aliases = (await listAliases(store, name)).filter((a) => a.version === version).map((a) => a.alias);
  for (const alias of aliases) await client.setAlias(name, alias, modelVersion.version);

  return {
    experimentId,
    runId,
    modelVersion: modelVersion.version,
    aliases,
    created: { run: createdRun, modelVersion: createdVersion, params: params.length, metricPoints: metrics.length },
  };
}

/**
 * A model version's source: the checkpoint where the store keeps it (`s3://…`). MLflow refuses a local path as a
 * source unless it lies inside the run's own artifact folder, so a filesystem store's checkpoint is named through
 * the run instead (`runs:/<id>/checkpoint`); its real location is the version's `stepwise.checkpoint.uri` tag.
 */
export function modelSource(checkpointUri: string, runId: string): string {
  return /^file:/i.test(checkpointUri) || checkpointUri.startsWith('/') ? `runs:/${runId}/checkpoint` : checkpointUri;
}

/** The experiment's id, created when missing. A deleted experiment is not resurrected behind its owner's back. */
async function ensureExperiment(client: MlflowClient, name: string): Promise<string> {
  const existing = await client.experimentByName(name);
  if (existing?.lifecycle_stage === 'deleted') {
    throw new MlflowError(
      `experiment ${JSON.stringify(name)} is deleted in MLflow: restore it, or set STEPWISE_MLFLOW_EXPERIMENT to another`,
      'EXPERIMENT_DELETED'
    );
  }
  if (existing) return existing.experiment_id;
  try {
    return await client.createExperiment(name, [{ key: 'stepwise.source', value: 'stepwise' }]);
  } catch (err) {
    // Created by another exporter since the lookup.
    if (err instanceof MlflowError && err.code === 'RESOURCE_ALREADY_EXISTS') {
      const made = await client.experimentByName(name);
      if (made) return made.experiment_id;
    }
    throw err;
  }
}

/** Two runs with one tag can only come from two exports racing; the older one is the run both keep using. */
function oldest(runs: MlflowRun[]): MlflowRun {
  return [...runs].sort((a, b) => a.info.run_id.localeCompare(b.info.run_id))[0];
}

/**
 * The version's run manifest, for its spec (params) and artifacts. A version registered before manifests were
 * content-addressed may have lost its named manifest to a later run of the workflow: it is exported without them then,
 * rather than with another run's; a content-addressed manifest that cannot be read fails the export.
 */
async function readManifest(store: ArtifactStore, v: ModelVersion): Promise<Manifest> {
  const read = await readVersionManifest(store, v);
  if ('manifest' in read) return read.manifest;
  if (read.named) return {};
  throw new Error(`mlflow export: the manifest of ${v.name} v${v.version} (${v.lineage.manifest}) is ${read.problem}`);
}

/** What the promotion gate measured, once it has decided (absent at registration time, present after the gate). */
async function gateFigures(store: ArtifactStore, name: string, version: number) {
  const gates = (await versionHistory(store, name, version)).filter((r) => r.action === 'gate');
  const details = gates.at(-1)?.details as
    | { candidate?: { accuracy?: number }; champion?: { accuracy?: number }; pValue?: number; teacherAccuracy?: number }
    | undefined;
  return details;
}

/**
 * The spec's data, sample, student and teacher fields, flattened to dotted keys (`student.steps`): MLflow params are
 * flat strings. Arrays are kept whole as JSON; the teacher's `apiKeyEnv` names a variable, never a key.
 */
export function paramsOf(spec: Record<string, unknown>): MlflowParam[] {
  const out: MlflowParam[] = [];
  const walk = (prefix: string, value: unknown) => {
    if (value === undefined || value === null) return;
    if (typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, inner] of Object.entries(value as Record<string, unknown>)) walk(`${prefix}.${k}`, inner);
      return;
    }
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    out.push({ key: prefix, value: text.length > MAX_PARAM ? `${text.slice(0, MAX_PARAM - 1)}…` : text });
  };
  for (const part of ['data', 'sample', 'student', 'teacher'] as const) walk(part, spec[part]);
  return out;
}

/**
 * Metric series by key. The training curve keeps the train log's steps; one-off figures (evaluation, baselines,
 * teacher, gate) are logged at the run's last step, so MLflow's charts put them at the end of the curve.
 */
export function metricsOf(
  v: ModelVersion,
  log: TrainLog,
  gate: Awaited<ReturnType<typeof gateFigures>>,
  timestamp: number
): Map<string, MlflowMetric[]> {
  const series = new Map<string, MlflowMetric[]>();
  const add = (key: string, value: number | undefined | null, step: number) => {
    if (value === undefined || value === null || !Number.isFinite(value)) return;
    const list = series.get(key) ?? [];
    list.push({ key, value, timestamp, step });
    series.set(key, list);
  };
  for (const p of log.lossHistory ?? []) {
    add('train_loss', p.loss, p.step);
    add('train_label_loss', p.labelLoss, p.step);
    add('train_rationale_loss', p.rationaleLoss, p.step);
  }
  for (const p of log.validHistory ?? []) {
    add('valid_loss', p.loss, p.step);
    add('valid_label_loss', p.labelLoss, p.step);
    add('valid_rationale_loss', p.rationaleLoss, p.step);
  }
  const last = log.steps ?? v.lineage.training.steps;
  // Older train logs have only the validation loss of the returned weights.
  if (!log.validHistory?.length) add('valid_loss', log.validLoss, log.bestStep ?? last);
  add('final_train_loss', v.lineage.training.finalLoss, last);
  add('train_seconds', log.wallMs === undefined ? undefined : log.wallMs / 1000, last);
  add('student_params', v.lineage.training.params, last);
  add('accuracy', v.metrics.accuracy, last);
  add('test_examples', v.metrics.total, last);
  add('majority_baseline', v.metrics.baselines?.majority.accuracy ?? v.metrics.majorityBaseline, last);
  add('best_operation_baseline', v.metrics.baselines?.bestOperation?.accuracy, last);
  // The teacher against gold on the training rationales it wrote (validation), and on the gate's evaluation set.
  add('teacher_train_accuracy', v.lineage.validation?.teacherAccuracy, last);
  add('teacher_accuracy', gate?.teacherAccuracy, last);
  add('gate_champion_accuracy', gate?.champion?.accuracy, last);
  add('gate_p_value', gate?.pValue, last);
  add('teacher_cost_usd', v.lineage.teacher?.costUsd, last);
  add('teacher_prompt_tokens', v.lineage.teacher?.usage?.promptTokens, last);
  add('teacher_completion_tokens', v.lineage.teacher?.usage?.completionTokens, last);
  add('rationales_kept', v.lineage.validation?.kept, last);
  return series;
}

/** Lineage as tags: the hashes that say what the model is made of, and where its records are in the store. */
function runTags(v: ModelVersion, manifest: Manifest): MlflowTag[] {
  const l = v.lineage;
  const tags: [string, string | number | undefined][] = [
    [TAG.runId, l.runId],
    [TAG.model, v.name],
    [TAG.version, v.version],
    ['stepwise.workflowId', l.workflowId],
    ['stepwise.dataset.hash', l.dataset.datasetHash],
    ['stepwise.dataset.sampleHash', l.dataset.sampleHash],
    ['stepwise.dataset.source', l.dataset.source],
    ['stepwise.task', l.dataset.task],
    ['stepwise.specHash', l.specHash],
    ['stepwise.checkpoint.sha256', v.checkpoint.sha256],
    ['stepwise.checkpoint.uri', v.checkpoint.uri],
    ['stepwise.codeVersion', l.codeVersion],
    ['stepwise.code.commit', l.code?.commit],
    ['stepwise.teacher.model', l.teacher?.model],
    ['stepwise.teacher.templateHash', l.teacher?.templateHash],
    ['stepwise.teacher.responses', l.teacher?.responses],
    ['stepwise.training.method', l.training.method],
    ['stepwise.training.backend', l.training.backend],
    ['stepwise.manifest', l.manifest],
    ['stepwise.schedule', l.trigger?.scheduleId],
    // Every artifact of the run by role (the report among them, where the run wrote one): links, not uploads.
    ...(manifest.artifacts ?? []).map((a): [string, string] => [`stepwise.artifact.${a.role}`, a.uri]),
    ['mlflow.source.name', 'stepwise'],
    ['mlflow.note.content', `Stepwise ${v.name} v${v.version} (run ${l.workflowId}). Manifest: ${l.manifest}`],
  ];
  return tags
    .filter((t): t is [string, string | number] => t[1] !== undefined && t[1] !== '')
    .map(([key, value]) => ({ key, value: String(value).slice(0, MAX_TAG) }));
}
