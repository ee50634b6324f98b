/** Teacher stages for tests: seeded demo examples in the store, with a teacher spec as the pipeline would parse it. */
import type { TeacherStageInput } from '../../contract';
import { generateDemoTask } from '../../lib/data/demo-task';
import { parseSpec } from '../../lib/pipeline/spec';
import type { ArtifactStore } from '../../lib/store/artifact-store';

/**
 * `n` demo examples from `seed`, stored as train and valid splits (the last `valid` of them; a tenth by default), and
 * `teacher` with every default filled in: the input of one teacher stage.
 */
export async function demoTeacherStage(
  store: ArtifactStore,
  opts: { n: number; seed: number; teacher: Record<string, unknown>; valid?: number; name?: string }
): Promise<TeacherStageInput> {
  const examples = generateDemoTask({ n: opts.n, seed: opts.seed });
  const cut = opts.n - (opts.valid ?? Math.floor(opts.n / 10));
  const [train, valid] = await Promise.all([
    store.putJsonl(examples.slice(0, cut)),
    store.putJsonl(examples.slice(cut)),
  ]);
  const spec = parseSpec({ name: opts.name ?? 'teacher-stage', data: { kind: 'demo' }, teacher: opts.teacher });
  return { task: 'demo', teacher: spec.teacher, train, valid };
}
