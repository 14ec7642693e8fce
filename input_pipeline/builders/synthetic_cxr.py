"""The built-in synthetic chest radiograph set (SPEC section 8) as a TFDS builder.

Nothing to download: every example comes from
`input_pipeline.synthetic.generate_example(seed, split, index, image_size)`, so the set
is a pure function of its config. Shuffling is disabled, which keeps record i of a split
equal to `generate_example(seed, split, i)`.

  python -m input_pipeline.build --dataset synthetic_cxr --data_dir data \
      --config.train_size=200 --config.image_size=128
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from input_pipeline import features
from input_pipeline.builders import common

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  seed: int = 0
  train_size: int = 2000
  validation_size: int = 200
  test_size: int = 200
  image_size: int = 256


def split_sizes(config: SyntheticCxrConfig) -> dict[str, int]:
  return {s: int(getattr(config, f"{s}_size")) for s in SPLITS}


def stored_example(seed: int, split: str, index: int, image_size: int) -> dict:
  """The generator's example with its image turned into PNG bytes."""
  from input_pipeline import synthetic
  ex = dict(synthetic.generate_example(seed, split, index, image_size))
  ex["image"] = common.encode_png(ex["image"])
  return ex


class SyntheticCxr(common.Builder):
  """Deterministic synthetic frontal chest radiographs with reports, labels and boxes."""

  VERSION = tfds.core.Version("1.0.0")
  SYNTHETIC = True
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [SyntheticCxrConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing to download: the examples are generated."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Synthetic grey frontal chest radiographs with the anatomy drawn at "
                     "jittered positions, findings drawn into their regions, a report, "
                     "the 14 CheXpert labels and boxes for every anatomy leaf and finding."),
        features=features.example_features(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download or read
    return {split: self._generate_examples(split, n)
            for split, n in split_sizes(self.builder_config).items() if n > 0}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    for index in range(num_examples):
      yield index, stored_example(cfg.seed, split, index, cfg.image_size)
