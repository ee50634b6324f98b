/**
 * What a validated spec implies (its task, whether it calls a teacher, the version a warm start names), apart from
 * the zod schemas in ./spec.ts: the pipeline workflow imports this module only, and has its spec parsed by a local
 * activity (activities/spec.ts says why). Pure: no zod, no Node built-ins, no I/O.
 */
import type { PipelineSpec, TaskKind } from './spec';

/** The task whose parsing rules, prompt template and scoring apply to this spec. */
export function taskOf(spec: PipelineSpec): TaskKind {
  return spec.data.kind === 'reference' ? spec.data.task : spec.data.kind;
}

/** Whether this method learns from the teacher at all (standard finetuning uses gold labels only). */
export function usesTeacher(spec: PipelineSpec): boolean {
  return spec.student.method !== 'standard-finetune';
}

/** The label source a run trains `predict:` on, defaults resolved (recorded in lineage). */
export function labelSourceOf(spec: PipelineSpec): 'gold' | 'teacher' {
  return spec.student.labelSource ?? (spec.student.method === 'standard-distill' ? 'teacher' : 'gold');
}

/**
 * A registry reference (`NAME@VERSION`, `NAME@ALIAS`, `NAME@latest`) as `student.init` may give one instead of a
 * file path: no `/`, exactly one `@`. Here, not in lib/registry, because the workflow tells the two apart too.
 */
export const MODEL_REF_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}@[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Whether `value` is a registry reference rather than a file path (write `./a@b` for a file so named). */
export function isModelRef(value: string): boolean {
  return MODEL_REF_PATTERN.test(value);
}

/** The registered version a `student.warmStart` names: `champion` is the version the spec's gate alias names. */
export function warmStartRef(spec: PipelineSpec): string | undefined {
  const warm = spec.student.warmStart;
  return warm === 'champion' ? `${spec.name}@${spec.gate.alias}` : warm;
}
