"""CheXbert in JAX against a torch reference (transformers BertModel + the 14 linear heads),
on real IU X-ray report text, with a random-weight checkpoint written in chexbert.pth's
exact format (DataParallel 'module.' names under 'model_state_dict') at tiny BERT sizes.

The torch parts need the `convert` extra (torch, transformers) and skip without it.
"""
from __future__ import annotations

import csv
import importlib.util
import pathlib
import sys
import tarfile

import numpy as np
import pytest
from absl import flags

from input_pipeline import chexbert
from input_pipeline import label_reports
from input_pipeline import labeler as labeler_lib
from configs import common
from ssacl_jax import anatomy, config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
INIT_STD = 0.2  # wider than BERT's 0.02, so the [CLS] state (and the labels) vary by report
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=256, max_position_embeddings=512, type_vocab_size=2,
            initializer_range=INIT_STD)


def _torch():
  torch = pytest.importorskip("torch", reason="needs torch (pip install '.[convert]')")
  transformers = pytest.importorskip("transformers",
                                     reason="needs transformers (pip install '.[convert]')")
  return torch, transformers


@pytest.fixture(scope="module")
def reports(shared_data):
  """IU X-ray reports of many lengths, one past 512 pieces, and the edge cases."""
  spec = importlib.util.spec_from_file_location("labeler_throughput",
                                                REPO / "bench" / "labeler_throughput.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  iu = []
  with tarfile.open(shared_data / "iu_xray" / "NLMCXR_reports.tgz") as tar:
    for member in tar:  # the first 200 reports in archive order are plenty
      if member.isfile() and member.name.endswith(".xml") and len(iu) < 200:
        iu.append(bench.report_text(tar.extractfile(member).read()))
  iu = [r for r in iu if r]
  picked = sorted(iu[::19][:10], key=len)  # 10 reports, short to long
  return picked + [
      "", "  \n\t ", f"  {picked[3]}\n\nIMPRESSION:\n  {picked[0]}  ",
      " ".join(iu[:60]),  # longer than 512 word pieces
      "Effusión nöted; 3 cm (right) — résolved?",
      picked[5]]  # a duplicate: labelled once, returned twice


@pytest.fixture(scope="module")
def vocab(reports, tmp_path_factory):
  """A vocab.txt over the reports' words: long words split into two pieces (WordPiece
  '##'), words with digits left out ([UNK])."""
  _, transformers = _torch()
  basic = transformers.models.bert.tokenization_bert.BasicTokenizer(do_lower_case=True)
  words = {w for r in reports for w in basic.tokenize(r) if not any(c.isdigit() for c in w)}
  pieces = set()
  for w in words:
    pieces.update((w[:4], "##" + w[4:]) if len(w) > 7 else (w,))
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(SPECIALS + sorted(pieces)) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def torch_model(vocab):
  """(bert, heads, chexbert.pth path): random weights, heads widened so classes differ."""
  torch, transformers = _torch()
  torch.manual_seed(0)
  size = len(vocab.read_text(encoding="utf-8").splitlines())
  bert = transformers.BertModel(transformers.BertConfig(vocab_size=size, **TINY)).eval()
  heads = torch.nn.ModuleList([torch.nn.Linear(128, 4) for _ in range(13)] +
                              [torch.nn.Linear(128, 2)])
  with torch.no_grad():
    for h in heads:
      h.weight.normal_(0.0, 1.0)
  state = {f"module.bert.{k}": v for k, v in bert.state_dict().items()}
  state.update({f"module.linear_heads.{k}": v for k, v in heads.state_dict().items()})
  path = vocab.parent / "chexbert.pth"
  torch.save({"epoch": 3, "model_state_dict": state}, path)
  return bert, heads, path


def chexbert_reference_ids(hf_tok, report: str) -> list[int]:
  """CheXbert's bert_tokenizer.py, verbatim in behaviour."""
  text = " ".join(report.strip().replace("\n", " ").split()).strip()
  tokens = hf_tok.tokenize(text)
  if not tokens:
    return [hf_tok.cls_token_id, hf_tok.sep_token_id]
  ids = hf_tok.encode_plus(tokens)["input_ids"]
  return ids[:511] + [hf_tok.sep_token_id] if len(ids) > 512 else ids


@pytest.fixture(scope="module")
def reference_logits(reports, vocab, torch_model):
  """[n, 54]: each report alone (unpadded) through BertModel and the heads, one thread."""
  torch, transformers = _torch()
  bert, heads, _ = torch_model
  hf = transformers.BertTokenizer(str(vocab), do_lower_case=True)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # the CPU is shared; torch's thread pool only contends
  try:
    with torch.no_grad():
      out = []
      for report in reports:
        ids = torch.tensor([chexbert_reference_ids(hf, report)])
        cls = bert(ids, attention_mask=torch.ones_like(ids))[0][:, 0]
        out.append(torch.cat([h(cls) for h in heads], dim=1)[0].numpy())
  finally:
    torch.set_num_threads(threads)
  return np.stack(out)


# ------------------------------------------------------------------------- preprocessing

def test_token_ids_are_chexbert_preprocessing(reports, vocab):
  _, transformers = _torch()
  hf = transformers.BertTokenizer(str(vocab), do_lower_case=True)
  tok = chexbert.load_vocab(vocab)
  for report in reports:
    assert chexbert.token_ids(tok, report).tolist() == chexbert_reference_ids(hf, report), report
  cls_sep = [hf.cls_token_id, hf.sep_token_id]
  assert chexbert.token_ids(tok, "").tolist() == cls_sep
  assert chexbert.token_ids(tok, " \n\t ").tolist() == cls_sep
  long = reports[-3]
  assert len(hf.tokenize(long)) > 600
  ids = chexbert.token_ids(tok, long)
  assert len(ids) == 512 and ids[0] == hf.cls_token_id and ids[-1] == hf.sep_token_id
  assert hf.unk_token_id in chexbert.token_ids(tok, reports[-2]).tolist()  # '3' is unknown


# ------------------------------------------------------------------------- torch parity

def test_logits_and_labels_match_torch_reference(reports, vocab, torch_model,
                                                  reference_logits):
  _, _, path = torch_model
  want = reference_logits
  labeler = labeler_lib.make_labeler("chexbert", chexbert_checkpoint=str(path),
                                     chexbert_vocab=str(vocab), batch_size=4)
  assert labeler.batch_size == 8  # rounded up to the 8 devices the batch is split over
  assert [chexbert.bucket_length(n, 512) for n in (2, 17, 33, 47, 49, 300, 511)] == [
      16, 24, 48, 48, 64, 384, 512]
  got = labeler.logits(reports)  # two batches, padded to two length buckets
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # Labels: argmax per head (No Finding's head has 2 classes), CheXbert's class codes.
  bounds = np.cumsum([0] + [4] * 13 + [2])
  classes = np.stack([want[:, a:b].argmax(1) for a, b in zip(bounds[:-1], bounds[1:])], 1)
  codes = {0: -2, 1: 1, 2: 0, 3: -1}
  expected = np.zeros((len(reports), 14), np.int8)
  for col, name in enumerate(chexbert.CONDITIONS):
    expected[:, anatomy.PATHOLOGY_INDEX[name]] = [codes[c] for c in classes[:, col]]
  labels = labeler.label_many(reports)
  assert labels.dtype == np.int8 and labels.tolist() == expected.tolist()
  assert len({tuple(row) for row in labels.tolist()}) > 3  # the heads really vary
  assert set(labels[:, anatomy.PATHOLOGY_INDEX["No Finding"]].tolist()) <= {1, -2}


def test_label_reports_program_with_chexbert(reports, vocab, torch_model, reference_logits,
                                             tmp_path):
  """`python -m input_pipeline.label_reports --labeler chexbert ...`, in process."""
  _, _, path = torch_model
  src, out = tmp_path / "reports.csv", tmp_path / "labeled.csv"
  label_reports.write_rows(src, [[r] for r in reports[:4]])
  fv = flags.FlagValues()
  label_reports.define_flags(fv)
  fv(["label_reports", "--labeler", "chexbert", "--chexbert_checkpoint", str(path),
      "--vocab", str(vocab), "--reports", str(src), "--output", str(out)])
  labels = label_reports.run(fv)
  want = chexbert.labels_from_classes(chexbert.classes_from_logits(reference_logits[:4]))
  assert labels.tolist() == want.tolist()
  rows = label_reports.format_rows(reports[:4], want)
  with open(out, newline="", encoding="utf-8") as f:
    assert list(csv.reader(f)) == rows


# -------------------------------------------------------------------------------- errors

def test_wrong_files_are_named(vocab, torch_model, tmp_path, monkeypatch):
  torch, _ = _torch()
  _, _, path = torch_model
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint")
  with pytest.raises(chexbert.ChexbertError, match="notes.pth is not a torch checkpoint"):
    chexbert.read_state_dict(text)
  bare = tmp_path / "bare.pth"
  torch.save({"state_dict": {}, "epoch": 1}, bare)
  with pytest.raises(chexbert.ChexbertError, match=r"no 'model_state_dict' \(found \['epoch', "
                                                   r"'state_dict'\]\)"):
    chexbert.read_state_dict(bare)
  state = torch.load(path, weights_only=True)
  gone = ["module.bert.encoder.layer.1.output.dense.bias", "module.linear_heads.13.weight"]
  for name in gone:
    del state["model_state_dict"][name]
  partial = tmp_path / "partial.pth"
  torch.save(state, partial)
  with pytest.raises(chexbert.ChexbertError, match="missing 2 CheXbert tensor") as e:
    chexbert.ChexbertLabeler.from_files(partial, vocab)
  assert all(name in str(e.value) for name in gone)
  short = tmp_path / "short_vocab.txt"
  short.write_text("\n".join(vocab.read_text().splitlines()[:-5]) + "\n")
  with pytest.raises(chexbert.ChexbertError, match=r"has \d+ tokens but the checkpoint's word "
                                                   r"embedding has \d+ rows"):
    chexbert.ChexbertLabeler.from_files(path, short)
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(chexbert.ChexbertError, match=r"needs torch: pip install"):
    chexbert.read_state_dict(path)


def test_class_codes_follow_chexbert_label_py():
  """label.py: blank -> NaN (-2 here), uncertain 3 -> -1, negative 2 -> 0, positive 1."""
  assert sorted(chexbert.CONDITIONS) == sorted(anatomy.PATHOLOGIES)
  logits = np.zeros((1, chexbert.NUM_LOGITS), np.float32)
  picks = {"Cardiomegaly": 1, "Edema": 3, "Pleural Effusion": 2, "No Finding": 1}
  for name, cls in picks.items():
    logits[0, 4 * chexbert.CONDITIONS.index(name) + cls] = 1.0
  labels = chexbert.labels_from_classes(chexbert.classes_from_logits(logits))[0]
  want = {name: -2 for name in anatomy.PATHOLOGIES}
  want.update({"Cardiomegaly": 1, "Edema": -1, "Pleural Effusion": 0, "No Finding": 1})
  assert labels.tolist() == [want[name] for name in anatomy.PATHOLOGIES]


def test_eval_config_turns_chexbert_on(vocab, torch_model):
  """--config.eval.labeler=chexbert plus the two paths: evaluate's labeler, its batch split
  over the eval mesh's batch axes (here 'data' of a data x model mesh)."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from ssacl_jax.evaluators import _studies
  config = common.base_config()
  config.eval.labeler = "chexbert"
  config.eval.chexbert_checkpoint, config.eval.chexbert_vocab = str(torch_model[2]), str(vocab)
  config.eval.chexbert_batch_size = 6
  config_lib.validate(config)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  labeler = _studies.make_labeler(config.eval, NamedSharding(mesh, P("data")))
  assert labeler.name == "chexbert" and labeler.batch_size == 8
  assert _studies.make_labeler(common.base_config().eval, None).name == "rules"


def test_config_names_the_labeler_problems():
  config = common.base_config()
  config.eval.labeler = "chexpert"
  with pytest.raises(config_lib.ConfigError, match="eval.labeler 'chexpert' must be one of"):
    config_lib.validate(config)
  config.eval.labeler = "chexbert"
  with pytest.raises(config_lib.ConfigError, match="eval.chexbert_checkpoint"):
    config_lib.validate(config)
