/**
 * `stepwise import-t5`: a Hugging Face T5 checkpoint as a Stepwise student checkpoint.
 */
import { writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { log } from '../shared/options';

export function addImportT5Command(program: Command): void {
  program
    .command('import-t5')
    .description('read a Hugging Face T5 checkpoint folder (config.json, model.safetensors, tokenizer) into a student')
    .argument('<dir>', 'checkpoint folder as save_pretrained writes it (tokenizer.json, or spiece.model converted)')
    .requiredOption('--out <file>', 'Stepwise checkpoint to write (safetensors)')
    .action(async (dir: string, flags: { out: string }) => importT5(dir, flags.out));
}

async function importT5(dir: string, out: string): Promise<void> {
  // Loaded here, not at the top: the student library pulls in TensorFlow.js, which no other command needs.
  const { readT5 } = require('../../lib/student/hf') as typeof import('../../lib/student/hf');
  const { serializeWeights } = require('../../lib/student/checkpoint') as typeof import('../../lib/student/checkpoint');
  const t5 = await readT5(dir);
  const training = {
    method: 'pretrained',
    alpha: 0,
    steps: 0,
    backend: 'none',
    importedFrom: dir,
    notes: t5.notes,
  };
  await writeFile(out, serializeWeights(t5.config, t5.weights, t5.tokenizer, training));
  const params = t5.weights.reduce((n, w) => n + w.data.length, 0);
  for (const note of t5.notes) log(`import-t5: ${note}`);
  console.log(
    `${out}: T5 ${t5.config.feed_forward_proj}, ${t5.config.tie_word_embeddings ? 'tied' : 'untied'} lm_head, ` +
      `${params.toLocaleString('en')} parameters, ${t5.tokenizer.vocabSize} tokens (${t5.tokenizerSource})`
  );
}
