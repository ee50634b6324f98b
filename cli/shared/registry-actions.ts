/**
 * The registry's changes as `stepwise models` and `stepwise ui` both make them: promote a version to an alias,
 * archive one, and approve or reject a candidate (through its run when the run is waiting for that decision). One
 * home for the rules, so the command line and the web page cannot drift apart.
 */
import { WorkflowNotFoundError, WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import { approveUpdate, rejectUpdate, type ApprovalDecision, type ApprovalOutcome } from '../../contract';
import { InputError } from '../../lib/errors';
import type { ArtifactStore } from '../../lib/store';
import {
  changeStatus,
  checkAliasName,
  getAlias,
  identity,
  moveAlias,
  RegistryConflictError,
  versionStatus,
  type AuditRecord,
} from '../../lib/registry/audit';
import { resolveRef } from '../../lib/registry/refs';
import type { ModelVersion } from '../../lib/registry/registry';
import { syncMlflowAlias } from '../../activities/mlflow';
import { versionLabel } from './models-format';

/** What a promotion did: `record` is absent when the alias already named the version (nothing written). */
export interface Promotion {
  version: ModelVersion;
  alias: string;
  before: number | null;
  record?: AuditRecord;
}

/**
 * Read the alias, then move it only if it still names what was read: a promotion decided against a state that
 * changed meanwhile (another promote, a pipeline's gate) is refused, naming what the alias holds now. `aliasField`
 * is what an error names (`--alias` on the command line, `alias` in a form).
 */
export async function promoteToAlias(
  store: ArtifactStore,
  ref: string,
  opts: { alias: string; why?: string; identity?: string; aliasField?: string }
): Promise<Promotion> {
  const field = opts.aliasField ?? '--alias';
  const alias = checkAliasName(opts.alias, field);
  const { version: v } = await resolveRef(store, ref, 'ref');
  const who = identity(opts.identity);
  const before = (await getAlias(store, v.name, alias))?.version ?? null;
  if (before === v.version) return { version: v, alias, before };
  let record: AuditRecord;
  try {
    record = await moveAlias(store, v.name, alias, v.version, {
      who,
      why: opts.why?.trim() || `promoted by ${who}`,
      expect: before,
    });
  } catch (err) {
    if (!(err instanceof RegistryConflictError)) throw err;
    const now = await getAlias(store, v.name, alias);
    throw new InputError(
      `${field}: ${alias} of ${v.name} was moved while promoting: it now names ${versionLabel(now?.version)}` +
        (now ? ` (${now.record.action} by ${now.record.who} at ${now.record.when})` : '') +
        `, not ${versionLabel(before)} as read; nothing was written`,
      field
    );
  }
  // With STEPWISE_MLFLOW_URI set the alias moves in MLflow too; a failure there is a warning on stderr, not an error.
  await syncMlflowAlias({ store }, { name: v.name, alias });
  return { version: v, alias, before, record };
}

/** Archive a version no alias names (the registry refuses one an alias still names). */
export async function archiveVersion(
  store: ArtifactStore,
  ref: string,
  opts: { why?: string; identity?: string }
): Promise<AuditRecord> {
  const { version: v } = await resolveRef(store, ref, 'ref');
  const who = identity(opts.identity);
  return changeStatus(store, v.name, v.version, 'archive', { who, why: opts.why?.trim() || `archived by ${who}` });
}

/** A Temporal client to send a decision with, where its runs live (for messages), and how to let go of it. */
export interface DecisionClient {
  client: Client;
  where: string;
  stop(): Promise<void>;
}

/** How a decision was carried out: by the waiting run (its outcome), or in the registry (the status record). */
export type Decision =
  | { by: 'run'; workflowId: string; version: ModelVersion; who: string; outcome: ApprovalOutcome }
  | { by: 'registry'; version: ModelVersion; who: string; record: AuditRecord; closedRun?: string };

/**
 * Approve or reject. A version whose run is waiting for this decision (its status head is the gate's record, marked
 * awaiting approval) gets it through the run, which records it and moves the alias; otherwise the status changes
 * here. Recording it here while the run waits would leave the run to fail at its timeout on a version no longer a
 * candidate. `connect` is called only when a run waits.
 */
export async function decideVersion(
  store: ArtifactStore,
  ref: string,
  kind: 'approve' | 'reject',
  opts: { comment?: string; identity?: string; connect: () => Promise<DecisionClient> }
): Promise<Decision> {
  const done = kind === 'approve' ? 'approved' : 'rejected';
  const { version: v } = await resolveRef(store, ref, 'ref');
  const who = identity(opts.identity);
  const comment = opts.comment?.trim();
  const status = await versionStatus(store, v.name, v.version);
  const waiting = status?.record && awaitsApproval(status.record) ? status.record.workflowId : undefined;
  if (waiting) {
    const temporal = await opts.connect();
    let outcome: ApprovalOutcome | undefined;
    try {
      outcome = await sendDecision(temporal, waiting, kind, {
        version: v.version,
        identity: who,
        ...(comment ? { comment } : {}),
      });
    } finally {
      await temporal.stop();
    }
    if (outcome) return { by: 'run', workflowId: waiting, version: v, who, outcome };
  }
  const record = await changeStatus(store, v.name, v.version, kind, { who, why: comment || `${done} by ${who}` });
  return { by: 'registry', version: v, who, record, ...(waiting ? { closedRun: waiting } : {}) };
}

/** The gate passed the version and its run now waits for a person (lib/registry/gate-stage.ts records this). */
export function awaitsApproval(record: AuditRecord): boolean {
  return (
    record.action === 'gate' &&
    record.to === 'candidate' &&
    record.workflowId !== undefined &&
    (record.details as { awaitingApproval?: unknown } | undefined)?.awaitingApproval === true
  );
}

/**
 * Send the decision to the waiting run as its Update and return its outcome once the run has carried it out;
 * undefined when the run is closed (nobody waits any more). A decision the run's validator refuses (another version,
 * already decided) is an InputError with the run's reason; nothing was written.
 */
export async function sendDecision(
  temporal: Pick<DecisionClient, 'client' | 'where'>,
  workflowId: string,
  kind: 'approve' | 'reject',
  decision: ApprovalDecision
): Promise<ApprovalOutcome | undefined> {
  const handle = temporal.client.workflow.getHandle(workflowId);
  let running: boolean;
  try {
    running = (await handle.describe()).status.name === 'RUNNING';
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
    throw new InputError(
      `ref: v${decision.version} awaits approval in run ${workflowId}, which ${temporal.where} does not have: ` +
        'set TEMPORAL_ADDRESS (and TEMPORAL_NAMESPACE) to the Temporal service the run is on',
      'ref'
    );
  }
  if (!running) return undefined;
  try {
    return await handle.executeUpdate(kind === 'approve' ? approveUpdate : rejectUpdate, { args: [decision] });
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) {
      throw new InputError(`ref: run ${workflowId} refused the decision: ${err.cause?.message ?? err.message}`, 'ref');
    }
    throw err;
  }
}
