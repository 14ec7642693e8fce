"""NIH ChestX-ray14 for fine-tuning: 14 multi-label findings from Data_Entry_2017.csv.

  python -m input_pipeline.build --dataset nih_cxr14 --data_dir data \
      --manual_dir /path/to/nih [--config.splits_dir=/path/to/lists]
"""
from __future__ import annotations

import pathlib

import numpy as np

from input_pipeline.builders import common, downstream

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
CLASS_NAMES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
               "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
               "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"

INSTRUCTIONS = f"""\
NIH ChestX-ray14 in one directory:
  Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv): 'Image Index', 'Finding Labels'
  the PNGs in any folders below it (images_001/images/00000001_000.png, ...)
  {downstream.SPLITS_HELP}, naming images by 'Image Index' (the official test_list.txt
  serves as the test list; the train/val split of train_val_list.txt is yours to give).
"""


def parse_labels(text: str, where: str) -> np.ndarray:
  """'Cardiomegaly|Effusion' -> int8 [14]; 'No Finding' -> zeros."""
  labels = np.zeros(len(CLASS_NAMES), np.int8)
  for name in (n.strip() for n in text.split("|")):
    if name == NO_FINDING:
      continue
    if name not in CLASS_NAMES:
      raise ValueError(f"nih_cxr14: {where}: unknown finding {name!r}; known: "
                       f"{', '.join(CLASS_NAMES)}, {NO_FINDING}")
    labels[CLASS_NAMES.index(name)] = 1
  return labels


class NihCxr14(downstream.DownstreamBuilder):
  """NIH ChestX-ray14 frontal radiographs with the 14 text-mined finding labels."""
  CLASS_NAMES = CLASS_NAMES
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  DESCRIPTION = "NIH ChestX-ray14 with 14 multi-label findings."

  def _rows(self, root: pathlib.Path, splits):
    csv_path = common.find_file(root, CSV_NAMES, "nih_cxr14 labels")
    labels = {}
    for row in downstream.csv_rows(csv_path, ("Image Index", "Finding Labels")):
      image_id = row["Image Index"]
      labels[image_id] = parse_labels(row["Finding Labels"], f"{csv_path.name} {image_id}")
    paths = self.image_files(root, splits, labels, csv_path, (".png",),
                             lambda i: pathlib.Path(i).stem)
    return {i: (path, labels[i]) for i, path in paths.items()}

  def _example(self, image_id, row):
    path, labels = row
    return downstream.make_example(self.read(path)[1], labels, image_id)
