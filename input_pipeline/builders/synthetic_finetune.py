"""The synthetic radiographs as a downstream set: 14 finding labels and finding masks.

Records come from `input_pipeline.synthetic.generate_example(seed, split, index)`, the
generator behind synthetic_cxr: labels are its 14 CheXpert labels (1 = positive, anything
else 0), the mask is the union of its finding boxes. The label-fraction subsets are its
own deterministic choice: train_10pct and train_1pct hold the first 10% / 1% (at least
one) of a seeded permutation of the training indices, in index order.

  python -m input_pipeline.build --dataset synthetic_finetune --data_dir data \
      --config.train_size=2000
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import features
from input_pipeline.builders import common, downstream
from input_pipeline.builders.synthetic_cxr import SyntheticCxrConfig
from ssacl_jax import anatomy


def subset_indices(seed: int, train_size: int, fraction: float) -> np.ndarray:
  """The training indices of a label fraction, sorted (nested: 1% lies inside 10%)."""
  count = max(1, math.floor(train_size * fraction + 1e-9))
  order = np.random.default_rng([seed, 7919]).permutation(train_size)
  return np.sort(order[:count])


def split_indices(cfg: SyntheticCxrConfig) -> dict[str, tuple[str, np.ndarray]]:
  """split -> (generator split, indices)."""
  out = {"train": ("train", np.arange(cfg.train_size)),
         "validation": ("validation", np.arange(cfg.validation_size)),
         "test": ("test", np.arange(cfg.test_size))}
  for fraction, split in downstream.FRACTION_SPLITS.items():
    if split != "train":
      out[split] = ("train", subset_indices(cfg.seed, cfg.train_size, fraction))
  return out


def stored_example(seed: int, split: str, index: int, image_size: int) -> dict:
  from input_pipeline import synthetic
  ex = synthetic.generate_example(seed, split, index, image_size)
  image = np.asarray(ex["image"], np.uint8)
  mask = downstream.box_mask(ex["finding_boxes"], *image.shape[:2])
  return downstream.make_example(image, np.asarray(ex["labels"]) == 1,
                                 f"{split}/{index}", mask[..., None].astype(np.uint8) * 255)


class SyntheticFinetune(common.Builder):
  """Synthetic radiographs with 14 finding labels and finding-box masks."""
  VERSION = tfds.core.Version("1.0.0")
  SYNTHETIC = True
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [SyntheticCxrConfig(name="default")]  # the same options as synthetic_cxr
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing to download: the examples are generated."
  CLASS_NAMES = tuple(anatomy.PATHOLOGIES)

  @classmethod
  def is_segmentation(cls) -> bool:
    return True

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="synthetic_cxr's radiographs with finding labels and finding masks.",
        features=features.downstream_features(len(self.CLASS_NAMES)),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(source, indices)
            for split, (source, indices) in split_indices(self.builder_config).items()
            if len(indices)}

  def _generate_examples(self, source, indices):
    cfg = self.builder_config
    for index in indices:
      yield int(index), stored_example(cfg.seed, source, int(index), cfg.image_size)
