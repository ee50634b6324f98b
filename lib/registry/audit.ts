/**
 * The registry's moving parts: which version each alias names, each version's status, and the audit log of every
 * change to either. All of it lives in the artifact store beside the versions; no extra server.
 *
 * Each alias and each version's status is a small head object moved by compare-and-swap (`ArtifactStore.swapKey`:
 * If-Match on S3, a locked compare on the filesystem), so of two concurrent moves one wins and the other gets a named
 * conflict instead of silently overwriting it. The head carries the record of the move that put it there, and each
 * record is also appended to the log under a key of its own, written with a conditional create and never rewritten:
 *
 *   registry/<name>/aliases/<alias>.json              head: { seq, value: version, record }
 *   registry/<name>/status/<NNNNNN>.json              head: { seq, value: status, record }
 *   registry/<name>/audit/<chain>/<NNNNNNNN>.json     one record, chain `alias-<alias>` or `v<NNNNNN>`
 *
 * The swap is the commit point; the log append follows it. A crash between the two leaves the newest record in its
 * head only, so every reader of the log and every next move copies a head's record into the log if it is missing
 * there: the log never lacks a move that happened, and never holds one that did not.
 */
import { randomUUID } from 'node:crypto';
import { userInfo } from 'node:os';
import type { ArtifactStore } from '../store/artifact-store';
import { InputError } from '../errors';
import { checkModelName } from './names';
import { versionKey } from './registry';

export const VERSION_STATUSES = ['candidate', 'approved', 'rejected', 'archived'] as const;
export type VersionStatus = (typeof VERSION_STATUSES)[number];

export const AUDIT_ACTIONS = ['register', 'gate', 'alias', 'approve', 'reject', 'archive', 'refresh'] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/** One change to the registry, as the log keeps it: what, from → to, who, when, why, and the run that did it. */
export interface AuditRecord {
  /** Unique per change; a workflow's changes use ids derived from its run, so a retried activity finds its own. */
  id: string;
  model: string;
  /** `alias-<alias>` or `v<NNNNNN>`: the head the change moved. */
  chain: string;
  /** Position in its chain, from 1. */
  seq: number;
  action: AuditAction;
  version?: number;
  alias?: string;
  /** The head's value before (a version number for an alias, a status for a version; null when it had none). */
  from: string | number | null;
  to: string | number;
  who: string;
  /** ISO-8601; never earlier than the previous record of the same chain, whatever the writers' clocks say. */
  when: string;
  why: string;
  workflowId?: string;
  /** The numbers behind the change: a gate's decision, an approval's comment context. */
  details?: Record<string, unknown>;
}

interface Head {
  seq: number;
  value: string | number;
  record: AuditRecord;
}

/**
 * Another writer moved the head between our read and our swap (or it no longer holds what the caller expected).
 * Nothing was written. `current` is what the head holds now.
 */
export class RegistryConflictError extends Error {
  constructor(
    message: string,
    readonly chain: string,
    readonly current: string | number | null
  ) {
    super(message);
    this.name = 'RegistryConflict';
  }
}

const pad6 = (v: number) => String(v).padStart(6, '0');
const pad8 = (v: number) => String(v).padStart(8, '0');
const base = (name: string) => `registry/${checkModelName(name)}`;

/** Alias names: a model-name-like segment that cannot be mistaken for a version number or `latest`. */
export function checkAliasName(alias: unknown, field = 'alias'): string {
  const checked = checkModelName(alias, field);
  if (/^\d+$/.test(checked) || checked === 'latest') {
    throw new InputError(
      `${field}: ${JSON.stringify(checked)} would read as a version reference; an alias needs a letter and cannot be "latest"`,
      field
    );
  }
  return checked;
}

export const aliasKey = (name: string, alias: string) => `${base(name)}/aliases/${checkAliasName(alias)}.json`;
export const statusKey = (name: string, version: number) => `${base(name)}/status/${pad6(version)}.json`;
const aliasChain = (alias: string) => `alias-${alias}`;
const versionChain = (version: number) => `v${pad6(version)}`;
const logPrefix = (name: string, chain?: string) => `${base(name)}/audit/${chain ? `${chain}/` : ''}`;
const logKey = (name: string, chain: string, seq: number) => `${logPrefix(name, chain)}${pad8(seq)}.json`;

/** Who the pipeline's own changes (registration, the gate's decision, its promotion) are recorded as. */
export const REGISTRY_IDENTITY = 'stepwise-pipeline';

/** Who made a change: the identity given (a CLI flag, an approver's update), else the OS user running the process. */
export function identity(given?: string): string {
  const trimmed = given?.trim();
  if (trimmed) return trimmed;
  try {
    return userInfo().username || 'unknown';
  } catch {
    return process.env.USER ?? 'unknown';
  }
}

/** Append a record to its chain's log: a conditional create, so a repeat (or a repair) never rewrites one. */
async function appendToLog(store: ArtifactStore, record: AuditRecord): Promise<void> {
  await store.putKey(logKey(record.model, record.chain, record.seq), JSON.stringify(record, null, 2), {
    createOnly: true,
    contentType: 'application/json',
  });
}

/** A change to apply to one head: its record's fields, and the rule that gives the next value from the current. */
interface Change {
  id: string;
  action: AuditAction;
  who: string;
  why: string;
  version?: number;
  alias?: string;
  workflowId?: string;
  details?: Record<string, unknown>;
  /** The next value, or throw (an InputError or a conflict) to refuse the change given what the head holds. */
  next(current: Head | undefined): string | number;
}

/** How far back a retried change looks for its own record among later moves (retries come within minutes). */
const SELF_LOOKBACK = 50;

/** The record of `id` if this chain already holds it: a retried activity whose first attempt committed. */
async function findOwn(store: ArtifactStore, name: string, chain: string, id: string, head: Head | undefined) {
  if (!head) return undefined;
  if (head.record.id === id) return head.record;
  const keys = (await store.listKeys(logPrefix(name, chain))).slice(-SELF_LOOKBACK);
  for (const key of keys.reverse()) {
    const record = await store.getKeyJson<AuditRecord>(key);
    if (record?.id === id) return record;
  }
  return undefined;
}

/**
 * Move one head by compare-and-swap and log the move. Idempotent by `change.id`: a change already applied returns
 * its record. A lost race throws {@link RegistryConflictError} and writes nothing.
 */
async function advance(
  store: ArtifactStore,
  name: string,
  key: string,
  chain: string,
  change: Change,
  now: Date
): Promise<AuditRecord> {
  const tagged = await store.getKeyTagged<Head>(key);
  const head = tagged?.value;
  // A head whose record never reached the log (a crash after the swap): copy it there before moving on.
  if (head) await appendToLog(store, head.record);
  const own = await findOwn(store, name, chain, change.id, head);
  if (own) return own;

  const to = change.next(head);
  const previousWhen = head ? Date.parse(head.record.when) : 0;
  const record: AuditRecord = {
    id: change.id,
    model: name,
    chain,
    seq: (head?.seq ?? 0) + 1,
    action: change.action,
    ...(change.version === undefined ? {} : { version: change.version }),
    ...(change.alias === undefined ? {} : { alias: change.alias }),
    from: head?.value ?? null,
    to,
    who: change.who,
    when: new Date(Math.max(now.getTime(), previousWhen)).toISOString(),
    why: change.why,
    ...(change.workflowId ? { workflowId: change.workflowId } : {}),
    ...(change.details ? { details: change.details } : {}),
  };
  const next: Head = { seq: record.seq, value: to, record };
  if (!(await store.swapKey(key, JSON.stringify(next, null, 2), tagged?.etag))) {
    const after = (await store.getKeyTagged<Head>(key))?.value;
    // Our swap landed but its answer was lost (a retried request): the head holds our own record.
    if (after?.record.id === change.id) {
      await appendToLog(store, after.record);
      return after.record;
    }
    const what = change.alias ? `alias ${change.alias} of ${name}` : `the status of ${name} v${change.version}`;
    throw new RegistryConflictError(
      `${what} changed while this change was being made: it is now ${String(after?.value ?? 'unset')} ` +
        `(by ${after?.record.who ?? '?'} at ${after?.record.when ?? '?'}); nothing was written, try again`,
      chain,
      after?.value ?? null
    );
  }
  await appendToLog(store, record);
  return record;
}

// ---------------------------------------------------------------------------------------------------------------
// Aliases

export interface AliasState {
  alias: string;
  version: number;
  record: AuditRecord;
}

export async function getAlias(store: ArtifactStore, name: string, alias: string): Promise<AliasState | undefined> {
  const head = await store.getKeyJson<Head>(aliasKey(name, alias));
  return head && { alias, version: head.value as number, record: head.record };
}

/** Every alias of a model and the version it names now. */
export async function listAliases(store: ArtifactStore, name: string): Promise<AliasState[]> {
  const keys = await store.listKeys(`${base(name)}/aliases/`);
  const heads = await Promise.all(
    keys.map(async (key) => {
      const alias = /\/([^/]+)\.json$/.exec(key)?.[1];
      return alias ? getAlias(store, name, alias) : undefined;
    })
  );
  return heads.filter((h): h is AliasState => h !== undefined);
}

export interface MoveAliasOptions {
  who: string;
  why: string;
  /**
   * The version the caller believes the alias names now (null: believes it unset). When given, a move finding
   * anything else is refused with a conflict: the decision was made against a state that no longer holds.
   */
  expect?: number | null;
  /** Deterministic id for a change made by a workflow activity (idempotent on retry); default a random one. */
  id?: string;
  workflowId?: string;
  details?: Record<string, unknown>;
  now?: Date;
}

/**
 * Point `alias` at `version`. The version must exist and be neither rejected nor archived. Concurrent moves of one
 * alias: exactly one wins; the others throw {@link RegistryConflictError} naming what the alias holds now.
 */
export async function moveAlias(
  store: ArtifactStore,
  name: string,
  alias: string,
  version: number,
  opts: MoveAliasOptions
): Promise<AuditRecord> {
  checkAliasName(alias);
  const status = await versionStatus(store, name, version);
  if (!status) throw new InputError(`${name}@${version}: no such version`, 'version');
  if (status.status === 'rejected' || status.status === 'archived') {
    throw new InputError(
      `${name}@${version} is ${status.status} (${status.record?.why ?? 'no reason recorded'}): an alias cannot name it`,
      'version'
    );
  }
  const chain = aliasChain(alias);
  return advance(
    store,
    name,
    aliasKey(name, alias),
    chain,
    {
      id: opts.id ?? randomUUID(),
      action: 'alias',
      who: opts.who,
      why: opts.why,
      version,
      alias,
      workflowId: opts.workflowId,
      details: opts.details,
      next(current) {
        const now = (current?.value as number | undefined) ?? null;
        if (opts.expect !== undefined && now !== opts.expect) {
          throw new RegistryConflictError(
            `alias ${alias} of ${name} names ${now === null ? 'no version' : `v${now}`}, not ` +
              `${opts.expect === null ? 'no version' : `v${opts.expect}`} as expected; nothing was written`,
            chain,
            now
          );
        }
        return version;
      },
    },
    opts.now ?? new Date()
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Version status

/** Which statuses each action may leave, and where it leads (`gate` decides its own target: see recordGate; `refresh` leaves it). */
const TRANSITIONS: Record<
  Exclude<AuditAction, 'alias' | 'register' | 'gate' | 'refresh'>,
  { from: VersionStatus[]; to: VersionStatus }
> = {
  approve: { from: ['candidate'], to: 'approved' },
  reject: { from: ['candidate'], to: 'rejected' },
  archive: { from: ['candidate', 'approved', 'rejected'], to: 'archived' },
};

export interface VersionStatusState {
  status: VersionStatus;
  /** The change that set it; absent for versions registered before statuses existed (they read as candidates). */
  record?: AuditRecord;
}

/**
 * A version's status, or undefined when the version does not exist. Versions registered before statuses existed
 * have no status head: they read as candidates until something changes them.
 */
export async function versionStatus(
  store: ArtifactStore,
  name: string,
  version: number
): Promise<VersionStatusState | undefined> {
  const head = await store.getKeyJson<Head>(statusKey(name, version));
  if (head) return { status: head.value as VersionStatus, record: head.record };
  return (await store.getKey(versionKey(name, version))) ? { status: 'candidate' } : undefined;
}

export interface StatusChangeOptions {
  who: string;
  why: string;
  id?: string;
  workflowId?: string;
  details?: Record<string, unknown>;
  now?: Date;
}

/** The status chain's first record: written by the register stage when a version is published. */
export async function recordRegistration(
  store: ArtifactStore,
  name: string,
  version: number,
  opts: StatusChangeOptions & { id: string }
): Promise<AuditRecord> {
  return advance(
    store,
    name,
    statusKey(name, version),
    versionChain(version),
    {
      ...opts,
      action: 'register',
      version,
      next(current) {
        if (current) {
          throw new RegistryConflictError(
            `${name} v${version} is already registered`,
            versionChain(version),
            current.value
          );
        }
        return 'candidate';
      },
    },
    opts.now ?? new Date()
  );
}

/**
 * Approve, reject or archive a version. Refused (InputError, nothing written) when the version's status does not
 * allow it: only a candidate is approved or rejected, an archived version stays archived, and a version an alias
 * names is not archived until the alias moves.
 */
export async function changeStatus(
  store: ArtifactStore,
  name: string,
  version: number,
  action: keyof typeof TRANSITIONS,
  opts: StatusChangeOptions
): Promise<AuditRecord> {
  const rule = TRANSITIONS[action];
  if (action === 'archive') {
    const naming = (await listAliases(store, name)).filter((a) => a.version === version).map((a) => a.alias);
    if (naming.length) {
      throw new InputError(
        `${name}@${version} is named by alias ${naming.join(', ')}: move the alias before archiving it`,
        'version'
      );
    }
  }
  return statusChange(store, name, version, action, opts, (status) => {
    if (!rule.from.includes(status)) {
      throw new InputError(
        `${name}@${version} is ${status}: only a version that is ${rule.from.join(' or ')} can be ${action === 'archive' ? 'archived' : `${action}d`}`,
        'version'
      );
    }
    return rule.to;
  });
}

/**
 * Record a promotion gate's decision on the candidate: it stays a candidate when it passed and awaits a person's
 * approval, becomes approved when it passed and needs none, and is rejected when it failed.
 */
export async function recordGate(
  store: ArtifactStore,
  name: string,
  version: number,
  to: VersionStatus,
  opts: StatusChangeOptions
): Promise<AuditRecord> {
  return statusChange(store, name, version, 'gate', opts, (status) => {
    if (status !== 'candidate') {
      throw new InputError(`${name}@${version} is ${status}: the gate decides on candidates only`, 'version');
    }
    return to;
  });
}

/**
 * Record that a refresh found nothing to do: the version's spec and data are what the refresh would train on. The
 * version's status stays as it is; the record names the run, so a retried activity finds its own.
 */
export async function recordUnchanged(
  store: ArtifactStore,
  name: string,
  version: number,
  opts: StatusChangeOptions & { id: string }
): Promise<AuditRecord> {
  return statusChange(store, name, version, 'refresh', opts, (status) => status);
}

async function statusChange(
  store: ArtifactStore,
  name: string,
  version: number,
  action: AuditAction,
  opts: StatusChangeOptions,
  rule: (status: VersionStatus) => VersionStatus
): Promise<AuditRecord> {
  const exists = await versionStatus(store, name, version);
  if (!exists) throw new InputError(`${name}@${version}: no such version`, 'version');
  return advance(
    store,
    name,
    statusKey(name, version),
    versionChain(version),
    {
      id: opts.id ?? randomUUID(),
      action,
      who: opts.who,
      why: opts.why,
      version,
      workflowId: opts.workflowId,
      details: opts.details,
      next: (current) => rule((current?.value as VersionStatus | undefined) ?? 'candidate'),
    },
    opts.now ?? new Date()
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The log

/** Read `keys` as JSON, a few at a time (a model's log can hold thousands of records). */
async function readAll<T>(store: ArtifactStore, keys: string[], parallel = 16): Promise<T[]> {
  const out: T[] = new Array<T>(keys.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, keys.length) }, async () => {
      while (next < keys.length) {
        const i = next++;
        out[i] = (await store.getKeyJson<T>(keys[i]))!;
      }
    })
  );
  return out.filter((r) => r !== undefined);
}

const chronological = (a: AuditRecord, b: AuditRecord) =>
  a.when < b.when ? -1 : a.when > b.when ? 1 : a.chain < b.chain ? -1 : a.chain > b.chain ? 1 : a.seq - b.seq;

/**
 * Every change to a model, oldest first: its log, plus any head record a crash kept out of it. Records of one chain
 * are in their chain's order; across chains, by time.
 */
export async function modelHistory(store: ArtifactStore, name: string): Promise<AuditRecord[]> {
  const headKeys = Promise.all([store.listKeys(`${base(name)}/aliases/`), store.listKeys(`${base(name)}/status/`)]);
  return historyOf(store, logPrefix(name), (await headKeys).flat());
}

/** The changes to one version's status (registration, gate, approval, archive), oldest first: its chain only. */
export async function versionHistory(store: ArtifactStore, name: string, version: number): Promise<AuditRecord[]> {
  return historyOf(store, logPrefix(name, versionChain(version)), [statusKey(name, version)]);
}

/** The records logged under `prefix`, plus the records of `headKeys` (those that exist) missing from that log. */
async function historyOf(store: ArtifactStore, prefix: string, headKeys: string[]): Promise<AuditRecord[]> {
  const [records, heads] = await Promise.all([
    store.listKeys(prefix).then((keys) => readAll<AuditRecord>(store, keys)),
    readAll<Head>(store, headKeys),
  ]);
  const logged = new Set(records.map((r) => `${r.chain}/${r.seq}`));
  for (const head of heads) {
    if (!logged.has(`${head.record.chain}/${head.record.seq}`)) records.push(head.record);
  }
  return records.sort(chronological);
}

/**
 * Which version `alias` named at `time`, from the log alone: the last move of that alias at or before `time`;
 * undefined before its first move.
 */
export function aliasAt(history: readonly AuditRecord[], alias: string, time: Date): number | undefined {
  const t = time.toISOString();
  let named: number | undefined;
  for (const r of history.filter((r) => r.action === 'alias' && r.alias === alias).sort((a, b) => a.seq - b.seq)) {
    if (r.when > t) break;
    named = r.to as number;
  }
  return named;
}
