/**
 * `stepwise export-t5`: a student checkpoint as a Hugging Face T5 folder, for use outside Stepwise.
 */
import { readFile } from 'node:fs/promises';
import { Command } from 'commander';

export function addExportT5Command(program: Command): void {
  program
    .command('export-t5')
    .description('write a student checkpoint as a Hugging Face T5 folder that T5ForConditionalGeneration loads')
    .argument('<checkpoint>', 'Stepwise checkpoint file (safetensors)')
    .requiredOption('--out <dir>', 'folder to write config.json, model.safetensors and the tokenizer into')
    .action(async (checkpoint: string, flags: { out: string }) => {
      // Loaded here, not at the top: the student library pulls in TensorFlow.js, which no other command needs.
      const { exportT5 } = require('../../lib/student/hf') as typeof import('../../lib/student/hf');
      const files = await exportT5(await readFile(checkpoint), flags.out);
      console.log(files.join('\n'));
    });
}
