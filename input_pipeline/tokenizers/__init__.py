"""Tokenizers for the SS-ACL text encoder and report decoder (SPEC sections 2, 3).

Two kinds of tokenizer feed the model:
  text     the BERT-style text encoder's. The release's vocabulary is a BERT WordPiece
           `tokenizers` JSON (`wordpiece`); SentencePiece models trained on new data
           sets case-fold (`sentencepiece`). Inputs are built as the release builds them
           (`encode_text`, `anatomy_tokens` in `base`).
  decoder  the report decoder's (GPT-2 style). The newline is one real token: generation
           stops at it and every training target ends with it. Either GPT-2 byte-level BPE
           read from the GPT-2 folder the decoder's weights come from (`gpt2_bpe`), or a
           SentencePiece model trained on the training reports for a decoder trained from
           scratch.

All three are our own code (no Hugging Face, tiktoken or `regex` package): `hf_json`
rebuilds the `tokenizers` JSON pipeline and `unicode_tables` the character classes from
`unicodedata` (tests check both agree with those packages where they are installed).
`load_tokenizer` picks the kind from the file.
"""
from __future__ import annotations

import os
import pathlib

from input_pipeline.tokenizers.base import Tokenizer, TokenizerPair, anatomy_tokens, encode_text
from input_pipeline.tokenizers.gpt2_bpe import (GPT2_EOT, GPT2_FILES, Gpt2BpeTokenizer,
                                                bytes_to_unicode, gpt2_pretokenizer)
from input_pipeline.tokenizers.hf_json import hf_model_type
from input_pipeline.tokenizers.sentencepiece import (BOS_ID, EOS_ID, PAD_ID, UNK_ID,
                                                     SentencePieceTokenizer, ensure_tokenizers,
                                                     train_sentencepiece)
from input_pipeline.tokenizers.wordpiece import WordPieceTokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """SentencePiece for `*.model`; GPT-2 BPE for a folder with vocab.json + merges.txt, a
  BPE tokenizer.json or gpt2.tiktoken, or a `*.tiktoken` file; BERT WordPiece for a
  Hugging Face `tokenizers` `*.json` file whose model type is WordPiece."""
  p = pathlib.Path(path)
  if p.is_file() and p.suffix == ".model":
    return SentencePieceTokenizer(p)
  if p.is_file() and p.suffix == ".json":
    model_type = hf_model_type(p)
    if model_type != "WordPiece":
      raise ValueError(f"{path}: a Hugging Face tokenizer JSON with model type "
                       f"{model_type!r}; only 'WordPiece' (BERT) JSON files are supported")
    return WordPieceTokenizer(p)
  if p.is_file() and p.suffix == ".tiktoken":
    return Gpt2BpeTokenizer(p)
  if p.is_dir() and ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()
                     or (p / "tokenizer.json").is_file() or (p / "gpt2.tiktoken").is_file()):
    return Gpt2BpeTokenizer(p)
  raise ValueError(f"{path}: not a tokenizer (expected a SentencePiece .model file, a "
                   ".tiktoken file, or a folder with vocab.json + merges.txt, tokenizer.json "
                   "or gpt2.tiktoken)")


__all__ = ["BOS_ID", "EOS_ID", "GPT2_EOT", "GPT2_FILES", "PAD_ID", "UNK_ID",
           "Gpt2BpeTokenizer", "SentencePieceTokenizer", "Tokenizer", "TokenizerPair",
           "WordPieceTokenizer", "anatomy_tokens", "bytes_to_unicode", "encode_text",
           "ensure_tokenizers", "gpt2_pretokenizer", "load_tokenizer", "train_sentencepiece"]
