/**
 * The registerModel stage's work: write the run manifest (every artifact by role, hash and location) and append a
 * model version whose lineage names the data, the teacher, the training and the code that produced it.
 */
import type { ArtifactStore, ArtifactRef } from '../store/artifact-store';
import type { SampleResult } from '../data/sample';
import type { ValidateRationalesResult } from '../data/rationales';
import { labelSourceOf, type PipelineSpec, type TaskKind } from '../pipeline/spec';
import type { EvaluateResult } from '../student/evaluate-split';
import type { TrainStudentResult } from '../student/train-stage';
import type { PromptTeacherResult } from '../teacher/stage/types';
import { checkModelName, checkRunId } from './names';
import { recordRegistration, REGISTRY_IDENTITY } from './audit';
import { exemplarsHash, parseCodeVersion } from './lineage';
import type { RunManifest } from './manifest';
import { getTemplate, templateHash } from '../teacher/templates';
import {
  claimVersion,
  getVersion,
  publishVersion,
  runManifestKey,
  runReportHtmlKey,
  runReportKey,
  versionKey,
  type ModelLineage,
  type ModelVersion,
  type ScheduleTrigger,
  type RunWorkers,
} from './registry';
import { specHash } from '../pipeline/run-identity';

export interface RegisterModelInput {
  spec: PipelineSpec;
  task: TaskKind;
  workflowId: string;
  runId: string;
  sample: SampleResult;
  teacher?: PromptTeacherResult;
  validation?: ValidateRationalesResult;
  training: TrainStudentResult;
  evaluation: EvaluateResult;
  /** Set when a schedule started the run: recorded in lineage. */
  trigger?: ScheduleTrigger;
}

export interface RegisterModelResult {
  name: string;
  version: number;
  /** Registry key of the version record. */
  key: string;
  /** The workflow's named manifest (`runs/<workflowId>/manifest.json`): its latest run's. */
  manifestKey: string;
  /** The immutable, content-addressed manifest the version's lineage names. */
  manifestUri: string;
  checkpointUri: string;
}

/**
 * Register the run exactly once, in an order that survives a crash or an overlapping attempt at any write:
 *
 * 1. claim a version number (a conditional create naming the run; a retry or a racing attempt finds it again);
 * 2. write the manifest, which names that version: content-addressed (what the version's lineage points at, never
 *    overwritten) and under the workflow's name (for people and tools looking by workflow id);
 * 3. publish the version record, last, so no version is ever visible before the manifest it points at.
 *
 * Every write is a conditional create or follows from the activity's input, the code version and the claim alone, so
 * repeating any prefix of this sequence writes the same records. A run already published returns its version untouched.
 */
export async function registerRun(
  store: ArtifactStore,
  input: RegisterModelInput,
  codeVersion: string,
  workers?: RunWorkers
): Promise<RegisterModelResult> {
  const name = checkModelName(input.spec.name, 'name');
  const mKey = runManifestKey(input.workflowId);
  const claim = await claimVersion(store, name, {
    runId: checkRunId(input.runId, 'runId'),
    workflowId: input.workflowId,
  });
  const published = await getVersion(store, name, claim.version);
  if (published?.lineage.runId === claim.runId) {
    await logRegistration(store, published);
    return resultOf(published, mKey);
  }

  const manifest = { ...manifestOf(store, input, codeVersion), model: { name, version: claim.version } };
  const manifestRef = await store.putJson(manifest);
  await store.putKey(mKey, JSON.stringify(manifest, null, 2), { contentType: 'application/json' });
  const version = await publishVersion(store, claim, {
    name,
    metrics: {
      accuracy: input.evaluation.accuracy,
      correct: input.evaluation.correct,
      total: input.evaluation.total,
      majorityBaseline: input.evaluation.majorityBaseline.accuracy,
      ...(input.evaluation.baselines ? { baselines: input.evaluation.baselines } : {}),
    },
    checkpoint: { ...input.training.checkpoint, uri: store.uri(input.training.checkpoint) },
    lineage: { ...lineageOf(input, codeVersion, store.uri(manifestRef)), ...(workers ? { workers } : {}) },
  });
  await logRegistration(store, version);
  return resultOf(version, mKey);
}

/**
 * Start the version's status chain (a candidate) with the registration's audit record. After the version is
 * published, and idempotent by the run's id, so a crash between the two is repaired by the stage's retry.
 */
async function logRegistration(store: ArtifactStore, version: ModelVersion): Promise<void> {
  await recordRegistration(store, version.name, version.version, {
    id: `register:${version.lineage.runId}`,
    who: REGISTRY_IDENTITY,
    why: `registered by run ${version.lineage.workflowId}: accuracy ${(100 * version.metrics.accuracy).toFixed(1)}% on ${version.metrics.total} test examples`,
    workflowId: version.lineage.workflowId,
    details: { accuracy: version.metrics.accuracy, checkpoint: version.checkpoint.sha256 },
    now: new Date(version.createdAt),
  });
}

function resultOf(version: ModelVersion, manifestKey: string): RegisterModelResult {
  return {
    name: version.name,
    version: version.version,
    key: versionKey(version.name, version.version),
    manifestKey,
    manifestUri: version.lineage.manifest,
    checkpointUri: version.checkpoint.uri,
  };
}

/**
 * Every artifact of the run by role, hash and location, with the spec, metrics and teacher accounting. Typed as what
 * every reader of a version's manifest relies on (`RunManifest`, lib/registry/manifest.ts), so what is written and
 * what is read cannot drift apart; the other fields are for people and tools reading the run.
 */
function manifestOf(
  store: ArtifactStore,
  input: RegisterModelInput,
  codeVersion: string
): RunManifest & Record<string, unknown> {
  const artifacts: { role: string; ref: ArtifactRef | undefined }[] = [
    { role: 'split/train', ref: input.sample.train },
    { role: 'split/valid', ref: input.sample.valid },
    { role: 'split/test', ref: input.sample.test },
    { role: 'teacher/responses', ref: input.teacher?.responses },
    { role: 'rationales/train', ref: input.validation?.train },
    { role: 'rationales/valid', ref: input.validation?.valid },
    { role: 'rationales/report', ref: input.validation?.report },
    { role: 'student/checkpoint', ref: input.training.checkpoint },
    { role: 'student/train-log', ref: input.training.trainLog },
    { role: 'eval/predictions', ref: input.evaluation.predictions },
    { role: 'eval/metrics', ref: input.evaluation.metrics },
  ];
  return {
    workflowId: input.workflowId,
    runId: input.runId,
    codeVersion,
    code: parseCodeVersion(codeVersion),
    spec: input.spec,
    artifacts: artifacts
      .filter((a): a is { role: string; ref: ArtifactRef } => a.ref !== undefined)
      .map(({ role, ref }) => ({ role, sha256: ref.sha256, size: ref.size, uri: store.uri(ref) })),
    metrics: {
      accuracy: input.evaluation.accuracy,
      correct: input.evaluation.correct,
      total: input.evaluation.total,
      majorityBaseline: input.evaluation.majorityBaseline,
    },
    ...(input.teacher ? { teacher: teacherAccounting(input.teacher) } : {}),
    // Where the run's report will be: it is written when the run ends, after this manifest (and after the gate).
    report: { page: store.uri(runReportHtmlKey(input.workflowId)), record: store.uri(runReportKey(input.workflowId)) },
  };
}

/** What a registered version records about where it came from: data, teacher, validation, training, code, run. */
function lineageOf(input: RegisterModelInput, codeVersion: string, manifestUri: string): ModelLineage {
  const s = input.spec.student;
  return {
    dataset: {
      kind: input.spec.data.kind,
      task: input.task,
      source: input.sample.source,
      datasetHash: input.sample.datasetHash,
      sampleHash: input.sample.sampleHash,
      counts: input.sample.counts,
    },
    teacher: input.teacher && {
      kind: input.teacher.teacher.kind,
      model: input.teacher.teacher.model,
      templateHash: input.teacher.teacher.templateHash,
      // The exemplars as this code holds them, recorded only when its template is the one the teacher was asked with.
      ...(templateHash(input.task) === input.teacher.teacher.templateHash
        ? {
            exemplarsHash: exemplarsHash(getTemplate(input.task).exemplars),
            exemplarsCount: getTemplate(input.task).exemplars.length,
          }
        : {}),
      responses: input.teacher.responses.sha256,
      cached: input.teacher.cached,
      failed: input.teacher.failed,
      ...teacherAccounting(input.teacher),
    },
    validation: input.validation && {
      report: input.validation.report.sha256,
      kept: input.validation.kept,
      dropped: input.validation.dropped,
      teacherAccuracy: input.validation.teacherAccuracy,
    },
    training: {
      method: s.method,
      labelSource: labelSourceOf(input.spec),
      config: { ...s },
      backend: input.training.backend,
      steps: input.training.steps,
      finalLoss: input.training.finalLoss,
      params: input.training.params,
      ...(input.training.model ? { model: { ...input.training.model } as Record<string, unknown> } : {}),
      ...(input.training.initFrom ? { initFrom: input.training.initFrom } : {}),
    },
    specHash: specHash(input.spec),
    ...(input.trigger ? { trigger: input.trigger } : {}),
    codeVersion,
    code: parseCodeVersion(codeVersion),
    workflowId: input.workflowId,
    runId: input.runId,
    manifest: manifestUri,
  };
}

/** What the teacher stage cost and how it got its answers: recorded in the manifest and in lineage alike. */
function teacherAccounting(t: PromptTeacherResult) {
  return {
    mode: t.mode,
    samples: t.samples,
    shards: t.shards,
    notSent: t.notSent,
    calls: t.calls,
    usage: t.usage,
    ...(t.costUsd === undefined ? {} : { costUsd: t.costUsd }),
    ...(t.budget ? { budget: t.budget } : {}),
  };
}
