"""SentencePiece models: loading, training, and the trained pair kept beside the data.

Ids are fixed: pad 0, unk 1, bos 2, eos 3 (the decoder kind adds '\n' as id 4). The text
kind case-folds (normalisation 'nmt_nfkc_cf'), because the contrastive text, the anatomy
names and grounding phrases are all matched lower-case; the decoder kind keeps the
newline and spacing (identity normalisation), since generation stops at the newline and
every training target ends with it.
"""
from __future__ import annotations

import io
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

from input_pipeline.tokenizers.base import Tokenizer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE = "\n"


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
