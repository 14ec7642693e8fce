"""Hugging Face `tokenizers` JSON files: the spec, its normalizers, pre-tokenizers and
added tokens, rebuilt in Python as `tokenizers` applies them."""
from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

from input_pipeline.tokenizers.unicode_tables import (BERT_SPLIT_TABLE, CJK_TABLE, CLEAN_TABLE,
                                                      LOWER_TABLE, MARK_TABLE, WHITE_SPACE,
                                                      WHITE_SPACE_SET, WHITESPACE_TABLE,
                                                      is_bert_punctuation, is_numeric,
                                                      is_word_char, strip_accents)


def _bert_normalizer(spec: dict):
  clean_text = spec.get("clean_text", True)
  chinese = spec.get("handle_chinese_chars", True)
  lowercase = spec.get("lowercase", True)
  strip = spec.get("strip_accents")
  strip = lowercase if strip is None else strip

  def normalize(text: str) -> str:
    if clean_text:
      text = text.translate(CLEAN_TABLE)
    if chinese:
      text = text.translate(CJK_TABLE)
    if strip:
      text = strip_accents(text)
    if lowercase:
      text = text.translate(LOWER_TABLE)
    return text

  return normalize


def build_normalizer(spec: dict | None, path: str):
  """A `tokenizers` normalizer spec -> str -> str (None: no normalisation)."""
  if spec is None:
    return None
  kind = spec.get("type")
  if kind == "BertNormalizer":
    return _bert_normalizer(spec)
  if kind == "Sequence":
    steps = [build_normalizer(s, path) for s in spec.get("normalizers", [])]
    steps = [s for s in steps if s is not None]
    return lambda text: functools.reduce(lambda t, f: f(t), steps, text)
  if kind == "Lowercase":
    return lambda text: text.translate(LOWER_TABLE)
  if kind == "StripAccents":  # drops every mark (Mn, Mc, Me); BertNormalizer only Mn
    return lambda text: text.translate(MARK_TABLE)
  if kind in ("NFD", "NFKD", "NFC", "NFKC"):
    return functools.partial(unicodedata.normalize, kind)
  if kind == "Strip":
    left, right = spec.get("strip_left", True), spec.get("strip_right", True)

    def strip(text: str) -> str:
      text = text.lstrip(WHITE_SPACE) if left else text
      return text.rstrip(WHITE_SPACE) if right else text

    return strip
  if kind == "Replace" and "String" in (spec.get("pattern") or {}):
    old, new = spec["pattern"]["String"], spec.get("content", "")
    return lambda text: text.replace(old, new)
  raise ValueError(f"{path}: unsupported normalizer {spec!r}")


def _bert_pre_tokenize(text: str) -> list[str]:
  """Splits on whitespace (dropped) and punctuation (each character its own word)."""
  return [w for w in text.translate(BERT_SPLIT_TABLE).split(" ") if w]


def _whitespace_split(text: str) -> list[str]:
  return [w for w in text.translate(WHITESPACE_TABLE).split(" ") if w]


def _whitespace_pre_tokenize(text: str) -> list[str]:
  """`tokenizers`' Whitespace: the regex \\w+|[^\\w\\s]+."""
  out, cur, cur_kind = [], [], None
  for c in text:
    kind = 0 if c in WHITE_SPACE_SET else 1 if is_word_char(c) else 2
    if kind != cur_kind and cur:
      out.append("".join(cur))
      cur = []
    if kind:
      cur.append(c)
    cur_kind = kind
  if cur:
    out.append("".join(cur))
  return out


def _punctuation_pre_tokenize(text: str) -> list[str]:
  out, cur = [], []
  for c in text:
    if is_bert_punctuation(c):
      if cur:
        out.append("".join(cur))
        cur = []
      out.append(c)
    else:
      cur.append(c)
  if cur:
    out.append("".join(cur))
  return out


def _digits_pre_tokenize(individual: bool):
  """`tokenizers`' Digits: each digit its own word, or runs of digits split from the rest."""
  def pre_tokenize(text: str) -> list[str]:
    out, cur, cur_numeric = [], [], None
    for c in text:
      numeric = is_numeric(c)
      if cur and (numeric != cur_numeric or (numeric and individual)):
        out.append("".join(cur))
        cur = []
      cur.append(c)
      cur_numeric = numeric
    if cur:
      out.append("".join(cur))
    return out

  return pre_tokenize


def build_pre_tokenizer(spec: dict | None, path: str):
  """A `tokenizers` pre-tokenizer spec -> str -> list of words."""
  if spec is None:
    return lambda text: [text] if text else []
  kind = spec.get("type")
  if kind == "BertPreTokenizer":
    return _bert_pre_tokenize
  if kind == "WhitespaceSplit":
    return _whitespace_split
  if kind == "Whitespace":
    return _whitespace_pre_tokenize
  if kind == "Punctuation" and spec.get("behavior", "Isolated") == "Isolated":
    return _punctuation_pre_tokenize
  if kind == "Digits":
    return _digits_pre_tokenize(bool(spec.get("individual_digits", False)))
  if kind == "Sequence":
    steps = [build_pre_tokenizer(s, path) for s in spec.get("pretokenizers", [])]

    def pre_tokenize(text: str) -> list[str]:
      words = [text] if text else []
      for step in steps:
        words = [w for word in words for w in step(word)]
      return words

    return pre_tokenize
  raise ValueError(f"{path}: unsupported pre-tokenizer {spec!r}")


class AddedToken(NamedTuple):
  content: str
  id: int
  single_word: bool
  lstrip: bool
  rstrip: bool


def split_added(text: str, tokens: Sequence[AddedToken]) -> list[tuple[str, int | None]]:
  """Splits `text` around the added tokens in it (leftmost-longest, as `tokenizers`
  does): (piece, None) for ordinary text, (matched text, id) for an added token."""
  if not tokens or not text:
    return [(text, None)]
  firsts = {t.content[0] for t in tokens}
  out: list[tuple[str, int | None]] = []
  n, i, done = len(text), 0, 0
  while i < n:
    if text[i] not in firsts:
      i += 1
      continue
    tok = next((t for t in tokens if text.startswith(t.content, i)), None)
    if tok is None:
      i += 1
      continue
    start, stop = i, i + len(tok.content)
    i = stop
    if tok.single_word and ((start > 0 and is_word_char(text[start - 1])) or
                            (stop < n and is_word_char(text[stop]))):
      continue
    if tok.lstrip:
      while start > done and text[start - 1] in WHITE_SPACE_SET:
        start -= 1
    if tok.rstrip:
      while stop < n and text[stop] in WHITE_SPACE_SET:
        stop += 1
      i = stop
    if done < start:
      out.append((text[done:start], None))
    out.append((text[start:stop], tok.id))
    done = stop
  if done < n:
    out.append((text[done:], None))
  return out


def hf_spec(path) -> dict:
  """A Hugging Face `tokenizers` JSON file, checked to hold a 'model' object."""
  try:
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a Hugging Face tokenizer JSON file ({e})") from e
  if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
    raise ValueError(f"{path}: not a Hugging Face tokenizer JSON file (no 'model' object)")
  return spec


def spec_model_type(spec: dict) -> str | None:
  """model.type of a `tokenizers` spec (inferred when absent)."""
  model = spec["model"]
  if "type" in model:
    return model["type"]
  if "vocab" in model and "continuing_subword_prefix" in model and "merges" not in model:
    return "WordPiece"
  return None


def hf_model_type(path) -> str | None:
  """model.type of a Hugging Face `tokenizers` JSON file (inferred when absent)."""
  return spec_model_type(hf_spec(path))

