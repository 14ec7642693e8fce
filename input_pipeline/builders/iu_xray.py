"""IU X-Ray (Open-i, Indiana University) as a TFDS builder, in either common layout.

(b) annotation.json + images/ (the R2Gen layout): {"train"|"val"|"test": [{"id",
    "report", "image_path": [...], "split"}]}; its splits are used ('val' -> validation).
(a) otherwise NLMCXR_reports.tgz (or its extracted ecgen-radiology/ folder) + NLMCXR_png/
    with <image id>.png; splits 70/10/20 by a stable hash of the report id.
One example per image; labels from our labeler on the report.

  python -m input_pipeline.build --dataset iu_xray --data_dir data --manual_dir /path/to/iu
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import tarfile
import xml.etree.ElementTree as ET

import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline.builders import common

ARCHIVE_NAMES = ("NLMCXR_reports.tgz", "ecgen-radiology")
PNG_DIR = "NLMCXR_png"
ANNOTATION = "annotation.json"
ANNOTATION_IMAGES = "images"

INSTRUCTIONS = """\
IU X-Ray (Open-i) in one directory, either layout:
  (a) NLMCXR_reports.tgz (or the extracted ecgen-radiology/ folder) and NLMCXR_png/
      holding <image id>.png (e.g. CXR1_1_IM-0001-3001.png, from NLMCXR_png.tgz);
      splits are 70/10/20 by a stable hash of the report id.
  (b) annotation.json (the R2Gen layout: {"train"|"val"|"test": [{"id", "report",
      "image_path": [...], "split"}]}) and images/ holding the image_path files;
      its splits are used. (b) wins when annotation.json is present.
The Open-i data are CC BY-NC-ND 4.0 (Indiana University).
"""

# ----------------------------------------------------------------------- Open-i XML

_VIEW_WORDS = (("LATERAL", re.compile(r"\blat(eral)?\b", re.I)),
               ("PA", re.compile(r"\bPA\b")),
               ("AP", re.compile(r"\bAP\b")),
               ("", re.compile(r"\bfrontal\b", re.I)))  # frontal: PA or AP, unknown
# Captions describe the study; these words mean it had more than one view.
_SEVERAL_VIEWS = re.compile(r"\band\b|[/&]|\b(2|two)\s*v|\bviews\b", re.I)


def caption_view(caption: str) -> str:
  """'PA' / 'AP' / 'LATERAL' when the caption names exactly one view, else ''.

  'Xray Chest PA and Lateral' or 'CHEST 2V FRONTAL/LATERAL' describe two-view studies,
  so they give '' even for a report that kept one image; 'AP portable chest' gives 'AP'.
  """
  caption = caption or ""
  if _SEVERAL_VIEWS.search(caption):
    return ""
  named = [view for view, pattern in _VIEW_WORDS if pattern.search(caption)]
  return named[0] if len(named) == 1 else ""


def parse_openi_report(xml_bytes: bytes) -> dict:
  """One Open-i XML report -> {id, findings, impression, images, view}.

  `view` is the caption's single named view, meaningful only for one-image reports
  (captions describe the study, e.g. 'PA and lateral', not each image).
  """
  root = ET.fromstring(xml_bytes)
  sections = {}
  for node in root.iter("AbstractText"):
    label = (node.get("Label") or "").strip().upper()
    sections[label] = common.clean_text("".join(node.itertext()))
  uid = root.find("uId")
  images = [img.get("id") for img in root.iter("parentImage") if img.get("id")]
  captions = [common.clean_text("".join(c.itertext())) for c in root.iter("caption")]
  view = caption_view(captions[0]) if len(images) == 1 and captions else ""
  return {
      "id": uid.get("id") if uid is not None else "",
      "findings": sections.get("FINDINGS", ""),
      "impression": sections.get("IMPRESSION", ""),
      "images": images,
      "view": view,
  }


def _report_number(report: dict) -> tuple[int, str]:
  digits = re.sub(r"\D", "", report["id"])
  return (int(digits) if digits else -1, report["id"])


def parse_openi_archive(path) -> list[dict]:
  """Every report of NLMCXR_reports.tgz (or an extracted folder of its XMLs).

  Returns dicts {id, findings, impression, images, view} sorted by report number;
  reports naming no image are kept (with images == []).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    reports = [parse_openi_report(p.read_bytes()) for p in sorted(path.rglob("*.xml"))]
  else:
    reports = []
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        if member.isfile() and member.name.endswith(".xml"):
          reports.append(parse_openi_report(tar.extractfile(member).read()))
  return sorted(reports, key=_report_number)


def openi_examples(reports: list[dict], png_dir: pathlib.Path) -> list[dict]:
  """Per-image rows {key, split, image, findings, impression, study_id, view}."""
  rows = []
  for rep in reports:
    if not (rep["findings"] or rep["impression"]):
      continue
    split = common.hash_split(rep["id"])
    for image_id in rep["images"]:
      rows.append({"key": image_id, "split": split, "image": png_dir / f"{image_id}.png",
                   "findings": rep["findings"], "impression": rep["impression"],
                   "study_id": rep["id"], "view": rep["view"]})
  return rows


# ------------------------------------------------------------------- annotation.json

def annotation_examples(annotation: pathlib.Path, image_dir: pathlib.Path) -> list[dict]:
  """Per-image rows from the R2Gen annotation.json; its top-level keys are the splits."""
  data = json.loads(annotation.read_text(encoding="utf-8"))
  rows = []
  for split_name, entries in data.items():
    split = common.canonical_split(split_name)
    for entry in entries:
      if not common.clean_text(entry.get("report")):
        continue
      for i, rel in enumerate(entry["image_path"]):
        rows.append({"key": f"{entry['id']}/{i}", "split": split, "image": image_dir / rel,
                     "findings": entry["report"], "impression": "",
                     "study_id": str(entry["id"]), "view": ""})
  return rows


def layout_rows(root: pathlib.Path) -> list[dict]:
  """The per-image rows of whichever layout the manual dir holds."""
  if (root / ANNOTATION).exists():
    images = root / ANNOTATION_IMAGES
    if not images.is_dir():
      raise FileNotFoundError(f"iu_xray: {ANNOTATION} found but its image folder "
                              f"'{ANNOTATION_IMAGES}/' is missing in {root}")
    return annotation_examples(root / ANNOTATION, images)
  archive = common.find_file(root, ARCHIVE_NAMES + (ANNOTATION,), "iu_xray reports")
  if not (root / PNG_DIR).is_dir():
    raise FileNotFoundError(f"iu_xray: image folder '{PNG_DIR}/' (<image id>.png) is "
                            f"missing in {root}")
  return openi_examples(parse_openi_archive(archive), root / PNG_DIR)


# ----------------------------------------------------------------------------- builder

@dataclasses.dataclass
class IuXrayConfig(tfds.core.BuilderConfig):
  image_size: int = 256


class IuXray(common.Builder):
  """IU X-Ray images with findings, impression and labeler labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [IuXrayConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="IU X-Ray (Open-i) chest radiographs with findings and impression.",
        features=features.example_features(),
        homepage="https://openi.nlm.nih.gov/faq",
        license="CC BY-NC-ND 4.0",
    )

  def _split_generators(self, dl_manager):
    rows = layout_rows(common.manual_root(dl_manager, self.name, INSTRUCTIONS))
    by_split: dict[str, list[dict]] = {}
    for row in rows:
      by_split.setdefault(row["split"], []).append(row)
    for split in ("train", "validation", "test"):
      if split not in by_split:
        logging.warning("iu_xray: no examples for split %s", split)
    return {s: self._generate_examples(s, r) for s, r in by_split.items()}

  def _generate_examples(self, split, rows):
    from input_pipeline import labeler
    label = labeler.default_labeler().label
    skips = common.SkipCounter(self.name, split)
    for row in rows:
      image = common.read_png(row["image"], self.builder_config.image_size, skips)
      if image is None:
        continue
      report = features.join_report(row["findings"], row["impression"])
      yield row["key"], common.make_example(
          image, findings=row["findings"], impression=row["impression"],
          labels=label(report), study_id=row["study_id"], view=row["view"])
    skips.summary()
