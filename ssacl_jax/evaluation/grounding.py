"""Scoring heat maps against boxes (SPEC 5: grounding).

A heat map starts as attention over the patch grid [h, w]. `smooth_and_resize` smooths it
with a Gaussian (sigma in patch units, 1.5 by default) and resizes it to the image:
nearest-neighbour for scoring, as the release does (`grounding_scores`), bilinear for
display (report card, predict). Scores against a box mask [H, W], as the release's
evaluation code computes them (SPEC 5):

- CNR = (mean inside - mean outside) / sqrt(var inside + var outside), signed (as SPEC 5
  writes it; a map brighter outside the box scores negative). CNR does not change under
  positive affine rescaling, so the map is min-max normalised first and a tiny epsilon
  (1e-12 on that [0, 1] scale) keeps a perfectly separating map finite (about 1e6).
- mIoU: the map is min-max normalised to [-1, 1] (to [0, 1], then times 2 minus 1), and
  the IoU of (map > t) with the box is averaged over thresholds 0.1, 0.2, 0.3, 0.4, 0.5
  (0.55..0.75 of the [0, 1] range).
- pointing game: 1 when any of the map's maxima (all tied maxima count) lies inside the
  box, else 0.

A constant map normalises to -1 everywhere: CNR 0 and IoU 0; every pixel is a tied
maximum, so it points inside any non-empty box.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
_CNR_EPS = 1e-12
_PIXEL_TOL = 1e-6


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian taps, radius round(truncate * sigma) (scipy's default)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / k.sum()


def _smooth_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
  """Convolve along `axis` with mirror ('symmetric', scipy 'reflect') borders."""
  r = len(kernel) // 2
  pad = [(0, 0)] * a.ndim
  pad[axis] = (r, r)
  padded = np.moveaxis(np.pad(a, pad, mode="symmetric"), axis, -1)
  windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=-1)
  return np.moveaxis(windows @ kernel[::-1], -1, axis)


def gaussian_smooth(a, sigma: float) -> np.ndarray:
  """Separable Gaussian smoothing of a 2-D array (sigma in pixels of `a`)."""
  a = np.asarray(a, np.float64)
  if sigma <= 0:
    return a.copy()
  k = gaussian_kernel(sigma)
  return _smooth_axis(_smooth_axis(a, k, 0), k, 1)


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] weights of half-pixel-centred linear interpolation (edges clamped)."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  w = src - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1 - w)
  np.add.at(m, (np.arange(n_out), hi), w)
  return m


def resize_bilinear(a, hw: Sequence[int]) -> np.ndarray:
  """Bilinear resize of a 2-D array to (H, W), align_corners=False convention."""
  a = np.asarray(a, np.float64)
  return _bilinear_matrix(hw[0], a.shape[0]) @ a @ _bilinear_matrix(hw[1], a.shape[1]).T


def resize_nearest(a, hw: Sequence[int]) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D array to (H, W): output pixel i reads input pixel
  floor(i * n_in / n_out) (torch's interpolate(mode="nearest"))."""
  a = np.asarray(a, np.float64)
  rows = np.minimum(np.arange(hw[0]) * a.shape[0] // hw[0], a.shape[0] - 1)
  cols = np.minimum(np.arange(hw[1]) * a.shape[1] // hw[1], a.shape[1] - 1)
  return a[rows[:, None], cols[None, :]]


RESIZERS = {"nearest": resize_nearest, "bilinear": resize_bilinear}


def smooth_and_resize(patch_map, image_hw: Sequence[int], sigma_patches: float = 1.5,
                      resize: str = "bilinear") -> np.ndarray:
  """Patch-grid map [h, w] -> smoothed float64 map at image size [H, W].

  resize: "bilinear" (display) or "nearest" (scoring, as the release does).
  """
  patch_map = np.asarray(patch_map, np.float64)
  if patch_map.ndim != 2:
    raise ValueError(f"expected a 2-D patch map, got shape {patch_map.shape}")
  if resize not in RESIZERS:
    raise ValueError(f"resize {resize!r}: expected one of {sorted(RESIZERS)}")
  return RESIZERS[resize](gaussian_smooth(patch_map, sigma_patches), image_hw)


def minmax_normalise(heatmap) -> np.ndarray:
  """Map to [0, 1]; a constant map becomes zeros."""
  h = np.asarray(heatmap, np.float64)
  span = h.max() - h.min()
  return (h - h.min()) / span if span > 0 else np.zeros_like(h)


def signed_normalise(heatmap) -> np.ndarray:
  """Map to [-1, 1] (min-max, then times 2 minus 1), as the release does before mIoU."""
  return minmax_normalise(heatmap) * 2 - 1


def box_to_mask(box: Sequence[float], hw: Sequence[int]) -> np.ndarray:
  """bool [H, W] of the pixels a normalised (y0, x0, y1, x1) box overlaps.

  A pixel belongs to the box when any part of it does, so a box of positive area always
  covers at least one pixel; a box with y1 <= y0 or x1 <= x0 gives an empty mask.
  """
  h, w = hw
  y0, x0, y1, x1 = (float(v) for v in box)
  mask = np.zeros((h, w), bool)
  if y1 <= y0 or x1 <= x0:
    return mask
  # The tolerance keeps round-off (0.7 * 10 = 7.000000000000001) from adding a row.
  r0, r1 = int(np.floor(y0 * h + _PIXEL_TOL)), int(np.ceil(y1 * h - _PIXEL_TOL))
  c0, c1 = int(np.floor(x0 * w + _PIXEL_TOL)), int(np.ceil(x1 * w - _PIXEL_TOL))
  mask[max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)] = True
  return mask


def _check_pair(heatmap, box_mask) -> tuple[np.ndarray, np.ndarray]:
  heatmap, box_mask = np.asarray(heatmap, np.float64), np.asarray(box_mask, bool)
  if heatmap.shape != box_mask.shape:
    raise ValueError(f"heat map {heatmap.shape} and box mask {box_mask.shape} differ")
  return heatmap, box_mask


def cnr(heatmap, box_mask) -> float:
  """Contrast-to-noise ratio of the box against the rest; nan if either side is empty."""
  heatmap, box_mask = _check_pair(heatmap, box_mask)
  if box_mask.all() or not box_mask.any():
    return float("nan")
  h = minmax_normalise(heatmap)
  inside, outside = h[box_mask], h[~box_mask]
  return float((inside.mean() - outside.mean()) /
               np.sqrt(inside.var() + outside.var() + _CNR_EPS))


def miou(heatmap, box_mask, thresholds: Sequence[float] = THRESHOLDS) -> float:
  """Mean over thresholds of IoU(map normalised to [-1, 1] > t, box); nan for an empty box."""
  heatmap, box_mask = _check_pair(heatmap, box_mask)
  if not box_mask.any():
    return float("nan")
  h = signed_normalise(heatmap)
  ious = []
  for t in thresholds:
    pred = h > t
    ious.append((pred & box_mask).sum() / (pred | box_mask).sum())
  return float(np.mean(ious))


def pointing_game(heatmap, box_mask) -> float:
  """1.0 when any of the map's (tied) maxima lies inside the box, else 0.0."""
  heatmap, box_mask = _check_pair(heatmap, box_mask)
  return float((box_mask & (heatmap == heatmap.max())).any())


def random_map(rng: np.random.Generator, grid_hw: Sequence[int]) -> np.ndarray:
  """Uniform random patch-grid map [h, w]: the chance baseline for grounding scores."""
  return rng.random(tuple(grid_hw))


SCORES = ("cnr", "miou", "pointing_game")


def grounding_pair_scores(maps, boxes, valid, image_hw: Sequence[int],
                          sigma_patches: float = 1.5) -> dict[str, np.ndarray]:
  """Per scored (example, item) pair: "example" (int index into maps), "cnr", "miou",
  "pointing_game" (float [P] each). Arguments as in `grounding_scores`."""
  maps, boxes = np.asarray(maps), np.asarray(boxes, np.float64)
  valid = np.asarray(valid, bool)
  if maps.ndim != 4 or boxes.shape != maps.shape[:2] + (4,) or valid.shape != maps.shape[:2]:
    raise ValueError(f"expected maps [n, I, h, w], boxes [n, I, 4], valid [n, I]; got "
                     f"{maps.shape}, {boxes.shape}, {valid.shape}")
  rows = []
  for i, j in zip(*np.nonzero(valid)):
    mask = box_to_mask(boxes[i, j], image_hw)
    if not mask.any():
      continue
    scores = map_scores(maps[i, j], mask, image_hw, sigma_patches)
    rows.append((i, *(scores[k] for k in SCORES)))
  table = np.asarray(rows, np.float64).reshape(-1, 1 + len(SCORES))
  return {"example": table[:, 0].astype(np.int64),
          **{k: table[:, 1 + c] for c, k in enumerate(SCORES)}}


def grounding_scores(maps, boxes, valid, image_hw: Sequence[int],
                     sigma_patches: float = 1.5) -> dict[str, float]:
  """Mean CNR, mIoU and pointing game over the valid (example, item) pairs.

  maps: [n, I, h, w] patch-grid heat maps (an item is an anatomy region or a phrase);
  boxes: [n, I, 4] normalised (y0, x0, y1, x1); valid: [n, I] bool. Pairs whose box has
  no area are skipped too. Each map is smoothed and resized to `image_hw` (nearest
  neighbour) first. Returns {"cnr", "miou", "pointing_game", "count"}; the means are nan
  when count is 0. CNR is averaged over the pairs where it is defined (a box covering
  the whole image has no outside).
  """
  pairs = grounding_pair_scores(maps, boxes, valid, image_hw, sigma_patches)
  return {**{k: _nanmean(pairs[k]) for k in SCORES}, "count": len(pairs["example"])}


def _nanmean(values) -> float:
  a = np.asarray(values, np.float64)
  a = a[~np.isnan(a)]
  return float(a.mean()) if a.size else float("nan")


# ----------------------------------------------------------------------------------------
# Phrase grounding (MS-CXR): a phrase may name several boxes; means per finding category.

OVERALL = "all"


def boxes_to_mask(boxes, hw: Sequence[int]) -> np.ndarray:
  """bool [H, W]: the union of `box_to_mask` over normalised boxes [K, 4]."""
  mask = np.zeros(tuple(hw), bool)
  for box in np.asarray(boxes, np.float64).reshape(-1, 4):
    mask |= box_to_mask(box, hw)
  return mask


def map_scores(patch_map, mask, image_hw: Sequence[int],
               sigma_patches: float = 1.5) -> dict[str, float]:
  """CNR, mIoU and pointing game of one patch-grid map against a box mask [H, W], the
  map smoothed and resized nearest-neighbour, as the release scores (SPEC 5)."""
  heat = smooth_and_resize(patch_map, image_hw, sigma_patches, resize="nearest")
  return {"cnr": cnr(heat, mask), "miou": miou(heat, mask),
          "pointing_game": pointing_game(heat, mask)}


def category_key(name: str) -> str:
  """'Pleural Effusion' -> 'pleural_effusion' (a metrics key part)."""
  return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def phrase_grounding_metrics(categories: Sequence[str],
                             scores: dict[str, Sequence[dict]]) -> dict[str, float]:
  """Per-phrase scores -> 'phrase_grounding/<category>/<method>/<metric>' means.

  categories: [n] each phrase's finding; scores: method -> [n] `map_scores` dicts. Means
  are per category and over all phrases (category 'all', each phrase counted once);
  CNR skips phrases where it is undefined; '.../count' is the number of phrases.
  """
  groups = {OVERALL: np.ones(len(categories), bool)}
  for name in sorted(set(categories)):
    groups[category_key(name)] = np.array([c == name for c in categories])
  out = {}
  for group, selected in groups.items():
    for method, rows in scores.items():
      rows = [r for r, keep in zip(rows, selected) if keep]
      prefix = f"phrase_grounding/{group}/{method}"
      out[f"{prefix}/count"] = float(len(rows))
      for metric in ("cnr", "miou", "pointing_game"):
        out[f"{prefix}/{metric}"] = _nanmean([r[metric] for r in rows])
  return out
