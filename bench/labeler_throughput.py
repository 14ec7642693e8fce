"""Labeler throughput on the 3,955 IU X-ray reports (findings + impression).

  python bench/labeler_throughput.py [--reports_tgz PATH] [--repeats N]

Prints one JSON line: {"reports_per_second": ..., "reports": ..., "seconds": ...}.
Single process, single thread: the number is per core. Target: >= 1000 reports/s.
"""
from __future__ import annotations

import json
import pathlib
import sys
import tarfile
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


def main(argv: list[str]) -> None:
  from absl import flags
  flags.DEFINE_string("reports_tgz", str(DEFAULT_TGZ), "IU X-ray NLMCXR_reports.tgz.")
  flags.DEFINE_integer("repeats", 1, "Passes over the reports (best one is reported).")
  flags.FLAGS(argv)
  sys.path.insert(0, str(_ROOT))
  from input_pipeline.labeler import Labeler

  reports = load_iu_reports(flags.FLAGS.reports_tgz)
  labeler = Labeler()
  best = float("inf")
  for _ in range(flags.FLAGS.repeats):
    t0 = time.perf_counter()
    labeler.label_many(reports)
    best = min(best, time.perf_counter() - t0)
  print(json.dumps({"reports_per_second": round(len(reports) / best, 1),
                    "reports": len(reports), "seconds": round(best, 3)}))


if __name__ == "__main__":
  main(sys.argv)
