/**
 * OpenLineage 2-0-2 run events, built from plain values (no Temporal here: activities/openlineage.ts supplies the
 * ids). No JavaScript client exists, so the events are written to the published JSON schema directly;
 * test/openlineage.test.ts validates them against it.
 *
 * Ids are derived, never random: a stage's run id is a name-based UUID (RFC 9562 version 5) of the pipeline run and
 * the stage instance, so START and COMPLETE of one stage, and every retry of it, share one run id without any state
 * passed between them, and a re-emitted event names the same run.
 */
import { createHash } from 'node:crypto';
import type { ArtifactRef } from '../store/artifact-store';

export const RUN_EVENT_SCHEMA_URL = 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent';

const FACETS = 'https://openlineage.io/spec/facets';
/** The facet schema versions written into each facet's `_schemaURL` (the versions the test validates against). */
export const FACET_SCHEMA_URLS = {
  parent: `${FACETS}/1-1-0/ParentRunFacet.json#/$defs/ParentRunFacet`,
  errorMessage: `${FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet`,
  version: `${FACETS}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet`,
  inputStatistics: `${FACETS}/1-0-0/InputStatisticsInputDatasetFacet.json#/$defs/InputStatisticsInputDatasetFacet`,
  outputStatistics: `${FACETS}/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet`,
} as const;

/** Job namespace when `STEPWISE_OPENLINEAGE_NAMESPACE` is not set. */
export const DEFAULT_NAMESPACE = 'stepwise';

/** ABORT: the attempt was cancelled (the run was cancelled, or the activity timed out). */
export type RunEventType = 'START' | 'COMPLETE' | 'FAIL' | 'ABORT';

interface Facet {
  _producer: string;
  _schemaURL: string;
  [field: string]: unknown;
}

export interface LineageDataset {
  namespace: string;
  name: string;
  facets: Record<string, Facet>;
  inputFacets?: Record<string, Facet>;
  outputFacets?: Record<string, Facet>;
}

export interface RunEvent {
  eventType: RunEventType;
  eventTime: string;
  producer: string;
  schemaURL: string;
  run: { runId: string; facets: Record<string, Facet> };
  job: { namespace: string; name: string; facets: Record<string, Facet> };
  inputs: LineageDataset[];
  outputs: LineageDataset[];
}

/** A dataset as the store knows it: its URI (`store.uri(ref)`) and the reference it was written under. */
export interface StoredDataset {
  uri: string;
  ref: ArtifactRef;
}

export interface RunEventInput {
  eventType: RunEventType;
  /** ISO-8601; the caller's clock. */
  eventTime: string;
  /** URI of the code that emits (`urn:stepwise:<code version>` from {@link producerUri}). */
  producer: string;
  namespace: string;
  /** The stage: `sample`, `promptTeacher`, `gate.decideGate`, … */
  job: string;
  runId: string;
  /** The pipeline run this stage belongs to. */
  parent: { job: string; runId: string };
  inputs?: readonly StoredDataset[];
  outputs?: readonly StoredDataset[];
  /** FAIL only: what went wrong. */
  error?: { message: string; stackTrace?: string };
}

/** Build one RunEvent. Pure: the same input gives the same event. */
export function buildRunEvent(input: RunEventInput): RunEvent {
  const facet = (schemaURL: string, fields: Record<string, unknown>): Facet => ({
    _producer: input.producer,
    _schemaURL: schemaURL,
    ...fields,
  });
  const runFacets: Record<string, Facet> = {
    parent: facet(FACET_SCHEMA_URLS.parent, {
      run: { runId: input.parent.runId },
      job: { namespace: input.namespace, name: input.parent.job },
    }),
  };
  if (input.error) {
    runFacets.errorMessage = facet(FACET_SCHEMA_URLS.errorMessage, {
      message: input.error.message,
      programmingLanguage: 'TypeScript',
      ...(input.error.stackTrace ? { stackTrace: input.error.stackTrace } : {}),
    });
  }
  const dataset = (d: StoredDataset, side: 'input' | 'output'): LineageDataset => {
    const { namespace, name } = datasetName(d.uri);
    const stats = { size: d.ref.size };
    return {
      namespace,
      name,
      // The content hash is the version: the same name always holds the same bytes, and a consumer can re-hash them.
      facets: { version: facet(FACET_SCHEMA_URLS.version, { datasetVersion: d.ref.sha256 }) },
      ...(side === 'input'
        ? { inputFacets: { inputStatistics: facet(FACET_SCHEMA_URLS.inputStatistics, stats) } }
        : { outputFacets: { outputStatistics: facet(FACET_SCHEMA_URLS.outputStatistics, stats) } }),
    };
  };
  return {
    eventType: input.eventType,
    eventTime: input.eventTime,
    producer: input.producer,
    schemaURL: RUN_EVENT_SCHEMA_URL,
    run: { runId: input.runId, facets: runFacets },
    job: { namespace: input.namespace, name: input.job, facets: {} },
    inputs: (input.inputs ?? []).map((d) => dataset(d, 'input')),
    outputs: (input.outputs ?? []).map((d) => dataset(d, 'output')),
  };
}

/**
 * OpenLineage's naming convention for object stores and files: `s3://bucket` + `key`, `file` + absolute path. The
 * store URI is `namespace/name` (S3) or `file://` + name (filesystem), so either side can be recovered.
 */
export function datasetName(uri: string): { namespace: string; name: string } {
  const url = new URL(uri);
  if (url.protocol === 'file:') return { namespace: 'file', name: decodeURIComponent(url.pathname) };
  return { namespace: `${url.protocol}//${url.host}`, name: decodeURIComponent(url.pathname.replace(/^\//, '')) };
}

/** A producer URI naming the code version (`0.1.0+1a2b3c.dirty`), as lineage records it. */
export function producerUri(codeVersion: string): string {
  return `urn:stepwise:${encodeURIComponent(codeVersion)}`;
}

/** Every distinct ArtifactRef (`{ sha256, size }`) in a value, depth-first in key order, each once. */
export function collectRefs(value: unknown): ArtifactRef[] {
  const found = new Map<string, ArtifactRef>();
  const seen = new Set<object>();
  const walk = (v: unknown) => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    if (isRef(v)) {
      if (!found.has(v.sha256)) found.set(v.sha256, { sha256: v.sha256, size: v.size });
      return;
    }
    for (const child of Array.isArray(v) ? v : Object.values(v)) walk(child);
  };
  walk(value);
  return [...found.values()];
}

function isRef(v: object): v is ArtifactRef {
  const r = v as Partial<ArtifactRef>;
  return typeof r.sha256 === 'string' && /^[0-9a-f]{64}$/.test(r.sha256) && Number.isInteger(r.size);
}

/** This project's UUID namespace for name-based ids (a fixed random UUID; changing it changes every derived id). */
const STEPWISE_UUID_NAMESPACE = '6c1e0f52-3d1b-4a8e-9b8f-2f6c7d0e5a41';

/** RFC 9562 version 5 UUID of `parts` joined by NUL (no part can contain it), in the Stepwise namespace. */
export function deriveUuid(...parts: readonly string[]): string {
  const ns = Buffer.from(STEPWISE_UUID_NAMESPACE.replace(/-/g, ''), 'hex');
  const hash = createHash('sha1').update(ns).update(parts.join('\0'), 'utf8').digest();
  const bytes = hash.subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x50;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The pipeline run's id: one per Temporal workflow run. */
export function pipelineRunUuid(workflowId: string, runId: string): string {
  return deriveUuid('pipeline', workflowId, runId);
}

/**
 * A stage run's id: the pipeline run, the job, and the stage instance (the activity id for a stage that is one
 * activity, so a second `evaluate` in the same run is a second stage run; the child workflow id for the teacher).
 */
export function stageRunUuid(workflowId: string, runId: string, job: string, instance: string): string {
  return deriveUuid('stage', workflowId, runId, job, instance);
}

/**
 * Where an event is kept in the store: `openlineage/<workflowId>/<job>/<stage run id>/<EVENT>-<attempt>-<activity
 * id>.jsonl`, one event per object, written with a conditional create so a retry adds its own and never rewrites
 * one. The activity id tells apart the activities of a stage that spans several (the teacher's plan and finish).
 */
export function eventKey(
  workflowId: string,
  job: string,
  stageRunId: string,
  type: RunEventType,
  attempt: number,
  activityId: string
): string {
  return `openlineage/${workflowId}/${job}/${stageRunId}/${type}-${attempt}-${activityId}.jsonl`;
}
