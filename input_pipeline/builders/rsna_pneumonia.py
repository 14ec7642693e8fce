"""RSNA Pneumonia Detection (stage 2) for fine-tuning: pneumonia or not, per radiograph.

  python -m input_pipeline.build --dataset rsna_pneumonia --data_dir data \
      --manual_dir /path/to/rsna [--config.splits_dir=/path/to/lists]
"""
from __future__ import annotations

import pathlib

from input_pipeline.builders import common, downstream

CSV_NAMES = ("stage_2_train_labels.csv", "stage_2_train_labels.csv.gz")
CLASS_NAMES = ("Pneumonia",)

INSTRUCTIONS = f"""\
RSNA Pneumonia Detection Challenge (stage 2) in one directory:
  stage_2_train_labels.csv: patientId, x, y, width, height, Target (a row per box; the
      image is positive when any of its rows has Target 1)
  the DICOMs in any folder below it (stage_2_train_images/<patientId>.dcm)
  {downstream.SPLITS_HELP}, naming images by patientId.
"""


class RsnaPneumonia(downstream.DownstreamBuilder):
  """RSNA Pneumonia radiographs (DICOM) with a binary pneumonia label."""
  CLASS_NAMES = CLASS_NAMES
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  DESCRIPTION = "RSNA Pneumonia Detection Challenge radiographs, pneumonia vs. not."

  def _rows(self, root: pathlib.Path, splits):
    csv_path = common.find_file(root, CSV_NAMES, "rsna_pneumonia labels")
    target = {}
    for row in downstream.csv_rows(csv_path, ("patientId", "Target")):
      pid, value = row["patientId"], row["Target"]
      if value not in ("0", "1"):
        raise ValueError(f"rsna_pneumonia: {csv_path.name}: Target of {pid} is {value!r}, "
                         "not 0 or 1")
      target[pid] = max(target.get(pid, 0), int(value))
    paths = self.image_files(root, splits, target, csv_path, (".dcm", ".dicom"))
    return {i: (path, target[i]) for i, path in paths.items()}

  def _example(self, image_id, row):
    path, target = row
    return downstream.make_example(self.read(path)[1], [target], image_id)
