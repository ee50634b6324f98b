/**
 * Following a run from the terminal when nothing serves it: the follower says so once its progress queries have gone
 * unanswered for a while (instead of waiting in silence), and reports the run's end without waiting out the server's
 * own query timeout.
 */
import test from 'ava';
import { WorkflowFailedError } from '@temporalio/client';
import { CPU_TASK_QUEUE } from '../contract';
import { distillationPipeline } from '../workflows';
import { follow, QUERY_DEADLINE_MS, UnansweredQueries } from '../cli/shared/progress';
import { servicesForFile } from './helpers/services';
import { sleep, waitFor } from './helpers/wait';

// No workers: the run's queries reach no one.
const services = servicesForFile({ s3: false, workers: [] });

test('a run no worker serves is said to be unanswered, and its end is reported within one query deadline', async (t) => {
  const handle = await services().client.workflow.start(distillationPipeline, {
    taskQueue: CPU_TASK_QUEUE,
    workflowId: `follow-unserved-${Date.now()}`,
    args: [{ name: 'unserved', data: { kind: 'demo', size: 60, seed: 1 }, teacher: { kind: 'scripted' } }],
  });
  const said: string[] = [];
  const followed = follow(handle, true, undefined, { unansweredMs: 1_000, say: (line) => said.push(line) });
  followed.catch(() => undefined);
  const line = await waitFor('the follower to say the run is unanswered', () => said[0], 60_000);
  t.regex(line, new RegExp(`^stepwise: ${handle.workflowId} has answered no progress query for \\d+ s \\(last: .+\\)`));
  t.regex(line, /no workflow worker is serving it/);
  // The next query is now waiting on the server (which would hold it 30 s); the run's end waits for it no longer than
  // the follower's own deadline per query.
  await sleep(1_000);
  const terminatedAt = Date.now();
  await handle.terminate('ended by the test');
  const error = await t.throwsAsync(followed, { instanceOf: WorkflowFailedError });
  const settledMs = Date.now() - terminatedAt;
  t.log(`follow settled ${settledMs} ms after the run was terminated (${error?.message})`);
  t.true(settledMs < QUERY_DEADLINE_MS + 8_000, `follow waited ${settledMs} ms after the run ended`);
  t.is(said.length, 1, `said once: ${JSON.stringify(said)}`);
});

test('the silence is said once when it passes its bound, and its end once when the run answers again', async (t) => {
  const said: string[] = [];
  const quiet = new UnansweredQueries('wf-1', (line) => said.push(line), 200);
  quiet.failed(new Error('not yet'));
  t.deepEqual(said, [], 'a failure within the bound is not news');
  await sleep(250);
  quiet.failed(new Error('deadline exceeded'));
  quiet.failed(new Error('deadline exceeded again'));
  t.is(said.length, 1);
  t.regex(said[0], /^stepwise: wf-1 has answered no progress query for 0 s \(last: deadline exceeded\)/);
  quiet.answered();
  quiet.answered();
  t.deepEqual(said.slice(1), ['stepwise: wf-1 answers again']);
  // A new silence starts from the last answer.
  quiet.failed(new Error('again'));
  t.is(said.length, 2);
});
