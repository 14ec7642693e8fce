"""Time a default-size synthetic_cxr build (2000/200/200 at 256 px) into a temp dir.

  python bench/build_synthetic.py [--config.train_size=200 ...]

Prints JSON {"seconds": ..., "examples": ..., "examples_per_second": ..., "config": ...}.
Target: under 2 minutes on one core.
"""
from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow_datasets as tfds  # noqa: E402
from absl import logging  # noqa: E402

from input_pipeline import build  # noqa: E402


def main(argv: list[str]) -> dict:
  _, options = build.split_config_args(argv)
  tfds.disable_progress_bar()
  logging.set_verbosity(logging.ERROR)
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    builder = build.build_dataset("synthetic_cxr", data_dir, **options)
    seconds = time.perf_counter() - start
    examples = sum(s.num_examples for s in builder.info.splits.values())
  return {"seconds": round(seconds, 2), "examples": examples,
          "examples_per_second": round(examples / seconds, 1),
          "config": builder.builder_config.name}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv)))
