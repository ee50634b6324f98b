/**
 * `stepwise ui`: a small web app on this machine (cli/ui/) over the runs in Temporal and the registry in the store:
 * the runs, each run's live progress and report, the models with their versions, aliases and audit history, and a
 * version's lineage. With `--allow-actions` it also approves and rejects candidates and promotes and archives
 * versions, each action carrying the token printed at start.
 */
import { Command } from 'commander';
import { settings } from '../../infra/config';
import { InputError } from '../../lib/errors';
import { openStore } from '../../lib/store';
import { redactUrl } from '../../lib/registry/lineage';
import { newActionToken, startUiServer } from '../ui/server';
import type { UiContext } from '../ui/pages';
import { connectForListing } from './runs';
import { openServices } from '../shared/services';
import { log, portFlag } from '../shared/options';

/** Beside the Temporal UI's own default (8233), so both can be open at once. */
export const DEFAULT_UI_PORT = 8240;

interface UiFlags {
  port: number;
  host: string;
  store?: string;
  allowActions?: boolean;
  temporalUi?: string;
  verbose?: boolean;
}

export function addUiCommand(program: Command): void {
  program
    .command('ui')
    .description('a web UI on this machine: runs and their progress and reports, models, aliases, history, lineage')
    .option('--port <n>', 'port to listen on (0: a free one)', portFlag('--port', 0), DEFAULT_UI_PORT)
    .option(
      '--host <address>',
      'address to bind (the pages are for this machine: keep the loopback default)',
      '127.0.0.1'
    )
    .option('--store <location>', 'artifact store (env STEPWISE_STORE)')
    .option(
      '--allow-actions',
      'show approve/reject/promote/archive buttons; each action needs the token printed at start'
    )
    .option('--temporal-ui <url>', "the Temporal Web UI's address, for links to a run's history")
    .option('--verbose', 'log every request with its render time')
    .action(async (flags: UiFlags) => serve(flags));
}

async function serve(flags: UiFlags): Promise<void> {
  const location = flags.store ?? settings().store;
  const temporalUi = flags.temporalUi === undefined ? undefined : urlFlag(flags.temporalUi);
  const store = openStore(location);
  const temporal = await connect(location, Boolean(flags.allowActions));
  const token = flags.allowActions ? newActionToken() : undefined;
  let server;
  try {
    server = await startUiServer({
      temporal: temporal?.context,
      store,
      temporalUiUrl: temporalUi ?? temporal?.uiUrl,
      footer: `store ${redactUrl(store.location)} · Temporal ${temporal?.where ?? '(none yet)'}`,
      host: flags.host,
      port: flags.port,
      actionToken: token,
      log: flags.verbose ? log : undefined,
    });
  } catch (err) {
    await temporal?.close();
    await store.close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new InputError(
        `--port: ${flags.port} is in use on ${flags.host}; pick another (0: any free port)`,
        '--port'
      );
    }
    throw err;
  }
  if (!['127.0.0.1', 'localhost', '::1'].includes(flags.host)) {
    log(`stepwise ui: bound to ${flags.host}: anyone who reaches it can read the runs and the registry`);
  }
  if (token) {
    log(`stepwise ui: actions are on; their token is ${token} (the URL below carries it in its fragment)`);
    console.log(`${server.url}#token=${token}`);
  } else console.log(server.url);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
  await temporal?.close();
  await store.close();
}

/**
 * The Temporal service, as `stepwise runs` reaches it: the configured cluster, or the embedded state's dev server
 * (undefined while it has no database). Actions on the embedded state need workers, since a run's approval Update
 * runs in one: then the embedded services start as `stepwise models approve` starts them.
 */
async function connect(
  store: string,
  actions: boolean
): Promise<
  { context: NonNullable<UiContext['temporal']>; where: string; uiUrl?: string; close(): Promise<void> } | undefined
> {
  if (actions && !settings().clusterConfigured) {
    const services = await openServices(store);
    return {
      context: { client: services.client, namespace: services.namespace, queryProgress: true },
      where: services.where,
      uiUrl: services.uiUrl,
      close: () => services.stop(),
    };
  }
  const listing = await connectForListing();
  if (!listing) return undefined;
  return {
    context: { client: listing.client, namespace: listing.client.options.namespace, queryProgress: listing.cluster },
    where: listing.where,
    close: () => listing.close(),
  };
}

function urlFlag(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InputError(`--temporal-ui must be a URL such as http://127.0.0.1:8233, got '${value}'`, '--temporal-ui');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InputError(`--temporal-ui must be an http(s) URL, got '${value}'`, '--temporal-ui');
  }
  // Credentials in the URL would end up in every page's links.
  return redactUrl(value).replace(/\/$/, '');
}
