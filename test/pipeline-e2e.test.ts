import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { CPU_TASK_QUEUE, progressQuery } from '../contract';
import type { PipelineResult } from '../contract';
import { distillationPipeline } from '../workflows';
import { getVersion, listVersions } from '../lib/registry/registry';
import { templateHash } from '../lib/teacher/templates';
import type { PipelineSpecInput } from '../lib/pipeline/spec';
import { historyJson } from './helpers/history';
import { servicesForFile } from './helpers/services';
import { retriedAttempts } from './helpers/retries';

const services = servicesForFile();

/** Small enough for a test, large enough that every stage does real work. */
export const smallDemoSpec: PipelineSpecInput = {
  name: 'e2e-demo',
  data: { kind: 'demo', size: 300, seed: 3 },
  teacher: { kind: 'scripted', errorRate: 0.1 },
  student: { preset: 'tiny', steps: 60, batchSize: 16 },
};

/**
 * How far above the majority-class baseline the small demo's test accuracy must be. Measured on the native and wasm
 * backends alike: 83.3% (50 of 60) against 50.0%. The margin leaves eight test examples of slack for other machines'
 * rounding, while a student that learnt nothing (at the baseline, or guessing) fails it.
 */
const BEATS_BASELINE_BY = 0.2;

test('the whole pipeline runs on real Temporal and a real S3 server, leaving artifacts, a registry entry and lineage', async (t) => {
  const workflowId = `e2e-${Date.now()}`;
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId,
    args: [smallDemoSpec],
  });
  const result = (await handle.result()) as PipelineResult;
  t.is(result.name, 'e2e-demo');
  t.is(result.version, 1);
  t.true(result.total > 0);
  t.log(
    `test accuracy ${(100 * result.accuracy).toFixed(1)}% (${result.correct}/${result.total}) against a ` +
      `${(100 * result.majorityBaseline).toFixed(1)}% majority-class baseline, on ${result.backend}`
  );
  t.true(result.accuracy > result.majorityBaseline + BEATS_BASELINE_BY, 'the student beats the majority baseline');

  const progress = await handle.query(progressQuery);
  t.is(progress.stage, 'done');
  t.deepEqual(
    progress.stages.map((s) => s.status),
    ['done', 'done', 'done', 'done', 'done', 'done', 'done']
  );

  // The objects are in the bucket, seen by a plain S3 client rather than through our own backend.
  const s3 = new S3Client({
    endpoint: services().s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: services().s3.accessKey, secretAccessKey: services().s3.secretKey },
  });
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: services().bucket, Prefix: 'e2e/', ContinuationToken: token })
    );
    keys.push(...(page.Contents ?? []).map((o) => o.Key!));
    token = page.NextContinuationToken;
  } while (token);
  s3.destroy();
  t.true(keys.includes(`e2e/runs/${workflowId}/manifest.json`));
  t.true(keys.includes('e2e/registry/e2e-demo/versions/000001.json'));

  const manifest = JSON.parse((await services().store.getKey(`runs/${workflowId}/manifest.json`))!.toString('utf8'));
  const roles = manifest.artifacts.map((a: { role: string }) => a.role).sort();
  t.deepEqual(roles, [
    'eval/metrics',
    'eval/predictions',
    'rationales/report',
    'rationales/train',
    'rationales/valid',
    'split/test',
    'split/train',
    'split/valid',
    'student/checkpoint',
    'student/train-log',
    'teacher/responses',
  ]);
  for (const artifact of manifest.artifacts) {
    t.true(keys.includes(`e2e/objects/sha256/${artifact.sha256.slice(0, 2)}/${artifact.sha256}`), artifact.role);
    // Reading back through the store re-hashes the bytes: content addressing holds end to end.
    const bytes = await services().store.get({ sha256: artifact.sha256, size: artifact.size });
    t.is(bytes.byteLength, artifact.size);
  }

  // The registry entry and its lineage.
  t.deepEqual(await listVersions(services().store, 'e2e-demo'), [1]);
  const version = (await getVersion(services().store, 'e2e-demo', 1))!;
  const byRole = Object.fromEntries(
    manifest.artifacts.map((a: { role: string; sha256: string }) => [a.role, a.sha256])
  );
  t.is(version.checkpoint.sha256, byRole['student/checkpoint']);
  t.is(version.lineage.workflowId, workflowId);
  t.is(version.lineage.runId, result.runId);
  t.is(version.lineage.teacher?.kind, 'scripted');
  t.is(version.lineage.teacher?.templateHash, templateHash('demo'));
  t.is(version.lineage.teacher?.responses, byRole['teacher/responses']);
  t.is(version.lineage.validation?.report, byRole['rationales/report']);
  t.regex(version.lineage.dataset.datasetHash, /^[0-9a-f]{64}$/);
  t.regex(version.lineage.dataset.sampleHash, /^[0-9a-f]{64}$/);
  t.is(version.lineage.training.method, 'distill-step-by-step');
  t.is(version.lineage.training.steps, 60);
  t.is(version.lineage.training.labelSource, 'gold');
  t.true(['tensorflow', 'wasm', 'cpu'].includes(version.lineage.training.backend));
  t.truthy(version.lineage.codeVersion);
  t.is(version.metrics.accuracy, result.accuracy);
  // The majority baseline is the training split's most common label (not the test split's), scored on test.
  const trainRows = await services().store.getJsonl<{ label: string }>(
    manifest.artifacts.find((a: { role: string }) => a.role === 'split/train')
  );
  const labelCounts = new Map<string, number>();
  for (const { label } of trainRows) labelCounts.set(label, (labelCounts.get(label) ?? 0) + 1);
  const trainMajority = [...labelCounts.entries()].sort(
    ([a, m], [b, n]) => n - m || (a < b ? -1 : a > b ? 1 : 0)
  )[0][0];
  t.is(result.baselines?.majority.label, trainMajority);
  t.is(result.baselines?.majority.accuracy, result.majorityBaseline);
  t.deepEqual(version.metrics.baselines, result.baselines);

  // Teacher accounting reaches the manifest and lineage alike.
  t.is(manifest.teacher.mode, 'direct');
  t.true(manifest.teacher.usage.promptTokens > 0 && manifest.teacher.usage.completionTokens > 0);
  t.deepEqual(version.lineage.teacher?.usage, manifest.teacher.usage);
  // Every planned call was sent, answered from the cache, or taken from its shard's journal. A journal is the
  // shard's, whichever run writes it: this file's other tests run the same examples at once, so a shard can find
  // calls one of them journalled (or those of an earlier attempt, if it was retried; logged below with the cause).
  const { planned, sent, cached, resumed } = manifest.teacher.calls;
  t.is(planned, sent + cached + resumed, JSON.stringify(manifest.teacher.calls));
  if (resumed > 0) t.log(`${resumed} call(s) resumed from a journal`);
  for (const r of await retriedAttempts(services().client, handle.workflowId)) t.log('retried:', r);

  // Five stages ran as activities of their types, the promotion gate as its plan, decision and promotion, and the
  // run's report as the last; the
  // teacher stage ran as a child workflow of its own, whose history shows its plan, shard and finish activities.
  const history = await handle.fetchHistory();
  const activityTypes = new Set(
    (history.events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
      .filter((n): n is string => Boolean(n))
  );
  t.deepEqual([...activityTypes].sort(), [
    'decideGate',
    'evaluate',
    'planGate',
    'promoteVersion',
    'registerModel',
    'sample',
    'teacherOnEvalSet',
    'trainStudent',
    'validateRationales',
    'writeRunReport',
  ]);
  const child = (history.events ?? []).find((e) => e.startChildWorkflowExecutionInitiatedEventAttributes);
  t.is(child?.startChildWorkflowExecutionInitiatedEventAttributes?.workflowType?.name, 'teacherStage');
  const teacherHistory = await services().client.workflow.getHandle(`${workflowId}/teacher`).fetchHistory();
  const teacherActivities = new Set(
    (teacherHistory.events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
      .filter((n): n is string => Boolean(n))
  );
  t.deepEqual([...teacherActivities].sort(), ['finishTeacher', 'planTeacher', 'teacherShard']);

  if (process.env.STEPWISE_RECORD_HISTORY) {
    // Recorded with the Temporal CLI, in the JSON form every Temporal tool reads (the replay test's fixtures).
    for (const [id, file] of [
      [workflowId, 'pipeline-history.json'],
      [`${workflowId}/teacher`, 'teacher-stage-history.json'],
    ]) {
      await writeFile(join(__dirname, 'fixtures', file), await historyJson(services().temporal.address, id));
    }
  }
});

test('two runs of one model register two versions, the second reusing the cached teacher responses', async (t) => {
  const spec = { ...smallDemoSpec, name: 'e2e-twice', student: { preset: 'tiny' as const, steps: 5, batchSize: 8 } };
  const run = (id: string) =>
    services().client.workflow.execute(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: id,
      args: [spec],
    });
  const [a, b] = (await Promise.all([run(`twice-a-${Date.now()}`), run(`twice-b-${Date.now()}`)])) as PipelineResult[];
  t.deepEqual([a.version, b.version].sort(), [1, 2]);
  const c = (await run(`twice-c-${Date.now()}`)) as PipelineResult;
  t.is(c.version, 3);
  const v3 = (await getVersion(services().store, 'e2e-twice', 3))!;
  // Nothing was sent: every call came from a finished shard of an earlier run, or from the response cache.
  const calls = v3.lineage.teacher!.calls!;
  t.is(calls.sent, 0);
  t.is(calls.planned, v3.lineage.dataset.counts.train + v3.lineage.dataset.counts.valid);
  t.is(calls.resumed + calls.cached, calls.planned);
});

test('the baselines run too: standard finetuning skips the teacher, standard distillation trains on teacher labels', async (t) => {
  const spec = (name: string, method: 'standard-finetune' | 'standard-distill') => ({
    ...smallDemoSpec,
    name,
    student: { preset: 'tiny' as const, steps: 5, batchSize: 8, method },
  });
  const start = (name: string, method: 'standard-finetune' | 'standard-distill') =>
    services().client.workflow.start(distillationPipeline, {
      taskQueue: CPU_TASK_QUEUE,
      workflowId: `${name}-${Date.now()}`,
      args: [spec(name, method)],
    });
  const [finetune, distill] = await Promise.all([
    start('e2e-finetune', 'standard-finetune'),
    start('e2e-distill', 'standard-distill'),
  ]);
  await Promise.all([finetune.result(), distill.result()]);

  const ftProgress = await finetune.query(progressQuery);
  t.deepEqual(
    ftProgress.stages.map((s) => `${s.name}:${s.status}`),
    [
      'sample:done',
      'promptTeacher:skipped',
      'validateRationales:skipped',
      'trainStudent:done',
      'evaluate:done',
      'registerModel:done',
      'gate:done',
    ]
  );
  t.is(ftProgress.stageCount, 5);
  const ft = (await getVersion(services().store, 'e2e-finetune', 1))!;
  t.is(ft.lineage.teacher, undefined);
  t.is(ft.lineage.training.method, 'standard-finetune');
  t.is(ft.lineage.training.labelSource, 'gold');

  const sd = (await getVersion(services().store, 'e2e-distill', 1))!;
  t.is(sd.lineage.training.method, 'standard-distill');
  t.is(sd.lineage.training.labelSource, 'teacher');
  t.is(sd.lineage.teacher?.kind, 'scripted');
});
