/**
 * What the kill suite shares: worker processes to start and SIGKILL, a view of a run's activities as the server has
 * them (in flight, retried, completed), and the figures a faulted run is judged by: examples lost, teacher calls
 * answered twice, registry versions beyond one.
 */
import type { ChildProcess } from 'node:child_process';
import { defaultPayloadConverter } from '@temporalio/common';
import type { WorkflowHandle } from '@temporalio/client';
import type { ExecutionContext } from 'ava';
import type { PromptTeacherResult, SampleResult, TrainStudentResult, ValidateRationalesResult } from '../../contract';
import type { Example } from '../../lib/data/types';
import { getVersion, listVersions } from '../../lib/registry/registry';
import type { ArtifactStore } from '../../lib/store/artifact-store';
import { startWorkerProcess, type Services } from '../helpers/services';
import { killGroup } from '../helpers/processes';
import { walkActivities } from '../helpers/retries';

export { sleep, waitFor, within } from '../helpers/wait';

/**
 * Worker processes (`stepwise worker --queue …`, each its own process group so its training child dies with it),
 * their output kept for a failure's log. `killAll` belongs in a `test.after.always` registered before the services',
 * so no worker outlives the servers it is connected to.
 */
export class WorkerProcesses {
  readonly log: string[] = [];
  private readonly running = new Set<ChildProcess>();

  constructor(private readonly services: () => Services) {}

  async start(queue: 'cpu' | 'gpu', env: Record<string, string> = {}, services = this.services()) {
    const worker = await startWorkerProcess(services, queue, this.log, { detached: true, env });
    this.running.add(worker);
    worker.on('exit', () => this.running.delete(worker));
    return worker;
  }

  /** SIGKILL a worker's whole group and wait until the worker is gone: no chance to finish or report anything. */
  async kill(worker: ChildProcess): Promise<void> {
    if (worker.exitCode !== null || worker.signalCode !== null) return;
    const gone = new Promise((r) => worker.once('exit', r));
    killGroup(worker, 'SIGKILL');
    await gone;
  }

  killAll(): void {
    for (const w of this.running) killGroup(w, 'SIGKILL');
  }

  tail(chars = 4000): string {
    return this.log.join('').slice(-chars);
  }
}

/** PENDING_ACTIVITY_STATE_STARTED in temporal.api.enums.v1.PendingActivityState: a worker holds the task. */
const STARTED = 2;

/** An activity of `type` that a worker is running right now (per the server), with its attempt; else undefined. */
export async function runningActivity(handle: WorkflowHandle, type: string) {
  const { raw } = await handle.describe();
  const pending = raw.pendingActivities?.find((a) => a.activityType?.name === type && Number(a.state) === STARTED);
  return pending ? { attempt: pending.attempt ?? 1, worker: pending.lastWorkerIdentity ?? '' } : undefined;
}

/** A pending activity's latest heartbeat details, as the server has them. */
export async function heartbeatOf<T>(handle: WorkflowHandle, type: string): Promise<T | undefined> {
  const { raw } = await handle.describe();
  const pending = raw.pendingActivities?.find((a) => a.activityType?.name === type);
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  return payload ? defaultPayloadConverter.fromPayload<T>(payload) : undefined;
}

export interface RunHistory {
  /** Each completed activity's result (the last, for a type that ran more than once), and the teacher child's. */
  results: Record<string, unknown>;
  /** Per activity type, the attempts that started after an earlier one timed out (a killed worker's retries). */
  retriedAfterTimeout: Record<string, number[]>;
  /** Per activity type, the heartbeat timeout it was scheduled with, in seconds (0: none). */
  heartbeatTimeoutSeconds: Record<string, number>;
}

/** What the server recorded of a run: its stages' results and which of them were retried after a timeout. */
export async function runHistory(handle: WorkflowHandle): Promise<RunHistory> {
  const events = (await handle.fetchHistory()).events ?? [];
  const results: Record<string, unknown> = {};
  const retriedAfterTimeout: Record<string, number[]> = {};
  const heartbeatTimeoutSeconds: Record<string, number> = {};
  walkActivities(events, {
    scheduled(activity, scheduled) {
      heartbeatTimeoutSeconds[activity] = Number(scheduled.heartbeatTimeout?.seconds ?? 0);
    },
    started(activity, started) {
      if (started.lastFailure?.timeoutFailureInfo) (retriedAfterTimeout[activity] ??= []).push(started.attempt ?? 0);
    },
    completed(activity, completed) {
      const payload = completed.result?.payloads?.[0];
      if (payload) results[activity] = defaultPayloadConverter.fromPayload(payload);
    },
  });
  for (const e of events) {
    const child = e.childWorkflowExecutionCompletedEventAttributes?.result?.payloads?.[0];
    if (child) results.promptTeacher = defaultPayloadConverter.fromPayload(child);
  }
  return { results, retriedAfterTimeout, heartbeatTimeoutSeconds };
}

export interface RunFigures {
  /** Train and valid examples with neither a teacher completion nor a recorded failure, or missing from validation. */
  examplesLost: number;
  /** Registry versions of this run beyond the one it should have. */
  registryDuplicates: number;
  versionsOfRun: number;
  trainSteps: number;
}

/**
 * The figures of a finished run, read from what it stored: every train and valid example must come out of the teacher
 * stage as a completion or a recorded failure and be counted by validation as kept or dropped for a reason; the
 * registry must hold exactly one version whose lineage names the run.
 */
export async function runFigures(
  t: ExecutionContext,
  store: ArtifactStore,
  handle: WorkflowHandle,
  name: string
): Promise<RunFigures> {
  const { results } = await runHistory(handle);
  const sample = results.sample as SampleResult;
  const teacher = results.promptTeacher as PromptTeacherResult | undefined;
  const validation = results.validateRationales as ValidateRationalesResult | undefined;
  const training = results.trainStudent as TrainStudentResult;
  let examplesLost = 0;
  if (teacher) {
    const [train, valid, responses] = await Promise.all([
      store.getJsonl<Example>(sample.train),
      store.getJsonl<Example>(sample.valid),
      store.getJsonl<{ id: string; completion?: string; error?: string }>(teacher.responses),
    ]);
    const answered = new Set(responses.filter((r) => r.completion || r.error).map((r) => r.id));
    examplesLost = [...train, ...valid].filter((ex) => !answered.has(ex.id)).length;
    if (validation) {
      const accounted = validation.kept + Object.values(validation.dropped).reduce((a, b) => a + b, 0);
      t.log(`validation: kept ${validation.kept} + dropped ${accounted - validation.kept} of ${teacher.total}`);
      examplesLost += Math.max(0, teacher.total - accounted);
    }
  }
  let versionsOfRun = 0;
  for (const version of await listVersions(store, name)) {
    const record = await getVersion(store, name, version);
    if (record?.lineage.workflowId === handle.workflowId) versionsOfRun += 1;
  }
  return {
    examplesLost,
    versionsOfRun,
    registryDuplicates: Math.max(0, versionsOfRun - 1),
    trainSteps: training.steps,
  };
}

/** Teacher calls journalled so far in `store`, over every shard (one JSON line per finished call). */
export async function journalledCalls(store: ArtifactStore): Promise<number> {
  let lines = 0;
  for (const key of await store.listKeys('teacher/journal/')) {
    const bytes = await store.getKey(key);
    if (bytes) lines += bytes.toString('utf8').split('\n').filter(Boolean).length;
  }
  return lines;
}
