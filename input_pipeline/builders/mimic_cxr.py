"""MIMIC-CXR-JPG 2.x (credentialed; the user supplies the files) as a TFDS builder.

One example per image (key: study id + dicom id), frontal views by default, the official
splits, FINDINGS and IMPRESSION parsed from the free-text report, labels from the
MIMIC-CXR CheXpert csv when present and from our labeler otherwise.

Two data choices are config fields (training passes config.data.views and
config.data.report_sections): `views` (default PA, AP: frontal) and `report_sections`
(default findings, impression: the report is their concatenation). Both are recorded in
the prepared set's metadata (`builder.info.metadata`), and a non-default choice is its own
builder config, so it is prepared separately and never reuses another choice's files.

  python -m input_pipeline.build --dataset mimic_cxr --data_dir data \
      --manual_dir /path/to/mimic-cxr-jpg --config.views=PA,AP,LATERAL \
      --config.report_sections=findings
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline.builders import common
from ssacl_jax import anatomy

SPLIT_CSV = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
METADATA_CSV = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
CHEXPERT_CSV = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
# Where the study reports (pXX/pXXXXXXX/sXXXXXXXX.txt) may live, in order of preference;
# the last is MIMIC-CXR's own layout, with reports beside the study folders.
REPORT_ROOTS = ("mimic-cxr-reports/files", "reports/files", "mimic-cxr-reports", "reports",
                "files")
IMAGE_ROOT = "files"

INSTRUCTIONS = """\
MIMIC-CXR-JPG 2.x from PhysioNet (credentialed access), unpacked in one directory:
  files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg
  mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split
  mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, ..., ViewPosition
  mimic-cxr-2.0.0-chexpert.csv(.gz)   optional; without it our labeler labels the reports
  mimic-cxr-reports/files/pXX/pXXXXXXXX/sXXXXXXXX.txt   (the reports zip of MIMIC-CXR;
      a 'reports/' folder, or the .txt files beside the study folders, work too)
"""

# ------------------------------------------------------------------- report sections

_HEADER = re.compile(
    r"^[ \t]*(?:(?P<caps>[A-Z][A-Z0-9 ,&/()'\-]*[A-Z)])"
    r"|(?P<known>(?i:findings|impressions?|conclusions?)))[ \t]*:", re.M)
FINDINGS_HEADERS = ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION",
                    "FINDINGS AND IMPRESSIONS", "FINDINGS/IMPRESSION")
IMPRESSION_HEADERS = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS")


def report_sections(text: str) -> dict[str, str]:
  """Free-text report -> {HEADER: section text}; text before any header is under ''.

  A header is a line that starts (after blanks) with capitals followed by ':' (also
  'Findings:' / 'Impression:' in any case). A repeated header's texts are joined.
  Whitespace inside each section is collapsed.
  """
  sections: dict[str, list[str]] = collections.defaultdict(list)
  matches = list(_HEADER.finditer(text))
  starts = [m.start() for m in matches] + [len(text)]
  sections[""].append(text[:starts[0]])
  for m, end in zip(matches, starts[1:]):
    name = " ".join((m.group("caps") or m.group("known")).upper().split())
    sections[name].append(text[m.end():end])
  out = {k: common.clean_text(" ".join(v)) for k, v in sections.items()}
  return {k: v for k, v in out.items() if v or k}


def findings_impression(text: str) -> tuple[str, str]:
  """(findings, impression) of a report; '' for a section it does not have."""
  sections = report_sections(text)

  def first(names):
    return next((sections[n] for n in names if sections.get(n)), "")

  return first(FINDINGS_HEADERS), first(IMPRESSION_HEADERS)


# ----------------------------------------------------------------------- csv reading

_CHEXPERT_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": -2}


def chexpert_labels(row: dict[str, str]) -> np.ndarray:
  """A MIMIC CheXpert csv row (columns by name) -> int8 [14] in PATHOLOGIES order."""
  return np.array([_CHEXPERT_VALUES[(row.get(p) or "").strip()]
                   for p in anatomy.PATHOLOGIES], np.int8)


def read_chexpert(path: pathlib.Path) -> dict[str, np.ndarray]:
  rows = common.read_csv_rows(path)
  out = {}
  for i, row in enumerate(rows):
    if i == 0:
      common.require_columns(path, row.keys(), ("study_id",) + anatomy.PATHOLOGIES)
    out[row["study_id"].strip()] = chexpert_labels(row)
  return out


def read_views(path: pathlib.Path) -> dict[str, str]:
  """dicom_id -> ViewPosition (upper case, '' when blank) from the metadata csv."""
  out = {}
  for i, row in enumerate(common.read_csv_rows(path)):
    if i == 0:
      common.require_columns(path, row.keys(), ("dicom_id", "ViewPosition"))
    out[row["dicom_id"].strip()] = (row["ViewPosition"] or "").strip().upper()
  return out


@dataclasses.dataclass(frozen=True, order=True)
class ImageRecord:
  subject_id: str
  study_id: str
  dicom_id: str
  view: str

  @property
  def image_path(self) -> str:
    return f"{IMAGE_ROOT}/p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}/" \
           f"{self.dicom_id}.jpg"

  @property
  def report_path(self) -> str:
    return f"p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}.txt"


def split_records(split_csv: pathlib.Path, views_by_dicom: dict[str, str],
                  views: tuple[str, ...]) -> dict[str, list[ImageRecord]]:
  """The official splits as sorted image records, keeping only the wanted views.

  `views` empty keeps every image. Images missing from the metadata count as view ''.
  """
  wanted = {v.upper() for v in views}
  out: dict[str, list[ImageRecord]] = collections.defaultdict(list)
  for i, row in enumerate(common.read_csv_rows(split_csv)):
    if i == 0:
      common.require_columns(split_csv, row.keys(),
                             ("dicom_id", "study_id", "subject_id", "split"))
    dicom = row["dicom_id"].strip()
    view = views_by_dicom.get(dicom, "")
    if wanted and view not in wanted:
      continue
    out[common.canonical_split(row["split"])].append(ImageRecord(
        row["subject_id"].strip(), row["study_id"].strip(), dicom, view))
  return {k: sorted(v) for k, v in out.items()}


def report_root(root: pathlib.Path) -> pathlib.Path:
  """The first folder of REPORT_ROOTS that holds any study report."""
  for name in REPORT_ROOTS:
    folder = root / name
    if folder.is_dir() and next(folder.glob("p*/p*/s*.txt"), None) is not None:
      return folder
  raise FileNotFoundError(
      f"mimic_cxr: no study reports (pXX/pXXXXXXXX/sXXXXXXXX.txt) under any of "
      f"{', '.join(repr(n + '/') for n in REPORT_ROOTS)} in {root}")


# ----------------------------------------------------------------------------- builder

SECTIONS = ("findings", "impression")


@dataclasses.dataclass
class MimicCxrConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  views: tuple = ("PA", "AP")  # empty: every view
  report_sections: tuple = SECTIONS  # which of SECTIONS make up the report


def wanted_sections(config: MimicCxrConfig) -> tuple[str, ...]:
  sections = tuple(s.lower() for s in config.report_sections)
  unknown = [s for s in sections if s not in SECTIONS]
  if unknown or not sections:
    raise ValueError(f"mimic_cxr: report_sections {config.report_sections!r}: choose one or "
                     f"more of {', '.join(SECTIONS)}")
  return sections


class MimicCxr(common.Builder):
  """MIMIC-CXR-JPG images with their parsed reports and CheXpert labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "report_sections choice; views and report sections in metadata."}
  BUILDER_CONFIGS = [MimicCxrConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description="MIMIC-CXR-JPG chest radiographs with findings and impression.",
        features=features.example_features(),
        homepage="https://physionet.org/content/mimic-cxr-jpg/",
        metadata=tfds.core.MetadataDict(views=[v.upper() for v in cfg.views],
                                        report_sections=list(wanted_sections(cfg))),
    )

  def _split_generators(self, dl_manager):
    root = common.manual_root(dl_manager, self.name, INSTRUCTIONS)
    split_csv = common.find_file(root, SPLIT_CSV, "mimic_cxr split list")
    metadata_csv = common.find_file(root, METADATA_CSV, "mimic_cxr metadata (ViewPosition)")
    if not (root / IMAGE_ROOT).is_dir():
      raise FileNotFoundError(f"mimic_cxr: image folder '{IMAGE_ROOT}/' not found in {root}")
    reports = report_root(root)
    chexpert_csv = common.optional_file(root, CHEXPERT_CSV)
    labels = read_chexpert(chexpert_csv) if chexpert_csv else {}
    records = split_records(split_csv, read_views(metadata_csv),
                            tuple(self.builder_config.views))
    return {split: self._generate_examples(split, recs, root, reports, labels)
            for split, recs in records.items() if recs}

  def _generate_examples(self, split, records, root, reports, labels):
    skips = common.SkipCounter(self.name, split)
    keep = [s in wanted_sections(self.builder_config) for s in SECTIONS]
    no_text = 0
    study, sections = None, None
    for rec in records:
      if rec.study_id != study:  # records are sorted: each report is read once
        study, sections = rec.study_id, self._study_text(reports / rec.report_path)
        if sections is not None:
          sections = tuple(text if k else "" for text, k in zip(sections, keep))
      if sections is None or not any(sections):
        no_text += 1
        continue
      image = common.read_png(root / rec.image_path, self.builder_config.image_size, skips)
      if image is None:
        continue
      findings, impression = sections
      study_labels = labels.get(rec.study_id)
      if study_labels is None:
        study_labels = _label(features.join_report(findings, impression))
      yield f"{rec.study_id}_{rec.dicom_id}", common.make_example(
          image, findings=findings, impression=impression, labels=study_labels,
          study_id=rec.study_id, view=rec.view)
    skips.summary()
    if no_text:
      logging.warning("mimic_cxr/%s: %d image(s) skipped: report missing or without "
                      "the chosen sections (%s)", split, no_text,
                      ", ".join(wanted_sections(self.builder_config)))

  @staticmethod
  def _study_text(path: pathlib.Path) -> tuple[str, str] | None:
    try:
      return findings_impression(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
      return None


def _label(report: str) -> np.ndarray:
  from input_pipeline import labeler
  return labeler.default_labeler().label(report)
