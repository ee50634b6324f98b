/**
 * Temporal Worker Versioning for `stepwise worker`: which Worker Deployment Version a worker process belongs to, and
 * the deployment API calls that `stepwise deploy` and a worker's first start make.
 *
 * Every workflow a versioned worker runs is PINNED (the worker's default behaviour; see `versionedWorkerOptions`): a
 * run finishes on the build it started on, so new workflow code needs no `patched()` for the runs already in flight,
 * as long as the old build's workers stay up until those runs end. The teacher stage moves to the current version
 * when it continues as new (workflows/teacher-stage.ts).
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import type { Client } from '@temporalio/client';
import type { WorkerDeploymentVersion } from '@temporalio/common';
import type { WorkerOptions } from '@temporalio/worker';
import { settings } from '../infra/config';
import { InputError } from '../lib/errors';
import { codeVersion } from './deps';

/** The server keeps build ids up to this length; a longer one is silently never registered (measured on 1.32). */
const MAX_BUILD_ID_LENGTH = 255;

/**
 * A build id Temporal accepts: not empty, at most 255 characters, not starting with `__` (reserved by the server: such
 * a worker polls but never appears in its deployment), and printable ASCII without spaces so it survives a shell, a
 * log line and a Kubernetes annotation.
 */
const BUILD_ID_PATTERN = /^(?!__)[A-Za-z0-9._+=:@/-]+$/;

/** A deployment name: the canonical version string is `<deploymentName>.<buildId>`, so the name cannot hold a dot. */
const DEPLOYMENT_NAME_PATTERN = /^(?!__)[A-Za-z0-9_-]{1,255}$/;

/**
 * The configured Worker Deployment Version of `stepwise worker`, or undefined when `STEPWISE_WORKER_VERSIONING=off`.
 * @throws InputError naming the variable when the switch, the deployment name or an explicit build id is invalid.
 */
export function workerVersionFromSettings(): WorkerDeploymentVersion | undefined {
  const s = settings();
  if (s.workerVersioning !== 'on' && s.workerVersioning !== 'off') {
    throw new InputError(
      `STEPWISE_WORKER_VERSIONING must be 'on' or 'off', got '${s.workerVersioning}'`,
      'STEPWISE_WORKER_VERSIONING'
    );
  }
  if (s.workerVersioning === 'off') return undefined;
  return { deploymentName: checkDeploymentName(s.deploymentName), buildId: configuredBuildId() };
}

/** The deployment name, checked ({@link DEPLOYMENT_NAME_PATTERN}). */
export function checkDeploymentName(name: string): string {
  if (!DEPLOYMENT_NAME_PATTERN.test(name)) {
    throw new InputError(
      `STEPWISE_DEPLOYMENT_NAME must be 1-255 letters, digits, '_' or '-' (no '.', not starting with '__'), got '${name}'`,
      'STEPWISE_DEPLOYMENT_NAME'
    );
  }
  return name;
}

/**
 * `STEPWISE_BUILD_ID` when set (refused if Temporal could not take it: an operator's id is never rewritten), else
 * {@link buildIdFromCodeVersion} of this checkout's code version.
 */
export function configuredBuildId(): string {
  const explicit = settings().buildId;
  if (explicit === undefined) return buildIdFromCodeVersion(codeVersion());
  const problem = buildIdProblem(explicit);
  if (problem) throw new InputError(`STEPWISE_BUILD_ID ${problem}`, 'STEPWISE_BUILD_ID');
  return explicit;
}

/** Why Temporal would not take `buildId` as a build id, or undefined when it would. */
export function buildIdProblem(buildId: string): string | undefined {
  if (buildId.length > MAX_BUILD_ID_LENGTH) return `is ${buildId.length} characters long, at most 255 are allowed`;
  if (!BUILD_ID_PATTERN.test(buildId)) {
    return (
      `'${buildId}' is not a valid build id: expected letters, digits and . _ + = : @ / - ` +
      `(no spaces), not starting with '__'`
    );
  }
  return undefined;
}

/**
 * A valid build id from a code version (`0.1.0+1a2b3c4d5e6f`, or whatever `STEPWISE_CODE_VERSION` a deployment set):
 * characters a build id cannot hold become `-`, leading underscores are dropped, and an over-long one keeps its start
 * and a hash of the whole so two versions never share an id.
 */
export function buildIdFromCodeVersion(version: string): string {
  let id = version.replace(/[^A-Za-z0-9._+=:@/-]/g, '-').replace(/^_+/, '');
  if (id.length > MAX_BUILD_ID_LENGTH) {
    id = `${id.slice(0, 200)}-${createHash('sha256').update(version).digest('hex').slice(0, 16)}`;
  }
  return id === '' ? 'unknown' : id;
}

/**
 * The worker options that make a worker part of `version`. PINNED is the default behaviour of every workflow type it
 * hosts (the pipeline, the teacher stage and the sweep): declared here rather than on each workflow function, because
 * the server refuses a workflow task that states a versioning behaviour from an unversioned worker ("versioning
 * behavior cannot be specified without deployment options"), and the embedded mode's workers are unversioned.
 */
export function versionedWorkerOptions(
  version: WorkerDeploymentVersion
): Pick<WorkerOptions, 'workerDeploymentOptions'> {
  return { workerDeploymentOptions: { version, useWorkerVersioning: true, defaultVersioningBehavior: 'PINNED' } };
}

/** The deployment as `stepwise deploy status` shows it. */
export interface DeploymentStatus {
  deploymentName: string;
  current?: string;
  ramping?: { buildId: string; percent: number };
  /** Every version the server tracks, newest first. */
  versions: Array<{
    buildId: string;
    /** `current`, `ramping`, `draining` (pinned runs still open), `drained`, `inactive` (never current), `created`. */
    status: string;
    /** For a version no longer current: `draining` while pinned runs are open on it, `drained` once none are. */
    drainage?: string;
    createTime?: string;
    currentSince?: string;
  }>;
  /** False while a routing change is still reaching the deployment's task queues (new runs may go either way). */
  routingPropagated: boolean;
  /** Opaque token of the state read: a write passing it fails if anything changed in between. */
  conflictToken: Uint8Array;
}

/** The deployment's routing and versions; undefined when no worker of it has ever polled (the server knows none). */
export async function describeDeployment(
  client: Client,
  deploymentName: string
): Promise<DeploymentStatus | undefined> {
  let response;
  try {
    response = await client.workflowService.describeWorkerDeployment({
      namespace: client.options.namespace,
      deploymentName,
    });
  } catch (err) {
    if (grpcCode(err) === GRPC_NOT_FOUND) return undefined;
    throw err;
  }
  const info = response.workerDeploymentInfo;
  const routing = info?.routingConfig;
  const ramping = routing?.rampingDeploymentVersion?.buildId;
  const summaries = [...(info?.versionSummaries ?? [])].sort(
    (a, b) => Number(b.createTime?.seconds ?? 0) - Number(a.createTime?.seconds ?? 0)
  );
  return {
    deploymentName,
    ...(routing?.currentDeploymentVersion?.buildId ? { current: routing.currentDeploymentVersion.buildId } : {}),
    ...(ramping ? { ramping: { buildId: ramping, percent: routing?.rampingVersionPercentage ?? 0 } } : {}),
    versions: summaries.map((v) => ({
      buildId: v.deploymentVersion?.buildId ?? '',
      status: enumName(VERSION_STATUS, v.status),
      ...(v.drainageInfo?.status ? { drainage: enumName(DRAINAGE_STATUS, v.drainageInfo.status) } : {}),
      ...(v.createTime ? { createTime: isoTime(v.createTime) } : {}),
      ...(v.currentSinceTime ? { currentSince: isoTime(v.currentSinceTime) } : {}),
    })),
    routingPropagated: info?.routingConfigUpdateState !== ROUTING_UPDATE_IN_PROGRESS,
    conflictToken: response.conflictToken,
  };
}

/**
 * Waits until the deployment's last routing change has reached all its task queues (the server propagates it after
 * answering), so that "new runs go to X" holds once this resolves; true if it did within `timeoutMs`.
 */
export async function waitForRouting(client: Client, deploymentName: string, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await describeDeployment(client, deploymentName))?.routingPropagated) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * What the server is doing to propagate the deployment's routing, when it has not finished: its own workflows for this
 * deployment that are running (`temporal-sys-worker-deployment…`, which push the routing to each task queue and wait
 * for every partition to load it), and one line per activity they have pending, with its attempt and last failure.
 * For a person to read; both empty when the namespace does not let this client see those workflows (Temporal Cloud
 * may not), since this only explains a wait and must never fail the command that asks.
 */
export async function routingWork(
  client: Client,
  deploymentName: string
): Promise<{ running: string[]; pending: string[] }> {
  const { namespace } = client.options;
  const running: string[] = [];
  const pending: string[] = [];
  try {
    // Raw calls: the client's own list and describe decode memos, and these workflows' are binary/protobuf.
    const query = `TemporalNamespaceDivision = "TemporalWorkerDeployment" AND ExecutionStatus = "Running"`;
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await client.workflowService.listWorkflowExecutions({ namespace, query, nextPageToken });
      for (const info of page.executions ?? []) {
        const workflowId = info.execution?.workflowId ?? '';
        // `temporal-sys-worker-deployment:<name>` and `temporal-sys-worker-deployment-version:<name>:<build>`.
        if (workflowId.split(':')[1] !== deploymentName) continue;
        const described = await client.workflowService.describeWorkflowExecution({
          namespace,
          execution: info.execution,
        });
        running.push(`${workflowId} (${String(described.workflowExecutionInfo?.historyLength ?? '?')} events)`);
        for (const a of described.pendingActivities ?? []) {
          const failure = a.lastFailure?.message ? `, last failure: ${a.lastFailure.message}` : '';
          pending.push(`${workflowId}: ${a.activityType?.name ?? 'an activity'} (attempt ${a.attempt ?? 1}${failure})`);
        }
      }
      nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  } catch {
    // Not visible to this client, or the server is busy: the wait is reported without its explanation.
  }
  return { running, pending };
}

/** How long a wait with nothing pending must have lasted before the propagation is called stopped. */
export const STALL_AFTER_SECONDS = 30;

/**
 * routingWork's lines for a person, once a wait for the routing has run out: the activities still pending, or, when
 * the server's workflows for the deployment run with none pending after a wait of {@link STALL_AFTER_SECONDS} or
 * more, that nothing is carrying the change on. That is the shape of a server-side wedge reported as
 * temporalio/temporal#11842 (the version workflow's completion signal never reaching the deployment workflow); this
 * project's CI met it on the dev server, and a 300 s wait did not end it.
 */
export function describeRoutingWork(work: { running: string[]; pending: string[] }, waitedSeconds: number): string[] {
  if (work.pending.length > 0) return work.pending;
  // Between two activities nothing is pending for a moment: only a wait of some length says it has stopped.
  if (work.running.length === 0 || waitedSeconds < STALL_AFTER_SECONDS) return [];
  return [
    `none of the server's ${work.running.length} running workflows for this deployment has an activity pending ` +
      `(${work.running.join(', ')}): the propagation has stopped on the server's side, as in ` +
      'temporalio/temporal#11842; new runs may keep the previous routing until the server finishes it',
  ];
}

/** Who changed the deployment, as its `lastModifierIdentity` records it. */
export function deploymentIdentity(role: string): string {
  return `${role}@${hostname()}`;
}

/**
 * A worker's first start on a deployment with no current version makes its own version current, so a fresh cluster
 * runs without a separate `stepwise deploy set-current`; once any version is current, switching is left to
 * `stepwise deploy` (a new build's workers must never take over by starting). Waits for the server to list this
 * version (it registers on the first poll), then sets it with the conflict token it read: when the CPU and GPU
 * workers of a build, or two builds, start together, exactly one write wins and the others see a current version.
 * Resolves with a line saying what happened.
 */
export async function bootstrapCurrentVersion(
  client: Client,
  version: WorkerDeploymentVersion,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {}
): Promise<string> {
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  for (;;) {
    if (opts.signal?.aborted) return 'stopped before the deployment listed this version';
    const status = await describeDeployment(client, version.deploymentName).catch(() => undefined);
    const listed = status?.versions.some((v) => v.buildId === version.buildId);
    if (status && listed) {
      if (status.current !== undefined) {
        return status.current === version.buildId
          ? `build ${version.buildId} is the current version of deployment ${version.deploymentName}`
          : `build ${version.buildId} joined deployment ${version.deploymentName}, whose current version is ` +
              `${status.current}: new runs go to ${status.current} until \`stepwise deploy set-current ${version.buildId}\``;
      }
      try {
        await client.workflowService.setWorkerDeploymentCurrentVersion({
          namespace: client.options.namespace,
          deploymentName: version.deploymentName,
          buildId: version.buildId,
          conflictToken: status.conflictToken,
          identity: deploymentIdentity('stepwise-worker-bootstrap'),
        });
        return (
          `deployment ${version.deploymentName} had no current version: made build ${version.buildId} current ` +
          '(first versioned worker to start)'
        );
      } catch (err) {
        // Another worker wrote first (a conflict), or a racing write is still propagating: read again.
        if (grpcCode(err) !== GRPC_FAILED_PRECONDITION) throw err;
      }
    }
    if (Date.now() > deadline) {
      return `deployment ${version.deploymentName} did not list build ${version.buildId} in time: not made current`;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

export const GRPC_INVALID_ARGUMENT = 3;
export const GRPC_NOT_FOUND = 5;
export const GRPC_FAILED_PRECONDITION = 9;

/** The gRPC status code of a workflow-service error (the client wraps some in a `ServiceError` with it as cause). */
export function grpcCode(err: unknown): number | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (typeof e.code === 'number') return e.code;
  }
  return undefined;
}

// temporal.api.enums.v1.RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_IN_PROGRESS.
const ROUTING_UPDATE_IN_PROGRESS = 1;
// temporal.api.enums.v1.WorkerDeploymentVersionStatus and VersionDrainageStatus, by number.
const VERSION_STATUS = ['unspecified', 'inactive', 'current', 'ramping', 'draining', 'drained', 'created'];
const DRAINAGE_STATUS = ['unspecified', 'draining', 'drained'];

function enumName(names: string[], value: unknown): string {
  return typeof value === 'number' ? (names[value] ?? String(value)) : String(value ?? 'unspecified');
}

function isoTime(t: { seconds?: unknown; nanos?: number | null }): string {
  return new Date(Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6)).toISOString();
}
