/**
 * OpenLineage events around every stage activity. `withOpenLineage` wraps the whole activity table: each stage emits
 * START when an attempt begins and COMPLETE or FAIL (ABORT when cancelled) when it ends, with every ArtifactRef found
 * in its input as an input dataset and every new one in its result as an output. Events are built by
 * lib/lineage/openlineage.ts from the activity's info; this file only adds the ids, the store and the POST.
 *
 * The store is the record: each event is written there first, and a write that fails fails the attempt (retried
 * like any store fault). The receiver is a copy: a POST that fails or times out is a warning, never a failed stage.
 */
import { activityInfo, log } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { settings } from '../infra/config';
import {
  buildRunEvent,
  collectRefs,
  eventKey,
  pipelineRunUuid,
  producerUri,
  stageRunUuid,
  type RunEventType,
  type StoredDataset,
} from '../lib/lineage/openlineage';
import type { ArtifactStore } from '../lib/store/artifact-store';

export interface OpenLineageDeps {
  store: ArtifactStore;
  /** Finds the pipeline run a child workflow's activity belongs to; without it, the activity's own workflow is used. */
  client?: Client;
  codeVersion: string;
}

/**
 * Which stage an activity belongs to and which events it emits. An activity not listed is a stage of its own
 * (job = its name), so a stage added later is covered without an entry here.
 */
interface StageRole {
  job: string;
  start: boolean;
  complete: boolean;
  /** `every`: FAIL on every failed attempt; `final`: only on a non-retryable failure (the stage's end). */
  fail: 'every' | 'final';
}

const teacherPart: StageRole = { job: 'promptTeacher', start: false, complete: false, fail: 'final' };
const gatePart = (activity: string): StageRole => ({
  job: `gate.${activity}`,
  start: true,
  complete: true,
  fail: 'every',
});

/**
 * The teacher stage is a child workflow: its plan is the stage's START and its finish the COMPLETE; a shard or batch
 * activity reports only a failure no retry will fix. The gate's activities are paired per activity (`gate.planGate`
 * …): which of them ends the gate depends on the decision and the approval, so one START/COMPLETE pair would need
 * the workflow to say; per activity, every event is emitted where it happens.
 */
const ROLES: Record<string, StageRole> = {
  planTeacher: { job: 'promptTeacher', start: true, complete: false, fail: 'every' },
  finishTeacher: { job: 'promptTeacher', start: false, complete: true, fail: 'every' },
  teacherShard: teacherPart,
  submitTeacherBatch: teacherPart,
  pollTeacherBatch: teacherPart,
  collectTeacherBatch: teacherPart,
  planGate: gatePart('planGate'),
  teacherOnEvalSet: gatePart('teacherOnEvalSet'),
  decideGate: gatePart('decideGate'),
  recordApproval: gatePart('recordApproval'),
  promoteVersion: gatePart('promoteVersion'),
};

function roleOf(activity: string): StageRole {
  return ROLES[activity] ?? { job: activity, start: true, complete: true, fail: 'every' };
}

type AnyActivity = (...args: any[]) => Promise<unknown>;

/** Wrap every activity of `activities` (an object of activity functions) with its stage's events. */
export function withOpenLineage<T extends Record<string, AnyActivity>>(deps: OpenLineageDeps, activities: T): T {
  const emitter = new Emitter(deps);
  const wrapped: Record<string, AnyActivity> = {};
  for (const [name, fn] of Object.entries(activities)) {
    wrapped[name] = (...args: unknown[]) => emitter.around(name, args, () => fn(...args));
  }
  return wrapped as T;
}

interface StageContext {
  workflowId: string;
  pipeline: { workflowId: string; runId: string };
  job: string;
  stageRunId: string;
  attempt: number;
  activityId: string;
  inputs: StoredDataset[];
}

class Emitter {
  /** Pipeline run of each workflow run seen (one describe per child run and worker); bounded, oldest dropped. */
  private readonly roots = new Map<string, Promise<{ workflowId: string; runId: string }>>();

  constructor(private readonly deps: OpenLineageDeps) {}

  async around(activity: string, args: unknown[], body: () => Promise<unknown>): Promise<unknown> {
    const ctx = await this.context(activity, args);
    // Outside a workflow (an activity run by hand, or a test's mock environment without one) there is no run to name.
    if (!ctx) return body();
    const role = roleOf(activity);
    if (role.start) await this.emit('START', ctx);
    let result: unknown;
    try {
      result = await body();
    } catch (err) {
      const type: RunEventType = err instanceof CancelledFailure ? 'ABORT' : 'FAIL';
      const final = err instanceof ApplicationFailure && err.nonRetryable;
      if (role.fail === 'every' || final || type === 'ABORT') await this.emitQuietly(type, ctx, [], err);
      throw err;
    }
    if (role.complete) {
      const inputs = new Set(ctx.inputs.map((d) => d.ref.sha256));
      const outputs = this.datasets(result).filter((d) => !inputs.has(d.ref.sha256));
      await this.emit('COMPLETE', ctx, outputs);
    }
    return result;
  }

  private async context(activity: string, args: unknown[]): Promise<StageContext | undefined> {
    let info: ReturnType<typeof activityInfo>;
    try {
      info = activityInfo();
    } catch {
      return undefined;
    }
    const own = info.workflowExecution;
    if (!own) return undefined;
    const pipeline = await this.pipelineOf(own);
    const job = roleOf(activity).job;
    // A stage that is one activity is told apart by its activity id (a second `evaluate` is a second stage run, a
    // retry the same one); a stage that is a child workflow by the child's id, shared by all of its activities.
    const child = pipeline.workflowId !== own.workflowId;
    const instance = child ? `child:${own.workflowId}` : `activity:${info.activityId}`;
    return {
      workflowId: pipeline.workflowId,
      pipeline,
      job,
      stageRunId: stageRunUuid(pipeline.workflowId, pipeline.runId, job, instance),
      attempt: info.attempt,
      activityId: info.activityId,
      inputs: this.datasets(args),
    };
  }

  /** The root of the workflow chain (the pipeline run) that `own` belongs to; itself when it is the root. */
  private pipelineOf(own: { workflowId: string; runId: string }): Promise<{ workflowId: string; runId: string }> {
    const client = this.deps.client;
    if (!client) return Promise.resolve(own);
    const cached = this.roots.get(own.runId);
    if (cached) return cached;
    const root = client.workflow
      .getHandle(own.workflowId, own.runId)
      .describe()
      .then((d) => {
        const r = d.rootExecution ?? d.parentExecution;
        return r?.workflowId && r.runId ? { workflowId: r.workflowId, runId: r.runId } : own;
      });
    // A failed lookup is not cached: the next attempt asks again.
    root.catch(() => this.roots.delete(own.runId));
    this.roots.set(own.runId, root);
    if (this.roots.size > 1000) this.roots.delete(this.roots.keys().next().value!);
    return root;
  }

  private datasets(value: unknown): StoredDataset[] {
    return collectRefs(value).map((ref) => ({ uri: this.deps.store.uri(ref), ref }));
  }

  /** A FAIL or ABORT must not hide the stage's own error: a failure to record it is logged instead. */
  private async emitQuietly(type: RunEventType, ctx: StageContext, outputs: StoredDataset[], err: unknown) {
    try {
      await this.emit(type, ctx, outputs, err);
    } catch (emitErr) {
      log.warn(`OpenLineage: could not store the ${type} event of ${ctx.job}: ${String(emitErr)}`);
    }
  }

  private async emit(type: RunEventType, ctx: StageContext, outputs: StoredDataset[] = [], err?: unknown) {
    const s = settings();
    const event = buildRunEvent({
      eventType: type,
      eventTime: new Date().toISOString(),
      producer: producerUri(this.deps.codeVersion),
      namespace: s.openLineageNamespace,
      job: ctx.job,
      runId: ctx.stageRunId,
      parent: { job: ctx.pipeline.workflowId, runId: pipelineRunUuid(ctx.pipeline.workflowId, ctx.pipeline.runId) },
      inputs: ctx.inputs,
      outputs,
      error: err === undefined ? undefined : errorOf(err),
    });
    const key = eventKey(ctx.workflowId, ctx.job, ctx.stageRunId, type, ctx.attempt, ctx.activityId);
    let line = JSON.stringify(event);
    const created = await this.deps.store.putKey(key, `${line}\n`, {
      createOnly: true,
      contentType: 'application/x-ndjson',
    });
    // Only a worker that died between store and POST sees its key taken: the stored event is the one to send.
    if (!created) line = ((await this.deps.store.getKey(key))?.toString('utf8') ?? line).trim();
    if (s.openLineageUrl) await post(s.openLineageUrl, s.openLineageApiKey, line, `${type} ${ctx.job}`);
  }
}

function errorOf(err: unknown): { message: string; stackTrace?: string } {
  if (err instanceof Error) return { message: err.message || err.name, stackTrace: err.stack };
  return { message: String(err) };
}

/** How long a receiver may take per event: a stage waits on it, so it must be short. */
const POST_TIMEOUT_MS = 5_000;

/** POST one event to `<url>/api/lineage`. Never throws: a receiver's failure is logged, the stored copy remains. */
async function post(url: string, apiKey: string | undefined, body: string, what: string): Promise<void> {
  const endpoint = `${url.replace(/\/+$/, '')}/api/lineage`;
  try {
    const res = await fetch(endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
      body,
      signal: AbortSignal.timeout(POST_TIMEOUT_MS),
    });
    await res.arrayBuffer().catch(() => undefined);
    if (!res.ok) log.warn(`OpenLineage: ${endpoint} answered ${res.status} to ${what}; the event stays in the store`);
  } catch (err) {
    log.warn(`OpenLineage: POST ${what} to ${endpoint} failed (${String(err)}); the event stays in the store`);
  }
}
