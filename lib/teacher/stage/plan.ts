/** The teacher stage's first step: split the train and valid examples into shard files. */
import type { Example } from '../../data/types';
import type { ShardExample } from '../shard';
import { templateHash } from '../templates';
import { modelOf, type StageDeps } from './endpoint';
import { identityOf, type PlanDoc } from './layout';
import { preflightTeacher, type PreflightDeps } from './preflight';
import type { TeacherPlan, TeacherStageInput } from './types';

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
  const shards: PlanDoc['shards'] = [];
  let examples = 0;
  // One split at a time, one shard at a time: the plan never holds more than a split and a shard.
  let pending: ShardExample[] = [];
  const emit = async () => {
    shards.push({ ref: await store.putJsonl(pending), examples: pending.length });
    pending = [];
  };
  for (const split of [input.train, input.valid]) {
    for await (const ex of store.iterJsonl<Example>(split)) {
      pending.push({ id: ex.id, input: ex.input, ...(ex.source ? { source: ex.source } : {}) });
      examples++;
      if (pending.length === shardSize) await emit();
    }
  }
  if (pending.length > 0) await emit();
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
