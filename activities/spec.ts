/**
 * The pipeline's first step, run as a local activity: validate the spec and fill its defaults. Here rather than in
 * the workflow because a workflow evaluates its modules afresh on every run, and building zod's schemas cost each
 * run ~40 ms of CPU and ~14 ms of garbage collection (profiled); a worker builds them once. Local, so it costs no
 * round trip to the server: it runs inside the workflow's first task and its result is recorded in a marker.
 */
import { parseSpec as parse, type PipelineSpec } from '../lib/pipeline/spec';
import { mapErrors } from './progress';

/** The spec, parsed; a bad one is a non-retryable `InputError` naming every bad field (details: the issues). */
export function parseSpec(input: unknown): Promise<PipelineSpec> {
  return mapErrors(async () => parse(input));
}
