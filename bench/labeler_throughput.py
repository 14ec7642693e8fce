"""Labeler throughput on the 3,955 IU X-ray reports (findings + impression).

  python bench/labeler_throughput.py [--reports_tgz PATH] [--repeats N]
  python bench/labeler_throughput.py --labeler chexbert [--chexbert_checkpoint chexbert.pth
      --vocab vocab.txt] [--max_reports N] [--batch_size B]

Prints one JSON line: {"reports_per_second": ..., "reports": ..., "seconds": ...}.
Rules: single process, single thread, so the number is per core. Target: >= 1000 reports/s.
CheXbert: the JAX model at full bert-base size on every local device (batch sharded); the
best of `repeats` passes after a first pass that also compiles (its time is printed as
"first_pass_seconds"). Without the user's files it times random bert-base weights and a
30,522-token vocab.txt holding the reports' words (the speed does not depend on the
values), written to a temporary folder.
"""
from __future__ import annotations

import json
import pathlib
import re
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TGZ = _ROOT.parent / "shared" / "data" / "iu_xray" / "NLMCXR_reports.tgz"


def report_text(xml_bytes: bytes) -> str:
  """FINDINGS and IMPRESSION AbstractText joined by a space (features.py's report)."""
  sections = {}
  for node in ET.fromstring(xml_bytes).iter("AbstractText"):
    sections[node.get("Label", "").upper()] = (node.text or "").strip()
  return " ".join(s for s in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""))
                  if s)


def load_iu_reports(tgz: str | pathlib.Path = DEFAULT_TGZ) -> list[str]:
  """All reports of NLMCXR_reports.tgz, in member-name order (empty ones included)."""
  out = []
  with tarfile.open(tgz) as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                     key=lambda m: m.name)
    for member in members:
      out.append(report_text(tar.extractfile(member).read()))
  return out


BERT_BASE = dict(vocab_size=30522, hidden=768, layers=12, mlp=3072, positions=512,
                 type_vocab=2)


def write_bert_base_vocab(reports: list[str], path: pathlib.Path) -> pathlib.Path:
  """A bert-base-sized vocab.txt: the specials, the reports' lower-cased words and
  punctuation, then [unusedN] up to 30,522 lines."""
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = sorted({w for r in reports for w in re.findall(r"\w+|[^\w\s]", r.lower())})
  fill = BERT_BASE["vocab_size"] - len(specials) - len(words)
  path.write_text("\n".join(specials + words + [f"[unused{i}]" for i in range(fill)]) + "\n")
  return path


def random_bert_base_labeler(reports: list[str], folder: pathlib.Path, **kwargs):
  """CheXbert at bert-base size with random weights (seed 0)."""
  import jax
  import jax.numpy as jnp
  from input_pipeline import chexbert
  arch = chexbert.Architecture(**BERT_BASE)
  tok = chexbert.load_vocab(write_bert_base_vocab(reports, folder / "vocab.txt"))
  ids = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(chexbert.Chexbert(arch).init)(jax.random.key(0), ids, ids)["params"]
  return chexbert.ChexbertLabeler(params, arch, tok, **kwargs)


def time_chexbert(reports: list[str], repeats: int, fl) -> dict:
  from input_pipeline import chexbert
  options = dict(batch_size=fl.batch_size)
  with tempfile.TemporaryDirectory() as tmp:
    if fl.chexbert_checkpoint:
      labeler = chexbert.ChexbertLabeler.from_files(fl.chexbert_checkpoint, fl.vocab, **options)
    else:
      labeler = random_bert_base_labeler(reports, pathlib.Path(tmp), **options)
    lengths = [len(chexbert.token_ids(labeler.tok, r)) for r in reports]
    t0 = time.perf_counter()
    labeler.label_many(reports)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      labeler.label_many(reports)
      best = min(best, time.perf_counter() - t0)
  import jax
  return {"first_pass_seconds": round(first, 3), "mean_word_pieces": round(
      sum(lengths) / len(lengths), 1), "batch_size": labeler.batch_size,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}, best


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("reports_tgz", str(DEFAULT_TGZ), "IU X-ray NLMCXR_reports.tgz.")
  flags.DEFINE_integer("repeats", 1, "Passes over the reports (best one is reported).")
  flags.DEFINE_enum("labeler", "rules", ["rules", "chexbert"], "Which labeler to time.")
  flags.DEFINE_string("chexbert_checkpoint", "", "chexbert.pth (default: random weights).")
  flags.DEFINE_string("vocab", "", "Its bert-base-uncased vocab.txt.")
  flags.DEFINE_integer("max_reports", 0, "Time only the first N distinct reports (0: all).")
  flags.DEFINE_integer("batch_size", 64, "CheXbert reports per batch.")
  flags.FLAGS(argv)
  fl = flags.FLAGS
  sys.path.insert(0, str(_ROOT))
  from input_pipeline.labeler import Labeler

  reports = load_iu_reports(fl.reports_tgz)
  if fl.max_reports:  # distinct, so CheXbert's de-duplication does not flatter it
    reports = list(dict.fromkeys(reports))[:fl.max_reports]
  extra = {}
  if fl.labeler == "chexbert":
    extra, best = time_chexbert(reports, fl.repeats, fl)
  else:
    labeler = Labeler()
    best = float("inf")
    for _ in range(fl.repeats):
      t0 = time.perf_counter()
      labeler.label_many(reports)
      best = min(best, time.perf_counter() - t0)
  print(json.dumps({"labeler": fl.labeler, "reports_per_second": round(len(reports) / best, 1),
                    "reports": len(reports), "seconds": round(best, 3), **extra}))


if __name__ == "__main__":
  main(sys.argv)
