"""Label a CSV of reports like the Stanford chexpert-labeler's label.py.

  python -m input_pipeline.label_reports --reports IN.csv --output OUT.csv
  python -m input_pipeline.label_reports --labeler chexbert \
      --chexbert_checkpoint chexbert.pth --vocab vocab.txt --reports IN.csv --output OUT.csv

IN.csv: one column, no header, one report per row (quote reports holding commas or
line breaks). OUT.csv: `Reports,No Finding,...,Support Devices`, the report as read and
each observation as 1.0 / 0.0 / -1.0, blank when not mentioned, as the original writes
(CheXbert's label.py writes the same cells).
"""
from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
from absl import app, flags

from input_pipeline import features
from input_pipeline import labeler as labeler_lib
from ssacl_jax import anatomy

REPORTS = "Reports"
_CELL = {features.POSITIVE: "1.0", features.NEGATIVE: "0.0", features.UNCERTAIN: "-1.0",
         features.NOT_MENTIONED: ""}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Flags exist only when run as a program, so importing this never clashes."""
  flags.DEFINE_string("reports", None, "Headerless one-column CSV of reports.", flag_values=fv)
  flags.DEFINE_string("output", None, "Where to write the labelled CSV.", flag_values=fv)
  flags.DEFINE_enum("labeler", labeler_lib.RULES, labeler_lib.LABELERS, "Which labeler.",
                    flag_values=fv)
  flags.DEFINE_string("rules_dir", None, "Rule directory (default: packaged chexpert_rules).",
                      flag_values=fv)
  flags.DEFINE_string("chexbert_checkpoint", "", "The user's CheXbert chexbert.pth.",
                      flag_values=fv)
  flags.DEFINE_string("vocab", "", "bert-base-uncased vocab.txt (for --labeler chexbert).",
                      flag_values=fv)
  flags.mark_flags_as_required(["reports", "output"], flag_values=fv)


def read_reports(path: str | pathlib.Path) -> list[str]:
  """Reports of a headerless CSV; blank lines are skipped as pandas does.

  A row split by an unquoted comma is joined back, so a careless file still gives one
  report per line instead of a silently truncated one.
  """
  with open(path, newline="", encoding="utf-8") as f:
    return [",".join(row) for row in csv.reader(f) if row]


def format_rows(reports: Sequence[str], labels: np.ndarray) -> list[list[str]]:
  """Header plus one row per report, cells coded like the original's output."""
  header = [REPORTS, *anatomy.PATHOLOGIES]
  return [header] + [[r, *(_CELL[int(v)] for v in row)] for r, row in zip(reports, labels)]


def write_rows(path: str | pathlib.Path, rows: Iterable[Sequence[str]]) -> None:
  """pandas.to_csv's dialect: minimal quoting and '\\n' line ends."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f, lineterminator="\n").writerows(rows)


def label_file(reports_path: str | pathlib.Path, output_path: str | pathlib.Path,
               labeler=None) -> np.ndarray:
  """Label every report of `reports_path` into `output_path` with `labeler`
  (labeler_lib.make_labeler's; None: the packaged rules); returns int8 [n, 14]."""
  labeler = labeler or labeler_lib.default_labeler()
  reports = read_reports(reports_path)
  labels = labeler.label_many(reports)
  write_rows(output_path, format_rows(reports, labels))
  return labels


def run(fv: flags.FlagValues) -> np.ndarray:
  """What the program does with its parsed flags."""
  labeler = labeler_lib.make_labeler(fv.labeler, rules_dir=fv.rules_dir,
                                     chexbert_checkpoint=fv.chexbert_checkpoint,
                                     chexbert_vocab=fv.vocab)
  labels = label_file(fv.reports, fv.output, labeler)
  print(f"labelled {len(labels)} reports with {labeler.name} -> {fv.output}")
  return labels


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run(flags.FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
