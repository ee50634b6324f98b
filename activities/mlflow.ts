/**
 * The MLflow mirror of the registry (lib/mlflow/export.ts), best effort: with `STEPWISE_MLFLOW_URI` unset these do
 * nothing; set, a tracking server that fails, refuses or does not answer is a warning, never a failed stage. The
 * registry is the record and MLflow a copy, as the OpenLineage receiver is for lineage (activities/openlineage.ts).
 *
 * Called after the registry write succeeded: by the registerModel adapter (activities/register-model.ts), by the
 * promoteVersion adapter (activities/gate.ts) and by `stepwise models promote` (cli/commands/models.ts). Both are
 * idempotent, so a retried activity repeats them safely.
 */
import { Context } from '@temporalio/activity';
import { settings, type StepwiseSettings } from '../infra/config';
import { MlflowClient } from '../lib/mlflow/client';
import { exportVersion, type ExportResult } from '../lib/mlflow/export';
import { getAlias } from '../lib/registry/audit';
import type { ArtifactStore } from '../lib/store/artifact-store';

export interface MlflowDeps {
  store: ArtifactStore;
}

/** What the mirror did: exported (with what it wrote), or the warning it logged instead. */
export type MlflowOutcome = { exported: ExportResult } | { warning: string };

/**
 * One export's whole time budget. The caller's stage waits for it, so a server that answers slowly costs this much
 * at most; each request has its own 10 s limit inside it.
 */
const EXPORT_DEADLINE_MS = 60_000;

/** Mirror a registered version (its run, its Model Registry version, the aliases naming it). Never throws. */
export async function exportToMlflow(
  deps: MlflowDeps,
  input: { name: string; version: number }
): Promise<MlflowOutcome | undefined> {
  const s = settings();
  if (!s.mlflowUri) return undefined;
  return bestEffort(s, `${input.name} v${input.version}`, (client) =>
    exportVersion(deps.store, client, input.name, input.version, { experiment: s.mlflowExperiment })
  );
}

/**
 * After an alias moved in the registry, move it in MLflow: the version the registry's alias names now is exported
 * (a no-op when it already was) and the alias set on its mirror. Reading the alias back, rather than trusting the
 * caller's version, keeps two promotions mirrored in either order from leaving MLflow on the older one. Never throws.
 */
export async function syncMlflowAlias(
  deps: MlflowDeps,
  input: { name: string; alias: string }
): Promise<MlflowOutcome | undefined> {
  const s = settings();
  if (!s.mlflowUri) return undefined;
  return bestEffort(s, `alias ${input.alias} of ${input.name}`, async (client) => {
    const head = await getAlias(deps.store, input.name, input.alias);
    if (!head) throw new Error(`the registry has no alias ${input.alias} of ${input.name}`);
    return exportVersion(deps.store, client, input.name, head.version, { experiment: s.mlflowExperiment });
  });
}

async function bestEffort(
  s: StepwiseSettings,
  what: string,
  body: (client: MlflowClient) => Promise<ExportResult>
): Promise<MlflowOutcome> {
  let where = 'STEPWISE_MLFLOW_URI';
  const started = Date.now();
  try {
    const client = new MlflowClient(s.mlflowUri!, { signal: AbortSignal.timeout(EXPORT_DEADLINE_MS) });
    where = client.where;
    const exported = await body(client);
    info(
      `MLflow: ${what} mirrored to ${where}: run ${exported.runId}, model version ${exported.modelVersion}` +
        (exported.aliases.length ? ` [${exported.aliases.join(', ')}]` : '') +
        ` in ${Date.now() - started} ms`
    );
    return { exported };
  } catch (err) {
    const warning =
      `MLflow: could not mirror ${what} to ${where} (${err instanceof Error ? err.message : String(err)}); ` +
      'the Stepwise registry is unaffected, and the next export of this version (an alias move) tries again';
    warn(warning);
    return { warning };
  }
}

/** The activity's logger inside a worker; the console where there is no activity (the CLI, a bench's direct call). */
function logger(): { warn(m: string): void; info(m: string): void } {
  try {
    return Context.current().log;
  } catch {
    return { warn: (m) => console.warn(m), info: (m) => console.error(m) };
  }
}
const warn = (line: string) => logger().warn(line);
const info = (line: string) => logger().info(line);
