/**
 * The `stepwise` program: every command wired in, nothing run. Apart from the entry point (cli/stepwise.ts) so
 * tests can read every command's help in one process.
 *
 * Each command's module is loaded only when the program needs it: `stepwise models ls` loads the models command
 * alone, not the worker SDK, the activities and tfjs that `stepwise worker` and `stepwise run` bring (a start went
 * from ~1,390 modules to ~420). The top-level help and an unknown command load them all, to list them.
 */
import { Command } from 'commander';

type AddCommand = (program: Command) => void;

/** Registration order is the order `stepwise --help` lists the commands in. */
const COMMANDS: ReadonlyArray<readonly [name: string, load: () => AddCommand]> = [
  ['run', () => (require('./commands/run') as typeof import('./commands/run')).addRunCommand],
  ['sweep', () => (require('./commands/sweep') as typeof import('./commands/sweep')).addSweepCommand],
  ['schedule', () => (require('./commands/schedule') as typeof import('./commands/schedule')).addScheduleCommand],
  ['resume', () => (require('./commands/resume') as typeof import('./commands/resume')).addResumeCommand],
  ['worker', () => (require('./commands/worker') as typeof import('./commands/worker')).addWorkerCommand],
  ['deploy', () => (require('./commands/deploy') as typeof import('./commands/deploy')).addDeployCommand],
  ['replay', () => (require('./commands/replay') as typeof import('./commands/replay')).addReplayCommand],
  ['dev', () => (require('./commands/dev') as typeof import('./commands/dev')).addDevCommand],
  ['validate', () => (require('./commands/validate') as typeof import('./commands/validate')).addValidateCommand],
  ['models', () => (require('./commands/models') as typeof import('./commands/models')).addModelsCommand],
  ['lineage', () => (require('./commands/lineage') as typeof import('./commands/lineage')).addLineageCommand],
  ['report', () => (require('./commands/report') as typeof import('./commands/report')).addReportCommand],
  ['verify', () => (require('./commands/verify') as typeof import('./commands/verify')).addVerifyCommand],
  ['runs', () => (require('./commands/runs') as typeof import('./commands/runs')).addRunsCommand],
  ['cancel', () => (require('./commands/cancel') as typeof import('./commands/cancel')).addCancelCommand],
  ['ui', () => (require('./commands/ui') as typeof import('./commands/ui')).addUiCommand],
  ['setup', () => (require('./commands/setup') as typeof import('./commands/setup')).addSetupCommand],
  ['import-t5', () => (require('./commands/import-t5') as typeof import('./commands/import-t5')).addImportT5Command],
  ['export-t5', () => (require('./commands/export-t5') as typeof import('./commands/export-t5')).addExportT5Command],
  [
    'codec-server',
    () => (require('./commands/codec-server') as typeof import('./commands/codec-server')).addCodecServerCommand,
  ],
];

/** The names of every command, in help order. */
export const COMMAND_NAMES: readonly string[] = COMMANDS.map(([name]) => name);

/**
 * The program. With `argv` (a process's, node and script first) it holds only the command argv names, when it names
 * one; otherwise every command. Either way the same command parses the same arguments.
 */
export function buildProgram(argv?: readonly string[]): Command {
  const program = new Command()
    .name('stepwise')
    .description('Distilling step-by-step as durable Temporal workflows')
    .showHelpAfterError();
  const named = argv?.[2];
  const only = COMMANDS.filter(([name]) => name === named);
  // Commands are added with `program.command()`, not built apart and attached, so they inherit showHelpAfterError.
  for (const [, load] of only.length ? only : COMMANDS) load()(program);
  return program;
}
