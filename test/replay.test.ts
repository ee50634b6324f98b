import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { Worker } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';

// A real history of the pipeline, recorded by the end-to-end test (STEPWISE_RECORD_HISTORY=1). Replaying it against
// today's workflow code catches any change that would break runs already in flight when a new version deploys.
const history = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'pipeline-history.json'), 'utf8'));

const teacherHistory = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'teacher-stage-history.json'), 'utf8'));
// Replay re-issues commands, and a child's id is part of the command: replay under the ids the recording ran with.
// The child's start event names its parent.
const pipelineId: string =
  teacherHistory.events[0].workflowExecutionStartedEventAttributes.parentWorkflowExecution.workflowId;

test('a recorded history of the pipeline replays against the current workflow code', async (t) => {
  await t.notThrowsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, history, pipelineId)
  );
});

test('a recorded history of the teacher stage (its child workflow) replays against the current workflow code', async (t) => {
  await t.notThrowsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, teacherHistory, `${pipelineId}/teacher`)
  );
});

// A teacher stage whose shards started in each other's tails (recorded by test/teacher-handoff.test.ts with
// STEPWISE_RECORD_HISTORY=1): its signals launch activities, which replay must issue in the same order.
const handoffHistory = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'teacher-handoff-history.json'), 'utf8'));

test('a recorded history of a teacher stage that handed slots on replays against the current workflow code', async (t) => {
  const id: string = handoffHistory.events[0].workflowExecutionStartedEventAttributes.workflowId ?? 'handoff';
  await t.notThrowsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, handoffHistory, id)
  );
});

// A run whose spec was parsed by a local activity (recorded by test/pipeline-e2e.test.ts with STEPWISE_RECORD_HISTORY=1,
// its file renamed): the shape of runs started since; pipeline-history.json above is the shape from before, where the
// workflow parsed its spec itself.
const specActivityHistory = JSON.parse(
  readFileSync(join(__dirname, 'fixtures', 'pipeline-spec-activity-history.json'), 'utf8')
);

test('a recorded history of a run whose spec a local activity parsed replays against the current workflow code', async (t) => {
  const markers = (specActivityHistory.events as { markerRecordedEventAttributes?: { markerName?: string } }[])
    .map((e) => e.markerRecordedEventAttributes?.markerName)
    .filter(Boolean);
  t.true(markers.includes('core_local_activity'), 'the recording has the local activity this test is about');
  const id: string = specActivityHistory.events[0].workflowExecutionStartedEventAttributes.workflowId;
  await t.notThrowsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, specActivityHistory, id)
  );
});

// A run with the promotion gate and a person's approval by Update (recorded by test/gate-workflow.test.ts with
// STEPWISE_RECORD_HISTORY=1): the workflow shape of runs started since the gate existed.
const gatedHistory = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'gated-pipeline-history.json'), 'utf8'));
const gatedId: string = gatedHistory.events[0].workflowExecutionStartedEventAttributes.workflowId ?? 'gated';

test('a recorded history of a gated, approved run replays against the current workflow code', async (t) => {
  await t.notThrowsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, gatedHistory, gatedId)
  );
});

// Scheduled refreshes (recorded by test/schedule-refresh.test.ts with STEPWISE_RECORD_HISTORY=1): a run that found
// its champion's spec and data and ended `unchanged`, and one that warm-started from the champion on new data.
for (const [file, what] of [
  ['refresh-unchanged-history.json', 'a scheduled refresh that ended unchanged'],
  ['refresh-warm-history.json', 'a scheduled refresh that warm-started from its champion'],
] as const) {
  const recorded = JSON.parse(readFileSync(join(__dirname, 'fixtures', file), 'utf8'));
  const id: string = recorded.events[0].workflowExecutionStartedEventAttributes.workflowId ?? file;
  test(`a recorded history of ${what} replays against the current workflow code`, async (t) => {
    await t.notThrowsAsync(Worker.runReplayHistory({ workflowsPath: require.resolve('../workflows') }, recorded, id));
  });
}

test('a workflow that reorders its stages fails replay with a determinism error', async (t) => {
  const err = await t.throwsAsync(
    Worker.runReplayHistory({ workflowsPath: require.resolve('./fixtures/reordered-pipeline') }, history, pipelineId)
  );
  t.true(err instanceof DeterminismViolationError, `got ${err?.name}: ${err?.message}`);
});
