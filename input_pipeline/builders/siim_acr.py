"""SIIM-ACR Pneumothorax Segmentation for fine-tuning: a pneumothorax mask per radiograph.

  python -m input_pipeline.build --dataset siim_acr --data_dir data \
      --manual_dir /path/to/siim [--config.splits_dir=/path/to/lists]
"""
from __future__ import annotations

import pathlib

import numpy as np

from input_pipeline.builders import common, downstream

CSV_NAMES = ("train-rle.csv", "stage_2_train.csv")
CLASS_NAMES = ("Pneumothorax",)

INSTRUCTIONS = f"""\
SIIM-ACR Pneumothorax Segmentation in one directory:
  train-rle.csv (or stage_2_train.csv): ImageId, EncodedPixels (the competition's
      relative, column-major run-length encoding; -1 = no pneumothorax; several rows of
      one image are united)
  the DICOMs in any folder below it (dicom-images-train/<study>/<series>/<ImageId>.dcm)
  {downstream.SPLITS_HELP}, naming images by ImageId.
"""


class SiimAcr(downstream.DownstreamBuilder):
  """SIIM-ACR radiographs (DICOM) with pneumothorax masks and a binary label."""
  CLASS_NAMES = CLASS_NAMES
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  DESCRIPTION = "SIIM-ACR Pneumothorax Segmentation radiographs with masks."

  @classmethod
  def is_segmentation(cls) -> bool:
    return True

  def _rows(self, root: pathlib.Path, splits):
    csv_path = common.find_file(root, CSV_NAMES, "siim_acr masks")
    runs: dict[str, list[str]] = {}
    for row in downstream.csv_rows(csv_path, ("ImageId", "EncodedPixels")):
      runs.setdefault(row["ImageId"], []).append(row["EncodedPixels"])
    paths = self.image_files(root, splits, runs, csv_path, (".dcm", ".dicom"))
    return {i: (path, runs[i]) for i, path in paths.items()}

  def _example(self, image_id, row):
    path, rles = row
    img, image = self.read(path)
    mask = np.zeros((img.height, img.width), bool)
    for rle in rles:
      try:
        mask |= downstream.rle_decode(rle, img.height, img.width)
      except ValueError as e:
        raise ValueError(f"siim_acr: mask of {image_id} ({path.name}): {e}") from None
    return downstream.make_example(image, [int(mask.any())], image_id,
                                   downstream.resize_mask(mask, *image.shape[:2]))
