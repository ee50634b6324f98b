/**
 * A run waiting for a person's approval survives its worker: the CPU worker (which holds the workflow) is SIGKILLed
 * while the run waits, a new worker process takes over by replaying the history, and the approval Update sent then
 * is validated against the rebuilt state and promotes exactly once. Also: two people deciding at once, one of them
 * wins, the other is refused by the validator and leaves nothing behind.
 */
import test from 'ava';
import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { approveUpdate, CPU_TASK_QUEUE, progressQuery, rejectUpdate, type PipelineResult } from '../../contract';
import { distillationPipeline } from '../../workflows';
import type { PipelineSpecInput } from '../../lib/pipeline/spec';
import { getAlias, modelHistory } from '../../lib/registry/audit';
import { listVersions } from '../../lib/registry/registry';
import { figuresOnOutcome } from '../helpers/figures-hook';
import { servicesForFile } from '../helpers/services';
import { waitFor, WorkerProcesses } from './harness';

const workers = new WorkerProcesses(() => services());
test.after.always(() => workers.killAll());
const services = servicesForFile({ workers: [] });
const expect = figuresOnOutcome();

const spec = (gate: PipelineSpecInput['gate']): PipelineSpecInput => ({
  name: 'approval-restart',
  data: { kind: 'demo', size: 120, seed: 5 },
  teacher: { kind: 'scripted' },
  student: { preset: 'tiny', steps: 20, batchSize: 16 },
  gate,
});

function start(input: PipelineSpecInput, id: string): Promise<WorkflowHandle<typeof distillationPipeline>> {
  return services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `${id}-${Date.now()}`,
    args: [input],
  });
}

test('the worker dies while a run awaits approval; the approval sent to its successor promotes once', async (t) => {
  const store = services().store;
  let cpu = await workers.start('cpu');
  await workers.start('gpu');
  await (await start(spec({ firstVersion: 'always' }), 'first')).result();

  const handle = await start(spec({ minImprovement: -1, approval: { timeoutSeconds: 3600 } }), 'waiting');
  await waitFor('the run to await approval', async () => (await handle.query(progressQuery)).awaitingApproval);
  await workers.kill(cpu);
  cpu = await workers.start('cpu');

  // Two decisions race: the validator lets exactly one through.
  const decisions = await Promise.allSettled([
    handle.executeUpdate(approveUpdate, { args: [{ version: 2, identity: 'alice', comment: 'ship it' }] }),
    handle.executeUpdate(rejectUpdate, { args: [{ version: 2, identity: 'bob', comment: 'hold on' }] }),
  ]);
  const won = decisions.filter((d) => d.status === 'fulfilled');
  t.is(won.length, 1, 'one decision wins');
  const lost = decisions.find((d) => d.status === 'rejected') as PromiseRejectedResult;
  t.true(lost.reason instanceof WorkflowUpdateFailedError, String(lost.reason));
  const result = (await handle.result()) as PipelineResult;
  const outcome = result.promotion!.outcome;
  t.is(result.promotion?.decidedBy, outcome === 'promoted' ? 'alice' : 'bob');
  t.is((await getAlias(store, 'approval-restart', 'champion'))?.version, outcome === 'promoted' ? 2 : 1);

  const history = await modelHistory(store, 'approval-restart');
  const decided = history.filter((r) => (r.action === 'approve' || r.action === 'reject') && r.version === 2);
  t.is(decided.length, 1, 'one decision recorded');
  t.is(history.filter((r) => r.action === 'alias').length, outcome === 'promoted' ? 2 : 1, 'promoted at most once');
  t.deepEqual(await listVersions(store, 'approval-restart'), [1, 2]);
  expect('approval-restart', { faultsTried: 1, faultsSurvived: 1, registryDuplicates: 0 });
});
