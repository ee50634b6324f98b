/**
 * `stepwise resume [id]`: follow an interrupted run to its registered model. Embedded (no TEMPORAL_ADDRESS), this
 * process's workers are what continue it, from where it stopped: finished stages are not run again, training picks up
 * from its newest checkpoint, teacher shards from their journals.
 */
import { Command } from 'commander';
import { WorkflowNotFoundError } from '@temporalio/client';
import { settings } from '../../infra/config';
import type { distillationPipeline } from '../../workflows';
import { openPipelineRuns } from '../../workers/interrupted';
import { log } from '../shared/options';
import { openServices, type Services } from '../shared/services';
import { followToEnd } from '../shared/progress';

export function addResumeCommand(program: Command): void {
  program
    .command('resume')
    .description('continue an interrupted run and follow it (the most recent one when no id is given)')
    .argument('[workflowId]', 'the run to resume, as `stepwise run` printed it')
    .option('--store <location>', 'artifact store: a folder, file:///path or s3://bucket/prefix (env STEPWISE_STORE)')
    .option('--json', 'print the result as one JSON line')
    .option('--verbose', "embedded: also print the dev server's output and the workers' logs (always in <state>/logs)")
    .action(async (workflowId: string | undefined, flags: ResumeFlags) => resumeRun(workflowId, flags));
}

interface ResumeFlags {
  store?: string;
  json?: boolean;
  verbose?: boolean;
}

/** Exit code 2 when there is nothing to resume, 1 when the resumed run fails. */
async function resumeRun(workflowId: string | undefined, flags: ResumeFlags): Promise<void> {
  const store = flags.store ?? settings().store;
  const started = Date.now();
  const services = await openServices(store, { verbose: flags.verbose });
  try {
    const id = workflowId ?? (await mostRecentOpenRun(services));
    if (!id || !(await resumable(services, id))) {
      process.exitCode = 2;
      return;
    }
    const handle = services.client.workflow.getHandle<typeof distillationPipeline>(id);
    await followToEnd(handle, services, { json: Boolean(flags.json), started, store });
  } finally {
    await services.stop();
  }
}

/** The most recently started open run, saying which others there are; undefined (and why) when there is none. */
async function mostRecentOpenRun(services: Services): Promise<string | undefined> {
  const runs = await openPipelineRuns(services.client);
  if (runs.length === 0) {
    log(`stepwise resume: no interrupted run in ${services.where}`);
    return undefined;
  }
  if (runs.length > 1) {
    const rest = runs.slice(1).map((r) => r.workflowId);
    log(`stepwise resume: ${runs.length} interrupted runs; resuming the latest (the others: ${rest.join(', ')})`);
  }
  return runs[0].workflowId;
}

/** Whether the named run can be followed: open, or completed (its result is then printed); says why not. */
async function resumable(services: Services, id: string): Promise<boolean> {
  let status: string;
  try {
    status = (await services.client.workflow.getHandle(id).describe()).status.name;
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
    log(`stepwise resume: no run ${id} in ${services.where}`);
    return false;
  }
  if (status === 'RUNNING') log(`stepwise: resuming run ${id}`);
  if (status === 'COMPLETED') log(`stepwise resume: run ${id} has already completed: its result follows`);
  if (status === 'RUNNING' || status === 'COMPLETED') return true;
  log(`stepwise resume: run ${id} is ${status.toLowerCase()}, not interrupted: \`stepwise run\` starts it again`);
  return false;
}
