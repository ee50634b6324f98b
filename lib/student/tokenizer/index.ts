/**
 * The student's tokenizers: Stepwise's own BPE, trained per run (bpe.ts), and the Unigram tokenizers of published T5
 * checkpoints (unigram.ts, with sentencepiece.ts for checkpoints that ship only `spiece.model`). Both are a standard
 * `tokenizer.json` run by `@huggingface/tokenizers` behind one interface (common.ts).
 */
import { InputError } from '../../errors';
import { loadBpeTokenizer } from './bpe';
import { parseTokenizerJson, type StudentTokenizer } from './common';
import { loadUnigramTokenizer } from './unigram';

export { EOS_ID, normalizeText, PAD_ID, trainTokenizer, UNK_ID } from './bpe';
export type { StudentTokenizer } from './common';
export { sentencePieceToTokenizerJson } from './sentencepiece';

/**
 * A tokenizer from a `tokenizer.json`: one written by {@link StudentTokenizer.toJSON} (a BPE model with T5's special
 * ids), or a T5 checkpoint's own (a Unigram model).
 * @throws InputError when the JSON is not such a tokenizer.
 */
export function loadTokenizer(json: string): StudentTokenizer {
  const spec = parseTokenizerJson(json);
  const model = spec.model as { type?: unknown; vocab?: unknown; merges?: unknown } | undefined;
  if (model?.type === 'Unigram') return loadUnigramTokenizer(spec, json);
  if (model?.type === 'BPE') return loadBpeTokenizer(model);
  throw new InputError(
    `tokenizer model is ${JSON.stringify(model?.type)}; expected a BPE (Stepwise's own) or Unigram (T5's) model`,
    'tokenizer.model'
  );
}
