/**
 * A registered version's lineage as one tree, and the check that every stored object it names still holds the bytes
 * it was registered with (`stepwise lineage`, `stepwise verify`).
 *
 * The tree is a provenance tree: the version at the root, and under each node what it was made from. The checkpoint
 * was made by a training config, a tokenizer, a backend and a code version from the rationales the validation stage
 * kept, which came from the teacher's raw responses, which came from the teacher (its prompt template and exemplars)
 * asked about the sample, which was drawn from the dataset. Beside the checkpoint hang its metrics, the gate's decision,
 * a person's approval, and the run. Everything is read from the version record, its content-addressed manifest (the
 * artifacts by role, the spec) and the audit log; nothing is taken on trust that `verify` cannot re-read.
 */
import type { ArtifactStore } from '../store/artifact-store';
import { canonicalJson, IntegrityError, NotFoundError, objectKey, sha256Hex } from '../store/artifact-store';
import { decodeSafetensors } from '../student/checkpoint-file';
import { modelHistory, versionStatus, type AuditRecord } from './audit';
import { hashOfUri, readObject, readVersionManifest, type ManifestArtifact } from './manifest';
import type { RunWorkers, ModelVersion } from './registry';

/** What a node stands for. Every kind a complete distill-step-by-step version has appears in its tree. */
export const LINEAGE_KINDS = [
  'model',
  'checkpoint',
  'training-config',
  'tokenizer',
  'backend',
  'code',
  'init',
  'train-log',
  'validation',
  'rationales',
  'responses',
  'teacher',
  'prompt-template',
  'exemplars',
  'sample',
  'split',
  'dataset',
  'metrics',
  'predictions',
  'gate',
  'alias',
  'approval',
  'run',
  'manifest',
  'artifact',
] as const;
export type LineageKind = (typeof LINEAGE_KINDS)[number];

export interface LineageNode {
  kind: LineageKind;
  /** One line a person reads. */
  label: string;
  /** sha256 of what the node stands for (a stored object's bytes, or a recorded content hash). */
  hash?: string;
  /** Where the stored object lives; set, with `role`, on every node `verify` re-reads. */
  uri?: string;
  /** The object's role (the manifest's, e.g. `student/checkpoint`, or the registry's, e.g. `run/manifest`). */
  role?: string;
  size?: number;
  details?: Record<string, unknown>;
  children: LineageNode[];
}

/** Parsed `codeVersion` (workers/deps.ts writes `<package version>+<12-hex git sha>[.dirty]`). */
export interface CodeVersion {
  version: string;
  commit?: string;
  dirty?: boolean;
}

/**
 * The git commit and dirty flag inside a code version string. A deployment's own STEPWISE_CODE_VERSION may not have
 * that shape: then only `version` is known.
 */
export function parseCodeVersion(codeVersion: string): CodeVersion {
  const m = /^(.*)\+([0-9a-f]{7,40})(\.dirty)?$/.exec(codeVersion);
  return m ? { version: m[1], commit: m[2], dirty: m[3] !== undefined } : { version: codeVersion };
}

/** sha256 of exemplars as the prompt template holds them: the same hash for the same worked examples. */
export function exemplarsHash(exemplars: readonly unknown[]): string {
  return sha256Hex(canonicalJson(exemplars));
}

// ---------------------------------------------------------------------------------------------------------------
// Credentials never leave through lineage

const SECRET_NAME = /(api[-_]?key|secret|token|passw(or)?d|auth|credential|signature|sig)$/i;

/** A URL without its user, password, or any query value whose name looks like a secret. */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return '[unparsable url]';
  }
  u.username = '';
  u.password = '';
  for (const name of [...u.searchParams.keys()]) {
    if (SECRET_NAME.test(name) || /^(key|code)$/i.test(name)) u.searchParams.set(name, 'REDACTED');
  }
  return u.toString();
}

/**
 * A spec section fit to print: URLs redacted, and any field named like a secret replaced, except the names of the
 * variables that hold secrets (`apiKeyEnv`), which are not secrets themselves. Specs hold no keys by design; this is
 * the second line, for a field added later that does.
 */
export function redact(value: unknown, field = ''): unknown {
  if (typeof value === 'string') {
    if (SECRET_NAME.test(field) && !/env$/i.test(field)) return 'REDACTED';
    return /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? redactUrl(value) : value;
  }
  if (Array.isArray(value)) return value.map((v) => redact(v, field));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, k)]));
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------------------
// The tree

const short = (hash: string) => hash.slice(0, 12);
const node = (
  kind: LineageKind,
  label: string,
  extra: Partial<Omit<LineageNode, 'kind' | 'label' | 'children'>> = {},
  children: (LineageNode | undefined)[] = []
): LineageNode => ({
  kind,
  label,
  ...extra,
  children: children.filter((c): c is LineageNode => c !== undefined),
});

/**
 * The tokenizer the checkpoint carries (safetensors metadata `tokenizer`): its hash and vocabulary size. The training
 * stage does not record it separately, so it is read from the checkpoint, whose own hash vouches for it.
 */
async function tokenizerOf(
  store: ArtifactStore,
  checkpoint: string
): Promise<{ hash: string; vocabSize?: number } | { problem: string }> {
  const read = await readObject(store, checkpoint);
  if ('problem' in read) return { problem: `checkpoint ${read.problem}` };
  try {
    const { metadata } = decodeSafetensors(read.bytes, { source: objectKey(checkpoint) });
    const tokenizer = metadata.tokenizer;
    if (typeof tokenizer !== 'string') return { problem: 'the checkpoint carries no tokenizer' };
    const config = JSON.parse(metadata.config ?? '{}') as { vocab_size?: number };
    return { hash: sha256Hex(tokenizer), ...(config.vocab_size ? { vocabSize: config.vocab_size } : {}) };
  } catch (err) {
    return { problem: `checkpoint unreadable: ${(err as Error).message}` };
  }
}

/**
 * The lineage tree of one version. Reads the version's manifest, its audit records and its checkpoint (for the
 * tokenizer); an object that cannot be read is noted on its node (`details.problem`), not fatal, so a damaged
 * version still shows what it claims to be made of.
 */
/** `sample on a, promptTeacher on a, b (2 retried), …`: the distinct workers of each stage, in stage order. */
function workersText(w: RunWorkers): string {
  const byStage = new Map<string, { workers: Set<string>; retried: number }>();
  for (const a of w.activities) {
    const entry = byStage.get(a.stage) ?? { workers: new Set<string>(), retried: 0 };
    entry.workers.add(a.worker);
    if (a.attempt > 1) entry.retried++;
    byStage.set(a.stage, entry);
  }
  return [...byStage]
    .map(([stage, e]) => `${stage} on ${[...e.workers].join(', ')}${e.retried ? ` (${e.retried} retried)` : ''}`)
    .join('; ');
}

export async function lineageTree(store: ArtifactStore, version: ModelVersion): Promise<LineageNode> {
  const l = version.lineage;
  const manifestHash = hashOfUri(l.manifest);
  const manifestRead = await readVersionManifest(store, version);
  const manifest = 'manifest' in manifestRead ? manifestRead.manifest : undefined;
  const byRole = new Map<string, ManifestArtifact>((manifest?.artifacts ?? []).map((a) => [a.role, a]));
  const placed = new Set<string>();
  /** A node for the manifest's artifact of `role`, or one built from the hash the version record holds. */
  const artifact = (
    kind: LineageKind,
    role: string,
    label: string,
    fallback?: { sha256: string; size?: number; uri?: string },
    children: (LineageNode | undefined)[] = [],
    details?: Record<string, unknown>
  ): LineageNode | undefined => {
    const a = byRole.get(role) ?? fallback;
    if (!a) return undefined;
    placed.add(role);
    return node(
      kind,
      label,
      {
        hash: a.sha256,
        uri: a.uri ?? store.uri(objectKey(a.sha256)),
        role,
        ...(a.size === undefined ? {} : { size: a.size }),
        ...(details ? { details } : {}),
      },
      children
    );
  };

  const [history, status, tokenizer] = await Promise.all([
    modelHistory(store, version.name),
    versionStatus(store, version.name, version.version),
    tokenizerOf(store, version.checkpoint.sha256),
  ]);
  const own = history.filter((r) => r.version === version.version);

  // Data: the dataset's bytes, the sample drawn from them, its splits.
  const dataset = node('dataset', `${l.dataset.kind} dataset (${l.dataset.task}) from ${l.dataset.source}`, {
    hash: l.dataset.datasetHash,
    details: { kind: l.dataset.kind, task: l.dataset.task, source: redact(l.dataset.source) },
  });
  const splits = (['train', 'valid', 'test'] as const).map((s) =>
    artifact('split', `split/${s}`, `${s} split, ${l.dataset.counts[s] ?? '?'} examples`)
  );
  const sample = node(
    'sample',
    `sample: ${Object.entries(l.dataset.counts)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    { hash: l.dataset.sampleHash, details: { counts: l.dataset.counts } },
    [...splits, dataset]
  );

  // Teacher: prompt template and exemplars, endpoint and parameters, raw responses, validation.
  let trainingData: LineageNode = sample;
  if (l.teacher) {
    const t = l.teacher;
    const teacherSpec = manifest?.spec.teacher as Record<string, unknown> | undefined;
    // The kind is the node's own; the URL is its endpoint; the rest are the calling parameters.
    const { kind: _kind, url, ...parameters } = redact(teacherSpec ?? {}) as Record<string, unknown>;
    const endpoint =
      typeof url === 'string'
        ? url
        : t.kind === 'scripted'
          ? 'local scripted teacher (served by the worker)'
          : t.kind === 'replay'
            ? `recorded completions${typeof parameters.dir === 'string' ? ` in ${parameters.dir}` : ''}`
            : '(not recorded)';
    const exemplars = t.exemplarsHash
      ? node('exemplars', `exemplars ${short(t.exemplarsHash)}`, {
          hash: t.exemplarsHash,
          ...(t.exemplarsCount === undefined ? {} : { details: { count: t.exemplarsCount } }),
        })
      : node('exemplars', 'exemplars (hash not recorded for this version; part of the template hash)', {
          details: { recorded: false },
        });
    const template = node('prompt-template', `prompt template ${short(t.templateHash)}`, { hash: t.templateHash }, [
      exemplars,
    ]);
    // The label names the parameters that shape the answers; the rest (limits, sharding) are in `details`.
    const shaping = ['temperature', 'maxTokens', 'samples', 'errorRate']
      .filter((k) => parameters[k] !== undefined)
      .map((k) => `${k} ${String(parameters[k])}`)
      .join(', ');
    const teacher = node(
      'teacher',
      `teacher ${t.kind} ${t.model} at ${endpoint}${shaping ? ` (${shaping})` : ''}`,
      {
        details: {
          kind: t.kind,
          model: t.model,
          endpoint,
          parameters,
          ...(t.mode ? { mode: t.mode } : {}),
          ...(t.calls ? { calls: t.calls } : {}),
          ...(t.usage ? { usage: t.usage } : {}),
          ...(t.costUsd === undefined ? {} : { costUsd: t.costUsd }),
        },
      },
      [template]
    );
    const responses =
      artifact(
        'responses',
        'teacher/responses',
        `raw teacher responses (${t.cached} cached, ${t.failed} failed)`,
        { sha256: t.responses },
        [teacher, sample]
      ) ?? node('responses', 'raw teacher responses', { hash: t.responses }, [teacher, sample]);
    trainingData = responses;
    const v = l.validation;
    if (v) {
      const dropped = Object.entries(v.dropped)
        .map(([k, n]) => `${k} ${n}`)
        .join(', ');
      const rationales = (['train', 'valid'] as const).map((s) =>
        artifact('rationales', `rationales/${s}`, `${s} rationales kept`)
      );
      trainingData =
        artifact(
          'validation',
          'rationales/report',
          `validation report: kept ${v.kept}${dropped ? `, dropped ${dropped}` : ''}`,
          { sha256: v.report },
          [...rationales, responses],
          { kept: v.kept, dropped: v.dropped, teacherAccuracy: v.teacherAccuracy }
        ) ?? node('validation', 'validation report', { hash: v.report }, [responses]);
    }
  }

  // Training: what the checkpoint was made with.
  const tr = l.training;
  const configHash = sha256Hex(canonicalJson(tr.config));
  const code = l.code ?? parseCodeVersion(l.codeVersion);
  const checkpoint = artifact(
    'checkpoint',
    'student/checkpoint',
    `checkpoint ${short(version.checkpoint.sha256)}, ${tr.params} parameters`,
    version.checkpoint,
    [
      node('training-config', `training config ${short(configHash)}: ${tr.method}, ${tr.steps} steps`, {
        hash: configHash,
        details: { method: tr.method, labelSource: tr.labelSource, config: redact(tr.config), params: tr.params },
      }),
      'hash' in tokenizer
        ? node(
            'tokenizer',
            `tokenizer ${short(tokenizer.hash)}${tokenizer.vocabSize ? ` (vocab ${tokenizer.vocabSize})` : ''}`,
            {
              hash: tokenizer.hash,
              details: {
                source: 'the checkpoint metadata',
                ...(tokenizer.vocabSize ? { vocabSize: tokenizer.vocabSize } : {}),
              },
            }
          )
        : node('tokenizer', `tokenizer unknown: ${tokenizer.problem}`, { details: { problem: tokenizer.problem } }),
      node('backend', `backend ${tr.backend}`, { details: { backend: tr.backend } }),
      node(
        'code',
        `code ${l.codeVersion}${code.commit ? ` (commit ${code.commit}${code.dirty ? ', dirty' : ''})` : ''}`,
        { details: { ...code } }
      ),
      tr.initFrom &&
        node('init', `initialised from ${tr.initFrom.name} v${tr.initFrom.version} (${tr.initFrom.ref})`, {
          hash: tr.initFrom.checkpoint.sha256,
          uri: store.uri(tr.initFrom.checkpoint),
          role: 'student/init-checkpoint',
          size: tr.initFrom.checkpoint.size,
        }),
      artifact('train-log', 'student/train-log', `training log, final loss ${tr.finalLoss.toFixed(4)}`),
      trainingData,
    ],
    { backend: tr.backend, steps: tr.steps, finalLoss: tr.finalLoss, params: tr.params }
  )!;

  const m = version.metrics;
  const metrics = node(
    'metrics',
    `accuracy ${(100 * m.accuracy).toFixed(1)}% (${m.correct}/${m.total}), majority baseline ${(100 * m.majorityBaseline).toFixed(1)}%` +
      (m.baselines?.bestOperation
        ? `, best single operation (${m.baselines.bestOperation.operation}) ${(100 * m.baselines.bestOperation.accuracy).toFixed(1)}%`
        : ''),
    { details: { ...m } },
    [
      artifact('predictions', 'eval/predictions', 'test predictions'),
      artifact('artifact', 'eval/metrics', 'evaluation metrics'),
    ]
  );

  const gate = gateNode(store, own, history, version);
  const approval = approvalNode(own);
  const run = node(
    'run',
    `workflow ${l.workflowId}, run ${l.runId}` +
      (l.trigger ? `, started by schedule ${l.trigger.scheduleId} for ${l.trigger.nominalTime}` : '') +
      (l.workers ? `; ${workersText(l.workers)}` : ''),
    {
      details: {
        workflowId: l.workflowId,
        runId: l.runId,
        ...(l.workers ? { workers: l.workers } : {}),
        ...(l.specHash ? { specHash: l.specHash } : {}),
        ...(l.trigger ? { trigger: l.trigger } : {}),
      },
    },
    [
      node('manifest', `run manifest ${manifestHash ? short(manifestHash) : `${l.manifest} (named, not hashed)`}`, {
        ...(manifestHash ? { hash: manifestHash } : {}),
        uri: l.manifest,
        role: 'run/manifest',
        ...('problem' in manifestRead ? { details: { problem: manifestRead.problem } } : {}),
      }),
    ]
  );
  // A role this code does not know (a newer stage's) still shows, and is still verified.
  for (const a of manifest?.artifacts ?? []) {
    if (!placed.has(a.role)) {
      run.children[0].children.push(
        node('artifact', a.role, { hash: a.sha256, uri: a.uri, role: a.role, size: a.size })
      );
    }
  }

  return node(
    'model',
    `${version.name} v${version.version} (${status?.status ?? 'unknown status'}), registered ${version.createdAt}`,
    { details: { name: version.name, version: version.version, createdAt: version.createdAt, status: status?.status } },
    [checkpoint, metrics, gate, approval, run]
  );
}

function gateNode(
  store: ArtifactStore,
  own: AuditRecord[],
  history: AuditRecord[],
  version: ModelVersion
): LineageNode {
  const record = own.filter((r) => r.action === 'gate').at(-1);
  const moves = history
    .filter((r) => r.action === 'alias' && r.to === version.version)
    .map((r) =>
      node('alias', `alias ${r.alias} → v${r.to} (from ${r.from ?? 'none'}) by ${r.who} at ${r.when}: ${r.why}`, {
        details: { ...r },
      })
    );
  if (!record) return node('gate', 'no gate decision recorded', { details: { recorded: false } }, moves);
  const d = (record.details ?? {}) as {
    outcome?: string;
    frozen?: { evalSet?: { sha256: string; size: number }; predictions?: { sha256: string; size: number } };
    teacher?: { predictions?: { sha256: string; size: number } };
  };
  const ref = (kind: LineageKind, role: string, label: string, r?: { sha256: string; size: number }) =>
    r && node(kind, label, { hash: r.sha256, uri: store.uri(r), role, size: r.size });
  return node(
    'gate',
    `gate: ${d.outcome ?? record.to} (${record.why}) at ${record.when}`,
    { details: { ...record.details, status: record.to, when: record.when, workflowId: record.workflowId } },
    [
      ref('split', 'gate/eval-set', 'frozen evaluation set', d.frozen?.evalSet),
      ref('predictions', 'gate/candidate-predictions', 'candidate predictions on it', d.frozen?.predictions),
      ref('predictions', 'gate/teacher-predictions', 'teacher predictions on it', d.teacher?.predictions),
      ...moves,
    ]
  );
}

function approvalNode(own: AuditRecord[]): LineageNode {
  const decision = own.filter((r) => r.action === 'approve' || r.action === 'reject').at(-1);
  if (decision) {
    return node('approval', `${decision.action}d by ${decision.who} at ${decision.when}: ${decision.why}`, {
      details: { action: decision.action, who: decision.who, when: decision.when, why: decision.why },
    });
  }
  const gate = own.filter((r) => r.action === 'gate').at(-1);
  const details = gate?.details as { awaitingApproval?: boolean } | undefined;
  if (details?.awaitingApproval) return node('approval', 'awaiting approval', { details: { pending: true } });
  return node('approval', gate ? `not required: the gate set ${String(gate.to)}` : 'none recorded', {
    details: { required: false },
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the tree

/** One stored object the lineage names: every role it plays (equal bytes are stored once). */
export interface LineageObject {
  sha256: string;
  roles: string[];
  uri: string;
  size?: number;
}

/** Every stored object the tree names, once each, in tree order. */
export function lineageObjects(tree: LineageNode): LineageObject[] {
  const byHash = new Map<string, LineageObject>();
  const walk = (n: LineageNode) => {
    if (n.role && n.hash && n.uri) {
      const seen = byHash.get(n.hash);
      if (seen) {
        if (!seen.roles.includes(n.role)) seen.roles.push(n.role);
      } else {
        byHash.set(n.hash, {
          sha256: n.hash,
          roles: [n.role],
          uri: n.uri,
          ...(n.size === undefined ? {} : { size: n.size }),
        });
      }
    }
    n.children.forEach(walk);
  };
  walk(tree);
  return [...byHash.values()];
}

export interface VerifiedObject extends LineageObject {
  status: 'ok' | 'missing' | 'altered';
  /** For an altered object: what its bytes hash to now, or why they could not be read (`reason`). */
  actual?: string;
  reason?: string;
}

/**
 * Re-read every object and re-hash it (ArtifactStore.get does: a different hash is an IntegrityError). An unreachable
 * store is not a verdict on the objects: its error propagates.
 */
export async function verifyObjects(
  store: ArtifactStore,
  objects: readonly LineageObject[],
  parallel = 4
): Promise<VerifiedObject[]> {
  const out = new Array<VerifiedObject>(objects.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, objects.length) }, async () => {
      while (next < objects.length) {
        const i = next++;
        const o = objects[i];
        try {
          await store.get({ sha256: o.sha256, size: o.size ?? 0 });
          out[i] = { ...o, status: 'ok' };
        } catch (err) {
          if (err instanceof NotFoundError) out[i] = { ...o, status: 'missing' };
          // Our own hash check names the sha256 the bytes have now. On S3 the SDK may refuse bytes altered at rest
          // first, against the checksum the server stored (lib/store/s3-store.ts): then only its message says what.
          else if (err instanceof IntegrityError) {
            out[i] =
              err.expected === o.sha256
                ? { ...o, status: 'altered', actual: err.actual }
                : { ...o, status: 'altered', reason: err.message };
          } else throw err;
        }
      }
    })
  );
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

/** The tree as indented text, one node a line, with its role, hash and URI under the label where it has them. */
export function renderTree(tree: LineageNode): string {
  const lines: string[] = [];
  const walk = (n: LineageNode, prefix: string, last: boolean, root: boolean) => {
    const head = root ? '' : `${prefix}${last ? '└─ ' : '├─ '}`;
    const under = root ? '' : `${prefix}${last ? '   ' : '│  '}`;
    lines.push(`${head}${n.kind}: ${n.label}`);
    const more = n.children.length ? '│  ' : '   ';
    if (n.hash && !n.label.includes(n.hash)) lines.push(`${under}${more}sha256 ${n.hash}`);
    if (n.uri) lines.push(`${under}${more}${n.role ? `${n.role} ` : ''}${n.uri}`);
    n.children.forEach((c, i) => walk(c, under, i === n.children.length - 1, false));
  };
  walk(tree, '', true, true);
  return lines.join('\n');
}

/** A string as a DOT quoted string: backslashes and quotes escaped, line breaks as DOT's `\n`, controls dropped. */
export function dotQuote(s: string): string {
  return `"${s
    .replace(/\\/g, '\\\\')
    .replace(/"/g, '\\"')
    .replace(/\r?\n/g, '\\n')
    .replace(/[\u0000-\u001f\u007f]/g, '')}"`;
}

/** The tree as a Graphviz digraph: edges point from what a thing was made of to the thing. */
export function renderDot(tree: LineageNode): string {
  const lines = ['digraph lineage {', '  rankdir=RL;', '  node [shape=box, fontname="Helvetica", fontsize=10];'];
  let count = 0;
  const walk = (n: LineageNode): string => {
    const id = `n${count++}`;
    const text = [`${n.kind}: ${n.label}`, ...(n.hash && !n.label.includes(n.hash) ? [`sha256 ${n.hash}`] : [])];
    lines.push(`  ${id} [label=${dotQuote(text.join('\n'))}];`);
    for (const child of n.children) lines.push(`  ${walk(child)} -> ${id};`);
    return id;
  };
  walk(tree);
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
