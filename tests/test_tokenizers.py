"""Tokenizers: SentencePiece training (newline token, ids, determinism), GPT-2 BPE on a
handmade fixture in both file layouts, loading, anatomy tokens, training once."""
from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pytest

from input_pipeline import tokenizers as T
from ssacl_jax import anatomy

REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Left lower lobe opacity, concerning for pneumonia. No pleural effusion.",
    "Small right pleural effusion. Mild cardiomegaly.",
    "No pneumothorax. Stable left basilar atelectasis.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Interval increase in right upper lobe consolidation.",
] * 4


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory):
  d = tmp_path_factory.mktemp("sp")
  text = T.train_sentencepiece([r.lower() for r in REPORTS], str(d / "text"), 300, "text")
  dec = T.train_sentencepiece(REPORTS, str(d / "decoder"), 300, "decoder")
  return text, dec


def test_sentencepiece_decoder_newline_and_ids(sp_models):
  tok = T.load_tokenizer(sp_models[1])
  assert isinstance(tok, T.SentencePieceTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert tok.newline_id == 4  # first user-defined symbol after pad/unk/bos/eos
  ids = tok.encode("a\nb")
  assert tok.newline_id in ids
  assert tok.decode(ids) == "a\nb"
  text = "Left lower lobe opacity.\nNo effusion."
  assert tok.decode(tok.encode(text)) == text
  assert ids.count(tok.newline_id) == 1
  # Byte fallback: unseen characters survive.
  assert tok.decode(tok.encode("Ωmega ü")) == "Ωmega ü"
  assert T.UNK_ID not in tok.encode("Ωmega ü")


def test_sentencepiece_text_case_folds(sp_models):
  tok = T.load_tokenizer(sp_models[0])
  assert tok.encode("LEFT Lower Lobe") == tok.encode("left lower lobe")
  ids, mask = T.encode_text(tok, "left lower lobe", 8)
  n = 1 + len(tok.encode("left lower lobe"))
  assert ids[0] == tok.bos_id == 2
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  assert mask.tolist() == [1] * min(n, 8) + [0] * (8 - min(n, 8))
  assert np.all(ids[mask == 0] == 0)


def test_sentencepiece_training_is_deterministic(sp_models, tmp_path):
  again = T.train_sentencepiece(REPORTS, str(tmp_path / "decoder"), 300, "decoder")
  with open(again, "rb") as f1, open(sp_models[1], "rb") as f2:
    assert f1.read() == f2.read()


def test_bad_kind_and_empty_corpus(tmp_path):
  with pytest.raises(ValueError, match="kind"):
    T.train_sentencepiece(REPORTS, str(tmp_path / "x"), 300, "other")
  with pytest.raises(ValueError, match="no non-empty"):
    T.train_sentencepiece(["", "  "], str(tmp_path / "x"), 300, "decoder")


# -------------------------------------------------------------------------------- GPT-2

# A tiny byte-level BPE: the 256 byte symbols in GPT-2's order (so '\n' is 198 as in the
# real vocabulary) and 8 merges.
MERGES = [("Ġ", "l"), ("e", "f"), ("Ġl", "ef"), ("Ġlef", "t"), ("l", "u"), ("n", "g"),
          ("lu", "ng"), ("Ġ", "lung")]


def _hf_fixture(folder):
  vocab = {c: i for i, c in enumerate(T.bytes_to_unicode().values())}
  for a, b in MERGES:
    vocab[a + b] = len(vocab)
  vocab[T.GPT2_EOT] = len(vocab)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (folder / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
  return folder, vocab


def _tiktoken_fixture(path, vocab):
  to_byte = {c: b for b, c in T.bytes_to_unicode().items()}
  lines = []
  for token, rank in vocab.items():
    if token == T.GPT2_EOT:
      continue
    data = bytes(to_byte[c] for c in token)
    lines.append(f"{base64.b64encode(data).decode()} {rank}\n")
  path.write_text("".join(lines))
  return path


# "the" has no merges; " left" merges fully; " lung" merges ' l' first (rank 0), so 'lu'
# never forms and 'ng' does; "lung" alone merges 'lu', 'ng', then 'lung'.
EXPECTED = {
    "the left lung\n": [83, 71, 68, 259, 256, 84, 261, 198],
    "lung": [262],
    "left": [75, 257, 83],
}


def test_gpt2_bpe_hf_files_exact_ids(tmp_path):
  folder, vocab = _hf_fixture(tmp_path / "gpt2")
  tok = T.load_tokenizer(folder)
  assert isinstance(tok, T.Gpt2BpeTokenizer)
  for text, ids in EXPECTED.items():
    assert tok.encode(text) == ids, text
    assert tok.decode(ids) == text
  assert tok.newline_id == 198
  assert tok.pad_id == tok.eos_id == tok.bos_id == vocab[T.GPT2_EOT] == 264
  assert tok.vocab_size == 265
  assert tok.decode([264] + EXPECTED["lung"] + [264]) == "lung"
  assert tok.decode(tok.encode("Ünïcode ✓ 12 x")) == "Ünïcode ✓ 12 x"


def test_gpt2_bpe_tiktoken_file_matches_hf(tmp_path):
  _, vocab = _hf_fixture(tmp_path / "gpt2")
  path = _tiktoken_fixture(tmp_path / "gpt2.tiktoken", vocab)
  tok = T.load_tokenizer(path)
  for text, ids in EXPECTED.items():
    assert tok.encode(text) == ids, text
  assert tok.eos_id == 264 and tok.newline_id == 198
  assert T.load_tokenizer(tmp_path).encode("the left lung\n") == EXPECTED["the left lung\n"]


def test_gpt2_decoder_sequence_exact(tmp_path):
  from input_pipeline import transforms
  folder, _ = _hf_fixture(tmp_path / "gpt2")
  tok = T.load_tokenizer(folder)
  out = transforms.decoder_sequence("the left lung", "lung", True, tok, 12, 2, 8)
  assert out["dec_ids"].tolist() == [262, 198, 83, 71, 68, 259, 256, 84, 261, 198, 0, 0]
  assert out["dec_loss_mask"].tolist() == [0, 0] + [1] * 8 + [0, 0]
  assert out["dec_mask"].tolist() == [1] * 10 + [0, 0]


def test_gpt2_tokenizer_pickles(tmp_path):
  folder, _ = _hf_fixture(tmp_path / "gpt2")
  tok = pickle.loads(pickle.dumps(T.load_tokenizer(folder)))
  assert tok.encode("the left lung\n") == EXPECTED["the left lung\n"]


def test_gpt2_pretokenizer_known_split():
  pat = T.gpt2_pretokenizer()
  assert pat.findall("Hello world's 123  \n\nfoo!! été") == [
      "Hello", " world", "'s", " 123", "  \n", "\n", "foo", "!!", " été"]
  assert pat.findall("a\nb") == ["a", "\n", "b"]
  assert pat.findall("x  y") == ["x", " ", " y"]
  assert pat.findall("end  ") == ["end", "  "]


def test_gpt2_pretokenizer_matches_regex_package():
  regex = pytest.importorskip("regex")
  ref = regex.compile(T.GPT2_PATTERN)
  ours = T.gpt2_pretokenizer()
  rng = np.random.default_rng(0)
  alphabet = list("ab Z9'\n\t.,-") + ["é", "²", "Ⅻ", "一", "\u00a0", "\u2003", "ß", "Σ",
                                         "٣", "\x1c", "\u200b", "🙂", "'s", "'ll"]
  for _ in range(300):
    s = "".join(rng.choice(alphabet, size=int(rng.integers(1, 20))))
    assert ours.findall(s) == ref.findall(s), repr(s)


def test_load_tokenizer_rejects_unknown(tmp_path):
  (tmp_path / "x.txt").write_text("hi")
  with pytest.raises(ValueError, match="not a tokenizer"):
    T.load_tokenizer(tmp_path / "x.txt")


# ------------------------------------------------------------------------------ helpers


def test_anatomy_tokens(sp_models):
  tok = T.load_tokenizer(sp_models[0])
  ids, mask = T.anatomy_tokens(tok, 6)
  assert ids.shape == mask.shape == (anatomy.NUM_LEAVES, 6)
  assert ids.dtype == mask.dtype == np.int32
  assert np.all(ids[:, 0] == tok.bos_id) and np.all(mask[:, 0] == 1)
  i = anatomy.LEAF_INDEX["spine"]
  spine = [tok.bos_id] + tok.encode("spine")
  assert ids[i, :len(spine)].tolist() == spine[:6]
  assert mask[i].sum() == min(len(spine), 6)
  assert np.all(ids[mask == 0] == 0)


def test_ensure_tokenizers_trains_once(tmp_path):
  text, dec = T.ensure_tokenizers(tmp_path, "tiny", iter(REPORTS), 300, 320)
  assert text.endswith("tiny/tokenizers/text_300.model")
  assert dec.endswith("tiny/tokenizers/decoder_320.model")
  before = (open(text, "rb").read(), open(dec, "rb").read())

  def exploding():
    raise AssertionError("reports must not be read when both models exist")
    yield  # pragma: no cover

  assert T.ensure_tokenizers(tmp_path, "tiny", exploding(), 300, 320) == (text, dec)
  assert (open(text, "rb").read(), open(dec, "rb").read()) == before
  assert T.load_tokenizer(dec).newline_id is not None
  assert T.load_tokenizer(text).encode("LEFT") == T.load_tokenizer(text).encode("left")


def test_sentencepiece_pickles(sp_models):
  tok = pickle.loads(pickle.dumps(T.load_tokenizer(sp_models[1])))
  assert tok.decode(tok.encode("a\nb")) == "a\nb"
