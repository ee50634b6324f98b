/**
 * Tokenizers of published T5 checkpoints: a standard Hugging Face `tokenizer.json` with a Unigram model (what every
 * T5, t5-v1_1, flan-t5 and mT5 checkpoint ships, or what sentencepiece.ts converts `spiece.model` to). The student
 * must see exactly the ids the checkpoint was trained on; `@huggingface/tokenizers` runs the pipeline (added tokens,
 * whitespace split and Metaspace, the Unigram Viterbi search with T5's unknown penalty and fused unknowns, `</s>`
 * appended, Metaspace decoding), all but SentencePiece's precompiled character map, which charsmap.ts applies.
 * (The library fuses adjacent unknowns across words too, `tokenizers` only within one; that only differs when `▁`
 * itself is no piece, and it is one in every T5 vocabulary.)
 * test/student-parity.test.ts checks the ids against transformers' on the committed test vector.
 */
import { PrecompiledNormalizer, SequenceNormalizer, type Normalizer } from '@huggingface/tokenizers';
import { InputError } from '../../errors';
import { CharsmapNormalizer } from './charsmap';
import { bad, LibraryTokenizer, METASPACE, t5PostProcessor, type StudentTokenizer, type TokenizerSpec } from './common';

/**
 * A tokenizer from a parsed `tokenizer.json` with a Unigram model. `json` is what toJSON gives back, unchanged.
 * @throws InputError for a malformed model or added token, a missing `<pad>` or `</s>`, or a pipeline component the
 *   library does not know.
 */
export function loadUnigramTokenizer(spec: TokenizerSpec, json: string): StudentTokenizer {
  const model = spec.model as Record<string, unknown> | undefined;
  if (model?.type !== 'Unigram') bad('tokenizer.model.type', model?.type, `'Unigram'`);
  if (model!.byte_fallback === true) bad('tokenizer.model.byte_fallback', true, 'false (T5 tokenizers have none)');
  const vocab = model!.vocab;
  if (!Array.isArray(vocab) || vocab.length === 0) bad('tokenizer.model.vocab', vocab, 'a list of [piece, score]');
  (vocab as unknown[]).forEach((entry, i) => {
    if (!Array.isArray(entry) || typeof entry[0] !== 'string' || typeof entry[1] !== 'number') {
      bad(`tokenizer.model.vocab[${i}]`, entry, '[piece, score]');
    }
  });
  const pieces = (vocab as [string, number][]).map(([piece]) => piece);
  const unkId = model!.unk_id ?? 0;
  if (!Number.isSafeInteger(unkId) || (unkId as number) < 0 || (unkId as number) >= pieces.length) {
    bad('tokenizer.model.unk_id', unkId, `an id in [0, ${pieces.length})`);
  }
  const added = (spec.added_tokens ?? []) as Record<string, unknown>[];
  if (!Array.isArray(added)) bad('tokenizer.added_tokens', added, 'a list');
  added.forEach((t, i) => {
    if (!Number.isSafeInteger(t?.id) || typeof t.content !== 'string' || t.content === '') {
      bad(`tokenizer.added_tokens[${i}]`, t, 'an object with an integer id and non-empty content');
    }
  });
  const idOf = (content: string, role: string): number => {
    const id = added.find((t) => t.content === content)?.id ?? pieces.indexOf(content);
    if (id === -1) throw new InputError(`tokenizer has no '${content}' token; T5 needs it as ${role}`, 'tokenizer');
    return id as number;
  };
  const padId = idOf('<pad>', 'padding and decoder start');
  const eosId = idOf('</s>', 'end of sequence');
  const runnable = {
    ...spec,
    added_tokens: added,
    // The student's training pairs need eos appended; T5's template does that, and stands in for anything else.
    post_processor:
      (spec.post_processor as { type?: unknown } | null)?.type === 'TemplateProcessing'
        ? spec.post_processor
        : t5PostProcessor(eosId),
    decoder: spec.decoder ?? METASPACE,
  };
  return new LibraryTokenizer(runnable, json, { padId, eosId, unkId: unkId as number }, withCharsmap);
}

/** The normaliser tree with every `Precompiled` one applying its charsmap (the library's ignores it). */
function withCharsmap(normalizer: Normalizer): Normalizer {
  if (normalizer instanceof SequenceNormalizer) {
    normalizer.normalizers = normalizer.normalizers.map((n) => n && withCharsmap(n));
    return normalizer;
  }
  if (normalizer instanceof PrecompiledNormalizer) {
    const charsmap = (normalizer.config as { precompiled_charsmap?: unknown }).precompiled_charsmap;
    return new CharsmapNormalizer(typeof charsmap === 'string' ? charsmap : '');
  }
  return normalizer;
}
