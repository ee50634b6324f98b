/**
 * Following a running pipeline from the terminal: a bar per stage, fed by polling the workflow's progress query.
 */
import { ActivityFailure, ChildWorkflowFailure, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { progressQuery, type PipelineProgress, type PipelineResult, type StageName } from '../../contract';
import { settledWithin } from '../../lib/wait';
import type { distillationPipeline } from '../../workflows';
import { log } from './options';
import type { Services } from './services';

const STAGE_LABELS: Record<StageName, string> = {
  sample: 'sample',
  promptTeacher: 'prompt teacher',
  validateRationales: 'validate rationales',
  trainStudent: 'train student',
  evaluate: 'evaluate',
  registerModel: 'register model',
  gate: 'promotion gate',
};

/** One bar per stage: finished stages stay printed with their summary, the running one is redrawn in place. */
export class ProgressView {
  private printed = new Set<string>();
  private live = false;
  constructor(
    private readonly tty: boolean,
    /** The embedded server's address, for the approval command's hint (a cluster's is in TEMPORAL_ADDRESS). */
    private readonly embeddedAddress?: string
  ) {}

  update(p: PipelineProgress) {
    for (const s of p.stages) {
      if ((s.status === 'done' || s.status === 'skipped' || s.status === 'failed') && !this.printed.has(s.name)) {
        this.printed.add(s.name);
        const mark = s.status === 'done' ? '✔' : s.status === 'skipped' ? '-' : '✖';
        this.write(
          `${mark} ${STAGE_LABELS[s.name].padEnd(20)} ${s.status === 'skipped' ? 'skipped' : (s.summary ?? s.status)}`,
          true
        );
      }
    }
    const current = p.stages.find((s) => s.status === 'running');
    if (p.awaitingApproval && !this.printed.has('awaiting approval')) {
      // Said once, in every mode: the run now waits on a person, possibly for days.
      this.printed.add('awaiting approval');
      const a = p.awaitingApproval;
      this.write(
        `… awaiting approval: ${a.name} v${a.version} for ${a.alias}, until ${a.deadline} ` +
          `(${this.embeddedAddress ? `TEMPORAL_ADDRESS=${this.embeddedAddress} ` : ''}stepwise models approve|reject ${a.name}@${a.version})`,
        true
      );
    }
    if (current && this.tty) {
      const width = 30;
      const frac = p.total > 0 ? Math.min(1, p.step / p.total) : 0;
      const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '░');
      const count = p.total > 0 ? ` ${p.step}/${p.total}` : '';
      this.write(`… ${STAGE_LABELS[current.name].padEnd(20)} ${bar}${count}`, false);
    }
  }

  private write(line: string, permanent: boolean) {
    if (this.tty) {
      process.stderr.write(`\r\x1b[2K${line}${permanent ? '\n' : ''}`);
      this.live = !permanent;
    } else if (permanent) {
      process.stderr.write(`${line}\n`);
    }
  }

  end() {
    if (this.live) process.stderr.write('\r\x1b[2K');
  }
}

/** How long progress queries may go unanswered before the follower says so. */
export const UNANSWERED_QUERIES_MS = 60_000;

/**
 * A run whose progress queries go unanswered for {@link UNANSWERED_QUERIES_MS} is waiting on something no stage
 * reports: no workflow worker polls its queue (none started, all gone, or all busy), or the server does not answer.
 * Said once when it starts, with the last error, and once when the run answers again; otherwise a follower waits in
 * silence for as long as the run is stuck.
 */
export class UnansweredQueries {
  private since = Date.now();
  private said = false;
  constructor(
    private readonly workflowId: string,
    private readonly say: (line: string) => void = log,
    private readonly afterMs = UNANSWERED_QUERIES_MS
  ) {}

  answered(): void {
    if (this.said) this.say(`stepwise: ${this.workflowId} answers again`);
    this.said = false;
    this.since = Date.now();
  }

  failed(err: unknown): void {
    const silentMs = Date.now() - this.since;
    if (this.said || silentMs < this.afterMs) return;
    this.said = true;
    const why = err instanceof Error ? err.message : String(err);
    this.say(
      `stepwise: ${this.workflowId} has answered no progress query for ${Math.round(silentMs / 1000)} s ` +
        `(last: ${why}): no workflow worker is serving it, or the server is not answering; still waiting`
    );
  }
}

/**
 * How long one progress query may take. One that no worker answers would otherwise wait out the server's own timeout
 * (30 s on the dev server) and hold back the report of a run that closed meanwhile. The deadline covers the client's
 * retries too, so a query has ended, timers and all, once its promise settles: nothing is left to fire into a
 * connection closed after the run.
 */
export const QUERY_DEADLINE_MS = 5_000;

/** `handle`'s progress, or a rejection within {@link QUERY_DEADLINE_MS}. */
export function queryWithin<T>(handle: WorkflowHandle, query: () => Promise<T>): Promise<T> {
  return handle.client.withDeadline(Date.now() + QUERY_DEADLINE_MS, query);
}

/** Shows the run's progress until it closes, then returns its result (or throws its failure). */
export async function follow(
  handle: WorkflowHandle<typeof distillationPipeline>,
  json: boolean,
  embeddedAddress?: string,
  opts: { unansweredMs?: number; say?: (line: string) => void } = {}
) {
  const view = new ProgressView(Boolean(process.stderr.isTTY) && !json, embeddedAddress);
  const resultPromise = handle.result();
  let finished = false;
  resultPromise.then(
    () => (finished = true),
    () => (finished = true)
  );
  const progress = () => queryWithin(handle, () => handle.query(progressQuery));
  const quiet = new UnansweredQueries(handle.workflowId, opts.say, opts.unansweredMs);
  while (!finished) {
    try {
      view.update(await progress());
      quiet.answered();
    } catch (err) {
      // The workflow may not have started its first task yet, or just closed: the next poll tells. Only a long
      // silence is news (no workflow worker serving the run, or the server gone), and it is said once.
      quiet.failed(err);
    }
    await settledWithin(resultPromise, 500);
  }
  try {
    view.update(await progress());
  } catch {
    /* a closed workflow still answers queries while a worker serves its queue; if not, the result says enough */
  }
  view.end();
  return resultPromise;
}

/**
 * A workflow failure as one line: the messages down its chain of causes to the activity's own, and the stage it
 * failed in. The SDK's wrappers ("Workflow execution failed", "Activity task failed") say nothing a reader needs.
 */
export function describeFailure(err: unknown): { stage?: string; message: string } {
  if (!(err instanceof WorkflowFailedError)) return { message: err instanceof Error ? err.message : String(err) };
  const parts: string[] = [];
  let stage: string | undefined;
  for (let cause: Error | undefined = err.cause; cause; cause = cause.cause as Error | undefined) {
    if (cause instanceof ActivityFailure) stage = cause.activityType ?? stage;
    else if (!(cause instanceof ChildWorkflowFailure) && cause.message) parts.push(cause.message);
  }
  return { stage, message: parts.join(': ') || err.message };
}

/**
 * Follows a run to its end and prints its outcome: the registered model (or one JSON line with `json`), or the
 * failure, which sets exit code 1. `started` is when this command began, for the wall time it reports.
 */
export async function followToEnd(
  handle: WorkflowHandle<typeof distillationPipeline>,
  services: Services,
  opts: { json: boolean; started: number; store: string }
): Promise<void> {
  const workflowId = handle.workflowId;
  let result: PipelineResult;
  try {
    result = await follow(handle, opts.json, services.embeddedAddress);
  } catch (err) {
    const { stage, message } = describeFailure(err);
    log(`stepwise: run ${workflowId} failed${stage ? ` in ${stage}` : ''}: ${message}`);
    if (services.logs) log(`stepwise: the services' and workers' logs are in ${services.logs}`);
    process.exitCode = 1;
    return;
  }
  const wallSeconds = Number(((Date.now() - opts.started) / 1000).toFixed(1));
  const link = services.uiUrl
    ? `${services.uiUrl}/namespaces/${services.namespace}/workflows/${workflowId}`
    : undefined;
  if (opts.json) console.log(JSON.stringify({ ...result, wallSeconds, temporalUi: link, store: opts.store }));
  else printResult(result, services, link, wallSeconds);
}

function printResult(result: PipelineResult, services: Services, link: string | undefined, wallSeconds: number) {
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  console.log('');
  console.log(`Registered model ${result.name} version ${result.version}`);
  console.log(
    `  test accuracy   ${pct(result.accuracy)} (${result.correct}/${result.total}); majority-class baseline ${pct(result.majorityBaseline)}` +
      (result.teacherAccuracy === undefined ? '' : `; teacher ${pct(result.teacherAccuracy)}`)
  );
  if (result.promotion) {
    const p = result.promotion;
    console.log(
      p.outcome === 'promoted'
        ? `  promotion       now ${p.alias}${p.previous === null ? '' : ` (replacing v${p.previous})`}: ${p.reason}`
        : `  promotion       not promoted to ${p.alias}: ${p.reason}`
    );
    if (p.teacherAccuracy !== undefined && p.candidateAccuracy !== undefined) {
      console.log(
        `  vs teacher      student ${pct(p.candidateAccuracy)}, teacher ${pct(p.teacherAccuracy)} on the same evaluation set`
      );
    }
    if (p.decidedBy) console.log(`  decided by      ${p.decidedBy}`);
  }
  console.log(`  run id          ${result.workflowId} (Temporal run ${result.runId})`);
  console.log(`  student backend ${result.backend}`);
  console.log(`  manifest        ${result.manifestUri}`);
  console.log(`  checkpoint      ${result.checkpointUri}`);
  if (result.reportUri)
    console.log(`  report          ${result.reportUri}  (\`stepwise report ${result.workflowId} --open\`)`);
  if (link) console.log(`  Temporal UI     ${link}  (run \`npx stepwise dev\` to browse it after this exits)`);
  else console.log(`  Temporal        namespace ${services.namespace}, workflow ${result.workflowId}`);
  console.log(`  wall time       ${wallSeconds.toFixed(1)} s`);
}
