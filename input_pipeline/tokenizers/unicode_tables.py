"""Unicode character classes and `str.translate` tables, built from `unicodedata`.

They stand in for the `regex` package (GPT-2's \\p{L} / \\p{N} / \\s) and for the
character classes of Hugging Face `tokenizers` (Rust), which are not dependencies.
"""
from __future__ import annotations

import sys
import unicodedata

# Unicode White_Space, which is what `regex` means by \s.
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
               "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def class_ranges(predicate) -> str:
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


# BertNormalizer's CJK ideograph blocks (as in Hugging Face `tokenizers`); each such
# character is surrounded by spaces so that it becomes its own word.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Symbols (So) that are Other_Alphabetic, hence word characters for Rust's regex \w.
_ALPHABETIC_SYMBOLS = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                       (0x1F170, 0x1F189))
WHITE_SPACE_SET = frozenset(WHITE_SPACE)


def _in_ranges(cp: int, ranges) -> bool:
  return any(a <= cp <= b for a, b in ranges)


def _is_control(c: str) -> bool:
  """`tokenizers`' is_control: Cc, Cf, Co or Cs, except tab, newline and CR (which count
  as whitespace). Unassigned (Cn) characters are kept, as `tokenizers` keeps them."""
  return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs")


def is_bert_punctuation(c: str) -> bool:
  """ASCII punctuation (which includes symbols such as $ + < = > ^ ` | ~) or any P*."""
  cp = ord(c)
  return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or
          unicodedata.category(c)[0] == "P")


def is_word_char(c: str) -> bool:
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
  return " " if c in WHITE_SPACE_SET else c


CLEAN_TABLE = _CharTable(_clean)
CJK_TABLE = _CharTable(lambda c: f" {c} " if _in_ranges(ord(c), _CJK_RANGES) else c)
_NONSPACING_MARK_TABLE = _CharTable(lambda c: None if unicodedata.category(c) == "Mn" else c)
MARK_TABLE = _CharTable(lambda c: None if unicodedata.category(c)[0] == "M" else c)
# Per character, as `tokenizers` lower-cases (no final-sigma rule, unlike str.lower()).
LOWER_TABLE = _CharTable(lambda c: c.lower())
WHITESPACE_TABLE = _CharTable(lambda c: " " if c in WHITE_SPACE_SET else c)
BERT_SPLIT_TABLE = _CharTable(
    lambda c: " " if c in WHITE_SPACE_SET else f" {c} " if is_bert_punctuation(c) else c)


def strip_accents(text: str) -> str:
  return unicodedata.normalize("NFD", text).translate(_NONSPACING_MARK_TABLE)


def is_numeric(c: str) -> bool:
  """Rust's char::is_numeric, which `tokenizers`' Digits uses: Nd, Nl or No."""
  return unicodedata.category(c) in ("Nd", "Nl", "No")
