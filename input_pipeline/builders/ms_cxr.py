"""MS-CXR phrase grounding (PhysioNet, credentialed) over MIMIC-CXR-JPG, as a TFDS builder.

MS-CXR boxes findings named by report phrases (SPEC 5). Its annotation file is COCO-style
JSON: "images" [{id, path (relative to the MIMIC-CXR-JPG root), width, height}],
"annotations" [{id, image_id, category_id, bbox [x, y, w, h] in original pixels,
label_text}], "categories" [{id, name}] (8 findings). One example per phrase (the
annotations of one image, category and label_text together), with every box of the
phrase; everything lands in one split, 'test': MS-CXR is only ever scored.

  python -m input_pipeline.build --dataset ms_cxr --data_dir data \
      --manual_dir /path/to/mimic-cxr-jpg \
      --config.annotations=/path/to/MS_CXR_Local_Alignment_v1.1.0.json

The file is read whole and checked before any image is: a missing image, a box outside
its image or an unknown category id stops the build with an error that names it.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import features
from input_pipeline.builders import common

ANNOTATION_NAMES = ("MS_CXR_Local_Alignment_v1.1.0.json", "MS_CXR_Local_Alignment_v1.0.0.json",
                    "ms_cxr.json")
SPLIT = "test"
# Annotators' boxes may overrun the border by rounding; more than this is an error.
EDGE_TOLERANCE_PX = 1.0
# Images may be stored downscaled; their aspect must still be the annotated one.
ASPECT_TOLERANCE = 0.01
MAX_NAMED_MISSING = 5

INSTRUCTIONS = """\
The MIMIC-CXR-JPG 2.x root (the folder holding files/pXX/...), passed as --manual_dir, and
the MS-CXR annotation file (MS_CXR_Local_Alignment_v1.1.0.json from PhysioNet's MS-CXR),
passed as --config.annotations=PATH or placed in the manual dir. Every image the file
names must be present (only those images are read).
"""


@dataclasses.dataclass(frozen=True)
class Phrase:
  """One grounded phrase: its image (as the file names it), finding, text and boxes."""
  image_path: str
  width: int
  height: int
  category: str
  text: str
  boxes: tuple  # of (x, y, w, h) in original pixels


# ------------------------------------------------------------------------- geometry

def normalised_box(bbox, width: int, height: int) -> np.ndarray:
  """COCO [x, y, w, h] in pixels of a width x height image -> (y0, x0, y1, x1) in [0, 1].

  Normalised coordinates are those of the schema's boxes: they stay valid for the stored
  (aspect-kept) image, and `transforms.resize_boxes` maps them to the model's input.
  """
  x, y, w, h = (float(v) for v in bbox)
  box = np.array([y / height, x / width, (y + h) / height, (x + w) / width], np.float32)
  return np.clip(box, 0.0, 1.0)


def box_problem(bbox, width: int, height: int) -> str | None:
  """Why a COCO box does not fit its image, or None when it does."""
  try:
    x, y, w, h = (float(v) for v in bbox)
  except (TypeError, ValueError):
    return f"bbox {bbox!r} is not [x, y, w, h]"
  if w <= 0 or h <= 0:
    return f"bbox {bbox!r} has no area"
  tol = EDGE_TOLERANCE_PX
  if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
    return f"bbox {bbox!r} lies outside its {width}x{height} image"
  return None


def study_id_of(image_path: str) -> str:
  """The MIMIC-CXR study of 'files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom>.jpg' ('YYYYYYYY'),
  else the path itself."""
  match = re.search(r"(?:^|/)s(\d+)/[^/]+$", image_path)
  return match.group(1) if match else image_path


# -------------------------------------------------------------------- the annotations

IMAGE_KEYS = ("id", "path", "width", "height")
ANNOTATION_KEYS = ("image_id", "category_id", "bbox", "label_text")


def read_phrases(path: pathlib.Path) -> list[Phrase]:
  """The MS-CXR file as phrases, ordered by image id then first annotation; raises
  ValueError naming the entry for a missing field, an unknown image or category id, or a
  box outside its image."""
  data = _read_json(path)
  categories = {c["id"]: c["name"] for c in data["categories"]}
  images = {im["id"]: im for im in _entries(data, "images", IMAGE_KEYS, path)}
  grouped = collections.defaultdict(list)
  for ann in _entries(data, "annotations", ANNOTATION_KEYS, path):
    where = f"ms_cxr: {path}: annotation {ann.get('id', '?')}"
    image = images.get(ann["image_id"])
    if image is None:
      raise ValueError(f"{where} names image id {ann['image_id']!r}, which is not among "
                       "the file's images")
    if ann["category_id"] not in categories:
      raise ValueError(f"{where} has unknown category id {ann['category_id']!r}; the "
                       f"file's categories are {sorted(categories.items())}")
    problem = box_problem(ann["bbox"], int(image["width"]), int(image["height"]))
    if problem:
      raise ValueError(f"{where} (image {image['path']}): {problem}")
    key = (ann["image_id"], ann["category_id"], common.clean_text(ann["label_text"]))
    grouped[key].append(ann["bbox"])
  return [Phrase(images[i]["path"], int(images[i]["width"]), int(images[i]["height"]),
                 categories[c], text, tuple(tuple(b) for b in boxes))
          for (i, c, text), boxes in sorted(grouped.items(), key=lambda kv: kv[0][0])]


def _read_json(path: pathlib.Path) -> dict:
  try:
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"ms_cxr: {path} is not JSON: {e}") from None
  missing = [k for k in ("images", "annotations", "categories") if k not in data]
  if missing:
    raise ValueError(f"ms_cxr: {path} lacks {', '.join(missing)}; expected the COCO-style "
                     "MS-CXR file with images, annotations and categories")
  return data


def _entries(data: dict, section: str, keys: tuple, path) -> list[dict]:
  """data[section], each entry checked to have `keys`."""
  for n, entry in enumerate(data[section]):
    missing = [k for k in keys if k not in entry]
    if missing:
      raise ValueError(f"ms_cxr: {path}: {section}[{n}] lacks {', '.join(missing)}")
  return data[section]


def check_images(root: pathlib.Path, phrases: list[Phrase]) -> None:
  """FileNotFoundError naming the images of `phrases` that are not under root."""
  missing = sorted({p.image_path for p in phrases if not (root / p.image_path).is_file()})
  if missing:
    named = ", ".join(missing[:MAX_NAMED_MISSING])
    more = f" and {len(missing) - MAX_NAMED_MISSING} more" if len(missing) > MAX_NAMED_MISSING else ""
    raise FileNotFoundError(f"ms_cxr: {len(missing)} image(s) named by MS-CXR are not in "
                            f"{root}: {named}{more}. --manual_dir must be the MIMIC-CXR-JPG "
                            "root that holds files/pXX/...")


def check_aspect(path: pathlib.Path, width: int, height: int) -> None:
  """ValueError when the image's aspect is not the annotated one (boxes would not fit)."""
  with Image.open(path) as img:
    w, h = img.size
  if abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
    raise ValueError(f"ms_cxr: {path} is {w}x{h} pixels, but MS-CXR annotates it as "
                     f"{width}x{height}; its boxes would not fit this image")


# ----------------------------------------------------------------------------- builder

@dataclasses.dataclass
class MsCxrConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  annotations: str = ""  # the MS-CXR JSON; '' looks for ANNOTATION_NAMES in the manual dir


class MsCxr(common.Builder):
  """MS-CXR phrases with their boxes over MIMIC-CXR-JPG images (evaluation only)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [MsCxrConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="MS-CXR: report phrases of 8 findings with their boxes on MIMIC-CXR.",
        features=features.phrase_grounding_features(),
        homepage="https://physionet.org/content/ms-cxr/",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    root = common.manual_root(dl_manager, self.name, INSTRUCTIONS)
    given = self.builder_config.annotations
    path = (pathlib.Path(given) if given
            else common.find_file(root, ANNOTATION_NAMES, "ms_cxr annotation file "
                                  "(or pass --config.annotations=PATH)"))
    if not path.is_file():
      raise FileNotFoundError(f"ms_cxr: annotation file {path} not found")
    phrases = read_phrases(path)
    check_images(root, phrases)
    return {SPLIT: self._generate_examples(root, phrases)}

  def _generate_examples(self, root, phrases):
    for index, p in enumerate(phrases):
      check_aspect(root / p.image_path, p.width, p.height)
      image = common.encode_png(common.load_grey(root / p.image_path,
                                                 self.builder_config.image_size))
      yield index, {
          "image": image, "phrase": p.text, "category": p.category,
          "boxes": np.stack([normalised_box(b, p.width, p.height) for b in p.boxes]),
          "study_id": study_id_of(p.image_path), "image_path": p.image_path,
      }
