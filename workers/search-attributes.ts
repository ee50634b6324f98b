/**
 * Registering Stepwise's search attributes (contract/search-attributes.ts) on a cluster, and starting runs with them
 * where the cluster knows them. The server refuses to start a workflow that sets an attribute it does not know, and a
 * namespace without admin rights (Temporal Cloud) cannot add one: there a run starts without them and one line says
 * how to add them.
 */
import { ServiceError, type Client, type ConnectionLike, type WorkflowStartOptions } from '@temporalio/client';
import type { SearchAttributePair, SearchAttributeType } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { STEPWISE_SEARCH_ATTRIBUTES, startSearchAttributes, type SearchAttributeDeclaration } from '../contract';
import type { DevServerSearchAttributeType } from '../infra/temporal';
import type { PipelineSpec } from '../lib/pipeline/spec';
import { distillationPipeline } from '../workflows';

/** The gRPC status codes this module tells apart (grpc/status.proto; @grpc/grpc-js is not a direct dependency). */
const GRPC = {
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  UNAUTHENTICATED: 16,
} as const;

/** The CLI's spelling of a type (`--type Keyword`, `--search-attribute NAME=KeywordList`). */
const CLI_TYPE_NAMES: Record<SearchAttributeType, DevServerSearchAttributeType> = {
  TEXT: 'Text',
  KEYWORD: 'Keyword',
  INT: 'Int',
  DOUBLE: 'Double',
  BOOL: 'Bool',
  DATETIME: 'Datetime',
  KEYWORD_LIST: 'KeywordList',
};

const indexedValueType = (type: SearchAttributeType): temporal.api.enums.v1.IndexedValueType =>
  temporal.api.enums.v1.IndexedValueType[`INDEXED_VALUE_TYPE_${type}`];

/** For `startTemporalDevServer({ searchAttributes })`: the dev server registers them when it creates its database. */
export function devServerSearchAttributes(): Record<string, DevServerSearchAttributeType> {
  return Object.fromEntries(STEPWISE_SEARCH_ATTRIBUTES.map((key) => [key.name, CLI_TYPE_NAMES[key.type]]));
}

/** The commands an operator runs to add them by hand: one per type, since `--type` applies to every `--name`. */
export function searchAttributeCommands(namespace: string, keys: readonly SearchAttributeDeclaration[]): string {
  const byType = new Map<SearchAttributeType, string[]>();
  for (const key of keys) byType.set(key.type, [...(byType.get(key.type) ?? []), key.name]);
  return [...byType]
    .map(
      ([type, names]) =>
        `temporal operator search-attribute create --namespace ${namespace} ` +
        `${names.map((name) => `--name ${name}`).join(' ')} --type ${CLI_TYPE_NAMES[type]}`
    )
    .join('; ');
}

/**
 * Whether the namespace can index Stepwise's attributes, adding those it lacks. `true`: all registered (now or
 * before); `false`: some are missing and could not be added, or one is registered with another type; `undefined`:
 * the cluster does not let this identity list them (e.g. Temporal Cloud with an API key), so they may or may not be
 * there. Never throws for want of rights: a run must start either way. Logs one line when they are not all there.
 */
export async function ensureSearchAttributes(
  connection: Pick<ConnectionLike, 'operatorService'>,
  namespace: string,
  log: (line: string) => void
): Promise<boolean | undefined> {
  let known: Record<string, temporal.api.enums.v1.IndexedValueType>;
  try {
    known = (await connection.operatorService.listSearchAttributes({ namespace })).customAttributes;
  } catch (err) {
    if (!(err instanceof Error) || !isRefusal(err)) throw err;
    log(
      `stepwise: cannot list the search attributes of namespace ${namespace} (${grpcMessage(err)}); if runs are ` +
        `not findable by model, add them: ${searchAttributeCommands(namespace, STEPWISE_SEARCH_ATTRIBUTES)}`
    );
    return undefined;
  }
  const clashing = STEPWISE_SEARCH_ATTRIBUTES.filter(
    (key) => known[key.name] !== undefined && known[key.name] !== indexedValueType(key.type)
  );
  if (clashing.length > 0) {
    log(
      `stepwise: namespace ${namespace} has ${clashing.map((k) => k.name).join(', ')} with another type than ` +
        `${clashing.map((k) => CLI_TYPE_NAMES[k.type]).join(', ')}: runs start without search attributes until ` +
        'that is resolved'
    );
    return false;
  }
  const missing = STEPWISE_SEARCH_ATTRIBUTES.filter((key) => known[key.name] === undefined);
  if (missing.length === 0) return true;
  try {
    await connection.operatorService.addSearchAttributes({
      namespace,
      searchAttributes: Object.fromEntries(missing.map((key) => [key.name, indexedValueType(key.type)])),
    });
    log(`stepwise: registered search attributes ${missing.map((k) => k.name).join(', ')} in namespace ${namespace}`);
    return true;
  } catch (err) {
    if (!(err instanceof Error) || !isRefusal(err)) throw err;
    log(
      `stepwise: search attributes ${missing.map((k) => k.name).join(', ')} are not registered in namespace ` +
        `${namespace} and could not be added (${grpcMessage(err)}); runs start without them. An admin adds them ` +
        `with: ${searchAttributeCommands(namespace, missing)}`
    );
    return false;
  }
}

/**
 * Start a pipeline run carrying its search attributes (model, task, method, outcome `running`), so it is findable
 * from its first second. Where the namespace lacks them and they cannot be added, or the server refuses them anyway,
 * the run starts without them: being unsearchable is no reason not to run.
 */
export async function startPipelineRun(
  client: Client,
  spec: PipelineSpec,
  options: Omit<WorkflowStartOptions<typeof distillationPipeline>, 'args' | 'typedSearchAttributes'>,
  log: (line: string) => void
) {
  const start = (typedSearchAttributes?: SearchAttributePair[]) =>
    client.workflow.start(distillationPipeline, { ...options, args: [spec], typedSearchAttributes });
  const registered = await ensureSearchAttributes(client.connection, client.options.namespace, log);
  if (registered === false) return start();
  try {
    return await start(startSearchAttributes(spec));
  } catch (err) {
    if (!isUnknownSearchAttribute(err)) throw err;
    log(`stepwise: the server refused the run's search attributes (${grpcMessage(err)}): starting it without them`);
    return start();
  }
}

/** The server's answer to a start naming an attribute it has no mapping for: INVALID_ARGUMENT, "search attribute". */
function isUnknownSearchAttribute(err: unknown): boolean {
  if (!(err instanceof ServiceError)) return false;
  const cause = err.cause as { code?: number; details?: string } | undefined;
  return cause?.code === GRPC.INVALID_ARGUMENT && /search attribute/i.test(cause.details ?? '');
}

/** A cluster saying no (no rights, no operator service, not on this plan), as opposed to a fault worth surfacing. */
function isRefusal(err: Error): boolean {
  // Service calls reject with the gRPC error itself; some paths wrap it in a ServiceError.
  const code = (err as { code?: number }).code ?? (err.cause as { code?: number } | undefined)?.code;
  return (
    code === GRPC.PERMISSION_DENIED ||
    code === GRPC.UNIMPLEMENTED ||
    code === GRPC.UNAUTHENTICATED ||
    code === GRPC.FAILED_PRECONDITION ||
    code === GRPC.INVALID_ARGUMENT
  );
}

function grpcMessage(err: unknown): string {
  const cause = err instanceof ServiceError ? err.cause : err;
  const details = (cause as { details?: string } | undefined)?.details;
  return details || (cause instanceof Error ? cause.message : String(cause));
}
