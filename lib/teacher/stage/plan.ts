/** The teacher stage's first step: split the train and valid examples into shard files. */
import type { Example } from '../../data/types';
import type { ShardExample } from '../shard';
import { templateHash } from '../templates';
import { modelOf, type StageDeps } from './endpoint';
import { identityOf, type PlanDoc } from './layout';
import { preflightTeacher, type PreflightDeps } from './preflight';
import type { TeacherPlan, TeacherStageInput } from './types';

/** Shard files the plan writes at once: each is a shard's examples held in memory until its write lands. */
const PLAN_WRITES_IN_FLIGHT = 4;

/**
 * Splits the train and valid examples, in that order, into shard files of `teacher.shardSize` examples and stores
 * the plan that lists them; nothing is called yet. The same examples and teacher always give the same plan.
 */
export async function planShards(
  deps: Pick<StageDeps, 'store' | 'scripted'> & PreflightDeps,
  input: TeacherStageInput
): Promise<TeacherPlan> {
  // A wrong URL, key or recording folder fails here, once, instead of in every shard (lib/teacher/stage/preflight.ts).
  await preflightTeacher(deps, input);
  const { store } = deps;
  const { model, url } = await modelOf(input.teacher, deps.scripted);
  const { identity, samples } = identityOf(input.teacher, input.task, model);
  const shardSize = input.teacher.shardSize;
  let examples = 0;
  // One split at a time, a few shards at a time: the plan never holds more than a split and the shards being written.
  // Each write waits on a disk flush (fsync) or an S3 round trip: on this project's test machine a write with its
  // fsync took 2.9 ms one after another and 1.0 ms each with four at once.
  let pending: ShardExample[] = [];
  const entries: Promise<PlanDoc['shards'][number]>[] = [];
  const emit = async () => {
    if (entries.length >= PLAN_WRITES_IN_FLIGHT) await entries[entries.length - PLAN_WRITES_IN_FLIGHT];
    const shard = pending;
    pending = [];
    const entry = store.putJsonl(shard).then((ref) => ({ ref, examples: shard.length }));
    // Awaited below (or by a later emit); a failure meanwhile is not an unhandled rejection.
    entry.catch(() => undefined);
    entries.push(entry);
  };
  for (const split of [input.train, input.valid]) {
    for await (const batch of store.iterJsonlBatches<Example>(split)) {
      for (const ex of batch) {
        pending.push({ id: ex.id, input: ex.input, ...(ex.source ? { source: ex.source } : {}) });
        examples++;
        if (pending.length === shardSize) await emit();
      }
    }
  }
  if (pending.length > 0) await emit();
  const shards = await Promise.all(entries);
  const doc: PlanDoc = { version: 1, task: input.task, identity, samples, examples, shards };
  return {
    plan: await store.putJson(doc),
    shards: shards.length,
    examples,
    calls: examples * samples,
    teacher: {
      kind: input.teacher.kind,
      model,
      templateHash: templateHash(input.task),
      ...(url && input.teacher.kind === 'openai' ? { url } : {}),
    },
  };
}
