/**
 * Aliases, statuses and the audit log (lib/registry/audit.ts) on both stores: compare-and-swap under contention,
 * the log's consistency, "which version did the alias name at time T", status rules, and crash repair.
 */
import test, { type ExecutionContext } from 'ava';
import { InputError } from '../lib/errors';
import { ArtifactStore, FsBackend, S3Backend } from '../lib/store';
import { registerRun } from '../lib/registry/run';
import {
  aliasAt,
  changeStatus,
  getAlias,
  listAliases,
  modelHistory,
  moveAlias,
  RegistryConflictError,
  versionStatus,
  type AuditRecord,
} from '../lib/registry/audit';
import { resolveRef } from '../lib/registry/refs';
import { hooked, registerInput } from './faults/register-fixture';
import { s3ServerForFile } from './helpers/s3';
import { tempDir } from './helpers/temp';

const BUCKET = 'stepwise-aliases';
const s3 = s3ServerForFile(BUCKET);

let prefixes = 0;
const stores: Record<string, (t: ExecutionContext) => Promise<ArtifactStore>> = {
  fs: async (t) => new ArtifactStore(new FsBackend(await tempDir(t, 'stepwise-aliases-'))),
  s3: async () =>
    new ArtifactStore(
      new S3Backend({
        bucket: BUCKET,
        prefix: `t${++prefixes}-${Date.now()}`,
        endpoint: s3().endpoint,
        region: 'us-east-1',
      })
    ),
};

/** Register `n` versions of `name` through the register stage's own code; returns their numbers. */
async function registered(store: ArtifactStore, name: string, n: number): Promise<number[]> {
  const versions: number[] = [];
  for (let i = 0; i < n; i++)
    versions.push((await registerRun(store, registerInput(name, `run-${i}`), 'test')).version);
  return versions;
}

const aliasRecords = (history: AuditRecord[], alias: string) =>
  history.filter((r) => r.action === 'alias' && r.alias === alias).sort((a, b) => a.seq - b.seq);

for (const [kind, fresh] of Object.entries(stores)) {
  test(`${kind}: 16 concurrent promotions to one alias: one wins per round, the log loses none`, async (t) => {
    const store = await fresh(t);
    const versions = await registered(store, 'm', 16);
    const winners: number[] = [];
    for (let round = 0; round < 4; round++) {
      // Each promoter read the alias before deciding, as `stepwise models promote` does, and moves against that.
      const seen = (await getAlias(store, 'm', 'champion'))?.version ?? null;
      const outcomes = await Promise.allSettled(
        versions.map((v) =>
          moveAlias(store, 'm', 'champion', v, { who: `user-${v}`, why: `round ${round}`, expect: seen })
        )
      );
      const won = outcomes.filter((o): o is PromiseFulfilledResult<AuditRecord> => o.status === 'fulfilled');
      t.is(won.length, 1, `round ${round}: exactly one promotion wins`);
      for (const o of outcomes) {
        if (o.status === 'rejected') t.true(o.reason instanceof RegistryConflictError, String(o.reason));
      }
      t.is((await getAlias(store, 'm', 'champion'))!.version, won[0].value.to as number);
      winners.push(won[0].value.to as number);
    }
    const chain = aliasRecords(await modelHistory(store, 'm'), 'champion');
    t.deepEqual(
      chain.map((r) => r.seq),
      [1, 2, 3, 4],
      'one record per successful move, numbered without gaps'
    );
    t.deepEqual(
      chain.map((r) => r.to),
      winners
    );
    t.deepEqual(
      chain.map((r) => r.from),
      [null, ...winners.slice(0, -1)],
      'each move starts where the one before ended'
    );
    t.deepEqual(
      chain.map((r) => r.who),
      winners.map((v) => `user-${v}`)
    );
    t.deepEqual(
      (await listAliases(store, 'm')).map((a) => [a.alias, a.version]),
      [['champion', winners[3]]]
    );
  });

  test(`${kind}: models at answers before, between and after three promotions`, async (t) => {
    const store = await fresh(t);
    const [v1, v2, v3] = await registered(store, 'm', 3);
    const at = (iso: string) => new Date(iso);
    await moveAlias(store, 'm', 'champion', v1, { who: 'a', why: 'first', now: at('2026-03-01T00:00:00Z') });
    await moveAlias(store, 'm', 'champion', v2, { who: 'b', why: 'better', now: at('2026-03-03T12:00:00Z') });
    await moveAlias(store, 'm', 'champion', v3, { who: 'c', why: 'better still', now: at('2026-03-05T00:00:00Z') });
    const history = await modelHistory(store, 'm');
    t.is(aliasAt(history, 'champion', at('2026-02-28T23:59:59Z')), undefined, 'before the first promotion');
    t.is(aliasAt(history, 'champion', at('2026-03-01T00:00:00Z')), v1, 'at the instant of the first');
    t.is(aliasAt(history, 'champion', at('2026-03-03T11:59:59Z')), v1);
    t.is(aliasAt(history, 'champion', at('2026-03-03T12:00:00Z')), v2);
    t.is(aliasAt(history, 'champion', at('2026-03-04T00:00:00Z')), v2);
    t.is(aliasAt(history, 'champion', at('2027-01-01T00:00:00Z')), v3, 'after the last');
    t.is(aliasAt(history, 'staging', at('2027-01-01T00:00:00Z')), undefined, 'an alias never set');
    // A writer whose clock is behind cannot put a move before the one it follows.
    const late = await moveAlias(store, 'm', 'champion', v1, {
      who: 'd',
      why: 'rollback',
      now: at('2026-01-01T00:00:00Z'),
    });
    t.is(late.when, '2026-03-05T00:00:00.000Z');
  });

  test(`${kind}: status rules, references and the audit trail of each change`, async (t) => {
    const store = await fresh(t);
    const [v1, v2, v3] = await registered(store, 'm', 3);
    t.is((await versionStatus(store, 'm', v1))!.status, 'candidate');
    await changeStatus(store, 'm', v1, 'approve', { who: 'alice', why: 'looks good' });
    await changeStatus(store, 'm', v2, 'reject', { who: 'bob', why: 'regresses on negations' });
    await t.throwsAsync(changeStatus(store, 'm', v2, 'approve', { who: 'carol', why: 'x' }), {
      instanceOf: InputError,
      message: /m@2 is rejected: only a version that is candidate can be approved/,
    });
    await t.throwsAsync(moveAlias(store, 'm', 'champion', v2, { who: 'carol', why: 'x' }), {
      instanceOf: InputError,
      message: /m@2 is rejected \(regresses on negations\): an alias cannot name it/,
    });
    await moveAlias(store, 'm', 'champion', v1, { who: 'alice', why: 'ship it' });
    await t.throwsAsync(changeStatus(store, 'm', v1, 'archive', { who: 'alice', why: 'old' }), {
      instanceOf: InputError,
      message: /named by alias champion: move the alias before archiving it/,
    });
    await changeStatus(store, 'm', v3, 'archive', { who: 'dave', why: 'superseded' });
    await t.throwsAsync(changeStatus(store, 'm', 99, 'approve', { who: 'x', why: 'y' }), {
      message: /m@99: no such version/,
    });
    await t.throwsAsync(moveAlias(store, 'm', '7', v1, { who: 'x', why: 'y' }), {
      instanceOf: InputError,
      message: /alias/,
    });
    await t.throwsAsync(moveAlias(store, 'm', '../x', v1, { who: 'x', why: 'y' }), { instanceOf: InputError });

    t.is((await resolveRef(store, 'm@champion')).version.version, v1);
    t.is((await resolveRef(store, 'm@2')).version.version, v2);
    t.is((await resolveRef(store, 'm')).version.version, v3);
    await t.throwsAsync(resolveRef(store, 'm@staging', 'student.init'), {
      instanceOf: InputError,
      message: /^student\.init: m@staging: model m has no alias "staging"/,
    });

    const history = await modelHistory(store, 'm');
    t.deepEqual(
      history.map((r) => [r.action, r.version, r.from, r.to, r.who]),
      [
        ['register', v1, null, 'candidate', 'stepwise-pipeline'],
        ['register', v2, null, 'candidate', 'stepwise-pipeline'],
        ['register', v3, null, 'candidate', 'stepwise-pipeline'],
        ['approve', v1, 'candidate', 'approved', 'alice'],
        ['reject', v2, 'candidate', 'rejected', 'bob'],
        ['alias', v1, null, v1, 'alice'],
        ['archive', v3, 'candidate', 'archived', 'dave'],
      ]
    );
    t.true(history.every((r) => r.when && r.why && r.model === 'm'));
  });

  test(`${kind}: a move whose log append was lost is repaired, and a retried change applies once`, async (t) => {
    const store = await fresh(t);
    const [v1, v2] = await registered(store, 'm', 2);
    // The process dies between the swap (the commit) and the log append.
    const crashing = hooked(store, {
      before: (_i, key) => {
        if (key.includes('/audit/alias-')) throw new Error('killed before the log append');
      },
    });
    await t.throwsAsync(moveAlias(crashing, 'm', 'champion', v1, { who: 'a', why: 'first' }), {
      message: /killed before the log append/,
    });
    t.deepEqual(await store.listKeys('registry/m/audit/alias-champion/'), [], 'the log missed it');
    t.deepEqual(
      aliasRecords(await modelHistory(store, 'm'), 'champion').map((r) => r.to),
      [v1],
      'the history still shows the move, from its head'
    );
    await moveAlias(store, 'm', 'champion', v2, { who: 'b', why: 'second', id: 'promote:wf-1' });
    t.is(
      (await store.listKeys('registry/m/audit/alias-champion/')).length,
      2,
      'the next move wrote the lost record first'
    );
    // A workflow activity retried after its move committed finds its own record instead of moving again.
    const again = await moveAlias(store, 'm', 'champion', v2, {
      who: 'b',
      why: 'second',
      id: 'promote:wf-1',
      expect: v1,
    });
    t.is(again.seq, 2);
    t.is((await store.listKeys('registry/m/audit/alias-champion/')).length, 2);
  });
}
