import type { ArtifactStore, ArtifactRef } from '../lib/store/artifact-store';
import { registerVersion } from '../lib/registry/registry';
import { labelSourceOf, type PipelineSpec, type TaskKind } from '../lib/pipeline/spec';
import type {
  EvaluateResult,
  PromptTeacherResult,
  RegisterModelResult,
  SampleResult,
  TrainStudentResult,
  ValidateRationalesResult,
} from './types';
import { mapErrors } from './progress';

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
}

export const manifestKey = (workflowId: string) => `runs/${workflowId}/manifest.json`;

/**
 * Write the run manifest (every artifact by hash and role) and append a model version whose lineage names the
 * data, the teacher, the training and the code that produced it.
 */
export async function registerModelStage(
  deps: { store: ArtifactStore; codeVersion: string },
  input: RegisterModelInput
): Promise<RegisterModelResult> {
  return mapErrors(async () => {
    const { store } = deps;
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
    const mKey = manifestKey(input.workflowId);
    const manifest = {
      workflowId: input.workflowId,
      runId: input.runId,
      codeVersion: deps.codeVersion,
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
    };
    const s = input.spec.student;
    const version = await registerVersion(store, {
      name: input.spec.name,
      metrics: {
        accuracy: input.evaluation.accuracy,
        correct: input.evaluation.correct,
        total: input.evaluation.total,
        majorityBaseline: input.evaluation.majorityBaseline.accuracy,
      },
      checkpoint: { ...input.training.checkpoint, uri: store.uri(input.training.checkpoint) },
      lineage: {
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
        },
        codeVersion: deps.codeVersion,
        workflowId: input.workflowId,
        runId: input.runId,
        manifest: store.uri(mKey),
      },
    });
    // The manifest names the version it produced; writing it after registration keeps the two consistent.
    await store.putKey(
      mKey,
      JSON.stringify({ ...manifest, model: { name: version.name, version: version.version } }, null, 2),
      {
        contentType: 'application/json',
      }
    );
    return {
      name: version.name,
      version: version.version,
      key: `registry/${version.name}/versions/${String(version.version).padStart(6, '0')}.json`,
      manifestKey: mKey,
      manifestUri: store.uri(mKey),
      checkpointUri: version.checkpoint.uri,
    };
  });
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
