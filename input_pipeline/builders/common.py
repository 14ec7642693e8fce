"""What every SS-ACL data set builder shares: images, examples, configs, file checks.

Builders read a directory the user names and never download; these helpers keep their
error messages precise (which file is missing) and their images uniform (grey PNG, short
side `image_size`, aspect kept).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from input_pipeline import features

# PNG zlib level for stored images: 1 is several times faster to write than the default
# and costs only a little disk; decoding speed does not depend on it.
PNG_COMPRESS_LEVEL = 1
# Warnings naming each unreadable image stop after this many per split (then a count).
MAX_NAMED_WARNINGS = 100
SPLIT_ALIASES = {"train": "train", "val": "validation", "valid": "validation",
                 "validate": "validation", "validation": "validation", "test": "test"}


# --------------------------------------------------------------------------- builder

class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders, which read a user's directory and never download.

  `code_path = None` says there is no checksums file to look up beside the code. It also
  keeps TFDS 4.9.10 from probing the package's resource path, which needs the
  undeclared `importlib_resources` package for any builder that lives in a package.
  """
  code_path = None
  SYNTHETIC = False   # True for the generated sets: outputs then say "demo, not clinical"

  # TFDS's own wording says "Downloading", though ours read local files only.
  def _log_download_bytes(self) -> None:
    print(f"building data set {self.name} ({self.builder_config.name}) in {self.data_dir} "
          "from local files (nothing is downloaded)", flush=True)

  def _log_download_done(self) -> None:
    print(f"built data set {self.name} in {self.data_dir}", flush=True)


# ---------------------------------------------------------------------------- images

def encode_png(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
  """uint8 [H, W] or [H, W, 1] -> grey PNG bytes (TFDS stores bytes as they are)."""
  image = np.asarray(image)
  if image.ndim == 3:
    if image.shape[-1] != 1:
      raise ValueError(f"expected a grey image [H, W, 1], got shape {image.shape}")
    image = image[..., 0]
  if image.dtype != np.uint8:
    raise ValueError(f"expected uint8 pixels, got {image.dtype}")
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG", compress_level=compress_level)
  return out.getvalue()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Any-depth grey pixels -> uint8 by a min-max stretch (8-bit input is left alone).

  16-bit radiographs rarely use the full range (12 bits is common), so scaling by the
  dtype's maximum would leave them dark; the stretch is what DICOM viewers do by default.
  """
  pixels = np.asarray(pixels)
  if pixels.dtype == np.uint8:
    return pixels
  pixels = pixels.astype(np.float64)
  lo, hi = float(pixels.min()), float(pixels.max())
  if hi <= lo:
    return np.zeros(pixels.shape, np.uint8)
  return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_from_pil(img: Image.Image) -> Image.Image:
  """A PIL image of any mode -> mode 'L' (16-bit and float modes are stretched)."""
  if img.mode == "L":
    return img
  if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    return Image.fromarray(to_uint8(np.asarray(img)))
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA")
    background = Image.new("RGBA", img.size, (0, 0, 0, 255))
    img = Image.alpha_composite(background, img)
  return img.convert("L")


def _read_dicom(path: pathlib.Path) -> Image.Image:
  """DICOM -> mode 'L': VOI LUT / window applied, MONOCHROME1 inverted."""
  import pydicom
  from pydicom.pixels import apply_voi_lut
  ds = pydicom.dcmread(os.fspath(path))
  pixels = ds.pixel_array
  if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
    pixels = pixels[0]  # multi-frame: the first frame
  if pixels.ndim == 3:
    pixels = np.asarray(Image.fromarray(to_uint8(pixels)).convert("L"))
  else:
    pixels = apply_voi_lut(pixels, ds)
    pixels = to_uint8(pixels)
  if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
    pixels = 255 - pixels
  return Image.fromarray(np.ascontiguousarray(pixels))


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
  """(width, height) scaled so that min(width, height) == short_side, aspect kept."""
  if width <= height:
    return short_side, max(1, round(height * short_side / width))
  return max(1, round(width * short_side / height)), short_side


def load_grey(path: os.PathLike | str, short_side: int) -> np.ndarray:
  """Any image file (PNG/JPEG 8 or 16 bit, grey or colour, DICOM) -> uint8 [H, W, 1].

  The short side becomes `short_side` (bicubic, antialiased), aspect kept. JPEGs are
  decoded at a reduced scale first (PIL draft mode), which makes full-size MIMIC
  images several times cheaper to read. Raises on unreadable files.
  """
  img = open_grey(path, draft_size=short_side)
  return resize_short_side(img, short_side, Image.Resampling.BICUBIC)


def open_grey(path: os.PathLike | str, draft_size: int | None = None) -> Image.Image:
  """Any image file (PNG/JPEG 8 or 16 bit, grey or colour, DICOM) -> PIL mode 'L'.

  Full size, except JPEGs decoded at a reduced scale no smaller than draft_size.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() in (".dcm", ".dicom"):
    return _read_dicom(path)
  with Image.open(path) as opened:
    if opened.format == "JPEG" and draft_size:
      opened.draft("L", (draft_size, draft_size))
    opened.load()
    return _grey_from_pil(opened)


def resize_short_side(img: Image.Image, short_side: int, resample) -> np.ndarray:
  """PIL image -> uint8 [H, W, 1] with its short side `short_side`, aspect kept."""
  size = short_side_size(img.width, img.height, short_side)
  if size != img.size:
    img = img.resize(size, resample=resample)
  return np.asarray(img, np.uint8)[..., None]


class SkipCounter:
  """Counts images that could not be read in one split, warning by file name."""

  def __init__(self, builder_name: str, split: str):
    self.builder_name, self.split, self.count = builder_name, split, 0

  def skip(self, path, reason) -> None:
    self.count += 1
    if self.count <= MAX_NAMED_WARNINGS:
      logging.warning("%s/%s: skipping unreadable image %s (%s)", self.builder_name,
                      self.split, path, reason)

  def summary(self) -> None:
    if self.count:
      logging.warning("%s/%s: %d image(s) skipped as unreadable%s", self.builder_name,
                      self.split, self.count,
                      " (first %d named above)" % MAX_NAMED_WARNINGS
                      if self.count > MAX_NAMED_WARNINGS else "")


def read_png(path, short_side: int, skips: SkipCounter) -> bytes | None:
  """PNG bytes of the resized grey image, or None (counted and logged) when unreadable."""
  try:
    return encode_png(load_grey(path, short_side))
  except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
    skips.skip(path, f"{type(e).__name__}: {e}")
    return None


# -------------------------------------------------------------------------- examples

def make_example(image_png: bytes, *, findings: str, impression: str, labels,
                 study_id: str, view: str = "", prompt: str | None = None,
                 regions=None) -> dict:
  """One stored example without boxes; prompt/regions default to the labels' own."""
  findings, impression = clean_text(findings), clean_text(impression)
  ex = {
      "image": image_png,
      "report": features.join_report(findings, impression),
      "findings": findings,
      "impression": impression,
      "study_id": str(study_id),
      "view": view,
      **features.label_fields(labels),
      **features.no_boxes(),
  }
  if prompt is not None:
    ex["prompt"] = prompt
  if regions is not None:
    ex["regions"] = np.asarray(regions, np.int8)
  return ex


def clean_text(text: str | None) -> str:
  """Whitespace collapsed to single spaces; None -> ''."""
  return " ".join((text or "").split())


def hash_split(key: str, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> str:
  """'train' / 'validation' / 'test' from a stable hash of `key` (not Python's hash)."""
  import hashlib
  bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 16**8
  edges = np.cumsum(fractions) / np.sum(fractions)
  for split, edge in zip(("train", "validation", "test"), edges):
    if bucket < edge:
      return split
  return "test"


def canonical_split(name: str) -> str:
  """'val' / 'validate' -> 'validation'; raises on names that are no split."""
  key = name.strip().lower()
  if key not in SPLIT_ALIASES:
    raise ValueError(f"unknown split name {name!r}; expected one of {sorted(SPLIT_ALIASES)}")
  return SPLIT_ALIASES[key]


# ----------------------------------------------------------------------------- files

def find_file(root: pathlib.Path, names: Sequence[str], what: str) -> pathlib.Path:
  """The first of `names` under root; FileNotFoundError naming them all otherwise."""
  for name in names:
    if (root / name).exists():
      return root / name
  raise FileNotFoundError(
      f"{what}: none of {', '.join(repr(n) for n in names)} found in {root}")


def optional_file(root: pathlib.Path, names: Sequence[str]) -> pathlib.Path | None:
  for name in names:
    if (root / name).exists():
      return root / name
  return None


def read_csv_rows(path: pathlib.Path) -> Iterator[dict[str, str]]:
  """Rows of a .csv or .csv.gz as dicts (header row gives the keys)."""
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "rt", newline="", encoding="utf-8") as f:
    yield from csv.DictReader(f)


def require_columns(path: pathlib.Path, header: Iterable[str] | None,
                    needed: Sequence[str]) -> None:
  missing = [c for c in needed if c not in set(header or ())]
  if missing:
    raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; "
                     f"it has {', '.join(header or ()) or 'no header'}")


def manual_root(dl_manager, builder_name: str, instructions: str) -> pathlib.Path:
  """The user's manual_dir, or a FileNotFoundError that says what to put there."""
  try:
    return pathlib.Path(os.fspath(dl_manager.manual_dir))
  except AssertionError as e:
    # TFDS's message repeats the instructions after "Create it": keep its first sentence.
    what = str(e).split(" Create it")[0] or "no manual directory given"
    raise FileNotFoundError(
        f"{builder_name}: {what}\nThis builder never downloads; pass --manual_dir "
        f"to a directory laid out as follows.\n{instructions}") from None


# --------------------------------------------------------------------------- configs

def config_fields(config) -> dict:
  """The builder-specific fields of a config dataclass (TFDS's own fields left out)."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in base}


def coerce(default, value):
  """A command-line or keyword value -> the type of the field's default."""
  if isinstance(default, bool):
    if isinstance(value, str):
      if value.lower() in ("1", "true", "yes"):
        return True
      if value.lower() in ("0", "false", "no"):
        return False
      raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  if isinstance(default, tuple):
    if isinstance(value, str):
      return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)
  return str(value)


def config_name(changed: dict) -> str:
  """A name for a non-default config, e.g. 'image_size-64.train_size-12'.

  Only the characters TFDS accepts in a config name ([A-Za-z0-9_+-.]) appear, so
  `tfds.data_source('synthetic_cxr/image_size-64.train_size-12', ...)` finds it too.
  """
  def fmt(v):
    v = "+".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return re.sub(r"[^\w+\-]", "_", v)
  return ".".join(f"{k}-{fmt(v)}" for k, v in sorted(changed.items())) or "default"


def make_config(default_config, **options):
  """The default config when options change nothing, else a named variant of it.

  TFDS keeps each config in its own directory (data_dir/name/config/version), so the
  name must be a function of the options: building twice with the same options reuses
  the data, and different options never overwrite each other.
  """
  defaults = config_fields(default_config)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ValueError(f"unknown config field(s) {', '.join(unknown)}; "
                     f"known: {', '.join(sorted(defaults))}")
  values = {k: coerce(defaults[k], v) for k, v in options.items()}
  changed = {k: v for k, v in values.items() if v != defaults[k]}
  if not changed:
    return default_config
  return dataclasses.replace(default_config, name=config_name(changed), **changed)
