"""The SS-ACL release's CSV layout as a TFDS builder.

One CSV per split (train.csv, val.csv or validation.csv, test.csv) with the columns
image_id, image_path, report, prompt, anatomies (a JSON list of region names), plus an
image folder that image_path is relative to. The release precomputed prompt and
anatomies; we keep both (anatomies become the `regions` vector) and label the report
with our labeler.

  python -m input_pipeline.build --dataset release_csv --data_dir data \
      --manual_dir /path/to/release --config.image_root=images
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import features
from input_pipeline.builders import common
from ssacl_jax import anatomy

SPLIT_FILES = {"train": ("train.csv",), "validation": ("val.csv", "validation.csv"),
               "test": ("test.csv",)}
COLUMNS = ("image_id", "image_path", "report", "prompt", "anatomies")

INSTRUCTIONS = """\
The release's CSV layout in one directory:
  train.csv, val.csv (or validation.csv), test.csv   (at least one of them)
      columns image_id, image_path, report, prompt, anatomies (a JSON list of region
      names, e.g. ["lungs", "mediastinum"])
  the images, at image_path relative to the directory (or to --config.image_root
      inside it); absolute image paths are used as they are.
"""


def parse_names(cell: str) -> list[str]:
  """The anatomies cell -> names: a JSON list, a Python list literal, or 'a, b'."""
  cell = (cell or "").strip()
  if not cell:
    return []
  for parse in (json.loads, ast.literal_eval):
    try:
      value = parse(cell)
    except (ValueError, SyntaxError):
      continue
    if isinstance(value, str):
      return [value]
    return [str(v) for v in value]
  return [v.strip() for v in cell.split(",") if v.strip()]


def region_of(name: str) -> tuple[str, ...]:
  """The top-level region(s) holding an anatomy node ('right lung' -> lungs)."""
  node = " ".join(name.lower().split())
  if node == anatomy.ROOT:
    return anatomy.REGIONS
  if node not in anatomy.NODE_INDEX:
    raise ValueError(f"unknown anatomy {name!r}; regions are {', '.join(anatomy.REGIONS)}")
  while node not in anatomy.REGIONS:
    node = anatomy.PARENT_OF[node]
  return (node,)


def regions_from_names(names) -> np.ndarray:
  """Anatomy names (regions or any node below them) -> int8 [NUM_REGIONS] multi-hot."""
  return anatomy.region_vector(r for name in names for r in region_of(name))


def split_csvs(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """The split CSVs present; FileNotFoundError naming them all when there is none."""
  found = {split: common.optional_file(root, names) for split, names in SPLIT_FILES.items()}
  found = {s: p for s, p in found.items() if p is not None}
  if not found:
    names = [n for names in SPLIT_FILES.values() for n in names]
    raise FileNotFoundError(f"release_csv: none of {', '.join(names)} found in {root}")
  for split in SPLIT_FILES:
    if split not in found:
      logging.warning("release_csv: no %s in %s; split %s left out",
                      " or ".join(SPLIT_FILES[split]), root, split)
  return found


def csv_rows(path: pathlib.Path, image_root: pathlib.Path) -> list[dict]:
  """The CSV's rows with image paths resolved and anatomies parsed."""
  rows = []
  for i, row in enumerate(common.read_csv_rows(path)):
    if i == 0:
      common.require_columns(path, row.keys(), COLUMNS)
    try:
      regions = regions_from_names(parse_names(row["anatomies"]))
    except ValueError as e:
      raise ValueError(f"{path} row {i + 2}: {e}") from e
    rows.append({"key": f"{row['image_id']}#{i}", "image_id": row["image_id"].strip(),
                 "image": image_root / row["image_path"].strip(),
                 "report": row["report"], "prompt": common.clean_text(row["prompt"]),
                 "regions": regions})
  return rows


@dataclasses.dataclass
class ReleaseCsvConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  image_root: str = ""  # folder inside the manual dir that image_path is relative to


class ReleaseCsv(common.Builder):
  """Images and reports listed in the release's split CSVs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [ReleaseCsvConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Chest radiographs and reports from the release's CSV layout.",
        features=features.example_features(),
    )

  def _split_generators(self, dl_manager):
    root = common.manual_root(dl_manager, self.name, INSTRUCTIONS)
    image_root = root / self.builder_config.image_root
    if not image_root.is_dir():
      raise FileNotFoundError(f"release_csv: image root {image_root} is not a directory")
    return {split: self._generate_examples(split, csv_rows(path, image_root))
            for split, path in split_csvs(root).items()}

  def _generate_examples(self, split, rows):
    from input_pipeline import labeler
    label = labeler.default_labeler().label
    skips = common.SkipCounter(self.name, split)
    for row in rows:
      image = common.read_png(row["image"], self.builder_config.image_size, skips)
      if image is None:
        continue
      report = common.clean_text(row["report"])
      yield row["key"], common.make_example(
          image, findings=report, impression="", labels=label(report),
          study_id=row["image_id"], prompt=row["prompt"], regions=row["regions"])
    skips.summary()
