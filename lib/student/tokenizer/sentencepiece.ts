/**
 * SentencePiece's `spiece.model` (the tokenizer older T5 checkpoints ship instead of a tokenizer.json) converted to
 * the `tokenizer.json` transformers' T5 tokenizer builds from it. Hand-written because neither `tokenizers` library
 * reads SentencePiece's protobuf; the result loads like any other Unigram tokenizer.json (unigram.ts).
 */
import { Reader } from 'protobufjs/minimal';
import { InputError } from '../../errors';
import { bad, METASPACE, specialToken, t5PostProcessor } from './common';

interface SentencePieceModel {
  pieces: { piece: string; score: number; type: number }[];
  modelType: number;
  unkId: number;
  byteFallback: boolean;
  precompiledCharsmap: Uint8Array;
}

/** Reads the fields of SentencePiece's `ModelProto` that a T5 tokenizer needs (sentencepiece_model.proto). */
function readSentencePiece(bytes: Uint8Array): SentencePieceModel {
  const out: SentencePieceModel = {
    pieces: [],
    modelType: 1,
    unkId: 0,
    byteFallback: false,
    precompiledCharsmap: new Uint8Array(0),
  };
  const reader = Reader.create(bytes);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    if (field === 1 && (tag & 7) === 2) {
      // SentencePiece { piece = 1; score = 2; type = 3 }
      const end = reader.uint32() + reader.pos;
      const piece = { piece: '', score: 0, type: 1 };
      while (reader.pos < end) {
        const t = reader.uint32();
        if (t >>> 3 === 1) piece.piece = reader.string();
        else if (t >>> 3 === 2) piece.score = reader.float();
        else if (t >>> 3 === 3) piece.type = reader.int32();
        else reader.skipType(t & 7);
      }
      out.pieces.push(piece);
    } else if (field === 2 && (tag & 7) === 2) {
      // TrainerSpec { model_type = 3; byte_fallback = 35; unk_id = 40 }
      const end = reader.uint32() + reader.pos;
      while (reader.pos < end) {
        const t = reader.uint32();
        if (t >>> 3 === 3) out.modelType = reader.int32();
        else if (t >>> 3 === 35) out.byteFallback = reader.bool();
        else if (t >>> 3 === 40) out.unkId = reader.int32();
        else reader.skipType(t & 7);
      }
    } else if (field === 3 && (tag & 7) === 2) {
      // NormalizerSpec { precompiled_charsmap = 2 }
      const end = reader.uint32() + reader.pos;
      while (reader.pos < end) {
        const t = reader.uint32();
        if (t >>> 3 === 2) out.precompiledCharsmap = reader.bytes();
        else reader.skipType(t & 7);
      }
    } else {
      reader.skipType(tag & 7);
    }
  }
  return out;
}

/**
 * Converts a T5 `spiece.model` (SentencePiece Unigram) to the `tokenizer.json` transformers' T5 tokenizer builds
 * from it: the pieces with their scores, then `extraIds` sentinels (`<extra_id_{n-1}>` first, so `<extra_id_0>` is
 * the last id), the model's precompiled normaliser, whitespace split plus Metaspace, and `</s>` appended.
 * @throws InputError when the bytes are not a SentencePiece Unigram model with T5's special pieces.
 */
export function sentencePieceToTokenizerJson(bytes: Uint8Array, extraIds = 100): string {
  let model: SentencePieceModel;
  try {
    model = readSentencePiece(bytes);
  } catch (err) {
    throw new InputError(`spiece.model is not a SentencePiece model (${(err as Error).message})`, 'spiece.model');
  }
  if (model.pieces.length === 0) bad('spiece.model', `${bytes.length} bytes without pieces`, 'a SentencePiece model');
  if (model.modelType !== 1) bad('spiece.model trainer_spec.model_type', model.modelType, '1 (Unigram), as T5 uses');
  if (!Number.isSafeInteger(extraIds) || extraIds < 0) bad('extraIds', extraIds, 'an integer ≥ 0');
  const vocab: [string, number][] = model.pieces.map((p) => [p.piece, p.score]);
  for (let i = extraIds - 1; i >= 0; i--) vocab.push([`<extra_id_${i}>`, 0]);
  // SentencePiece's control and unknown pieces (T5: <pad>, </s>, <unk>) are special; so are the sentinels.
  const addedTokens = model.pieces.flatMap((p, id) =>
    p.type === 2 || p.type === 3 ? [specialToken(p.piece, id)] : []
  );
  for (let id = model.pieces.length; id < vocab.length; id++) addedTokens.push(specialToken(vocab[id][0], id));
  const eos = vocab.findIndex(([p]) => p === '</s>');
  if (eos < 0) bad('spiece.model', 'a model without </s>', 'a T5 SentencePiece model');
  const charsmap = Buffer.from(model.precompiledCharsmap).toString('base64');
  return JSON.stringify({
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: charsmap === '' ? null : { type: 'Precompiled', precompiled_charsmap: charsmap },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, METASPACE] },
    post_processor: t5PostProcessor(eos),
    decoder: METASPACE,
    model: { type: 'Unigram', unk_id: model.unkId, vocab, byte_fallback: model.byteFallback },
  });
}
