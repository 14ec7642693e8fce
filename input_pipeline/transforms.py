"""Per-example transforms of the SS-ACL input pipeline (SPEC sections 2, 3.3, 3.6, 6).

Pure numpy/PIL functions, deterministic given their arguments (randomness only through
the `np.random.Generator` passed in). `pipeline.py` composes them.

Images: whatever a record or a file holds (8/16-bit grey, RGB, RGBA, palette, DICOM)
becomes float grey in [0, 1], the way the builders make their stored PNGs (16-bit
stretched to min-max, alpha over black) (`to_grey_float`, `decode_image_bytes`); then bicubic resize
to the model size, the release's random affine (training only; nearest-neighbour), grey repeated to the
model's channels, normalised with mean 0.4978 / std 0.2449. Unreadable input raises
`BadRecord`, which the pipeline counts and skips.

Left-right flips are off by default (SPEC 6): a flipped image contradicts its report's
"left"/"right" unless the words, the leaf masks and the boxes are mirrored with it, which
`flip_example` does together.
"""
from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from input_pipeline import tokenizers
from ssacl_jax import anatomy

MEAN, STD = 0.4978, 0.2449
_LUMA = np.array([0.299, 0.587, 0.114], np.float64)  # ITU-R 601-2, as PIL's 'L'.


class BadRecord(ValueError):
  """A record that cannot be turned into a training example (bad image or report)."""


# ----------------------------------------------------------------------------------------
# Images: decoding and conversion to float grey in [0, 1]


def to_grey_float(image) -> np.ndarray:
  """Any image array -> float32 [H, W] grey in [0, 1].

  8-bit values are divided by 255. Deeper integer data (uint16, PIL's int32 'I') is
  stretched to its own min-max, as the builders do: 16-bit radiographs rarely use the
  full range (12 bits is common), so dividing by 65535 would leave them dark. bool is
  0/1; floats are taken as already in [0, 1] (clipped). Channel layouts: [H, W],
  [H, W, 1], grey+alpha [H, W, 2], RGB [H, W, 3] (601-2 luminance) and RGBA [H, W, 4];
  alpha is composited over black (opaque pixels are unchanged).
  """
  a = np.asarray(image)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  elif a.ndim == 3 and a.shape[-1] in (2, 3, 4):
    colour = a.shape[-1] >= 3
    value = _scale_to_unit(a[..., :3] if colour else a[..., :1])
    value = value @ _LUMA if colour else value[..., 0]
    if a.shape[-1] in (2, 4):
      value = value * _scale_to_unit(a[..., -1])
    return _check_grey(value)
  if a.ndim != 2:
    raise BadRecord(f"image has shape {a.shape}; expected [H, W], [H, W, 1|2|3|4]")
  return _check_grey(_scale_to_unit(a))


def _scale_to_unit(a: np.ndarray) -> np.ndarray:
  if a.dtype == np.uint8:
    return a.astype(np.float64) / 255.0
  if a.dtype == np.bool_:
    return a.astype(np.float64)
  if np.issubdtype(a.dtype, np.integer):
    return _min_max(a.astype(np.float64))
  if np.issubdtype(a.dtype, np.floating):
    return np.clip(a.astype(np.float64), 0.0, 1.0)
  raise BadRecord(f"image has unsupported dtype {a.dtype}")


def _min_max(a: np.ndarray) -> np.ndarray:
  lo, hi = float(np.min(a)), float(np.max(a))
  if hi <= lo:
    return np.zeros_like(a, np.float64)
  return (a - lo) / (hi - lo)


def _check_grey(a: np.ndarray) -> np.ndarray:
  if a.size == 0 or min(a.shape) < 1:
    raise BadRecord(f"image is empty (shape {a.shape})")
  if not np.all(np.isfinite(a)):
    raise BadRecord("image has non-finite pixels")
  return np.ascontiguousarray(a, np.float32)


def is_dicom(data: bytes) -> bool:
  return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image_bytes(data: bytes) -> np.ndarray:
  """Image file bytes (PNG 8/16-bit, grey/RGB/RGBA/palette, JPEG, DICOM) -> float32
  [H, W] grey in [0, 1]. Raises BadRecord for empty, truncated or unreadable data.

  DICOM (the 'DICM' marker at offset 128): rescale slope/intercept applied, MONOCHROME1
  inverted, first frame of multi-frame files, windowed to the image's min-max.
  """
  if data is None or len(data) == 0:
    raise BadRecord("image is zero bytes")
  if is_dicom(data):
    return _decode_dicom(data)
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      return _pil_to_grey(img)
  except BadRecord:
    raise
  except UnidentifiedImageError:  # its message shows a BytesIO object's address
    raise BadRecord(f"unreadable image ({len(data)} bytes): not a PNG, JPEG or DICOM file") from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files.
    raise BadRecord(f"unreadable image ({len(data)} bytes): {type(e).__name__}: {e}") from e


def _pil_to_grey(img: Image.Image) -> np.ndarray:
  mode = img.mode
  if mode in ("L", "I", "F", "1") or mode.startswith("I;16"):
    a = np.asarray(img)
    if mode.startswith("I;16"):
      a = a.astype(np.uint16)
    return to_grey_float(a)
  if mode in ("LA", "PA", "RGBA", "La", "RGBa") or "transparency" in img.info:
    return to_grey_float(np.asarray(img.convert("RGBA")))
  return to_grey_float(np.asarray(img.convert("RGB")))  # P, RGB, CMYK, YCbCr, ...


def _decode_dicom(data: bytes) -> np.ndarray:
  try:
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data))
    a = np.asarray(ds.pixel_array)
  except Exception as e:
    raise BadRecord(f"unreadable DICOM ({len(data)} bytes): {type(e).__name__}: {e}") from e
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  samples = int(ds.get("SamplesPerPixel", 1) or 1)
  if frames > 1:
    a = a[0]
  if samples == 3:
    if photometric.startswith("YBR"):
      from pydicom.pixels import convert_color_space
      a = convert_color_space(a, photometric, "RGB")
    return to_grey_float(_min_max(a.astype(np.float64) @ _LUMA))
  a = a.astype(np.float64)
  a = a * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
  a = _min_max(a)
  if photometric == "MONOCHROME1":
    a = 1.0 - a
  return to_grey_float(a)


def load_grey(value) -> np.ndarray:
  """A record's `image` field (decoded array, or encoded file bytes) -> float32 [H, W]."""
  if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
    value = value.item()
  if isinstance(value, (bytes, bytearray, memoryview)):
    return decode_image_bytes(bytes(value))
  if value is None:
    raise BadRecord("record has no image")
  return to_grey_float(value)


# ----------------------------------------------------------------------------------------
# Images: geometry and normalisation


def resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of float grey to [size, size] (boxes in [0, 1] stay valid)."""
  img = Image.fromarray(np.asarray(grey, np.float32), mode="F")
  out = img.resize((size, size), Image.Resampling.BICUBIC)
  return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def resize_boxes(boxes, image_hw: Sequence[int], size: int) -> np.ndarray:
  """Normalised (y0, x0, y1, x1) boxes of an image [H, W] -> the same boxes on
  `resize_grey(image, size)`, normalised to the model input.

  resize_grey stretches each axis to `size`, so normalised coordinates do not move; a
  resize that kept the aspect and padded would shift and scale them here, from the
  image's shape. Boxes scored against model-size maps go through this one function.
  """
  del image_hw, size  # a stretch keeps normalised coordinates whatever the shapes
  return np.asarray(boxes, np.float32)


def sample_affine(rng: np.random.Generator, degrees: float,
                  scale: Sequence[float]) -> tuple[float, float]:
  """(angle in degrees, scale), uniform as torchvision's RandomAffine draws them."""
  angle = float(rng.uniform(-degrees, degrees)) if degrees else 0.0
  s = float(rng.uniform(scale[0], scale[1])) if scale[0] != scale[1] else float(scale[0])
  return angle, s


def affine_grey(grey: np.ndarray, angle: float, scale: float) -> np.ndarray:
  """Rotates by `angle` degrees (counter-clockwise) and scales about the image centre.

  Nearest-neighbour, zero fill (torchvision's RandomAffine defaults, which the release
  uses): every output pixel is an input pixel or 0. PIL wants the inverse map
  output -> input: x_in = c + R(-angle) (x_out - c) / scale.
  """
  h, w = grey.shape
  t = np.deg2rad(angle)
  cos, sin = np.cos(t) / scale, np.sin(t) / scale
  cx, cy = w / 2.0, h / 2.0
  # Image y points down, so a counter-clockwise turn on screen is R(+t) in (x, -y).
  a, b = cos, -sin
  d, e = sin, cos
  c = cx - a * cx - b * cy
  f = cy - d * cx - e * cy
  img = Image.fromarray(np.asarray(grey, np.float32), mode="F")
  out = img.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f),
                      resample=Image.Resampling.NEAREST, fillcolor=0.0)
  return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def normalise(grey: np.ndarray, channels: int) -> np.ndarray:
  """float grey [S, S] in [0, 1] -> float32 [S, S, channels] normalised."""
  x = (np.asarray(grey, np.float32) - np.float32(MEAN)) / np.float32(STD)
  return np.repeat(x[..., None], channels, axis=-1)


def to_uint8(grey: np.ndarray) -> np.ndarray:
  """float grey in [0, 1] -> uint8 (for overlays)."""
  return np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Left-right flip, consistently for image, words, leaves and boxes

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
  """'left' <-> 'right' as whole words, keeping case (left/Left/LEFT)."""

  def swap(m):
    word = m.group(0)
    new = "right" if word.lower() == "left" else "left"
    if word.isupper():
      return new.upper()
    if word[0].isupper():
      return new.capitalize()
    return new

  return _SIDE.sub(swap, text)


@functools.cache
def leaf_flip_permutation() -> np.ndarray:
  """[NUM_LEAVES] int: the mirror leaf of each leaf ('left X' <-> 'right X'; itself when
  it has no mirror, e.g. 'spine' or 'right atrium')."""
  perm = np.arange(anatomy.NUM_LEAVES)
  for i, leaf in enumerate(anatomy.LEAVES):
    mirror = swap_left_right(leaf)
    perm[i] = anatomy.LEAF_INDEX.get(mirror, i)
  perm.setflags(write=False)
  return perm


def mirror_boxes(boxes: np.ndarray) -> np.ndarray:
  """(y0, x0, y1, x1) boxes in [0, 1] mirrored left-right; all-zero rows stay zero."""
  boxes = np.asarray(boxes, np.float32)
  out = boxes.copy()
  out[..., 1] = 1.0 - boxes[..., 3]
  out[..., 3] = 1.0 - boxes[..., 1]
  empty = ~np.any(boxes != 0, axis=-1)
  out[empty] = 0.0
  return out


def flip_example(grey: np.ndarray, report: str, leaf_mask: np.ndarray,
                 leaf_boxes: np.ndarray | None = None,
                 finding_boxes: np.ndarray | None = None) -> dict:
  """Mirrors the image and everything that names a side with it.

  The flipped image reads like a patient whose left is our right, so the report's
  left/right swap, the leaf mask and leaf boxes move to the mirror leaves (and the boxes
  mirror), and finding boxes mirror in place.
  """
  perm = leaf_flip_permutation()
  out = {"grey": np.ascontiguousarray(grey[:, ::-1]), "report": swap_left_right(report),
         "leaf_mask": np.asarray(leaf_mask)[perm]}
  if leaf_boxes is not None:
    out["leaf_boxes"] = mirror_boxes(np.asarray(leaf_boxes)[perm])
  if finding_boxes is not None:
    out["finding_boxes"] = mirror_boxes(finding_boxes)
  return out


# ----------------------------------------------------------------------------------------
# Text


def clean_text(text: str) -> str:
  """Collapses whitespace (a report never holds the decoder's stop token '\\n')."""
  return " ".join(text.split())


def decode_text(value, field: str) -> str:
  """A record's text field (bytes or str) -> str; BadRecord when it is not UTF-8."""
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, (bytes, bytearray, memoryview)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRecord(f"{field} is not UTF-8: {e}") from e
  if value is None:
    return ""
  return str(value)


def contrastive_text(report: str, rng: np.random.Generator | None) -> str:
  """SPEC 3.3: lower-case, split on '.', drop empty sentences, shuffle, keep a random
  number k >= 1 (uniform in 1..n) of them, join with '. '.

  rng None (evaluation): all sentences, in order.
  """
  sentences = [s.strip() for s in report.lower().split(".")]
  sentences = [s for s in sentences if s]
  if not sentences or rng is None:
    return ". ".join(sentences)
  order = rng.permutation(len(sentences))
  k = int(rng.integers(1, len(sentences) + 1))
  return ". ".join(sentences[i] for i in order[:k])


def text_sequence(text: str, tok, text_len: int) -> dict:
  """Text-encoder input: "[CLS] " + text, truncated and 0-padded to text_len (int32)."""
  ids, mask = tokenizers.encode_text(tok, text, text_len)
  return {"text_ids": ids, "text_mask": mask}


def decoder_sequence(report: str, prompt: str, use_prompt: bool, tok, decoder_len: int,
                     prompt_len: int, report_len: int = 100) -> dict:
  """Report-decoder input (CONTRACTS "Model batch"):

      [prompt ids[:prompt_len] + newline]   (only with use_prompt and a non-empty prompt)
      + report ids[:report_len] + newline, 0-padded to decoder_len.

  dec_mask marks real tokens; dec_loss_mask (float32) marks the report ids and their
  final newline only.
  """
  newline = tok.newline_id
  if newline is None:
    raise ValueError(f"decoder tokenizer {tok!r} has no newline token")
  if decoder_len < prompt_len + report_len + 2:
    raise ValueError(f"decoder_len {decoder_len} < prompt_len {prompt_len} + report_len "
                     f"{report_len} + 2")
  head: list[int] = []
  if use_prompt and prompt.strip():
    head = list(tok.encode(clean_text(prompt)))[:prompt_len] + [newline]
  body = list(tok.encode(clean_text(report)))[:report_len] + [newline]
  ids = np.zeros(decoder_len, np.int32)
  ids[:len(head)] = head
  ids[len(head):len(head) + len(body)] = body
  mask = np.zeros(decoder_len, np.int32)
  mask[:len(head) + len(body)] = 1
  loss = np.zeros(decoder_len, np.float32)
  loss[len(head):len(head) + len(body)] = 1.0
  return {"dec_ids": ids, "dec_mask": mask, "dec_loss_mask": loss}


def leaf_mask_from_region_vector(regions) -> np.ndarray:
  """int8 [NUM_REGIONS] multi-hot -> int32 [NUM_LEAVES] leaves under those regions."""
  r = np.asarray(regions).astype(bool)
  if r.shape != (anatomy.NUM_REGIONS,):
    raise BadRecord(f"regions has shape {r.shape}; expected ({anatomy.NUM_REGIONS},)")
  return anatomy.region_leaf_matrix()[r].any(axis=0).astype(np.int32)
