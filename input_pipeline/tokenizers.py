"""Tokenizers for the SS-ACL text encoder and report decoder (SPEC sections 2, 3).

Two kinds of tokenizer feed the model:
  text     the BERT-style text encoder's. Our `encode_text` helper prepends a [CLS]-like
           BOS, whose pooled output is the sentence embedding. Trained SentencePiece models
           of this kind case-fold (normalisation 'nmt_nfkc_cf'), because the contrastive
           text, the anatomy names and grounding phrases are all matched lower-case.
  decoder  the report decoder's (GPT-2 style). The newline is one real token: generation
           stops at it and every training target ends with it. Either a SentencePiece
           model trained on the training reports (identity normalisation, so the newline
           and spacing survive) or real GPT-2 byte-level BPE read from local files
           (newline id 198).

SentencePiece ids are fixed: pad 0, unk 1, bos 2, eos 3 (the decoder kind adds '\n' as
id 4). GPT-2 has no pad token; by convention pad = bos = eos = <|endoftext|> (50256);
the decoder's loss mask ignores pads anyway.

GPT-2 BPE is implemented here (byte-to-unicode table, pre-tokenisation regex, rank-ordered
merges) so no Hugging Face or tiktoken package is needed: it reads either a Hugging Face
folder (vocab.json + merges.txt) or a `gpt2.tiktoken` ranks file (base64 token and rank
per line, as the openai-whisper source ships it). The pre-tokenisation pattern needs
\\p{L} / \\p{N}; the `regex` package is not a dependency, so the classes are built once
from `unicodedata` for the standard `re` module (tests check both agree where `regex` is
installed).
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
  eos_id: int
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

  `path` is a folder with vocab.json + merges.txt (Hugging Face layout), a
  `*.tiktoken` ranks file, or a folder holding `gpt2.tiktoken`.
  """

  def __init__(self, path: str | os.PathLike):
    path = pathlib.Path(path)
    self.path = str(path)
    if path.is_dir() and (path / "vocab.json").is_file():
      encoder, merge_ranks = _read_hf_files(path / "vocab.json", path / "merges.txt")
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


def _read_hf_files(vocab_path, merges_path) -> tuple[dict[bytes, int], dict]:
  """vocab.json / merges.txt (byte-unicode strings) -> bytes-keyed tables."""
  to_byte = {c: b for b, c in bytes_to_unicode().items()}

  def as_bytes(token: str) -> bytes:
    if token == GPT2_EOT:
      return token.encode()
    return bytes(to_byte[c] for c in token)

  with open(vocab_path, encoding="utf-8") as f:
    vocab = json.load(f)
  encoder = {as_bytes(t): int(i) for t, i in vocab.items()}
  merge_ranks = {}
  with open(merges_path, encoding="utf-8") as f:
    lines = [l.rstrip("\n") for l in f]
  lines = [l for l in lines if l and not l.startswith("#version")]
  for rank, line in enumerate(lines):
    a, b = line.split(" ")
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
# Loading, helpers


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """SentencePiece for `*.model`; GPT-2 BPE for a vocab.json/merges.txt folder, a
  `*.tiktoken` file or a folder with `gpt2.tiktoken`."""
  p = pathlib.Path(path)
  if p.is_file() and p.suffix == ".model":
    return SentencePieceTokenizer(p)
  if p.is_file() and p.suffix == ".tiktoken":
    return Gpt2BpeTokenizer(p)
  if p.is_dir() and ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()
                     or (p / "gpt2.tiktoken").is_file()):
    return Gpt2BpeTokenizer(p)
  raise ValueError(f"{path}: not a tokenizer (expected a SentencePiece .model file, a "
                   ".tiktoken file, or a folder with vocab.json + merges.txt or gpt2.tiktoken)")


def encode_text(tok: Tokenizer, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Text-encoder input: BOS ([CLS]) + ids, truncated and 0-padded to `max_len`
  (the mask, not the pad id, marks padding).

  Returns (ids int32 [max_len], mask int32 [max_len]).
  """
  ids = [tok.bos_id] + list(tok.encode(text))[:max_len - 1]
  out = np.zeros(max_len, np.int32)  # 0-padded whatever the tokenizer's pad id
  out[:len(ids)] = ids
  mask = np.zeros(max_len, np.int32)
  mask[:len(ids)] = 1
  return out, mask


def anatomy_tokens(tok: Tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The 25 leaf names (anatomy.LEAVES order) -> (ids int32 [25, L], mask int32 [25, L])."""
  pairs = [encode_text(tok, name, max_len) for name in anatomy.LEAVES]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def tokenizer_paths(data_dir, dataset_name: str, text_vocab: int,
                    decoder_vocab: int) -> tuple[pathlib.Path, pathlib.Path]:
  folder = pathlib.Path(data_dir) / dataset_name / "tokenizers"
  return (folder / f"text_{text_vocab}.model", folder / f"decoder_{decoder_vocab}.model")


def ensure_tokenizers(data_dir, dataset_name: str, train_reports: Iterable[str],
                      text_vocab: int, decoder_vocab: int) -> tuple[str, str]:
  """Trains the text and decoder SentencePiece models once, beside the data.

  Stored as <data_dir>/<dataset_name>/tokenizers/{text,decoder}_<vocab>.model and reused
  when present; `train_reports` is only read when something must be trained. The text
  model trains on lower-cased reports (it case-folds anyway).
  """
  text_path, decoder_path = tokenizer_paths(data_dir, dataset_name, text_vocab,
                                            decoder_vocab)
  reports = None
  for path, vocab, kind in ((text_path, text_vocab, "text"),
                            (decoder_path, decoder_vocab, "decoder")):
    if path.is_file():
      continue
    if reports is None:
      reports = _training_sentences(train_reports)
    texts = [r.lower() for r in reports] if kind == "text" else reports
    train_sentencepiece(texts, str(path.with_suffix("")), vocab, kind)
  return str(text_path), str(decoder_path)
