/**
 * `stepwise dev`: the dev services in the foreground, with the environment a worker or client needs to reach them.
 */
import { join } from 'node:path';
import { Command } from 'commander';
import { setup } from '../../infra/setup';
import { freePort } from '../../infra/cache';
import { startTemporalDevServer } from '../../infra/temporal';
import { StateInUseError } from '../../infra/db-lock';
import { InputError } from '../../lib/errors';
import { startS3Server, ensureBucket } from '../../infra/s3-server';
import { settings } from '../../infra/config';
import { log } from '../shared/options';
import { devServerSearchAttributes } from '../../workers/search-attributes';
import { serviceLog } from '../shared/service-log';

export function addDevCommand(program: Command): void {
  program
    .command('dev')
    .description('start the dev services (Temporal; the S3 server with --s3) and print their addresses')
    .option('--s3', 'also start an S3-compatible server (versitygw)')
    .option('--verbose', "also print the services' output (always in <state>/logs: temporal.log, s3.log)")
    .action(async (flags: { s3?: boolean; verbose?: boolean }) => serveDev(Boolean(flags.s3), Boolean(flags.verbose)));
}

/** Prints the services' addresses as `NAME=value` lines, so a shell can `export` them, then waits for Ctrl-C. */
async function serveDev(withS3: boolean, verbose: boolean): Promise<void> {
  await setup({ temporal: true, s3: withS3, log });
  const dir = settings().home;
  const logs = join(dir, 'logs');
  const temporalLog = serviceLog(join(logs, 'temporal.log'), { echo: verbose ? log : undefined });
  const temporal = await startTemporalDevServer({
    stateDir: dir,
    uiPort: await freePort(),
    searchAttributes: devServerSearchAttributes(),
    log: temporalLog,
  }).catch((err) => {
    if (!(err instanceof StateInUseError)) log(`stepwise dev: the Temporal dev server did not start; see ${logs}`);
    // Another server holds this state folder: say so in one line, not a stack trace.
    throw err instanceof StateInUseError ? new InputError(err.message, 'STEPWISE_HOME') : err;
  });
  console.log(`TEMPORAL_ADDRESS=${temporal.address}`);
  if (temporal.uiUrl) console.log(`Temporal UI: ${temporal.uiUrl}`);
  let s3: Awaited<ReturnType<typeof startS3Server>> | undefined;
  const s3Log = withS3 ? serviceLog(join(logs, 's3.log'), { echo: verbose ? log : undefined }) : undefined;
  if (withS3) {
    s3 = await startS3Server({ dataDir: join(dir, 's3'), log: s3Log });
    await ensureBucket(s3, 'stepwise');
    console.log(`AWS_ENDPOINT_URL_S3=${s3.endpoint}`);
    console.log(`AWS_ACCESS_KEY_ID=${s3.accessKey}`);
    console.log(`AWS_SECRET_ACCESS_KEY=${s3.secretKey}`);
    console.log(`STEPWISE_STORE=s3://stepwise/artifacts`);
  }
  log(`stepwise dev: the services' output is in ${logs}${verbose ? '' : ' (--verbose prints it here too)'}`);
  console.log('Press Ctrl-C to stop.');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await s3?.stop();
  await temporal.stop();
  s3Log?.close();
  temporalLog.close();
}
