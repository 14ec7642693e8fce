"""Tokenizers: SentencePiece training (newline token, ids, determinism), GPT-2 BPE on a
handmade fixture in both file layouts, loading, anatomy tokens, training once."""
from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pytest

from input_pipeline import tokenizers as T
from helpers import MERGES, RELEASE_WP_WORDS, hf_bpe_files, release_wordpiece_json
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
  folder, vocab = hf_bpe_files(tmp_path / "gpt2")
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


def test_gpt2_bpe_tokenizer_json_matches_hf_files(tmp_path):
  """A folder with only tokenizer.json (merges as "a b" strings, or as pairs as newer
  `tokenizers` write them; <|endoftext|> an added token) gives the same ids."""
  _, vocab = hf_bpe_files(tmp_path / "files")
  base = {t: i for t, i in vocab.items() if t != T.GPT2_EOT}
  eot = [{"id": vocab[T.GPT2_EOT], "content": T.GPT2_EOT, "special": True}]
  for name, merges in (("strings", [f"{a} {b}" for a, b in MERGES]),
                       ("pairs", [list(m) for m in MERGES])):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({
        "added_tokens": eot, "model": {"type": "BPE", "vocab": base, "merges": merges}}))
    tok = T.load_tokenizer(folder)
    assert isinstance(tok, T.Gpt2BpeTokenizer)
    for text, ids in EXPECTED.items():
      assert tok.encode(text) == ids, (name, text)
    assert (tok.eos_id, tok.newline_id, tok.vocab_size) == (264, 198, 265)


def test_gpt2_bpe_tiktoken_file_matches_hf(tmp_path):
  _, vocab = hf_bpe_files(tmp_path / "gpt2")
  path = _tiktoken_fixture(tmp_path / "gpt2.tiktoken", vocab)
  tok = T.load_tokenizer(path)
  for text, ids in EXPECTED.items():
    assert tok.encode(text) == ids, text
  assert tok.eos_id == 264 and tok.newline_id == 198
  assert T.load_tokenizer(tmp_path).encode("the left lung\n") == EXPECTED["the left lung\n"]


def test_gpt2_decoder_sequence_exact(tmp_path):
  from input_pipeline import transforms
  folder, _ = hf_bpe_files(tmp_path / "gpt2")
  tok = T.load_tokenizer(folder)
  out = transforms.decoder_sequence("the left lung", "lung", True, tok, 12, 2, 8)
  assert out["dec_ids"].tolist() == [262, 198, 83, 71, 68, 259, 256, 84, 261, 198, 0, 0]
  assert out["dec_loss_mask"].tolist() == [0, 0] + [1] * 8 + [0, 0]
  assert out["dec_mask"].tolist() == [1] * 10 + [0, 0]


def test_gpt2_tokenizer_pickles(tmp_path):
  folder, _ = hf_bpe_files(tmp_path / "gpt2")
  tok = pickle.loads(pickle.dumps(T.load_tokenizer(folder)))
  assert tok.encode("the left lung\n") == EXPECTED["the left lung\n"]


def test_gpt2_pretokenizer_known_split():
  pat = T.gpt2_pretokenizer()
  assert pat.findall("Hello world's 123  \n\nfoo!! été") == [
      "Hello", " world", "'s", " 123", "  \n", "\n", "foo", "!!", " été"]
  assert pat.findall("a\nb") == ["a", "\n", "b"]
  assert pat.findall("x  y") == ["x", " ", " y"]
  assert pat.findall("end  ") == ["end", "  "]


# GPT-2's own pre-tokenisation pattern, for the `regex` package.
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"""
                r"""\s+(?!\S)|\s+""")


def test_gpt2_pretokenizer_matches_regex_package():
  regex = pytest.importorskip("regex")
  ref = regex.compile(GPT2_PATTERN)
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
  assert np.all(mask[:, 0] == 1)  # no [CLS]: the first piece of the name comes first
  right = [anatomy.LEAF_INDEX[n] for n in anatomy.LEAVES if n.startswith("right ")]
  assert np.all(ids[right, 0] == tok.encode("right")[0])
  i = anatomy.LEAF_INDEX["spine"]
  spine = tok.encode("spine")
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


# --------------------------------------------------------------------------- WordPiece

WP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "(", ")", "-", "'", "/",
            "the", "left", "lung", "lower", "lobe", "is", "no", "heart", "normal",
            "pleural", "effusion", "op", "##ac", "##ity", "##s", "pneumo", "##thorax",
            "##nia", "cafe", "size", "in", "right", "3", "##cm", "x", "中", "a", "##a",
            "un", "##able", "cm", "##2", "small"]
WP_IDS = {t: i for i, t in enumerate(WP_VOCAB)}
WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wordpiece_json(path, normalizer=None, pre_tokenizer=None, post_processor=None,
                    decoder="default"):
  """A Hugging Face `tokenizers` JSON in the layout `Tokenizer.to_str()` writes."""
  if normalizer is None:
    normalizer = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                  "strip_accents": None, "lowercase": True}
  if post_processor is None:
    post_processor = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {t: {"id": t, "ids": [WP_IDS[t]], "tokens": [t]}
                           for t in ("[CLS]", "[SEP]")}}
  spec = {
      "version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [{"id": WP_IDS[t], "content": t, "single_word": False,
                        "lstrip": False, "rstrip": False, "normalized": False,
                        "special": True} for t in WP_SPECIALS],
      "normalizer": normalizer,
      "pre_tokenizer": pre_tokenizer or {"type": "BertPreTokenizer"},
      "post_processor": post_processor,
      "decoder": ({"type": "WordPiece", "prefix": "##", "cleanup": True}
                  if decoder == "default" else decoder),
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": WP_IDS},
  }
  path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
  return path


def _wordpiece_variant_json(path):
  """Sequence normaliser, Whitespace pre-tokeniser, BertProcessing, no decoder."""
  return _wordpiece_json(
      path,
      normalizer={"type": "Sequence", "normalizers": [
          {"type": "NFD"}, {"type": "Lowercase"}, {"type": "StripAccents"}]},
      pre_tokenizer={"type": "Whitespace"},
      post_processor={"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
      decoder=None)


def _w(*tokens):
  return [WP_IDS[t] for t in tokens]


UNK = WP_IDS["[UNK]"]
WP_EXPECTED = {
    "The left lung is normal.": _w("the", "left", "lung", "is", "normal", "."),
    "Opacity in the LEFT lower lobe, no effusion.": _w(
        "op", "##ac", "##ity", "in", "the", "left", "lower", "lobe", ",", "no", "effusion",
        "."),
    # ';' and 'blah' are not in the vocabulary; 'pneumox' starts with a known piece but
    # '##x' is unknown, so the whole word is [UNK].
    "No pneumothorax; blah pneumox.": _w("no", "pneumo", "##thorax") + [UNK, UNK, UNK] +
                                      _w("."),
    "pneumonias": _w("pneumo", "##nia", "##s"),
    "unable x-ray": _w("un", "##able", "x", "-") + [UNK],
    # Accents stripped (lowercase with strip_accents null), upper case folded.
    "Café (3cm)": _w("cafe", "(", "3", "##cm", ")"),
    "CAFÉ cafe\u0301": _w("cafe", "cafe"),
    # CJK ideographs are spaced out into their own words.
    "x中x": _w("x", "中", "x"),
    # Control characters are dropped, tab/newline/NBSP are whitespace.
    "left\tlung\nlobe\x00\u00a0lef\u200bt": _w("left", "lung", "lobe", "left"),
    # Added tokens in the raw text keep their ids; lower-case '[mask]' is ordinary text.
    "the [MASK] lobe": _w("the", "[MASK]", "lobe"),
    "[mask]": [UNK, UNK, UNK],
    "a" * 100: _w("a") + _w("##a") * 99,
    "a" * 101: [UNK],  # longer than max_input_chars_per_word
    "": [],
}


@pytest.fixture
def wp_path(tmp_path):
  return _wordpiece_json(tmp_path / "wordpiece.json")


def test_wordpiece_exact_ids(wp_path):
  tok = T.load_tokenizer(wp_path)
  assert isinstance(tok, T.WordPieceTokenizer)
  assert isinstance(tok, T.Tokenizer)
  for text, ids in WP_EXPECTED.items():
    assert tok.encode(text) == ids, text
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert tok.newline_id is None
  assert tok.vocab_size == len(WP_VOCAB)


def test_wordpiece_decode(wp_path):
  tok = T.load_tokenizer(wp_path)
  text = "Opacity in the LEFT lower lobe, no effusion."
  assert tok.decode(tok.encode(text)) == "opacity in the left lower lobe, no effusion."
  assert tok.decode([2] + tok.encode("Café (3cm)") + [3, 0, 0]) == "cafe ( 3cm )"
  assert tok.decode(_w("pneumo", "##nia", "##s", "is", "[MASK]")) == "pneumonias is [MASK]"
  assert tok.decode(tok.encode("No pneumothorax; x")) == "no pneumothorax [UNK] x"
  for text in ["the left lung is normal", "small right pleural effusion", "x中x"]:
    assert tok.decode(tok.encode(text)) == text.replace("中", " 中 ")


def test_wordpiece_encode_text_layout(wp_path):
  """A report is "[CLS] " + text, no [SEP], even when the vocabulary has one (SPEC 2)."""
  tok = T.load_tokenizer(wp_path)
  ids, mask = T.encode_text(tok, "The left lung", 8)
  assert ids.tolist() == [2] + _w("the", "left", "lung") + [0, 0, 0, 0]
  assert mask.tolist() == [1] * 4 + [0] * 4
  assert ids.dtype == mask.dtype == np.int32
  ids, mask = T.encode_text(tok, "The left lung is normal.", 4)
  assert ids.tolist() == [2] + _w("the", "left", "lung")
  assert mask.tolist() == [1, 1, 1, 1]
  assert T.encode_text(tok, "", 3)[0].tolist() == [2, 0, 0]
  # Without [CLS] (leaf names, grounding phrases): the text's pieces only.
  ids, mask = T.encode_text(tok, "The left lung", 4, cls=False)
  assert ids.tolist() == _w("the", "left", "lung") + [0]
  assert mask.tolist() == [1, 1, 1, 0]


def test_wordpiece_anatomy_tokens(wp_path):
  tok = T.load_tokenizer(wp_path)
  ids, mask = T.anatomy_tokens(tok, 6)
  assert ids.shape == mask.shape == (anatomy.NUM_LEAVES, 6)
  assert ids.dtype == mask.dtype == np.int32
  assert np.all(ids[mask == 0] == 0)
  for i, name in enumerate(anatomy.LEAVES):
    row = tok.encode(name)[:6]
    assert ids[i, :len(row)].tolist() == row, name
    assert mask[i].sum() == len(row)
  assert ids[anatomy.LEAF_INDEX["left lower lung zone"], :3].tolist() == _w("left", "lower", "lung")


def test_wordpiece_variant_spec(tmp_path):
  tok = T.load_tokenizer(_wordpiece_variant_json(tmp_path / "variant.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)
  assert tok.encode("Café, the LEFT lung") == _w("cafe", ",", "the", "left", "lung")
  # No handle_chinese_chars: 'x中x' is one word, 'x' then '##中' fails -> [UNK].
  assert tok.encode("x中x") == [UNK]
  # Whitespace pre-tokeniser: runs of punctuation stay together.
  assert tok.encode("lung.. ((x") == _w("lung") + [UNK, UNK] + _w("x")
  # StripAccents drops every mark, BertNormalizer only non-spacing ones.
  assert tok.encode("x\u20dd") == _w("x")
  # No decoder section: '##' continuations are still joined, no cleanup.
  assert tok.decode(tok.encode("opacity , x")) == "opacity , x"


def test_wordpiece_pickles(wp_path):
  tok = pickle.loads(pickle.dumps(T.load_tokenizer(wp_path)))
  assert tok.encode("The left lung is normal.") == WP_EXPECTED["The left lung is normal."]


def test_load_tokenizer_json_errors(tmp_path):
  bpe = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
  (tmp_path / "bpe.json").write_text(json.dumps(bpe))
  with pytest.raises(ValueError, match="model type 'BPE'.*only 'WordPiece'"):
    T.load_tokenizer(tmp_path / "bpe.json")
  (tmp_path / "other.json").write_text(json.dumps({"vocab": {"a": 0}}))
  with pytest.raises(ValueError, match="not a Hugging Face tokenizer JSON"):
    T.load_tokenizer(tmp_path / "other.json")
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(ValueError, match="not a Hugging Face tokenizer JSON"):
    T.load_tokenizer(tmp_path / "broken.json")
  spec = json.loads(_wordpiece_json(tmp_path / "wp.json").read_text(encoding="utf-8"))
  spec["pre_tokenizer"] = {"type": "Metaspace"}
  (tmp_path / "meta.json").write_text(json.dumps(spec))
  with pytest.raises(ValueError, match="unsupported pre-tokenizer"):
    T.load_tokenizer(tmp_path / "meta.json")


WP_SENTENCES = [
    "The left lung is normal.",
    "Opacity in the LEFT lower lobe, no effusion.",
    "No pneumothorax; blah pneumox.",
    "Small right pleural effusion (3cm x 2cm).",
    "CAFÉ café cafe\u0301 naïve Ångström",
    "x中x 中文 \U00020000 \U0002b820 \U0002b920",
    "left\tlung\r\nlobe\x00\u00a0lef\u200bt \x1c x \ufffd x \x85 \u2028 a\u3000a",
    "the [MASK] lobe [CLS][SEP]x [mask] [PAD]",
    "unable x-ray 3/4 a--b '' \"quoted\" it's",
    "İstanbul ΣΑΣ ß ﬁ Ⅻ ⓐb ½ ² $5 +x <y> a^b `c` |d| ~e",
    "¿qué? ¡sí! «x» §3 ©a °c a_b a…b",
    "a" * 100 + " " + "a" * 101,
    "pneumonias pneumonia pneumothoraxs heart size",
    "   leading and trailing   ",
    "",
    "\ue000private\U0010ffff \u0378 unassigned",
    "e\u0301\u0302 \u0301 x\u20dd xः",
    "ＦＵＬＬ width ａ",
    "tab\tsep,comma.period!excl?q",
    "THE  LEFT\n\nLUNG",
]


@pytest.mark.parametrize("variant", ["bert", "variant"])
def test_wordpiece_matches_hf_tokenizers(tmp_path, variant):
  tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is not installed")
  make = _wordpiece_json if variant == "bert" else _wordpiece_variant_json
  path = make(tmp_path / f"{variant}.json")
  hf = tokenizers.Tokenizer.from_file(str(path))
  tok = T.load_tokenizer(path)
  rng = np.random.default_rng(0)
  alphabet = list("ab Z9'\n\t.,-;") + [
      "é", "É", "e\u0301", "ß", "Σ", "İ", "中", "\u00a0", "\u200b", "\x00", "\x1c",
      "\ufffd", "[MASK]", "[SEP]", "$", "¿", "½", "Ⅻ", "ⓐ", "lung", "##", "op", "ac",
      "ity", "pneumo", "nia", "3cm", "\u3000", "ａ", "_", "\u0378", "\u20dd", "\u0903"]
  fuzz = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 16))))
          for _ in range(300)]
  for text in WP_SENTENCES + fuzz:
    ours = tok.encode(text)
    assert ours == hf.encode(text, add_special_tokens=False).ids, repr(text)
    assert [tok.bos_id] + ours + [tok.eos_id] == hf.encode(text).ids, repr(text)
    if variant == "bert":  # the variant has no decoder section (we still join '##')
      kept = [i for i in ours if i not in (tok.pad_id, tok.bos_id, tok.eos_id)]
      assert tok.decode(kept) == hf.decode(kept, skip_special_tokens=False), repr(text)


def test_wordpiece_matches_hf_trained_bert_json(tmp_path):
  """Vocabularies trained and saved by `tokenizers` itself (its own JSON layout): with no
  post-processor (bos/eos are then the vocabulary's [CLS]/[SEP]) and with BertProcessing."""
  tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is not installed")
  trained = tokenizers.BertWordPieceTokenizer()
  trained.train_from_iterator(REPORTS, vocab_size=120, min_frequency=1)
  plain, bert = tmp_path / "plain.json", tmp_path / "bert.json"
  trained.save(str(plain))
  cls, sep = trained.token_to_id("[CLS]"), trained.token_to_id("[SEP]")
  trained.post_processor = tokenizers.processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
  trained.save(str(bert))
  for path, specials in ((plain, False), (bert, True)):
    hf = tokenizers.Tokenizer.from_file(str(path))
    tok = T.load_tokenizer(path)
    assert isinstance(tok, T.WordPieceTokenizer)
    assert tok.vocab_size == hf.get_vocab_size()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == tuple(
        hf.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]"))
    for text in REPORTS[:6] + WP_SENTENCES:
      ids = tok.encode(text)
      assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)
      if specials:
        assert [tok.bos_id] + ids + [tok.eos_id] == hf.encode(text).ids, repr(text)
      kept = [i for i in ids if i not in (tok.pad_id, tok.bos_id, tok.eos_id)]
      assert tok.decode(ids) == hf.decode(kept, skip_special_tokens=False), repr(text)
    ids, mask = T.encode_text(tok, REPORTS[0], 64)
    assert ids[:int(mask.sum())].tolist() == [cls] + hf.encode(
        REPORTS[0], add_special_tokens=False).ids


# ------------------------------------------------------------- the release's WordPiece file

def _r(*tokens):
  return [RELEASE_WP_WORDS.index(t) for t in tokens]


def test_release_wordpiece_inputs(tmp_path):
  """Reports as "[CLS] " + text (no [SEP]: the vocabulary has none), digits split one by
  one, leaf names without [CLS]; ids written out by hand."""
  tok = T.load_tokenizer(release_wordpiece_json(tmp_path / "mimic_wordpiece.json"))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, None)
  report = "The heart is normal. No effusion, 12cm opacities."
  body = _r("the", "heart", "is", "normal", ".", "no", "effusion", ",", "1", "2", "cm",
            "opac", "##ities", ".")
  assert tok.encode(report) == body
  ids, mask = T.encode_text(tok, report, 12)
  assert ids.tolist() == [2] + body[:11] and mask.tolist() == [1] * 12
  assert tok.encode("[CLS] " + report) == [2] + body  # the release's own string
  leaf_ids, leaf_mask = T.anatomy_tokens(tok, 5)
  i = anatomy.LEAF_INDEX["right costophrenic angle"]
  assert leaf_ids[i].tolist() == _r("right", "costophrenic", "angle") + [0, 0]
  assert leaf_mask[i].tolist() == [1, 1, 1, 0, 0]
  assert tok.decode([2] + body) == "the heart is normal. no effusion, 1 2 cm opacities."
  runs = T.load_tokenizer(release_wordpiece_json(tmp_path / "runs.json", False))
  assert runs.encode("123 3") == [1] + _r("3")  # '123' is one word, not in the vocabulary


def test_release_wordpiece_matches_hf_tokenizers(tmp_path):
  tokenizers = pytest.importorskip("tokenizers", reason="`tokenizers` is not installed")
  for individual in (True, False):
    path = release_wordpiece_json(tmp_path / f"wp_{individual}.json", individual)
    hf = tokenizers.Tokenizer.from_file(str(path))
    hf.enable_truncation(max_length=16)  # as the release: truncation and padding to 100
    hf.enable_padding(length=16)
    tok = T.load_tokenizer(path)
    for text in REPORTS[:6] + WP_SENTENCES + ["12cm x 3 mm, ½ ² Ⅻ ٣4"]:
      ids, mask = T.encode_text(tok, text, 16)
      want = hf.encode("[CLS] " + text)
      assert ids.tolist() == want.ids and mask.tolist() == want.attention_mask, repr(text)
