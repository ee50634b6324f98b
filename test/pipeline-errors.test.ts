import test from 'ava';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, ActivityFailure } from '@temporalio/common';
import { CPU_TASK_QUEUE } from '../contract';
import { distillationPipeline } from '../workflows';
import { listModels } from '../lib/registry/registry';
import { demoSpec } from '../lib/pipeline/spec';
import { servicesForFile } from './helpers/services';

const services = servicesForFile({ s3: false });

async function failureOf(spec: unknown, id: string) {
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `${id}-${Date.now()}`,
    args: [spec as never],
  });
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e
  );
  return { err, handle };
}

const badSpecs: [string, Record<string, unknown>, RegExp][] = [
  ['name', { name: '' }, /spec\.name: got ""/],
  ['data', { data: { kind: 'reference', dir: '/nowhere' } }, /spec\.data\.task: got nothing/],
  ['sample', { sample: { fraction: 2 } }, /spec\.sample\.fraction: got 2/],
  ['teacher', { teacher: { kind: 'openai', model: 'gpt' } }, /spec\.teacher\.url: got nothing/],
  ['student', { student: { method: 'magic' } }, /spec\.student\.method: got "magic"/],
  ['evaluate', { evaluate: { batchSize: -1 } }, /spec\.evaluate\.batchSize: got -1/],
];

for (const [field, patch, message] of badSpecs) {
  test(`a run with a bad ${field} fails at once and non-retryably, naming the field`, async (t) => {
    const { err, handle } = await failureOf({ ...demoSpec(), ...patch }, `bad-${field}`);
    t.true(err instanceof WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause;
    t.true(cause instanceof ApplicationFailure);
    t.is((cause as ApplicationFailure).type, 'InputError');
    t.true((cause as ApplicationFailure).nonRetryable);
    t.regex(cause!.message, message);
    // Nothing ran: not a single activity was scheduled.
    const history = await handle.fetchHistory();
    t.false((history.events ?? []).some((e) => e.activityTaskScheduledEventAttributes));
    // Nothing registered: no failed run in this file ever reaches the registry.
    t.deepEqual(await listModels(services().store), []);
  });
}

test('a data folder that does not exist fails the sample stage once, without retries, naming the path', async (t) => {
  const spec = {
    name: 'missing-data',
    data: { kind: 'reference', dir: '/nowhere/at/all', task: 'cqa' },
    teacher: { kind: 'replay' },
  };
  const { err, handle } = await failureOf(spec, 'missing-data');
  t.true(err instanceof WorkflowFailedError);
  const activityFailure = (err as WorkflowFailedError).cause;
  t.true(activityFailure instanceof ActivityFailure);
  const cause = activityFailure!.cause as ApplicationFailure;
  t.is(cause.type, 'InputError');
  t.regex(cause.message, /\/nowhere\/at\/all/);
  // Sample ran once; the only other activity is the failed run's report.
  const history = await handle.fetchHistory();
  const types = (history.events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
  t.deepEqual(types, ['sample', 'writeRunReport']);
  const started = (history.events ?? []).filter((e) => e.activityTaskStartedEventAttributes);
  t.is(started.length, 2);
  t.is(started[0].activityTaskStartedEventAttributes!.attempt, 1);
  t.deepEqual(await listModels(services().store), []);
});
