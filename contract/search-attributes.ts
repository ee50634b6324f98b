/**
 * The custom search attributes every pipeline run carries, so runs are found by model, task, method, data and outcome
 * with `temporal workflow list --query "StepwiseModel='my-model'"`, in the Temporal UI and by `stepwise runs ls`.
 * Pure declarations (`defineSearchAttributeKey` only builds a `{ name, type }` pair), safe in the workflow bundle.
 *
 * A cluster must know an attribute before a workflow sets it: the dev servers Stepwise starts register them
 * (`--search-attribute`), workers add them to a real cluster at start where they may (workers/search-attributes.ts).
 */
import {
  defineSearchAttributeKey,
  SearchAttributeType,
  type SearchAttributePair,
  type TypedSearchAttributes,
} from '@temporalio/common';
import type { PipelineSpec } from '../lib/pipeline/spec';

/** The registry model name (`spec.name`). */
export const StepwiseModel = defineSearchAttributeKey('StepwiseModel', SearchAttributeType.KEYWORD);
/** The task whose parsing and scoring apply: `demo`, `jsonl`, or the benchmark of a reference dataset. */
export const StepwiseTask = defineSearchAttributeKey('StepwiseTask', SearchAttributeType.KEYWORD);
/** The training method (`spec.student.method`). */
export const StepwiseMethod = defineSearchAttributeKey('StepwiseMethod', SearchAttributeType.KEYWORD);
/** The hash of the sampled dataset's bytes, known once the `sample` stage has run. */
export const StepwiseDatasetHash = defineSearchAttributeKey('StepwiseDatasetHash', SearchAttributeType.KEYWORD);
/** Where the run's decision stands: one of {@link RUN_OUTCOMES}. */
export const StepwiseOutcome = defineSearchAttributeKey('StepwiseOutcome', SearchAttributeType.KEYWORD);

/**
 * `running` until a version is registered; then `registered` (no gate), `promoted` or `rejected` by the gate (or a
 * person), `awaiting-approval` while a person must decide; `failed` when the run fails; `unchanged` when a scheduled
 * refresh found its champion trained on the same spec and data and trained nothing.
 */
export const RUN_OUTCOMES = [
  'running',
  'awaiting-approval',
  'promoted',
  'rejected',
  'registered',
  'failed',
  'unchanged',
] as const;
export type RunOutcome = (typeof RUN_OUTCOMES)[number];

/**
 * Set by the server on every run a schedule starts (Temporal's own attributes, registered on every cluster): the
 * schedule's id and the action's nominal time. A run reads them to know it is a refresh and to record its trigger.
 */
export const TemporalScheduledById = defineSearchAttributeKey('TemporalScheduledById', SearchAttributeType.KEYWORD);
export const TemporalScheduledStartTime = defineSearchAttributeKey(
  'TemporalScheduledStartTime',
  SearchAttributeType.DATETIME
);

/** A search attribute's name and type (what `defineSearchAttributeKey` returns, which the SDK does not export). */
export interface SearchAttributeDeclaration {
  name: string;
  type: SearchAttributeType;
}

/** Every Stepwise search attribute, for registration on a cluster. */
export const STEPWISE_SEARCH_ATTRIBUTES: readonly SearchAttributeDeclaration[] = [
  StepwiseModel,
  StepwiseTask,
  StepwiseMethod,
  StepwiseDatasetHash,
  StepwiseOutcome,
];

/** The task name a run is filed under; `taskOf` in lib/pipeline/spec.ts, restated so this module stays declarations. */
const taskName = (spec: PipelineSpec): string => (spec.data.kind === 'reference' ? spec.data.task : spec.data.kind);

/** The attributes known when a run starts: what a client passes as `typedSearchAttributes`. */
export function pipelineSearchAttributes(spec: PipelineSpec): SearchAttributePair[] {
  return [
    { key: StepwiseModel, value: spec.name },
    { key: StepwiseTask, value: taskName(spec) },
    { key: StepwiseMethod, value: spec.student.method },
  ];
}

/** The attributes a client sets at start: those of the spec, and the outcome `running`. */
export function startSearchAttributes(spec: PipelineSpec): SearchAttributePair[] {
  return [...pipelineSearchAttributes(spec), { key: StepwiseOutcome, value: 'running' satisfies RunOutcome }];
}

/**
 * Whether the run was started with the Stepwise attributes, i.e. the cluster has them registered. A workflow upserts
 * only then: the server fails every workflow task that sets an attribute it does not know, which would stall the run.
 */
export function hasStepwiseSearchAttributes(attributes: TypedSearchAttributes): boolean {
  return attributes.get(StepwiseModel) !== undefined;
}
