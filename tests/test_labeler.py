"""The CheXpert-style labeler: the Stanford reference sample, the CLI, the rules, IU X-ray."""
from __future__ import annotations

import csv
import filecmp
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from input_pipeline import label_reports
from input_pipeline import labeler as labeler_lib
from ssacl_jax import anatomy

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGED = labeler_lib.DEFAULT_RULES_DIR
CELL_TO_LABEL = {"1.0": 1, "0.0": 0, "-1.0": -1, "": -2}


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.reader(f))


def _reference(rules_dir):
  """(report, int labels [14]) rows of the original labeler's labeled_reports.csv."""
  rows = _read_csv(rules_dir / "labeled_reports.csv")
  assert rows[0] == ["Reports", *anatomy.PATHOLOGIES]
  return [(r[0], [CELL_TO_LABEL[c] for c in r[1:]]) for r in rows[1:]]


def _label(text, observation):
  return int(labeler_lib.default_labeler().label(text)[anatomy.PATHOLOGY_INDEX[observation]])


# ------------------------------------------------------------ (a) the reference sample

def test_packaged_sample_matches_reference_exactly():
  reference = _reference(PACKAGED)
  assert len(reference) == 4
  labels = labeler_lib.default_labeler().label_many([r for r, _ in reference])
  assert labels.dtype == np.int8 and labels.shape == (4, 14)
  assert labels.tolist() == [want for _, want in reference]


def test_shared_sample_matches_reference_exactly(shared_data):
  rules = shared_data / "chexpert_labeler_rules"
  labeler = labeler_lib.Labeler(rules)
  for report, want in _reference(rules):
    assert labeler.label(report).tolist() == want, report


def test_packaged_rules_are_a_verbatim_copy(shared_data):
  rules = shared_data / "chexpert_labeler_rules"
  shared = sorted(p.relative_to(rules) for p in rules.rglob("*") if p.is_file())
  packaged = sorted(p.relative_to(PACKAGED) for p in PACKAGED.rglob("*") if p.is_file())
  assert shared == packaged
  _, mismatch, errors = filecmp.cmpfiles(rules, PACKAGED, [str(p) for p in shared],
                                         shallow=False)
  assert not mismatch and not errors


# ----------------------------------------------------------------- (b) the CLI round trip

def _assert_same_csv(got_path, want_path):
  got, want = _read_csv(got_path), _read_csv(want_path)
  assert len(got) == len(want)
  for i, (g, w) in enumerate(zip(got, want)):
    assert g == w, f"row {i}: {g} != {w}"


def test_cli_round_trip_matches_reference(tmp_path):
  out = tmp_path / "labeled.csv"
  subprocess.run(
      [sys.executable, "-m", "input_pipeline.label_reports",
       "--reports", str(PACKAGED / "sample_reports.csv"), "--output", str(out)],
      cwd=REPO, check=True, capture_output=True, timeout=120)
  _assert_same_csv(out, PACKAGED / "labeled_reports.csv")
  # The dialect is pandas' too (minimal quoting, '\n'): the bytes agree as well.
  assert out.read_bytes() == (PACKAGED / "labeled_reports.csv").read_bytes()


def test_label_file_on_shared_sample(shared_data, tmp_path):
  rules = shared_data / "chexpert_labeler_rules"
  out = tmp_path / "labeled.csv"
  labels = label_reports.label_file(rules / "sample_reports.csv", out,
                                    labeler_lib.Labeler(rules))
  assert labels.shape == (4, 14)
  _assert_same_csv(out, rules / "labeled_reports.csv")


def test_read_reports_keeps_multiline_reports_and_skips_blank_lines(tmp_path):
  path = tmp_path / "in.csv"
  path.write_text('"a, b.\n\nc."\n\nno effusion\n')
  assert label_reports.read_reports(path) == ["a, b.\n\nc.", "no effusion"]


# ------------------------------------------------------------------ (d) hand-written rules

@pytest.mark.parametrize("text, observation, want", [
    # negation
    ("No pleural effusion.", "Pleural Effusion", 0),
    ("There is no evidence of pneumothorax.", "Pneumothorax", 0),
    ("No pneumothorax, pleural effusion, or focal consolidation.", "Consolidation", 0),
    ("Lungs are clear without focal airspace disease.", "Lung Opacity", 0),
    ("The heart is normal in size.", "Cardiomegaly", 0),
    ("Normal heart size.", "Cardiomegaly", 0),
    ("Heart size, mediastinal contour, and pulmonary vascularity are within normal limits.",
     "Cardiomegaly", 0),
    ("Pneumothorax has resolved.", "Pneumothorax", 0),
    ("Pneumothorax is not seen.", "Pneumothorax", 0),
    ("The right chest tube has been removed.", "Support Devices", 0),
    # uncertainty
    ("Possible pneumonia.", "Pneumonia", -1),
    ("Cannot exclude pneumothorax.", "Pneumothorax", -1),
    ("A small pneumothorax cannot be excluded.", "Pneumothorax", -1),
    ("Opacity which may represent atelectasis.", "Atelectasis", -1),
    ("Atelectasis versus pneumonia.", "Pneumonia", -1),
    ("Scarring or atelectasis at the left base.", "Atelectasis", -1),
    ("Pneumothorax is not clearly seen.", "Pneumothorax", -1),
    ("No new consolidation.", "Consolidation", -1),  # pre-negation uncertainty
    ("Stable cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", -1),
    ("Mild pulmonary vascular congestion.", "Edema", -1),
    ("Findings consistent with CHF.", "Cardiomegaly", -1),  # the chf exception
    # positive
    ("Large right pleural effusion.", "Pleural Effusion", 1),
    ("Stable mild cardiomegaly.", "Cardiomegaly", 1),
    ("Heart size is enlarged, pulmonary vascularity normal.", "Cardiomegaly", 1),
    ("There is no pneumothorax and there is a small left pleural effusion.",
     "Pleural Effusion", 1),
    ("No change in mild cardiomegaly.", "Cardiomegaly", 1),
    ("Opacity which may represent atelectasis.", "Lung Opacity", 1),
    ("Right PICC line in place.", "Support Devices", 1),
    ("Bibasilar airspace disease, possibly atelectasis.", "Lung Opacity", 1),
    ("Bibasilar airspace disease, possibly atelectasis.", "Atelectasis", -1),
    ("A 9 mm nodule, not seen on prior exams.", "Lung Lesion", 1),
    # unmentions: these must not count as the observation at all
    ("Small pericardial effusion.", "Pleural Effusion", -2),
    ("Calcified nodule in the left upper lobe.", "Lung Lesion", -2),
    ("Massive hiatal hernia.", "Lung Lesion", -2),
    ("Pacemaker leads project over the heart.", "Cardiomegaly", -2),
    ("Granuloma over the mediastinal silhouette.", "Enlarged Cardiomediastinum", -2),
    # ... but, as in the original, '_mediastinum' makes the positional unmention
    # 'in the left  mediastinum' (two spaces), which never matches
    ("Clips in the left mediastinum.", "Enlarged Cardiomediastinum", 1),
    # not mentioned
    ("The lungs are clear.", "Pneumothorax", -2),
    ("", "Edema", -2),
])
def test_rule(text, observation, want):
  assert _label(text, observation) == want


@pytest.mark.parametrize("text, want", [
    ("Heart size normal. Lungs are clear. No effusion.", 1),
    ("Normal chest.", 1),
    ("", 1),
    ("Right PICC line in place. Lungs are clear.", 1),  # devices do not count
    ("Possible pneumonia.", -2),                        # uncertain counts
    ("Calcified granuloma.", -2),                        # no_finding.txt phrases count
    ("No emphysema.", 1),                                # ... unless negated
])
def test_no_finding_rule(text, want):
  assert _label(text, "No Finding") == want


def test_no_finding_is_never_negative_or_uncertain():
  labels = labeler_lib.default_labeler().label_many(
      ["Large effusion.", "No effusion.", "Possible edema."])
  assert labels[:, anatomy.PATHOLOGY_INDEX["No Finding"]].tolist() == [-2, 1, -2]


@pytest.mark.parametrize("labels, want", [
    ([0], 0), ([1, 1], 1), ([0, -1], -1), ([0, 1], 1), ([-1, 1], 1), ([-1, -1], -1),
    ([0, -1, 1], -1),  # the original checks '0 and -1' first
])
def test_aggregation_matches_original_case_order(labels, want):
  out = labeler_lib.aggregate(("Edema", "edema", v) for v in labels)
  assert out[anatomy.PATHOLOGY_INDEX["Edema"]] == want


def test_clean_report_mirrors_original_loader():
  assert labeler_lib.clean_report("Heart/lungs: OK..  No  edema and/or\nPNA,stable.") == (
      "heart or lungs: ok. no edema or pna, stable.")


def test_mentions_match_substrings_like_the_original():
  found = labeler_lib.default_labeler().mentions("Bibasilar atelectasis.")
  assert [(m.category, m.text) for m, _, _ in found] == [("Atelectasis", "atelecta")]


def test_label_many_shapes_and_cached_default():
  assert labeler_lib.default_labeler() is labeler_lib.default_labeler()
  empty = labeler_lib.default_labeler().label_many([])
  assert empty.shape == (0, 14) and empty.dtype == np.int8


def test_unknown_phrase_file_is_rejected(tmp_path):
  for kind in ("mention", "unmention"):
    (tmp_path / "phrases" / kind).mkdir(parents=True)
  (tmp_path / "phrases" / "mention" / "lung_cancer.txt").write_text("cancer\n")
  with pytest.raises(ValueError, match="lung_cancer"):
    labeler_lib.Labeler(tmp_path)


# ------------------------------------------------------------------------- (e) IU X-ray

def _bench_module():
  spec = importlib.util.spec_from_file_location(
      "labeler_throughput", REPO / "bench" / "labeler_throughput.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_iu_xray_reports_label_plausibly(shared_data):
  reports = _bench_module().load_iu_reports(shared_data / "iu_xray" / "NLMCXR_reports.tgz")
  assert len(reports) == 3955
  labels = labeler_lib.default_labeler().label_many(reports)
  assert labels.shape == (3955, 14) and labels.dtype == np.int8
  assert set(np.unique(labels)) <= {-2, -1, 0, 1}

  def rate(name, value):
    return float(np.mean(labels[:, anatomy.PATHOLOGY_INDEX[name]] == value))

  assert rate("No Finding", 1) >= 0.30
  assert rate("Cardiomegaly", 1) > 0
  # IU reports mostly rule findings out: negatives dominate the classic observations.
  for name in ("Pneumothorax", "Pleural Effusion", "Consolidation"):
    assert rate(name, 0) > 5 * rate(name, 1), name
  for name in anatomy.FIVE_PATHOLOGIES:
    assert rate(name, 1) > 0, name
