import test from 'ava';
import { WorkflowFailedError } from '@temporalio/client';
import { CancelledFailure } from '@temporalio/common';
import { CPU_TASK_QUEUE, progressQuery } from '../contract';
import { distillationPipeline } from '../workflows';
import { listModels } from '../lib/registry/registry';
import { servicesForFile } from './helpers/services';
import { trainingChildren } from './helpers/processes';

const services = servicesForFile({ s3: false });

test('cancelling a run during training stops the training process promptly and registers nothing', async (t) => {
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `cancel-${Date.now()}`,
    args: [
      {
        name: 'cancelled',
        data: { kind: 'demo', size: 200, seed: 1 },
        teacher: { kind: 'scripted' },
        // Far more steps than the test will wait for: only cancellation can end this run in time.
        student: { preset: 'tiny', steps: 100_000, batchSize: 8 },
      },
    ],
  });
  const deadline = Date.now() + 120_000;
  for (;;) {
    const p = await handle.query(progressQuery).catch(() => undefined);
    if (p?.stage === 'trainStudent' && p.step > 0) break;
    if (Date.now() > deadline) return t.fail(`training did not start: ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  t.true(trainingChildren().length > 0, 'a training child process is running');
  const cancelledAt = Date.now();
  await handle.cancel();
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e
  );
  const elapsed = Date.now() - cancelledAt;
  t.true(err instanceof WorkflowFailedError);
  t.true((err as WorkflowFailedError).cause instanceof CancelledFailure);
  t.is((await handle.describe()).status.name, 'CANCELLED');
  // WAIT_CANCELLATION_COMPLETED: the workflow closes only after the activity has killed its child.
  t.deepEqual(trainingChildren(), []);
  t.true(elapsed < 30_000, `cancellation took ${elapsed} ms`);
  const progress = await handle.query(progressQuery);
  t.is(progress.stage, 'cancelled');
  t.deepEqual(await listModels(services().store), []);
});
