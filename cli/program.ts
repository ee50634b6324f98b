/**
 * The `stepwise` program: every command wired in, nothing run. Apart from the entry point (cli/stepwise.ts) so
 * tests can read every command's help in one process.
 */
import { Command } from 'commander';
import { addRunCommand } from './commands/run';
import { addSweepCommand } from './commands/sweep';
import { addScheduleCommand } from './commands/schedule';
import { addResumeCommand } from './commands/resume';
import { addWorkerCommand } from './commands/worker';
import { addDevCommand } from './commands/dev';
import { addValidateCommand } from './commands/validate';
import { addModelsCommand } from './commands/models';
import { addLineageCommand } from './commands/lineage';
import { addReportCommand } from './commands/report';
import { addVerifyCommand } from './commands/verify';
import { addRunsCommand } from './commands/runs';
import { addCancelCommand } from './commands/cancel';
import { addSetupCommand } from './commands/setup';
import { addImportT5Command } from './commands/import-t5';
import { addExportT5Command } from './commands/export-t5';
import { addCodecServerCommand } from './commands/codec-server';
import { addDeployCommand } from './commands/deploy';
import { addReplayCommand } from './commands/replay';
import { addUiCommand } from './commands/ui';

/** Registration order is the order `stepwise --help` lists the commands in. */
const COMMANDS = [
  addRunCommand,
  addSweepCommand,
  addScheduleCommand,
  addResumeCommand,
  addWorkerCommand,
  addDeployCommand,
  addReplayCommand,
  addDevCommand,
  addValidateCommand,
  addModelsCommand,
  addLineageCommand,
  addReportCommand,
  addVerifyCommand,
  addRunsCommand,
  addCancelCommand,
  addUiCommand,
  addSetupCommand,
  addImportT5Command,
  addExportT5Command,
  addCodecServerCommand,
];

/** The program with every command added. */
export function buildProgram(): Command {
  const program = new Command()
    .name('stepwise')
    .description('Distilling step-by-step as durable Temporal workflows')
    .showHelpAfterError();
  // Commands are added with `program.command()`, not built apart and attached, so they inherit showHelpAfterError.
  for (const addCommand of COMMANDS) addCommand(program);
  return program;
}
