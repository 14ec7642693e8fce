"""BERT WordPiece: the release's text vocabulary and CheXbert's bert-base-uncased.

Reads a Hugging Face `tokenizers` JSON file or a plain BERT `vocab.txt`, without that
package: BERT normalisation, the release's Whitespace + Digits pre-tokenisation (and
BERT's), greedy longest-match-first WordPiece.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from input_pipeline.tokenizers.base import WordCache
from input_pipeline.tokenizers.hf_json import (AddedToken, build_normalizer,
                                               build_pre_tokenizer, hf_spec, spec_model_type,
                                               split_added)

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def uncased_bert_spec(vocab_txt) -> dict:
  """The `tokenizers` spec Hugging Face builds from an uncased BERT `vocab.txt` (one
  token per line, id = line number), as BertTokenizer(do_lower_case=True) tokenises:
  BertNormalizer lower-casing and stripping accents, BertPreTokenizer, WordPiece with
  '##' continuations, [CLS] $A [SEP]; the special tokens are never split."""
  with open(vocab_txt, encoding="utf-8") as f:
    vocab = {}
    for i, line in enumerate(f):
      vocab[line.rstrip("\n")] = i
  missing = [t for t in BERT_SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f"{vocab_txt}: not a BERT vocab.txt (no {', '.join(missing)})")
  return {
      "model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
      "normalizer": {"type": "BertNormalizer", "clean_text": True,
                     "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "added_tokens": [{"content": t, "id": vocab[t], "special": True, "normalized": False}
                       for t in BERT_SPECIAL_TOKENS],
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}


class WordPieceTokenizer:
  """BERT WordPiece from a Hugging Face `tokenizers` `.json` file (model.type WordPiece),
  or from any other file as an uncased BERT `vocab.txt` (`uncased_bert_spec`: CheXbert's).

  Mirrors `tokenizers`: added tokens ([CLS], [MASK], ...) found in the text map to their
  ids; the rest is normalised (BertNormalizer: drop control characters, whitespace ->
  ' ', space out CJK ideographs, strip accents when lower-casing unless strip_accents
  says otherwise, lower-case), pre-tokenised (BertPreTokenizer: split on whitespace and
  on each punctuation character; or Whitespace then Digits, as the release's file) and
  each word split greedily longest-match-first into vocabulary pieces, continuations
  prefixed '##'; a word that cannot be split, or is longer than max_input_chars_per_word
  characters, becomes [UNK].

  bos/eos are the [CLS]/[SEP] of the post-processor (the vocabulary's when there is
  none; eos is None for a vocabulary without [SEP], as the release's). `encode` adds
  neither; `encode_text` adds [CLS] only, as the release's "[CLS] " + text does. There
  is no newline token (`newline_id` None): '\\n' is whitespace. `decode` drops
  pad/bos/eos and joins '##' continuations as the WordPiece decoder does.

  Character classes come from this Python's `unicodedata`; `tokenizers` uses other
  Unicode versions, so ids can differ only for rare characters whose category changed
  between versions (some scripts' punctuation, format characters and marks).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    is_json = pathlib.Path(path).suffix == ".json"
    spec = hf_spec(self.path) if is_json else uncased_bert_spec(path)
    model = spec["model"]
    if spec_model_type(spec) != "WordPiece":
      raise ValueError(f"{self.path}: model type {model.get('type')!r}, not WordPiece")
    vocab = {str(t): int(i) for t, i in model["vocab"].items()}
    added = [a for a in spec.get("added_tokens") or [] if a.get("content")]
    for a in added:
      vocab.setdefault(a["content"], int(a["id"]))
    self._vocab = vocab
    self._id_to_token = {i: t for t, i in model["vocab"].items()}
    self._id_to_token.update({int(a["id"]): a["content"] for a in added})
    self._prefix = model.get("continuing_subword_prefix", "##")
    self._max_chars = int(model.get("max_input_chars_per_word", 100))
    unk = model.get("unk_token", "[UNK]")
    if unk not in vocab:
      raise ValueError(f"{self.path}: unk token {unk!r} is not in the vocabulary")
    self.unk_id = vocab[unk]
    self._normalize = build_normalizer(spec.get("normalizer"), self.path)
    self._pre_tokenize = build_pre_tokenizer(spec.get("pre_tokenizer"), self.path)

    def added_tokens(normalized: bool) -> list[AddedToken]:
      out = []
      for a in added:
        if bool(a.get("normalized", not a.get("special", False))) != normalized:
          continue
        content = a["content"]
        if normalized and self._normalize is not None:
          content = self._normalize(content)
        if content:
          out.append(AddedToken(content, int(a["id"]), bool(a.get("single_word")),
                                bool(a.get("lstrip")), bool(a.get("rstrip"))))
      return sorted(out, key=lambda t: -len(t.content))  # longest first

    self._raw_added = added_tokens(False)
    self._normalized_added = added_tokens(True)

    self.vocab_size = max(self._id_to_token) + 1
    self.bos_id, self.eos_id = self._special_ids(spec.get("post_processor"))
    padding = spec.get("padding") or {}
    if "pad_id" in padding:
      self.pad_id = int(padding["pad_id"])
    elif "[PAD]" in vocab:
      self.pad_id = vocab["[PAD]"]
    else:
      raise ValueError(f"{self.path}: no [PAD] token and no padding.pad_id")
    self.newline_id = None
    decoder = spec.get("decoder") or {}
    if decoder.get("type") == "WordPiece":
      self._decode_prefix = decoder.get("prefix", self._prefix)
      self._cleanup = bool(decoder.get("cleanup", True))
    else:
      self._decode_prefix, self._cleanup = self._prefix, False
    self._encode_word = WordCache(self._wordpiece)

  def _token_id(self, token: str) -> int:
    if token not in self._vocab:
      raise ValueError(f"{self.path}: special token {token!r} is not in the vocabulary")
    return self._vocab[token]

  def _special_ids(self, spec: dict | None) -> tuple[int, int | None]:
    """(bos, eos) = ([CLS], [SEP]) as the post-processor adds them to one sequence; with
    no post-processor the vocabulary's, eos None when it has no [SEP]."""
    kind = (spec or {}).get("type")
    if kind == "Sequence":
      inner = [p for p in spec.get("processors", [])
               if p.get("type") in ("TemplateProcessing", "BertProcessing",
                                    "RobertaProcessing")]
      return self._special_ids(inner[0] if inner else None)
    if kind in ("BertProcessing", "RobertaProcessing"):
      return int(spec["cls"][1]), int(spec["sep"][1])
    if kind == "TemplateProcessing":
      single = spec.get("single", [])
      where = [i for i, p in enumerate(single) if "Sequence" in p]
      specials = spec.get("special_tokens", {})

      def ids(items):
        out = []
        for p in items:
          name = p["SpecialToken"]["id"]
          if name in specials:
            out.extend(int(i) for i in specials[name]["ids"])
          else:
            out.append(self._token_id(name))
        return out

      before = ids(single[:where[0]]) if where else []
      after = ids(single[where[0] + 1:]) if where else []
      if len(where) != 1 or len(before) != 1 or len(after) != 1:
        raise ValueError(f"{self.path}: the post-processor's single template {single!r} "
                         "is not [CLS] $A [SEP]")
      return before[0], after[0]
    if kind is None:
      return self._token_id("[CLS]"), self._vocab.get("[SEP]")
    raise ValueError(f"{self.path}: unsupported post-processor {spec!r}")

  def _wordpiece(self, word: str) -> tuple[int, ...]:
    if len(word) > self._max_chars:
      return (self.unk_id,)
    ids, start = [], 0
    while start < len(word):
      end = len(word)
      while start < end:
        piece = word[start:end] if start == 0 else self._prefix + word[start:end]
        i = self._vocab.get(piece)
        if i is not None:
          break
        end -= 1
      else:
        return (self.unk_id,)
      ids.append(i)
      start = end
    return tuple(ids)

  def encode(self, text: str) -> list[int]:
    ids: list[int] = []
    for piece, added_id in split_added(text, self._raw_added):
      if added_id is not None:
        ids.append(added_id)
        continue
      if self._normalize is not None:
        piece = self._normalize(piece)
      for sub, sub_id in split_added(piece, self._normalized_added):
        if sub_id is not None:
          ids.append(sub_id)
          continue
        for word in self._pre_tokenize(sub):
          ids.extend(self._encode_word(word))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    drop = {self.pad_id, self.bos_id, self.eos_id}
    tokens = [self._id_to_token[int(i)] for i in ids
              if int(i) not in drop and int(i) in self._id_to_token]
    out = []
    for n, token in enumerate(tokens):
      if n:
        if token.startswith(self._decode_prefix):
          token = token[len(self._decode_prefix):]
        else:
          token = " " + token
      if self._cleanup:
        token = _wordpiece_cleanup(token)
      out.append(token)
    return "".join(out)

  def __reduce__(self):
    return (WordPieceTokenizer, (self.path,))

  def __repr__(self) -> str:
    return f"WordPieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def _wordpiece_cleanup(token: str) -> str:
  """`tokenizers`' WordPiece decoder cleanup (per token, spaces before punctuation)."""
  for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                   (" n't", "n't"), (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"),
                   (" 've", "'ve"), (" 're", "'re")):
    token = token.replace(old, new)
  return token

