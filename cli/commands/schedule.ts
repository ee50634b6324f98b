/**
 * `stepwise schedule create|ls|describe|pause|resume|trigger|backfill|update|delete`: scheduled refreshes over
 * Temporal Schedules. A schedule lives on the server and fires whether or not this CLI runs, so every subcommand needs
 * a server that keeps running (a cluster, or `stepwise dev` with TEMPORAL_ADDRESS set to its address).
 */
import { Command, Option } from 'commander';
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ServiceError,
  type Client,
  type ScheduleUpdateOptions,
} from '@temporalio/client';
import { parseSpec, SpecError, type PipelineSpec } from '../../lib/pipeline/spec';
import { InputError } from '../../lib/errors';
import { settings } from '../../infra/config';
import { ensureSearchAttributes } from '../../workers/search-attributes';
import { connectCluster } from '../shared/services';
import { log } from '../shared/options';
import { specFromFlags } from '../shared/spec-flags';
import { parseTime } from '../shared/models-format';
import {
  calendarText,
  checkScheduleId,
  listSchedules,
  memoOf,
  OVERLAP_POLICIES,
  pipelineAction,
  policiesOf,
  scheduledSpec,
  scheduleSpecOf,
  viewOf,
  type PolicyFlags,
  type ScheduleView,
  type TimingFlags,
} from '../shared/schedules';

interface CreateFlags extends TimingFlags, PolicyFlags {
  spec: string;
  note?: string;
  paused?: boolean;
  json?: boolean;
}

type UpdateFlags = Partial<CreateFlags>;

// Checked by policiesOf rather than commander's `choices`, so a bad value exits 2 like every other refusal here.
const overlapOption = () =>
  new Option(
    '--overlap <policy>',
    `when a firing finds the last run still going: ${Object.keys(OVERLAP_POLICIES).join(', ')} (default skip)`
  );

export function addScheduleCommand(program: Command): void {
  const schedule = program
    .command('schedule')
    .description('scheduled refreshes: Temporal Schedules that run a spec (needs TEMPORAL_ADDRESS)');

  schedule
    .command('create')
    .description('create a schedule that runs the spec; each run ends `unchanged` when its data and spec are')
    .argument('<name>', 'schedule name (a-z, 0-9, ".", "_", "-")')
    .requiredOption('--spec <file>', 'pipeline spec (JSON file), validated now')
    .option('--cron <expr>', 'cron expression, e.g. "0 3 * * *" (03:00 every day)')
    .option('--every <duration>', 'fixed interval, e.g. 6h, 1d')
    .option('--jitter <duration>', 'random delay of up to this much per firing (spreads load)')
    .option('--timezone <tz>', 'IANA time zone of --cron (default UTC)')
    .addOption(overlapOption())
    .option('--catchup-window <duration>', 'after an outage, run missed firings up to this old (default 1h)')
    .option('--pause-on-failure', 'pause the schedule when a run fails')
    .option('--paused', 'create it paused')
    .option('--note <text>', 'a note shown by describe (why it exists, who owns it)')
    .option('--json', 'print the schedule as JSON')
    .action((name: string, flags: CreateFlags) => guarded(() => create(name, flags)));

  schedule
    .command('ls')
    .description('list the schedules that run pipelines')
    .option('--json', 'one JSON array')
    .action((flags: { json?: boolean }) => guarded(() => list(flags)));

  schedule
    .command('describe')
    .description('next firings, recent runs, skipped-by-overlap and missed-catch-up counts')
    .argument('<name>')
    .option('--json', 'print as JSON')
    .action((name: string, flags: { json?: boolean }) =>
      guarded(() => withHandle(name, async (c) => print(viewOf(await c.schedule.getHandle(name).describe()), flags)))
    );

  // Pause and resume: the same shape, a note saying why (default: who did it).
  for (const [verb, done, describe] of [
    ['pause', 'paused', 'stop firing until resumed'],
    ['resume', 'resumed', 'fire again from the next due time'],
  ] as const) {
    schedule
      .command(verb)
      .description(describe)
      .argument('<name>')
      .option('--note <text>', 'why (shown by describe)')
      .option('--json', 'print the schedule as JSON')
      .action((name: string, flags: { note?: string; json?: boolean }) =>
        guarded(() =>
          withHandle(name, async (c) => {
            const handle = c.schedule.getHandle(name);
            const note = flags.note ?? `${done} by ${who()}`;
            await (verb === 'pause' ? handle.pause(note) : handle.unpause(note));
            print(viewOf(await handle.describe()), flags, `${done} ${name}`);
          })
        )
      );
  }

  schedule
    .command('trigger')
    .description('run it once now (the overlap policy still applies)')
    .argument('<name>')
    .addOption(overlapOption())
    .option('--json', 'print the schedule as JSON')
    .action((name: string, flags: { overlap?: string; json?: boolean }) =>
      guarded(() =>
        withHandle(name, async (c) => {
          const handle = c.schedule.getHandle(name);
          await handle.trigger(flags.overlap ? policiesOf({ overlap: flags.overlap }).overlap : undefined);
          print(viewOf(await handle.describe()), flags, `triggered ${name}`);
        })
      )
    );

  schedule
    .command('backfill')
    .description('take the firings due between two times now, as if that time were passing')
    .argument('<name>')
    .requiredOption('--start <time>', 'ISO-8601 start (inclusive)')
    .requiredOption('--end <time>', 'ISO-8601 end (exclusive)')
    .addOption(overlapOption())
    .option('--json', 'print the schedule as JSON')
    .action((name: string, flags: { start: string; end: string; overlap?: string; json?: boolean }) =>
      guarded(() => backfill(name, flags))
    );

  schedule
    .command('update')
    .description('change the spec, the timing or the policies; unnamed settings keep their values')
    .argument('<name>')
    .option('--spec <file>', 'a new pipeline spec (JSON file), validated now')
    .option('--cron <expr>', 'cron expression (replaces the timing)')
    .option('--every <duration>', 'fixed interval (replaces the timing)')
    .option('--jitter <duration>', 'random delay of up to this much per firing')
    .option('--timezone <tz>', 'IANA time zone of --cron')
    .addOption(overlapOption())
    .option('--catchup-window <duration>', 'after an outage, run missed firings up to this old')
    .option('--pause-on-failure', 'pause the schedule when a run fails')
    .option('--no-pause-on-failure', 'keep firing after a failed run')
    .option('--json', 'print the schedule as JSON')
    .action((name: string, flags: UpdateFlags) => guarded(() => update(name, flags)));

  schedule
    .command('delete')
    .description('delete the schedule (its runs and models stay)')
    .argument('<name>')
    .option('--json', 'print {"deleted": name}')
    .action((name: string, flags: { json?: boolean }) =>
      guarded(() =>
        withHandle(name, async (c) => {
          await c.schedule.getHandle(name).delete();
          console.log(flags.json ? JSON.stringify({ deleted: name }) : `deleted ${name}`);
        })
      )
    );
}

/** Who paused or resumed, for the default note. */
function who(): string {
  return process.env.USER || 'stepwise';
}

/**
 * Runs a subcommand; a refusal (bad input, an unknown schedule, a server refusing a cron) is one line and exit 2,
 * with nothing created or changed.
 */
async function guarded(body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const refusal = refusalOf(err);
    if (!refusal) throw err;
    log(`stepwise schedule: ${refusal}`);
    process.exitCode = 2;
  }
}

function refusalOf(err: unknown): string | undefined {
  if (err instanceof SpecError) return `invalid spec: ${err.message}`;
  if (err instanceof InputError) return err.message;
  if (err instanceof ScheduleNotFoundError) return `no schedule ${JSON.stringify(err.scheduleId)}`;
  if (err instanceof ScheduleAlreadyRunning) return `schedule ${JSON.stringify(err.scheduleId)} already exists`;
  // The server's own check of a calendar (a cron field out of range): its words, against the timing flags.
  const details = grpcDetails(err);
  if (details && /cron|calendar|interval|schedule spec|invalid/i.test(details))
    return `refused by the server: ${details}`;
  return undefined;
}

function grpcDetails(err: unknown): string | undefined {
  const cause = err instanceof ServiceError ? err.cause : err;
  const c = cause as { code?: number; details?: string } | undefined;
  return c?.code === 3 ? c.details : undefined; // 3: INVALID_ARGUMENT
}

/** The flag a server's refusal of the calendar is reported against. */
function timingFlag(flags: TimingFlags): string {
  return flags.cron !== undefined ? '--cron' : flags.every !== undefined ? '--every' : 'schedule';
}

/**
 * The server checks what we cannot cheaply (a cron field out of range); the SDK turns its INVALID_ARGUMENT into a
 * TypeError carrying the server's words, which are the user's to act on: an InputError against the flag.
 */
async function serverChecked<T>(flag: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (err instanceof TypeError && !(err instanceof ServiceError)) {
      throw new InputError(`${flag}: refused by the server: ${err.message}`, flag);
    }
    throw err;
  }
}

/** A client of the server schedules live on: the cluster TEMPORAL_ADDRESS names. */
async function withClient<T>(body: (client: Client) => Promise<T>): Promise<T> {
  if (!settings().clusterConfigured) {
    throw new InputError(
      'TEMPORAL_ADDRESS is not set: a schedule lives on a Temporal server that keeps running. Point it at a cluster, ' +
        'or start `stepwise dev` and set TEMPORAL_ADDRESS to the address it prints',
      'TEMPORAL_ADDRESS'
    );
  }
  const services = await connectCluster();
  try {
    return await body(services.client);
  } finally {
    await services.stop();
  }
}

function withHandle(name: string, body: (client: Client) => Promise<void>): Promise<void> {
  checkScheduleId(name);
  return withClient(body);
}

/** The spec file, read as `stepwise run` reads one, validated in full. */
async function specOf(file: string): Promise<PipelineSpec> {
  return parseSpec(await specFromFlags(file, {}));
}

async function create(name: string, flags: CreateFlags): Promise<void> {
  // Everything is checked before the server is asked: a refusal creates nothing.
  checkScheduleId(name);
  const spec = await specOf(flags.spec);
  const calendar = scheduleSpecOf(flags);
  const policies = policiesOf(flags);
  await withClient(async (client) => {
    const attributes = await ensureSearchAttributes(client.connection, client.options.namespace, log);
    const handle = await serverChecked(timingFlag(flags), () =>
      client.schedule.create({
        scheduleId: name,
        spec: calendar,
        action: pipelineAction(name, spec, attributes !== false),
        policies,
        memo: { stepwise: memoOf(spec) },
        state: { paused: Boolean(flags.paused), ...(flags.note ? { note: flags.note } : {}) },
      })
    );
    print(viewOf(await handle.describe()), flags, `created ${name}: ${calendarText(calendar)}, runs ${spec.name}`);
  });
}

async function list(flags: { json?: boolean }): Promise<void> {
  await withClient(async (client) => {
    const views: ScheduleView[] = [];
    for (const s of await listSchedules(client)) {
      // The listing is eventually consistent and thin: describe each for the counts and next times.
      views.push(viewOf(await client.schedule.getHandle(s.scheduleId).describe()));
    }
    if (flags.json) {
      console.log(JSON.stringify(views));
      return;
    }
    if (!views.length) {
      console.log('no schedules');
      return;
    }
    for (const v of views) {
      console.log(
        `${v.scheduleId}  ${v.model ?? '?'}  ${v.calendar}  ${v.paused ? 'paused' : 'active'}  ` +
          `next ${v.nextActionTimes[0] ?? '-'}  taken ${v.actionsTaken}`
      );
    }
  });
}

async function backfill(name: string, flags: { start: string; end: string; overlap?: string; json?: boolean }) {
  const start = parseTime(flags.start, '--start');
  const end = parseTime(flags.end, '--end');
  if (!(end > start)) throw new InputError(`--end: ${flags.end} is not after --start ${flags.start}`, '--end');
  await withHandle(name, async (client) => {
    const handle = client.schedule.getHandle(name);
    await handle.backfill({
      start,
      end,
      ...(flags.overlap ? { overlap: policiesOf({ overlap: flags.overlap }).overlap } : {}),
    });
    print(
      viewOf(await handle.describe()),
      flags,
      `backfilled ${name} from ${start.toISOString()} to ${end.toISOString()}`
    );
  });
}

async function update(name: string, flags: UpdateFlags): Promise<void> {
  checkScheduleId(name);
  // Checked before the read-modify-write: a bad flag changes nothing.
  const spec = flags.spec ? await specOf(flags.spec) : undefined;
  const timing = flags.cron !== undefined || flags.every !== undefined ? scheduleSpecOf(flags) : undefined;
  const jitter =
    flags.jitter !== undefined && !timing ? scheduleSpecOf({ every: '1h', jitter: flags.jitter }).jitter : undefined;
  const timezone =
    flags.timezone !== undefined && !timing
      ? scheduleSpecOf({ every: '1h', timezone: flags.timezone }).timezone
      : undefined;
  const overlap = flags.overlap !== undefined ? policiesOf({ overlap: flags.overlap }).overlap : undefined;
  const catchup =
    flags.catchupWindow !== undefined ? policiesOf({ catchupWindow: flags.catchupWindow }).catchupWindow : undefined;
  await withHandle(name, async (client) => {
    const handle = client.schedule.getHandle(name);
    const attributes = spec
      ? await ensureSearchAttributes(client.connection, client.options.namespace, log)
      : undefined;
    let changed: string[] = [];
    // Temporal's update is a read-modify-write without a conflict token: last writer wins, so keep the window short.
    await serverChecked(timingFlag(flags), () =>
      handle.update((previous) => {
        changed = [];
        // Loosely typed: the description's shapes (numbers in ms) are what update takes back, plus our changes.
        const next: Record<string, any> = { ...previous };
        if (spec) {
          next.action = pipelineAction(name, spec, attributes !== false);
          changed.push(
            `spec (${memoOf(spec).specHash.slice(0, 12)}, was ${memoOf(scheduledSpec(previous)).specHash.slice(0, 12)})`
          );
        }
        if (timing) {
          next.spec = { ...timing };
          changed.push(calendarText(timing));
        }
        if (jitter !== undefined) {
          next.spec = { ...next.spec, jitter };
          changed.push(`jitter ${flags.jitter}`);
        }
        if (timezone !== undefined) {
          next.spec = { ...next.spec, timezone };
          changed.push(`timezone ${timezone}`);
        }
        next.policies = {
          ...previous.policies,
          ...(overlap !== undefined ? { overlap } : {}),
          ...(catchup !== undefined ? { catchupWindow: catchup } : {}),
          ...(flags.pauseOnFailure !== undefined ? { pauseOnFailure: flags.pauseOnFailure } : {}),
        };
        if (overlap !== undefined) changed.push(`overlap ${flags.overlap}`);
        if (catchup !== undefined) changed.push(`catch-up window ${flags.catchupWindow}`);
        if (flags.pauseOnFailure !== undefined) changed.push(`pause on failure ${flags.pauseOnFailure}`);
        return next as ScheduleUpdateOptions;
      })
    );
    print(viewOf(await handle.describe()), flags, `updated ${name}: ${changed.join(', ') || 'nothing changed'}`);
  });
}

function print(view: ScheduleView, flags: { json?: boolean }, headline?: string): void {
  if (flags.json) {
    console.log(JSON.stringify(view));
    return;
  }
  if (headline) console.log(headline);
  console.log(
    [
      `schedule ${view.scheduleId}: ${view.model ?? '?'} (spec ${view.specHash?.slice(0, 12) ?? '?'})`,
      `  when: ${view.calendar}; overlap ${view.overlap}; catch-up window ${Math.round(view.catchupWindowMs / 1000)} s` +
        (view.pauseOnFailure ? '; pauses on failure' : ''),
      `  state: ${view.paused ? 'paused' : 'active'}${view.note ? ` (${view.note})` : ''}`,
      `  next: ${view.nextActionTimes.slice(0, 3).join(', ') || '-'}`,
      `  actions taken ${view.actionsTaken}, skipped by overlap ${view.skippedByOverlap}, missed catch-up ${view.missedCatchupWindow}`,
      ...view.runningActions.map((a) => `  running: ${a.workflowId}`),
      ...view.recentActions.slice(-5).map((a) => `  recent: ${a.takenAt} ${a.workflowId}`),
    ].join('\n')
  );
}
