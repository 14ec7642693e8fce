"""GPT-2 byte-level BPE for the report decoder, without Hugging Face or tiktoken.

The byte-to-unicode table, the pre-tokenisation regex and rank-ordered merges. It reads a
Hugging Face folder (vocab.json + merges.txt, or a BPE tokenizer.json) or a
`gpt2.tiktoken` ranks file (base64 token and rank per line, as the openai-whisper source
ships it). GPT-2 has no pad token; by convention pad = bos = eos = <|endoftext|> (50256);
the decoder's loss mask ignores pads anyway. The newline is one real token (id 198).
"""
from __future__ import annotations

import base64
import functools
import json
import os
import pathlib
import re
import unicodedata
from collections.abc import Sequence

from input_pipeline.tokenizers.base import WordCache
from input_pipeline.tokenizers.hf_json import hf_model_type
from input_pipeline.tokenizers.unicode_tables import WHITE_SPACE, class_ranges

GPT2_EOT = "<|endoftext|>"


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


@functools.cache
def gpt2_pretokenizer() -> re.Pattern:
  """GPT-2's pre-tokenisation regex for the standard `re` module.

  \\p{L} (general category L*), \\p{N} (N*) and \\s (Unicode White_Space) become
  explicit classes from this Python's `unicodedata`; otherwise the pattern is GPT-2's.
  """
  cat = unicodedata.category
  letters = class_ranges(lambda cp: cat(chr(cp))[0] == "L")
  numbers = class_ranges(lambda cp: cat(chr(cp))[0] == "N")
  space = "".join(f"\\U{ord(c):08x}" for c in WHITE_SPACE)
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
    self._encode_word = WordCache(
        lambda word: (self._encoder[p] for p in self._bpe(word.encode("utf-8"))))

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
    if hf_model_type(path) != "BPE":
      raise ValueError(f"{path}: model type {hf_model_type(path)!r}, not GPT-2's BPE")
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

