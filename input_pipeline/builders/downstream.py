"""What the downstream (fine-tuning) builders share: split lists, label fractions, RLE
masks, the stored example.

Every downstream set has the splits train, validation and test, plus the label-fraction
subsets of train, train_10pct and train_1pct (when their lists are given). Which image
goes where is the user's choice, written in plain text lists (one image id per line,
blank lines and '#' comments ignored), so published splits can be reproduced exactly:

  train_list.txt  val_list.txt  test_list.txt  [train_10pct_list.txt]  [train_1pct_list.txt]

(`train.txt`, `validation_list.txt`, ... are accepted too). A subset list must name
training images only, and test must not share an image with train or validation.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from input_pipeline import features
from input_pipeline.builders import common

# label fraction -> the training split holding that share of the training labels
FRACTION_SPLITS = {1.0: "train", 0.1: "train_10pct", 0.01: "train_1pct"}
REQUIRED_SPLITS = ("train", "validation", "test")
SUBSET_SPLITS = ("train_10pct", "train_1pct")
SPLIT_FILES = {
    "train": ("train_list.txt", "train.txt"),
    "validation": ("val_list.txt", "validation_list.txt", "val.txt", "validation.txt"),
    "test": ("test_list.txt", "test.txt"),
    "train_10pct": ("train_10pct_list.txt", "train_10pct.txt"),
    "train_1pct": ("train_1pct_list.txt", "train_1pct.txt"),
}
SPLITS_HELP = ("split lists (one image id per line): train_list.txt, val_list.txt, "
               "test_list.txt and, for the label fractions, train_10pct_list.txt and "
               "train_1pct_list.txt")


def split_for_fraction(label_fraction: float) -> str:
  """The training split of a label fraction (1.0 -> train, 0.1, 0.01)."""
  for fraction, split in FRACTION_SPLITS.items():
    if abs(float(label_fraction) - fraction) < 1e-9:
      return split
  raise ValueError(f"label fraction {label_fraction} is not one of "
                   f"{', '.join(map(str, FRACTION_SPLITS))} (the subsets the lists define)")


@dataclasses.dataclass
class DownstreamConfig(tfds.core.BuilderConfig):
  image_size: int = 256      # short side of the stored images
  splits_dir: str = ""       # where the split lists are; '' = the manual dir


# ----------------------------------------------------------------------- split lists

def read_id_list(path: pathlib.Path) -> list[str]:
  ids = []
  for line in path.read_text(encoding="utf-8").splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      ids.append(line)
  return ids


def read_split_lists(folder: pathlib.Path, builder_name: str) -> dict[str, list[str]]:
  """{split: ids} from the lists in folder; train/validation/test are required."""
  splits = {}
  for split, names in SPLIT_FILES.items():
    path = common.optional_file(folder, names)
    if path is None:
      if split in REQUIRED_SPLITS:
        raise FileNotFoundError(
            f"{builder_name}: the {split} split list is missing in {folder} (one of "
            f"{', '.join(names)}); the builder needs {SPLITS_HELP}")
      logging.warning("%s: no %s list in %s; label fraction %s will not be available",
                      builder_name, split, folder, split.split("_")[1])
      continue
    ids = read_id_list(path)
    if not ids:
      raise ValueError(f"{builder_name}: split list {path} names no image")
    if len(set(ids)) != len(ids):
      raise ValueError(f"{builder_name}: split list {path} names an image twice")
    splits[split] = ids
  train = set(splits["train"])
  for split in SUBSET_SPLITS:
    outside = [i for i in splits.get(split, ()) if i not in train]
    if outside:
      raise ValueError(f"{builder_name}: the {split} list names {len(outside)} image(s) not "
                       f"in the train list, e.g. {', '.join(outside[:3])}")
  leaked = set(splits["test"]) & (train | set(splits["validation"]))
  if leaked:
    raise ValueError(f"{builder_name}: {len(leaked)} test image(s) also appear in train or "
                     f"validation, e.g. {', '.join(sorted(leaked)[:3])}")
  return splits


def csv_rows(path: pathlib.Path, columns: Sequence[str]):
  """The rows of a labels CSV, keys and values stripped, after checking its columns."""
  for n, row in enumerate(common.read_csv_rows(path)):
    row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
    if n == 0:
      common.require_columns(path, row.keys(), columns)
    yield row


def check_ids_known(splits: dict[str, list[str]], known: Iterable[str], builder_name: str,
                    source: str) -> None:
  """Every listed id must have a row in the labels file."""
  known = set(known)
  for split, ids in splits.items():
    unknown = [i for i in ids if i not in known]
    if unknown:
      raise ValueError(f"{builder_name}: the {split} list names {len(unknown)} image(s) "
                       f"that {source} does not have, e.g. {', '.join(unknown[:3])}")


def index_files(root: pathlib.Path, suffixes: Sequence[str]) -> dict[str, pathlib.Path]:
  """File stem -> path for every file under root with one of the suffixes."""
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      stem, suffix = os.path.splitext(name)
      if suffix.lower() in suffixes:
        out.setdefault(stem, pathlib.Path(dirpath) / name)
  return out


def image_paths(splits: dict[str, list[str]], files: dict[str, pathlib.Path], key_of,
                builder_name: str, root: pathlib.Path, what: str) -> dict[str, pathlib.Path]:
  """id -> image file for every listed id; FileNotFoundError naming the missing ones."""
  wanted = {i for ids in splits.values() for i in ids}
  missing = sorted(i for i in wanted if key_of(i) not in files)
  if missing:
    raise FileNotFoundError(
        f"{builder_name}: {len(missing)} listed image(s) have no {what} under {root}, e.g. "
        f"{', '.join(missing[:3])}")
  return {i: files[key_of(i)] for i in wanted}


# ------------------------------------------------------------------------------ masks

def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
  """SIIM-ACR (Kaggle) run-length string -> bool [height, width]; '-1' is no mask.

  Pairs (offset, length), each offset counted from the end of the previous run
  ("relative" RLE), over the pixels in column-major order (down the first column, then
  the next), as the competition's mask_functions.rle2mask followed by a transpose.
  """
  flat = np.zeros(height * width, bool)
  values = rle.split()
  if values in (["-1"], []):
    return flat.reshape(height, width)
  try:
    numbers = np.asarray([int(v) for v in values], np.int64)
  except ValueError:
    raise ValueError(f"RLE has a non-integer entry: {rle[:60]!r}") from None
  if len(numbers) % 2 or (numbers < 0).any():
    raise ValueError(f"RLE must be non-negative (offset, length) pairs, got {len(numbers)} "
                     f"numbers: {rle[:60]!r}")
  position = 0
  for offset, length in numbers.reshape(-1, 2):
    position += offset
    if position + length > flat.size:
      raise ValueError(f"RLE run ends at pixel {position + length}, past the "
                       f"{height}x{width} image ({flat.size} pixels)")
    flat[position:position + length] = True
    position += length
  return flat.reshape(width, height).T


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """bool [h, w] -> uint8 [height, width, 1] (0/255), nearest neighbour."""
  img = Image.fromarray(np.asarray(mask, np.uint8) * 255)
  if img.size != (width, height):
    img = img.resize((width, height), resample=Image.Resampling.NEAREST)
  return np.asarray(img, np.uint8)[..., None]


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Union of (y0, x0, y1, x1) boxes in [0, 1] -> bool [height, width]; zero rows skipped.

  A pixel is inside when its centre is.
  """
  ys = (np.arange(height) + 0.5) / height
  xs = (np.arange(width) + 0.5) / width
  mask = np.zeros((height, width), bool)
  for y0, x0, y1, x1 in np.asarray(boxes, np.float64).reshape(-1, 4):
    if y1 > y0 and x1 > x0:
      mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
  return mask


# --------------------------------------------------------------------------- examples

def make_example(image: np.ndarray, labels, image_id: str, mask: np.ndarray | None = None
                 ) -> dict:
  """The stored downstream example; image uint8 [H, W, 1], mask uint8 of its size or None."""
  has_mask = mask is not None
  if mask is None:
    mask = np.zeros_like(image)
  if mask.shape != image.shape:
    raise ValueError(f"mask {mask.shape} and image {image.shape} differ in shape")
  return {"image": common.encode_png(image), "mask": common.encode_png(mask),
          "labels": np.asarray(labels, np.int8), "image_id": str(image_id),
          "has_mask": np.int8(has_mask)}


def read_image(path: pathlib.Path, builder_name: str) -> Image.Image:
  """The full-size grey image; ValueError naming the file when it cannot be decoded.

  Downstream builds stop on an unreadable image instead of skipping it: a test split
  that silently loses images gives figures nobody can compare.
  """
  try:
    return common.open_grey(path)
  except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file
    raise ValueError(f"{builder_name}: cannot read image {path}: {type(e).__name__}: {e}"
                     ) from e


def stored_image(img: Image.Image, image_size: int) -> np.ndarray:
  """uint8 [H, W, 1] with the short side image_size (bicubic), as every builder stores."""
  return common.resize_short_side(img, image_size, Image.Resampling.BICUBIC)


class DownstreamBuilder(common.Builder, skip_registration=True):
  """Base of the downstream builders: splits from the user's lists, one schema.

  Subclasses set CLASS_NAMES, MANUAL_DOWNLOAD_INSTRUCTIONS, DESCRIPTION and implement
  `_rows(root, splits)` -> {id: row} and `_example(id, row)` -> the stored example.
  """
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [DownstreamConfig(name="default")]
  CLASS_NAMES: tuple[str, ...] = ()
  DESCRIPTION = ""

  @classmethod
  def is_segmentation(cls) -> bool:
    return False

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=features.downstream_features(len(self.CLASS_NAMES)),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    root = common.manual_root(dl_manager, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    cfg = self.builder_config
    splits_dir = pathlib.Path(cfg.splits_dir) if cfg.splits_dir else root
    splits = read_split_lists(splits_dir, self.name)
    rows = self._rows(root, splits)
    return {split: self._generate_examples(ids, rows) for split, ids in splits.items()}

  def _generate_examples(self, ids, rows):
    for image_id in ids:
      yield image_id, self._example(image_id, rows[image_id])

  def image_files(self, root, splits, known, labels_file: pathlib.Path, suffixes,
                  key_of=str) -> dict[str, pathlib.Path]:
    """id -> image file of every listed id, each checked against the labels file's ids
    (`known`) and looked up by key_of(id) among the files under root with the suffixes."""
    check_ids_known(splits, known, self.name, labels_file.name)
    files = index_files(root, suffixes)
    return image_paths(splits, files, key_of, self.name, root,
                       f"{'/'.join(s.lstrip('.').upper() for s in suffixes)} file")

  def read(self, path: pathlib.Path) -> tuple[Image.Image, np.ndarray]:
    """(full-size grey image, the stored image uint8 [H, W, 1])."""
    img = read_image(path, self.name)
    return img, stored_image(img, self.builder_config.image_size)

  def _rows(self, root: pathlib.Path, splits: dict[str, list[str]]) -> dict:
    """Each data set's builder: id -> its labels row (read and checked from its files)."""
    raise NotImplementedError(f"{type(self).__name__} must define _rows")

  def _example(self, image_id: str, row) -> dict:
    """Each data set's builder: one record of features.downstream_features."""
    raise NotImplementedError(f"{type(self).__name__} must define _example")
