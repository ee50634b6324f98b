/**
 * The promotion gate's work, as the pipeline runs it after registration: find the champion and the frozen evaluation
 * set to compare on (planGate), decide on the paired per-example outcomes and record the decision on the candidate
 * (decideGate), record a person's decision (recordApproval), and move the alias (promote). Each write is idempotent by
 * the run's id, so a retried activity finds what its first attempt wrote.
 */
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import type { GateSpec, TaskKind } from '../pipeline/spec';
import type { Example } from '../data/types';
import { trivialBaselines } from '../data/baselines';
import { InputError } from '../errors';
import { majorityBaseline } from '../data/score';
import {
  changeStatus,
  getAlias,
  moveAlias,
  recordGate,
  REGISTRY_IDENTITY,
  type AuditRecord,
  versionHistory,
} from './audit';
import { readVersionManifest } from './manifest';
import { getVersion } from './registry';
import { decideGate as decide, pairOutcomes, type GateDecision } from './gate';

/** A version's results on the evaluation set it was gated on (or, never gated, its own test split). */
export interface FrozenEvaluation {
  /** The evaluation set's JSONL (test examples), by hash: the same bytes for every later challenger. */
  evalSet: ArtifactRef;
  /** Its per-example predictions there (the evaluate stage's JSONL of `{ id, gold, prediction, correct }`). */
  predictions: ArtifactRef;
  accuracy: number;
}

export interface GatePlanInput {
  name: string;
  version: number;
  gate: GateSpec;
  /** The candidate's own test split and its predictions there, from this run's evaluate stage. */
  candidate: { test: ArtifactRef; predictions: ArtifactRef };
}

export interface GatePlan {
  alias: string;
  /** The version the alias names now and its frozen evaluation; null for a model's first promotion. */
  champion: ({ version: number } & FrozenEvaluation) | null;
  /** What the candidate is compared on: the champion's frozen set, or (first version) its own test split. */
  evalSet: ArtifactRef;
  /** The candidate's predictions on `evalSet`, when its own evaluation already covers it (same bytes). */
  candidatePredictions?: ArtifactRef;
}

/** Where the champion stands and what the candidate must be evaluated on. Reads only. */
export async function planGate(store: ArtifactStore, input: GatePlanInput): Promise<GatePlan> {
  const alias = await getAlias(store, input.name, input.gate.alias);
  const champion =
    alias && alias.version !== input.version
      ? { version: alias.version, ...(await frozenEvaluation(store, input.name, alias.version)) }
      : null;
  const evalSet = champion?.evalSet ?? input.candidate.test;
  return {
    alias: input.gate.alias,
    champion,
    evalSet,
    ...(evalSet.sha256 === input.candidate.test.sha256 ? { candidatePredictions: input.candidate.predictions } : {}),
  };
}

/**
 * The evaluation a version is compared on: the one its own gate recorded (the frozen set it inherited from the
 * champion it beat), else its own test split and predictions from its manifest.
 */
export async function frozenEvaluation(store: ArtifactStore, name: string, version: number): Promise<FrozenEvaluation> {
  const gated = (await versionHistory(store, name, version))
    .filter((r) => r.action === 'gate')
    .map((r) => (r.details as { frozen?: FrozenEvaluation } | undefined)?.frozen)
    .filter((f): f is FrozenEvaluation => f !== undefined);
  if (gated.length) return gated[gated.length - 1];
  const record = await getVersion(store, name, version);
  if (!record) throw new InputError(`${name}@${version}: no such version`, 'gate.alias');
  const read = await readVersionManifest(store, record);
  if ('problem' in read) {
    throw new Error(`registry: the manifest of ${name} v${version} (${record.lineage.manifest}) is ${read.problem}`);
  }
  const { manifest } = read;
  const role = (r: string) => {
    const a = manifest.artifacts.find((x) => x.role === r);
    if (!a) throw new Error(`registry: the manifest of ${name} v${version} names no ${r}`);
    return { sha256: a.sha256, size: a.size };
  };
  return { evalSet: role('split/test'), predictions: role('eval/predictions'), accuracy: record.metrics.accuracy };
}

export interface DecideGateInput {
  name: string;
  version: number;
  workflowId: string;
  runId: string;
  gate: GateSpec;
  plan: GatePlan;
  /** The candidate's predictions on `plan.evalSet`. */
  candidatePredictions: ArtifactRef;
  /** The teacher on the same examples: its accuracy and predictions, or why it was not measured. */
  teacher?: { accuracy: number; predictions: ArtifactRef; model: string } | { unmeasured: string };
  /**
   * The task and the run's training split: the majority baseline is then the most common *scored* value of train
   * (an arithmetic answer's value, not its equation string) scored on the evaluation set. Absent in gate attempts
   * of runs from before, which fall back to the most common gold string of the evaluation set.
   */
  baselineFrom?: { task: TaskKind; train: ArtifactRef };
}

/** The promotion gate's outcome for a run, as its result and the CLI's summary say it. */
export interface PromotionSummary {
  /** promoted: the alias now names this version; rejected: the gate or a person said no. */
  outcome: 'promoted' | 'rejected';
  alias: string;
  /** The version the alias named before (null: none; the model's first promotion). */
  previous: number | null;
  /** One sentence with both numbers, e.g. "candidate 71.3% vs champion v2 70.0%: +1.3 points, p = 0.41 ≥ 0.05". */
  reason: string;
  pValue?: number;
  /** Candidate and teacher accuracy on the same frozen evaluation set (the teacher's where it was measured). */
  candidateAccuracy?: number;
  teacherAccuracy?: number;
  /** Who approved or rejected it, when the spec asked for a person's approval (or the timeout policy's name). */
  decidedBy?: string;
}

/** What the workflow learns from the gate: small, and the one sentence a user reads. */
export interface GateOutcome {
  passed: boolean;
  reason: string;
  champion: number | null;
  candidateAccuracy: number;
  championAccuracy?: number;
  pValue?: number;
  /** The teacher's accuracy on the same evaluation set, where measured. */
  teacherAccuracy?: number;
  /** The gate's record in the audit log. */
  record: { chain: string; seq: number };
}

interface Row {
  id: string;
  gold: string;
  correct: boolean;
}

/** The gate's majority-class baseline on the evaluation set, chosen on the run's training split where it is known. */
export async function majorityOn(
  store: ArtifactStore,
  input: DecideGateInput,
  rows: Row[]
): Promise<{ accuracy: number }> {
  if (!input.baselineFrom) return majorityBaseline(rows.map((r) => ({ id: r.id, input: '', label: r.gold })));
  const [evalSet, train] = await Promise.all([
    store.getJsonl<Example>(input.plan.evalSet),
    store.getJsonl<Example>(input.baselineFrom.train),
  ]);
  return trivialBaselines(input.baselineFrom.task, evalSet, train).majority;
}

/**
 * Decide on the paired outcomes and record the decision on the candidate: rejected when it fails; approved when it
 * passes and no person must approve; still a candidate, awaiting approval, otherwise.
 */
export async function decideAndRecordGate(store: ArtifactStore, input: DecideGateInput): Promise<GateOutcome> {
  const candidateRows = await store.getJsonl<Row>(input.candidatePredictions);
  const championRows = input.plan.champion ? await store.getJsonl<Row>(input.plan.champion.predictions) : undefined;
  const candidateAccuracy = candidateRows.length
    ? candidateRows.filter((r) => r.correct).length / candidateRows.length
    : 0;
  const baseline = await majorityOn(store, input, candidateRows);
  const paired = championRows ? pairOutcomes(candidateRows, championRows) : undefined;
  const decision: GateDecision = decide({
    gate: input.gate,
    candidate: { version: input.version, accuracy: candidateAccuracy },
    // Both rules read the same rows: the champion's accuracy is taken from its paired outcomes.
    champion:
      input.plan.champion && paired
        ? { version: input.plan.champion.version, accuracy: paired.championAccuracy }
        : null,
    paired,
    majorityBaseline: baseline.accuracy,
    teacherAccuracy: input.teacher && 'accuracy' in input.teacher ? input.teacher.accuracy : undefined,
  });
  const passed = decision.outcome === 'pass';
  const awaitingApproval = passed && input.gate.approval !== undefined;
  const record: AuditRecord = await recordGate(
    store,
    input.name,
    input.version,
    passed ? (awaitingApproval ? 'candidate' : 'approved') : 'rejected',
    {
      id: `gate:${input.runId}`,
      who: REGISTRY_IDENTITY,
      why: decision.reason,
      workflowId: input.workflowId,
      details: {
        ...decision,
        alias: input.plan.alias,
        majorityBaseline: baseline.accuracy,
        ...(input.teacher ? { teacher: input.teacher } : {}),
        awaitingApproval,
        frozen: {
          evalSet: input.plan.evalSet,
          predictions: input.candidatePredictions,
          accuracy: candidateAccuracy,
        } satisfies FrozenEvaluation,
      },
    }
  );
  return {
    passed,
    reason: decision.reason,
    champion: input.plan.champion?.version ?? null,
    candidateAccuracy,
    ...(paired ? { championAccuracy: paired.championAccuracy } : {}),
    ...(decision.pValue === undefined ? {} : { pValue: decision.pValue }),
    ...(decision.teacherAccuracy === undefined ? {} : { teacherAccuracy: decision.teacherAccuracy }),
    record: { chain: record.chain, seq: record.seq },
  };
}

export interface ApprovalInput {
  name: string;
  version: number;
  workflowId: string;
  runId: string;
  decision: 'approve' | 'reject';
  identity: string;
  comment: string;
}

/** A person's decision (or the timeout policy's) on a version awaiting approval, in the audit log. */
export async function recordApproval(store: ArtifactStore, input: ApprovalInput): Promise<{ seq: number }> {
  const record = await changeStatus(store, input.name, input.version, input.decision, {
    id: `approval:${input.runId}`,
    who: input.identity,
    why: input.comment,
    workflowId: input.workflowId,
  });
  return { seq: record.seq };
}

export interface PromoteInput {
  name: string;
  version: number;
  alias: string;
  /** The version the gate compared against (null: none): the alias moves only if it still names it. */
  expect: number | null;
  workflowId: string;
  runId: string;
  why: string;
  details?: Record<string, unknown>;
}

/** Move the alias to the candidate, only if it still names the champion the candidate was compared with. */
export async function promote(store: ArtifactStore, input: PromoteInput): Promise<{ previous: number | null }> {
  const record = await moveAlias(store, input.name, input.alias, input.version, {
    id: `promote:${input.runId}`,
    who: REGISTRY_IDENTITY,
    why: input.why,
    expect: input.expect,
    workflowId: input.workflowId,
    details: input.details,
  });
  return { previous: record.from as number | null };
}
