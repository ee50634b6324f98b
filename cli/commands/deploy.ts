/**
 * `stepwise deploy`: which build of the workers new runs go to, over Temporal's Worker Deployment API
 * (workers/versioning.ts). Runs already started stay on the build they started on (their workflows are pinned).
 *
 *   status | set-current BUILD_ID | ramp BUILD_ID --percent N      (each with --json)
 *
 * `set-current` and `ramp` return once the change has reached every task queue, or after `--wait` seconds (30 by
 * default) saying it has not, with the server's propagation work still pending.
 *
 * Exit code 2 for input the deployment cannot take (an unknown build id, a percentage outside 0..100, a bad `--wait`),
 * 1 when the server refuses the change (a concurrent change, a build whose workers do not poll every task queue yet).
 */
import { Command } from 'commander';
import type { Client } from '@temporalio/client';
import { settings } from '../../infra/config';
import { InputError } from '../../lib/errors';
import { connectClient, temporalTarget } from '../../workers/connection';
import {
  checkDeploymentName,
  deploymentIdentity,
  describeDeployment,
  grpcCode,
  GRPC_FAILED_PRECONDITION,
  GRPC_INVALID_ARGUMENT,
  GRPC_NOT_FOUND,
  routingWork,
  describeRoutingWork,
  waitForRouting,
  type DeploymentStatus,
} from '../../workers/versioning';
import { log } from '../shared/options';

interface DeployFlags {
  json?: boolean;
}

interface ChangeFlags extends DeployFlags {
  wait: string;
}

/** `set-current` and `ramp` wait, by default 30 s, for the change to reach every task queue. */
const WAIT_OPTION = ['--wait <seconds>', 'how long to wait for the change to reach every task queue', '30'] as const;

export function addDeployCommand(program: Command): void {
  const deploy = program
    .command('deploy')
    .description(
      'route new runs between worker builds (Temporal Worker Versioning, deployment STEPWISE_DEPLOYMENT_NAME; needs TEMPORAL_ADDRESS)'
    );
  deploy
    .command('status')
    .description("the deployment's current and ramping builds, and every build it knows with its drainage")
    .option('--json', 'print the status as one JSON object')
    .action(async (flags: DeployFlags) => withDeployment(async (client, name) => printStatus(client, name, flags)));
  deploy
    .command('set-current')
    .description(
      'send every new run to BUILD_ID (its workers must poll both queues); in-flight runs stay where they are'
    )
    .argument('<buildId>')
    .option('--json', 'print the change as one JSON object')
    .option(...WAIT_OPTION)
    .action(async (buildId: string, flags: ChangeFlags) =>
      withDeployment(async (client, name) => setCurrent(client, name, buildId, flags))
    );
  deploy
    .command('ramp')
    .description('send PERCENT of new runs to BUILD_ID, the rest to the current build (0 keeps it ramping at none)')
    .argument('<buildId>')
    .requiredOption('--percent <n>', 'share of new runs, 0 to 100')
    .option('--json', 'print the change as one JSON object')
    .option(...WAIT_OPTION)
    .action(async (buildId: string, flags: ChangeFlags & { percent: string }) =>
      withDeployment(async (client, name) => ramp(client, name, buildId, flags.percent, flags))
    );
}

/**
 * Connects, runs `body` against the configured deployment, and maps failures to exit codes: 2 for bad input (the
 * message names the argument), 1 for a change the server refused.
 */
async function withDeployment(body: (client: Client, deploymentName: string) => Promise<void>): Promise<void> {
  let temporal: Awaited<ReturnType<typeof connectClient>> | undefined;
  try {
    const deploymentName = checkDeploymentName(settings().deploymentName);
    temporal = await connectClient(temporalTarget());
    await body(temporal.client, deploymentName);
  } catch (err) {
    if (err instanceof InputError) {
      log(`stepwise deploy: ${err.message}`);
      process.exitCode = 2;
    } else if (grpcCode(err) === GRPC_FAILED_PRECONDITION) {
      // A conflict token that no longer matches, or a build missing pollers on a queue: the server says which.
      log(`stepwise deploy: the server refused the change: ${(err as Error).message}`);
      process.exitCode = 1;
    } else {
      throw err;
    }
  } finally {
    await temporal?.close();
  }
}

/** The deployment, or an InputError saying that no worker of it has polled yet. */
async function deploymentOrExplain(client: Client, deploymentName: string): Promise<DeploymentStatus> {
  const status = await describeDeployment(client, deploymentName);
  if (!status) {
    throw new InputError(
      `STEPWISE_DEPLOYMENT_NAME: no worker deployment '${deploymentName}' in namespace ${client.options.namespace}: ` +
        'no versioned worker of it has polled yet (start `stepwise worker` with versioning on)',
      'STEPWISE_DEPLOYMENT_NAME'
    );
  }
  return status;
}

/** The build id, checked against the versions the deployment knows, so a typo is refused before any write. */
function knownBuild(status: DeploymentStatus, buildId: string): string {
  if (!status.versions.some((v) => v.buildId === buildId)) {
    const known = status.versions.map((v) => v.buildId).join(', ') || 'none';
    throw new InputError(
      `BUILD_ID: deployment ${status.deploymentName} has no build '${buildId}' (known: ${known}); a build is known ` +
        'once one of its workers has polled',
      'BUILD_ID'
    );
  }
  return buildId;
}

/** `--wait`, whole seconds from 0 (do not wait) to an hour. */
export const parseWait = (value: string) => numberFlag(value, '--wait', 0, 3600, { wholeUnit: 'seconds' });

/** `--percent`, a number in 0..100. */
export const parsePercent = (value: string) => numberFlag(value, '--percent', 0, 100);

/** A flag's number within `min`..`max`, a whole number of `wholeUnit` when given; an InputError naming the flag. */
function numberFlag(value: string, flag: string, min: number, max: number, opts: { wholeUnit?: string } = {}) {
  const n = Number(value);
  const whole = opts.wholeUnit !== undefined;
  if (value.trim() === '' || !Number.isFinite(n) || (whole && !Number.isInteger(n)) || n < min || n > max) {
    const kind = whole ? `a whole number of ${opts.wholeUnit}` : 'a number';
    throw new InputError(`${flag} must be ${kind} from ${min} to ${max}, got '${value}'`, flag);
  }
  return n;
}

async function printStatus(client: Client, deploymentName: string, flags: DeployFlags): Promise<void> {
  const status = await deploymentOrExplain(client, deploymentName);
  if (flags.json) {
    const { conflictToken: _token, ...shown } = status;
    console.log(JSON.stringify(shown));
    return;
  }
  console.log(`deployment ${status.deploymentName} (namespace ${client.options.namespace})`);
  console.log(`  current: ${status.current ?? '(none: new runs go to unversioned workers)'}`);
  if (status.ramping) console.log(`  ramping: ${status.ramping.buildId} at ${status.ramping.percent}%`);
  if (!status.routingPropagated) {
    console.log('  routing: the last change is still reaching the task queues');
    for (const line of (await routingWork(client, deploymentName)).pending) console.log(`    ${line}`);
  }
  for (const v of status.versions) {
    const drainage = v.drainage && v.status !== 'current' ? ` (${v.drainage})` : '';
    console.log(`  ${v.buildId}  ${v.status}${drainage}  created ${v.createTime ?? '?'}`);
  }
}

async function setCurrent(client: Client, deploymentName: string, buildId: string, flags: ChangeFlags) {
  const waitSeconds = parseWait(flags.wait);
  const status = await deploymentOrExplain(client, deploymentName);
  knownBuild(status, buildId);
  const response = await client.workflowService
    .setWorkerDeploymentCurrentVersion({
      namespace: client.options.namespace,
      deploymentName,
      buildId,
      // Read above: if anyone changed the deployment since, this write fails instead of overriding them.
      conflictToken: status.conflictToken,
      identity: deploymentIdentity('stepwise-deploy'),
    })
    .catch((err: unknown) => rethrowAsInput(err, buildId));
  const previous = response.previousDeploymentVersion?.buildId || undefined;
  const propagated = await routed(client, deploymentName, waitSeconds);
  if (flags.json)
    console.log(JSON.stringify({ deploymentName, current: buildId, previous: previous ?? null, propagated }));
  else
    console.log(
      `deployment ${deploymentName}: new runs go to build ${buildId}` +
        (previous && previous !== buildId
          ? `; runs pinned to ${previous} finish there (keep its workers until drained)`
          : '')
    );
}

async function ramp(client: Client, deploymentName: string, buildId: string, percentFlag: string, flags: ChangeFlags) {
  const percent = parsePercent(percentFlag);
  const waitSeconds = parseWait(flags.wait);
  const status = await deploymentOrExplain(client, deploymentName);
  knownBuild(status, buildId);
  const response = await client.workflowService
    .setWorkerDeploymentRampingVersion({
      namespace: client.options.namespace,
      deploymentName,
      buildId,
      percentage: percent,
      conflictToken: status.conflictToken,
      identity: deploymentIdentity('stepwise-deploy'),
    })
    .catch((err: unknown) => rethrowAsInput(err, buildId));
  const previous = response.previousDeploymentVersion?.buildId || undefined;
  const propagated = await routed(client, deploymentName, waitSeconds);
  if (flags.json) {
    console.log(
      JSON.stringify({
        deploymentName,
        current: status.current ?? null,
        ramping: { buildId, percent },
        previous: previous ? { buildId: previous, percent: response.previousPercentage } : null,
        propagated,
      })
    );
  } else {
    console.log(
      `deployment ${deploymentName}: ${percent}% of new runs go to build ${buildId}, the rest to ` +
        `${status.current ?? 'unversioned workers'}`
    );
  }
}

/**
 * Waits up to `waitSeconds` for the change to reach every task queue (the server answers the write first, then
 * propagates it); until it has, new runs may still go to the previous routing. When the wait ends first, says so
 * with what the server is still doing.
 */
async function routed(client: Client, deploymentName: string, waitSeconds: number): Promise<boolean> {
  const done = await waitForRouting(client, deploymentName, waitSeconds * 1000);
  if (!done) {
    log(
      `stepwise deploy: after ${waitSeconds} s the change is still reaching the task queues; ` +
        '`stepwise deploy status` shows when it has'
    );
    const work = await routingWork(client, deploymentName);
    for (const line of describeRoutingWork(work, waitSeconds)) log(`  ${line}`);
  }
  return done;
}

/** The server's own refusal of an argument (a build it dropped since the read, a bad percentage) as bad input. */
function rethrowAsInput(err: unknown, buildId: string): never {
  const code = grpcCode(err);
  if (code === GRPC_NOT_FOUND) throw new InputError(`BUILD_ID: ${(err as Error).message}`, 'BUILD_ID');
  if (code === GRPC_INVALID_ARGUMENT) throw new InputError(`${buildId}: ${(err as Error).message}`, 'BUILD_ID');
  throw err;
}
