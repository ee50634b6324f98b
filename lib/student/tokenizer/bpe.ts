/**
 * The student's own tokenizer: byte-pair encoding over SentencePiece-style words (Metaspace: `▁` marks a word start),
 * trained on the run's own text (inputs with their task prefixes, labels, rationales). Training uses Hugging Face
 * `tokenizers` (its Rust BPE trainer, through the Node binding); the result is a standard `tokenizer.json` that
 * `tokenizers` in any language loads, and that `@huggingface/tokenizers` encodes and decodes here (common.ts);
 * test/student-tokenizer.test.ts checks that it agrees with the binding on ids and text.
 *
 * Why BPE and not T5's Unigram: the Node binding's `train()` takes no trainer options, and its Unigram trainer
 * stops at 100 pieces (whole words split into letters, sequences 2-3x longer). Its BPE trainer learns every merge
 * the corpus supports, and a BPE vocabulary cut after its first N merges is exactly the one a trainer told to stop
 * at N would have produced, so `vocabSize` is honoured exactly.
 *
 * T5 conventions: pad = 0 (`<pad>`), eos = 1 (`</s>`, appended to every encoding), unk = 2 (`<unk>`).
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../../errors';
import { MIN_VOCAB_SIZE } from '../options';
import { LibraryTokenizer, METASPACE, SPACE, specialToken, t5PostProcessor, type StudentTokenizer } from './common';
import { scratchDir } from '../../scratch';

export const PAD_ID = 0;
export const EOS_ID = 1;
export const UNK_ID = 2;
const SPECIAL_TOKENS = ['<pad>', '</s>', '<unk>'] as const;
const DEFAULT_VOCAB_SIZE = 8000;

/**
 * The normalisation every text goes through before pre-tokenisation: NFKC, whitespace runs (newlines included) to
 * one space, trimmed, mirroring the normalizer written into tokenizer.json. T5's own SentencePiece model also maps
 * newlines to spaces; labels and rationales compare equal after it.
 */
export function normalizeText(text: string): string {
  return text.normalize('NFKC').replace(/\s+/g, ' ').trim();
}

/**
 * The tokenizer of a vocabulary (token strings by id: the three specials, then the alphabet, then one per merge)
 * and its merges in training order, through Stepwise's fixed pipeline.
 */
function bpeTokenizer(tokens: readonly string[], merges: ReadonlyArray<readonly [string, string]>): StudentTokenizer {
  const spec = tokenizerJson(tokens, merges);
  return new LibraryTokenizer(spec, JSON.stringify(spec), { padId: PAD_ID, eosId: EOS_ID, unkId: UNK_ID });
}

function tokenizerJson(tokens: readonly string[], merges: ReadonlyArray<readonly [string, string]>) {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    // Special tokens written literally in the text are matched before normalisation.
    added_tokens: SPECIAL_TOKENS.map((content, id) => specialToken(content, id)),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFKC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Strip', strip_left: true, strip_right: true },
      ],
    },
    pre_tokenizer: METASPACE,
    post_processor: t5PostProcessor(EOS_ID),
    decoder: METASPACE,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(tokens.map((token, id) => [token, id])),
      merges,
    },
  };
}

/**
 * Trains a BPE tokenizer on `texts` with the `tokenizers` trainer, puts T5's special ids in front and keeps the
 * alphabet and the first merges up to `vocabSize` tokens. When the alphabet alone is larger than that, the rarest
 * characters are left out (they encode as unk). A corpus too small for `vocabSize` gives a smaller vocabulary.
 * Deterministic: the same texts give the same tokenizer.
 * @throws InputError when texts has no text or vocabSize is not an integer ≥ {@link MIN_VOCAB_SIZE}.
 */
export async function trainTokenizer(
  texts: readonly string[],
  opts: { vocabSize?: number } = {}
): Promise<StudentTokenizer> {
  const vocabSize = opts.vocabSize ?? DEFAULT_VOCAB_SIZE;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < MIN_VOCAB_SIZE) {
    throw new InputError(
      `vocabSize is ${JSON.stringify(opts.vocabSize)}; expected an integer of at least ${MIN_VOCAB_SIZE}`,
      'vocabSize'
    );
  }
  const normalized = texts.map((t) => normalizeText(String(t))).filter((t) => t !== '');
  if (normalized.length === 0) throw new InputError('texts to train the tokenizer on hold no text', 'texts');

  const hf = require('tokenizers') as typeof import('tokenizers');
  const dir = await scratchDir('tokenizer');
  try {
    // BPE learns from word counts only, so one line joined by spaces trains the same merges as one text per line
    // and keeps the file's line ends out of the alphabet.
    const corpus = join(dir, 'corpus.txt');
    await writeFile(corpus, normalized.join(' '));
    const trainer = new hf.Tokenizer(hf.BPE.empty());
    trainer.setPreTokenizer(hf.metaspacePreTokenizer());
    trainer.train([corpus]);
    const saved = join(dir, 'trained.json');
    trainer.save(saved);
    const model = (
      JSON.parse(await readFile(saved, 'utf8')) as { model: { vocab: Record<string, number>; merges: unknown[] } }
    ).model;
    const { tokens, merges } = select(model.vocab, model.merges.map(parseMerge), charCounts(normalized), vocabSize);
    return bpeTokenizer(tokens, merges);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function charCounts(texts: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) for (const ch of text.replaceAll(' ', SPACE)) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  return counts;
}

/** Specials, then the alphabet (most frequent characters if it must be cut), then merges in training order. */
function select(
  vocab: Record<string, number>,
  merges: [string, string][],
  counts: Map<string, number>,
  vocabSize: number
): { tokens: string[]; merges: [string, string][] } {
  const byId = Object.entries(vocab).sort((a, b) => a[1] - b[1]);
  const produced = new Set(merges.map(([a, b]) => a + b));
  const alphabet = byId.map(([token]) => token).filter((token) => !produced.has(token) && [...token].length === 1);
  const budget = vocabSize - SPECIAL_TOKENS.length;
  const keptChars = [...alphabet]
    .sort((a, b) => (counts.get(b) ?? 0) - (counts.get(a) ?? 0) || (a < b ? -1 : 1))
    .slice(0, budget);
  const kept = new Set<string>(keptChars);
  const tokens: string[] = [...SPECIAL_TOKENS, ...alphabet.filter((ch) => kept.has(ch))];
  const keptMerges: [string, string][] = [];
  for (const [a, b] of merges) {
    if (tokens.length >= vocabSize) break;
    if (!kept.has(a) || !kept.has(b)) continue;
    keptMerges.push([a, b]);
    if (!kept.has(a + b)) {
      kept.add(a + b);
      tokens.push(a + b);
    }
  }
  return { tokens, merges: keptMerges };
}

/** Merges are `["a", "b"]` in recent tokenizer.json files and `"a b"` in older ones. */
function parseMerge(merge: unknown): [string, string] {
  if (Array.isArray(merge) && merge.length === 2 && typeof merge[0] === 'string' && typeof merge[1] === 'string') {
    return [merge[0], merge[1]];
  }
  if (typeof merge === 'string' && merge.split(' ').length === 2) return merge.split(' ') as [string, string];
  throw new InputError(`tokenizer merge ${JSON.stringify(merge)} is not a pair of tokens`, 'tokenizer.model.merges');
}

/**
 * The tokenizer of a BPE `tokenizer.json` written by {@link StudentTokenizer.toJSON}. Only its vocabulary and merges
 * are read: the rest of the pipeline is Stepwise's own, and toJSON writes it out again.
 * @throws InputError when the vocabulary is not ids 0..n-1 starting with T5's specials, or a merge is not a pair.
 */
export function loadBpeTokenizer(model: { vocab?: unknown; merges?: unknown }): StudentTokenizer {
  if (model.vocab === null || typeof model.vocab !== 'object' || !Array.isArray(model.merges)) {
    throw new InputError('tokenizer model has no vocab object or merges list; expected a BPE model', 'tokenizer.model');
  }
  const entries = Object.entries(model.vocab as Record<string, unknown>);
  const tokens: string[] = [];
  for (const [token, id] of entries) {
    if (!Number.isSafeInteger(id) || (id as number) < 0 || (id as number) >= entries.length || tokens[id as number]) {
      throw new InputError(
        `tokenizer vocab gives '${token}' id ${JSON.stringify(id)}; expected ids 0..n-1, each once`,
        'tokenizer.model.vocab'
      );
    }
    tokens[id as number] = token;
  }
  if (tokens.slice(0, 3).join() !== SPECIAL_TOKENS.join()) {
    throw new InputError(
      `tokenizer ids 0-2 are ${JSON.stringify(tokens.slice(0, 3))}; expected ${JSON.stringify(SPECIAL_TOKENS)}`,
      'tokenizer.model.vocab'
    );
  }
  return bpeTokenizer(tokens, model.merges.map(parseMerge));
}
