/**
 * `stepwise validate`: check the recorded teacher outputs of a benchmark before spending a run on them.
 */
import { Command, Option } from 'commander';
import { BENCHMARK_TASKS, SPLITS, type BenchmarkTask, type Split } from '../../lib/data/types';
import { validateRecorded } from '../../lib/data/validate';

export function addValidateCommand(program: Command): void {
  program
    .command('validate')
    .description('parse the recorded teacher outputs of a dataset in the reference layout; print teacher accuracy')
    .requiredOption('--data-dir <dir>', 'dataset folder in the reference layout')
    .addOption(new Option('--task <task>').choices(BENCHMARK_TASKS).makeOptionMandatory())
    .addOption(new Option('--split <split>').choices(SPLITS).default('test'))
    .option('--json', 'end with one JSON object: task, split, total, correct, accuracy, unparsable')
    .action(async (flags: { dataDir: string; task: BenchmarkTask; split: Split; json?: boolean }) => {
      const r = await validateRecorded(flags.dataDir, flags.task, flags.split);
      console.log(
        `${r.task} ${r.split}: teacher accuracy ${(100 * r.accuracy).toFixed(2)}% (${r.correct}/${r.total}), ${r.unparsable} unparsable`
      );
      if (flags.json) console.log(JSON.stringify(r));
    });
}
