"""What every tokenizer provides, the pipeline's pair of them, and the text encoder's inputs.

Text-encoder inputs are built as the release builds them (SPEC 2): a report or prompt is
"[CLS] " + text with no [SEP] (`encode_text`); a leaf name or grounding phrase has no
[CLS] (`encode_text(..., cls=False)`), so the pooler reads its first piece.
"""
from __future__ import annotations

import threading

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ssacl_jax import anatomy


class WordCache:
  """Word -> its ids, filled by `encode_word` on a miss; bounded, and safe for Grain's
  reader threads sharing one tokenizer."""

  def __init__(self, encode_word, max_words: int = 100_000):
    self._encode_word, self._max = encode_word, max_words
    self._words: dict[str, tuple[int, ...]] = {}
    self._lock = threading.Lock()

  def __call__(self, word: str) -> tuple[int, ...]:
    ids = self._words.get(word)
    if ids is None:
      ids = tuple(self._encode_word(word))
      if len(self._words) < self._max:
        with self._lock:
          self._words[word] = ids
    return ids


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

