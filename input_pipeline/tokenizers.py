"""Tokenizers for the SS-ACL text encoder and report decoder (SPEC sections 2, 3).

Two kinds of tokenizer feed the model:
  text     the BERT-style text encoder's. Inputs are built as the release builds them
           (SPEC 2): a report or prompt is "[CLS] " + text with no [SEP]
           (`encode_text`); a leaf name or grounding phrase has no [CLS]
           (`encode_text(..., cls=False)`), so the pooler reads its first piece. The
           release's vocabulary is a BERT WordPiece `tokenizers` JSON (`WordPieceTokenizer`);
           trained SentencePiece models (new data sets) case-fold (normalisation
           'nmt_nfkc_cf'), because the contrastive text, the anatomy names and grounding
           phrases are all matched lower-case.
  decoder  the report decoder's (GPT-2 style). The newline is one real token: generation
           stops at it and every training target ends with it. Either GPT-2 byte-level BPE
           read from the GPT-2 folder the decoder's weights come from (newline id 198), or
           a SentencePiece model trained on the training reports (identity normalisation,
           so the newline and spacing survive) for a decoder trained from scratch.

SentencePiece ids are fixed: pad 0, unk 1, bos 2, eos 3 (the decoder kind adds '\n' as
id 4). GPT-2 has no pad token; by convention pad = bos = eos = <|endoftext|> (50256);
the decoder's loss mask ignores pads anyway.

GPT-2 BPE is implemented here (byte-to-unicode table, pre-tokenisation regex, rank-ordered
merges) so no Hugging Face or tiktoken package is needed: it reads a Hugging Face folder
(vocab.json + merges.txt, or a BPE tokenizer.json) or a `gpt2.tiktoken` ranks file (base64
token and rank per line, as the openai-whisper source ships it). The pre-tokenisation
pattern needs \\p{L} / \\p{N}; the `regex` package is not a dependency, so the classes are
built once from `unicodedata` for the standard `re` module (tests check both agree where
`regex` is installed).

The SS-ACL release's text encoder instead uses a BERT WordPiece vocabulary stored as a
Hugging Face `tokenizers` JSON file (`WordPieceTokenizer`, also implemented here without
that package: BERT normalisation, the release's Whitespace + Digits pre-tokenisation (and
BERT's), greedy longest-match-first WordPiece). The same class reads a plain BERT
`vocab.txt` (the CheXbert labeler's bert-base-uncased vocabulary).
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
import pathlib
import re
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ssacl_jax import anatomy

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE = "\n"
GPT2_EOT = "<|endoftext|>"


@runtime_checkable
class Tokenizer(Protocol):
  """What the pipeline and the model need from any tokenizer."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int | None          # None: a text vocabulary without [SEP] (the release's)
  newline_id: int | None

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, no BOS/EOS added."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; pad/bos/eos are dropped."""


class TokenizerPair(NamedTuple):
  """The two tokenizers the pipeline uses."""
  text: Tokenizer
  decoder: Tokenizer


# ----------------------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer:
  """A trained SentencePiece model (`*.model`)."""

  def __init__(self, path: str | os.PathLike):
    import sentencepiece as spm
    self.path = str(path)
    self._sp = spm.SentencePieceProcessor(model_file=self.path)
    self.vocab_size = int(self._sp.get_piece_size())
    self.pad_id = int(self._sp.pad_id())
    self.bos_id = int(self._sp.bos_id())
    self.eos_id = int(self._sp.eos_id())
    newline = int(self._sp.piece_to_id(NEWLINE))
    self.newline_id = None if newline == self._sp.unk_id() else newline

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def __reduce__(self):
    return (SentencePieceTokenizer, (self.path,))

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def _sentencepiece_options(kind: str) -> dict:
  if kind == "text":
    return {"normalization_rule_name": "nmt_nfkc_cf"}
  if kind == "decoder":
    # identity + no whitespace squeezing keeps '\n' (a control character that the nmt
    # rules would turn into a space) so the user-defined symbol can match it.
    return {"normalization_rule_name": "identity", "remove_extra_whitespaces": False,
            "user_defined_symbols": [NEWLINE]}
  raise ValueError(f"tokenizer kind must be 'text' or 'decoder', got {kind!r}")


def _training_sentences(texts: Iterable[str]) -> list[str]:
  """One training sentence per report, whitespace collapsed (reports never hold '\\n')."""
  out = [" ".join(str(t).split()) for t in texts]
  out = [t for t in out if t]
  if not out:
    raise ValueError("cannot train a tokenizer: no non-empty training text")
  return out


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        kind: str, seed: int = 0) -> str:
  """Trains a SentencePiece unigram model; returns the path of `<model_prefix>.model`.

  Deterministic (fixed seed, one thread, no paths inside the model), so every host
  that trains from the same reports gets the same bytes. `hard_vocab_limit=False` lets
  tiny corpora train with fewer pieces than asked; byte fallback means nothing encodes
  to unk. The model is written under a temporary name and moved in place, so concurrent
  readers never see a half-written file.
  """
  import sentencepiece as spm
  options = _sentencepiece_options(kind)
  sentences = _training_sentences(texts)
  writer = io.BytesIO()
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=writer,
      vocab_size=int(vocab_size), hard_vocab_limit=False, byte_fallback=True,
      model_type="unigram", character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID,
      bos_id=BOS_ID, eos_id=EOS_ID, num_threads=1, max_sentence_length=1 << 16,
      shuffle_input_sentence=False, minloglevel=2, **options)
  path = pathlib.Path(str(model_prefix) + ".model")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(writer.getvalue())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  if kind == "decoder":
    _check_newline(SentencePieceTokenizer(path))
  return str(path)


def _check_newline(tok: Tokenizer) -> None:
  ids = tok.encode("a\nb")
  if tok.newline_id is None or tok.newline_id not in ids or tok.decode(ids) != "a\nb":
    raise RuntimeError(f"decoder tokenizer {tok!r} does not keep '\\n' as one token: "
                       f"encode('a\\nb') = {ids}")


# ----------------------------------------------------------------------------------------
# GPT-2 byte-level BPE


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable unicode character table."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
        list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


# Unicode White_Space, which is what `regex` means by \s.
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"""
                r"""\s+(?!\S)|\s+""")


def _class_ranges(predicate) -> str:
  """A `re` character-class body for all code points satisfying `predicate`."""
  parts, start, prev = [], None, None
  for cp in range(sys.maxunicode + 1):
    if predicate(cp):
      if start is None:
        start = cp
      prev = cp
    elif start is not None:
      parts.append((start, prev))
      start = None
  if start is not None:
    parts.append((start, prev))

  def esc(cp):
    return f"\\U{cp:08x}"

  return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in parts)


@functools.cache
def gpt2_pretokenizer() -> re.Pattern:
  """GPT-2's pre-tokenisation regex for the standard `re` module.

  \\p{L} (general category L*), \\p{N} (N*) and \\s (Unicode White_Space) become
  explicit classes from this Python's `unicodedata`; otherwise the pattern is GPT-2's.
  """
  cat = unicodedata.category
  letters = _class_ranges(lambda cp: cat(chr(cp))[0] == "L")
  numbers = _class_ranges(lambda cp: cat(chr(cp))[0] == "N")
  space = "".join(f"\\U{ord(c):08x}" for c in _WHITE_SPACE)
  pattern = (rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+|"""
             rf""" ?[^{space}{letters}{numbers}]+|[{space}]+(?![^{space}])|[{space}]+""")
  return re.compile(pattern)


class Gpt2BpeTokenizer:
  """GPT-2 byte-level BPE from local files.

  `path` is a folder with vocab.json + merges.txt or a BPE tokenizer.json (Hugging Face
  layouts), a `*.tiktoken` ranks file, or a folder holding `gpt2.tiktoken`.
  """

  def __init__(self, path: str | os.PathLike):
    path = pathlib.Path(path)
    self.path = str(path)
    hf_tables = _read_hf_folder(path) if path.is_dir() else None
    if hf_tables is not None:
      encoder, merge_ranks = hf_tables
      self._pair_rank = lambda a, b: merge_ranks.get((a, b))
    else:
      if path.is_dir():
        path = path / "gpt2.tiktoken"
      encoder = _read_tiktoken_file(path)
      if GPT2_EOT.encode() not in encoder:
        encoder[GPT2_EOT.encode()] = len(encoder)
      self._pair_rank = lambda a, b: encoder.get(a + b)
    self._encoder: dict[bytes, int] = encoder
    self._decoder: dict[int, bytes] = {i: b for b, i in encoder.items()}
    self._special = {GPT2_EOT.encode()}
    self.vocab_size = max(self._decoder) + 1
    eot = encoder.get(GPT2_EOT.encode())
    if eot is None:
      raise ValueError(f"{self.path}: no {GPT2_EOT} token")
    self.bos_id = self.eos_id = self.pad_id = eot
    self.newline_id = encoder.get(b"\n")
    self._pattern = gpt2_pretokenizer()
    self._cache: dict[str, tuple[int, ...]] = {}
    self._lock = threading.Lock()

  def _bpe(self, piece: bytes) -> list[bytes]:
    """Merges the lowest-ranked adjacent pair, all its occurrences, until none apply."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
      ranks = [self._pair_rank(a, b) for a, b in zip(parts, parts[1:])]
      valid = [r for r in ranks if r is not None]
      if not valid:
        break
      best = min(valid)
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and ranks[i] == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return parts

  def _encode_word(self, word: str) -> tuple[int, ...]:
    cached = self._cache.get(word)
    if cached is None:
      cached = tuple(self._encoder[p] for p in self._bpe(word.encode("utf-8")))
      if len(self._cache) < 100_000:
        with self._lock:
          self._cache[word] = cached
    return cached

  def encode(self, text: str) -> list[int]:
    ids: list[int] = []
    for word in self._pattern.findall(text):
      ids.extend(self._encode_word(word))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    data = b"".join(self._decoder.get(int(i), b"") for i in ids
                    if self._decoder.get(int(i)) not in self._special)
    return data.decode("utf-8", errors="replace")

  def __reduce__(self):  # Grain workers get a fresh copy read from the same files.
    return (Gpt2BpeTokenizer, (self.path,))

  def __repr__(self) -> str:
    return f"Gpt2BpeTokenizer({self.path!r}, vocab_size={self.vocab_size})"


GPT2_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "gpt2.tiktoken")


def _read_hf_folder(folder: pathlib.Path) -> tuple[dict[bytes, int], dict] | None:
  """A Hugging Face GPT-2 folder's (encoder, merge ranks): from vocab.json + merges.txt,
  else from a BPE tokenizer.json (added tokens such as <|endoftext|> included); None
  when the folder has neither."""
  if (folder / "vocab.json").is_file():
    with open(folder / "vocab.json", encoding="utf-8") as f:
      vocab = json.load(f)
    with open(folder / "merges.txt", encoding="utf-8") as f:
      merges = [l.rstrip("\n") for l in f]
    return _hf_tables(vocab, [l for l in merges if l and not l.startswith("#version")])
  if (folder / "tokenizer.json").is_file():
    path = folder / "tokenizer.json"
    if _hf_model_type(path) != "BPE":
      raise ValueError(f"{path}: model type {_hf_model_type(path)!r}, not GPT-2's BPE")
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
    vocab = dict(spec["model"]["vocab"])
    vocab.update({a["content"]: int(a["id"]) for a in spec.get("added_tokens") or []})
    return _hf_tables(vocab, spec["model"]["merges"])
  return None


def _hf_tables(vocab: dict[str, int], merges) -> tuple[dict[bytes, int], dict]:
  """Byte-unicode strings -> bytes-keyed (encoder, merge ranks); a merge is "a b" or
  [a, b] (newer tokenizer.json files)."""
  to_byte = {c: b for b, c in bytes_to_unicode().items()}

  def as_bytes(token: str) -> bytes:
    if token == GPT2_EOT:
      return token.encode()
    return bytes(to_byte[c] for c in token)

  encoder = {as_bytes(t): int(i) for t, i in vocab.items()}
  merge_ranks = {}
  for rank, merge in enumerate(merges):
    a, b = merge.split(" ") if isinstance(merge, str) else merge
    merge_ranks[(as_bytes(a), as_bytes(b))] = rank
  return encoder, merge_ranks


def _read_tiktoken_file(path) -> dict[bytes, int]:
  encoder = {}
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        token, rank = line.split()
        encoder[base64.b64decode(token)] = int(rank)
  return encoder


# ----------------------------------------------------------------------------------------
# BERT WordPiece (Hugging Face `tokenizers` JSON)

# BertNormalizer's CJK ideograph blocks (as in Hugging Face `tokenizers`); each such
# character is surrounded by spaces so that it becomes its own word.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Symbols (So) that are Other_Alphabetic, hence word characters for Rust's regex \w.
_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                       (0x1F170, 0x1F189))
_WHITE_SPACE_SET = frozenset(_WHITE_SPACE)


def _in_ranges(cp: int, ranges) -> bool:
  return any(a <= cp <= b for a, b in ranges)


def _is_control(c: str) -> bool:
  """`tokenizers`' is_control: Cc, Cf, Co or Cs, except tab, newline and CR (which count
  as whitespace). Unassigned (Cn) characters are kept, as `tokenizers` keeps them."""
  return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs")


def _is_bert_punctuation(c: str) -> bool:
  """ASCII punctuation (which includes symbols such as $ + < = > ^ ` | ~) or any P*."""
  cp = ord(c)
  return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or
          unicodedata.category(c)[0] == "P")


def _is_word_char(c: str) -> bool:
  """Rust regex's Unicode \\w: Alphabetic, marks, Nd, Pc, Join_Control (Alphabetic as
  L*, Nl and the alphabetic circled letters; other Other_Alphabetic are marks)."""
  cat = unicodedata.category(c)
  return (cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d" or
          _in_ranges(ord(c), _ALPHABETIC_SYMBOLS))


class _CharTable(dict):
  """A lazily filled `str.translate` table: code point -> replacement (str or None)."""

  def __init__(self, fn):
    super().__init__()
    self._fn = fn

  def __missing__(self, cp: int):
    value = self._fn(chr(cp))
    self[cp] = value
    return value


def _clean(c: str) -> str | None:
  if c in "\x00\ufffd" or _is_control(c):
    return None
  return " " if c in _WHITE_SPACE_SET else c


_CLEAN_TABLE = _CharTable(_clean)
_CJK_TABLE = _CharTable(lambda c: f" {c} " if _in_ranges(ord(c), _CJK_RANGES) else c)
_NONSPACING_MARK_TABLE = _CharTable(lambda c: None if unicodedata.category(c) == "Mn" else c)
_MARK_TABLE = _CharTable(lambda c: None if unicodedata.category(c)[0] == "M" else c)
# Per character, as `tokenizers` lower-cases (no final-sigma rule, unlike str.lower()).
_LOWER_TABLE = _CharTable(lambda c: c.lower())
_WHITESPACE_TABLE = _CharTable(lambda c: " " if c in _WHITE_SPACE_SET else c)
_BERT_SPLIT_TABLE = _CharTable(
    lambda c: " " if c in _WHITE_SPACE_SET else f" {c} " if _is_bert_punctuation(c) else c)


def _strip_accents(text: str) -> str:
  return unicodedata.normalize("NFD", text).translate(_NONSPACING_MARK_TABLE)


def _bert_normalizer(spec: dict):
  clean_text = spec.get("clean_text", True)
  chinese = spec.get("handle_chinese_chars", True)
  lowercase = spec.get("lowercase", True)
  strip = spec.get("strip_accents")
  strip = lowercase if strip is None else strip

  def normalize(text: str) -> str:
    if clean_text:
      text = text.translate(_CLEAN_TABLE)
    if chinese:
      text = text.translate(_CJK_TABLE)
    if strip:
      text = _strip_accents(text)
    if lowercase:
      text = text.translate(_LOWER_TABLE)
    return text

  return normalize


def _build_normalizer(spec: dict | None, path: str):
  """A `tokenizers` normalizer spec -> str -> str (None: no normalisation)."""
  if spec is None:
    return None
  kind = spec.get("type")
  if kind == "BertNormalizer":
    return _bert_normalizer(spec)
  if kind == "Sequence":
    steps = [_build_normalizer(s, path) for s in spec.get("normalizers", [])]
    steps = [s for s in steps if s is not None]
    return lambda text: functools.reduce(lambda t, f: f(t), steps, text)
  if kind == "Lowercase":
    return lambda text: text.translate(_LOWER_TABLE)
  if kind == "StripAccents":  # drops every mark (Mn, Mc, Me); BertNormalizer only Mn
    return lambda text: text.translate(_MARK_TABLE)
  if kind in ("NFD", "NFKD", "NFC", "NFKC"):
    return functools.partial(unicodedata.normalize, kind)
  if kind == "Strip":
    left, right = spec.get("strip_left", True), spec.get("strip_right", True)

    def strip(text: str) -> str:
      text = text.lstrip(_WHITE_SPACE) if left else text
      return text.rstrip(_WHITE_SPACE) if right else text

    return strip
  if kind == "Replace" and "String" in (spec.get("pattern") or {}):
    old, new = spec["pattern"]["String"], spec.get("content", "")
    return lambda text: text.replace(old, new)
  raise ValueError(f"{path}: unsupported normalizer {spec!r}")


def _bert_pre_tokenize(text: str) -> list[str]:
  """Splits on whitespace (dropped) and punctuation (each character its own word)."""
  return [w for w in text.translate(_BERT_SPLIT_TABLE).split(" ") if w]


def _whitespace_split(text: str) -> list[str]:
  return [w for w in text.translate(_WHITESPACE_TABLE).split(" ") if w]


def _whitespace_pre_tokenize(text: str) -> list[str]:
  """`tokenizers`' Whitespace: the regex \\w+|[^\\w\\s]+."""
  out, cur, cur_kind = [], [], None
  for c in text:
    kind = 0 if c in _WHITE_SPACE_SET else 1 if _is_word_char(c) else 2
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
    if _is_bert_punctuation(c):
      if cur:
        out.append("".join(cur))
        cur = []
      out.append(c)
    else:
      cur.append(c)
  if cur:
    out.append("".join(cur))
  return out


def _is_numeric(c: str) -> bool:
  """Rust's char::is_numeric, which `tokenizers`' Digits uses: Nd, Nl or No."""
  return unicodedata.category(c) in ("Nd", "Nl", "No")


def _digits_pre_tokenize(individual: bool):
  """`tokenizers`' Digits: each digit its own word, or runs of digits split from the rest."""
  def pre_tokenize(text: str) -> list[str]:
    out, cur, cur_numeric = [], [], None
    for c in text:
      numeric = _is_numeric(c)
      if cur and (numeric != cur_numeric or (numeric and individual)):
        out.append("".join(cur))
        cur = []
      cur.append(c)
      cur_numeric = numeric
    if cur:
      out.append("".join(cur))
    return out

  return pre_tokenize


def _build_pre_tokenizer(spec: dict | None, path: str):
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
    steps = [_build_pre_tokenizer(s, path) for s in spec.get("pretokenizers", [])]

    def pre_tokenize(text: str) -> list[str]:
      words = [text] if text else []
      for step in steps:
        words = [w for word in words for w in step(word)]
      return words

    return pre_tokenize
  raise ValueError(f"{path}: unsupported pre-tokenizer {spec!r}")


class _AddedToken(NamedTuple):
  content: str
  id: int
  single_word: bool
  lstrip: bool
  rstrip: bool


def _split_added(text: str, tokens: Sequence[_AddedToken]) -> list[tuple[str, int | None]]:
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
    if tok.single_word and ((start > 0 and _is_word_char(text[start - 1])) or
                            (stop < n and _is_word_char(text[stop]))):
      continue
    if tok.lstrip:
      while start > done and text[start - 1] in _WHITE_SPACE_SET:
        start -= 1
    if tok.rstrip:
      while stop < n and text[stop] in _WHITE_SPACE_SET:
        stop += 1
      i = stop
    if done < start:
      out.append((text[done:start], None))
    out.append((text[start:stop], tok.id))
    done = stop
  if done < n:
    out.append((text[done:], None))
  return out


def _hf_spec(path) -> dict:
  """A Hugging Face `tokenizers` JSON file, checked to hold a 'model' object."""
  try:
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a Hugging Face tokenizer JSON file ({e})") from e
  if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
    raise ValueError(f"{path}: not a Hugging Face tokenizer JSON file (no 'model' object)")
  return spec


def _spec_model_type(spec: dict) -> str | None:
  """model.type of a `tokenizers` spec (inferred when absent)."""
  model = spec["model"]
  if "type" in model:
    return model["type"]
  if "vocab" in model and "continuing_subword_prefix" in model and "merges" not in model:
    return "WordPiece"
  return None


def _hf_model_type(path) -> str | None:
  """model.type of a Hugging Face `tokenizers` JSON file (inferred when absent)."""
  return _spec_model_type(_hf_spec(path))


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
    spec = _hf_spec(self.path) if is_json else uncased_bert_spec(path)
    model = spec["model"]
    if _spec_model_type(spec) != "WordPiece":
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
    self._normalize = _build_normalizer(spec.get("normalizer"), self.path)
    self._pre_tokenize = _build_pre_tokenizer(spec.get("pre_tokenizer"), self.path)

    def added_tokens(normalized: bool) -> list[_AddedToken]:
      out = []
      for a in added:
        if bool(a.get("normalized", not a.get("special", False))) != normalized:
          continue
        content = a["content"]
        if normalized and self._normalize is not None:
          content = self._normalize(content)
        if content:
          out.append(_AddedToken(content, int(a["id"]), bool(a.get("single_word")),
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
    self._cache: dict[str, tuple[int, ...]] = {}
    self._lock = threading.Lock()

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

  def _encode_word(self, word: str) -> tuple[int, ...]:
    cached = self._cache.get(word)
    if cached is None:
      cached = self._wordpiece(word)
      if len(self._cache) < 100_000:
        with self._lock:
          self._cache[word] = cached
    return cached

  def encode(self, text: str) -> list[int]:
    ids: list[int] = []
    for piece, added_id in _split_added(text, self._raw_added):
      if added_id is not None:
        ids.append(added_id)
        continue
      if self._normalize is not None:
        piece = self._normalize(piece)
      for sub, sub_id in _split_added(piece, self._normalized_added):
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


# ----------------------------------------------------------------------------------------
# Loading, helpers


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """SentencePiece for `*.model`; GPT-2 BPE for a folder with vocab.json + merges.txt, a
  BPE tokenizer.json or gpt2.tiktoken, or a `*.tiktoken` file; BERT WordPiece for a
  Hugging Face `tokenizers` `*.json` file whose model type is WordPiece."""
  p = pathlib.Path(path)
  if p.is_file() and p.suffix == ".model":
    return SentencePieceTokenizer(p)
  if p.is_file() and p.suffix == ".json":
    model_type = _hf_model_type(p)
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


def encode_text(tok: Tokenizer, text: str, max_len: int,
                cls: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Text-encoder input as the release builds it (SPEC 2), truncated and 0-padded to
  `max_len` (the mask, not the pad id, marks padding).

  cls: a report or prompt is "[CLS] " + text: BOS ([CLS]) then the text's ids, no
  [SEP]. Without it (leaf names, grounding phrases) the text's ids alone, so the pooler
  reads the first piece.
  Returns (ids int32 [max_len], mask int32 [max_len]).
  """
  ids = ([tok.bos_id] if cls else []) + list(tok.encode(text))
  ids = ids[:max_len]
  out = np.zeros(max_len, np.int32)  # 0-padded whatever the tokenizer's pad id
  out[:len(ids)] = ids
  mask = np.zeros(max_len, np.int32)
  mask[:len(ids)] = 1
  return out, mask


def anatomy_tokens(tok: Tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The 25 leaf names (anatomy.LEAVES order), without [CLS] ->
  (ids int32 [25, L], mask int32 [25, L])."""
  pairs = [encode_text(tok, name, max_len, cls=False) for name in anatomy.LEAVES]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def tokenizer_paths(data_dir, dataset_name: str, text_vocab: int,
                    decoder_vocab: int) -> tuple[pathlib.Path, pathlib.Path]:
  folder = pathlib.Path(data_dir) / dataset_name / "tokenizers"
  return (folder / f"text_{text_vocab}.model", folder / f"decoder_{decoder_vocab}.model")


def ensure_tokenizers(data_dir, dataset_name: str, train_reports: Iterable[str],
                      text_vocab: int | None,
                      decoder_vocab: int | None) -> tuple[str | None, str | None]:
  """Trains the text and decoder SentencePiece models once, beside the data.

  Stored as <data_dir>/<dataset_name>/tokenizers/{text,decoder}_<vocab>.model and reused
  when present; `train_reports` is only read when something must be trained. A vocab of
  None skips that kind (its path is None): the tokenizer comes from elsewhere. The text
  model trains on lower-cased reports (it case-folds anyway).
  """
  text_path, decoder_path = tokenizer_paths(data_dir, dataset_name, text_vocab,
                                            decoder_vocab)
  reports = None
  for path, vocab, kind in ((text_path, text_vocab, "text"),
                            (decoder_path, decoder_vocab, "decoder")):
    if vocab is None or path.is_file():
      continue
    if reports is None:
      reports = _training_sentences(train_reports)
    texts = [r.lower() for r in reports] if kind == "text" else reports
    train_sentencepiece(texts, str(path.with_suffix("")), vocab, kind)
  return (str(text_path) if text_vocab is not None else None,
          str(decoder_path) if decoder_vocab is not None else None)
