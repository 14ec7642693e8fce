"""Heat-map overlays and a static HTML report card for a handful of studies.

The card is one HTML file; its images are PNG files written next to it and linked by
relative path, so the folder can be copied or served as it is. All text is escaped.
"""
from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ssacl_jax.evaluation.grounding import minmax_normalise


def jet(x) -> np.ndarray:
  """float [..., 3] RGB in [0, 1] of the classic jet colour map for x in [0, 1]."""
  x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)[..., None]
  centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks
  return np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)


def _grey2d(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim != 2:
    raise ValueError(f"expected a grey image [H, W] or [H, W, 1], got {image.shape}")
  return image


def overlay_rgb(image, heatmap, alpha: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: grey image blended with the jet-coloured min-max normalised map."""
  grey = _grey2d(image).astype(np.float64)
  heatmap = np.asarray(heatmap, np.float64)
  if heatmap.shape != grey.shape:
    raise ValueError(f"heat map {heatmap.shape} does not match image {grey.shape}")
  colour = jet(minmax_normalise(heatmap)) * 255.0
  blended = (1.0 - alpha) * grey[..., None] + alpha * colour
  return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay_png(image, heatmap, path, alpha: float = 0.5) -> None:
  """Write the overlay of `heatmap` [H, W] on grey uint8 `image` [H, W] as an RGB PNG."""
  from PIL import Image
  Image.fromarray(overlay_rgb(image, heatmap, alpha)).save(path)


def _save_grey_png(image, path) -> None:
  from PIL import Image
  Image.fromarray(_grey2d(image).astype(np.uint8)).save(path)


def _is_path(value) -> bool:
  return isinstance(value, (str, os.PathLike))


def _load_grey(path) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("L"))


def _format_value(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.4f}"
  return str(v)


def _metrics_table(metrics: Mapping) -> str:
  rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format_value(v))}"
                 f"</td></tr>" for k, v in metrics.items())
  return f"<table class='metrics'><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _image_source(value, directory: str, filename: str, base_image=None) -> str:
  """Relative link for an existing PNG path, or write the array and link to it.

  An array with `base_image` given is a heat map overlaid on that image; otherwise it
  is a grey image saved as it is.
  """
  if _is_path(value):
    return os.path.relpath(os.fspath(value), directory)
  target = os.path.join(directory, filename)
  if base_image is None:
    _save_grey_png(value, target)
  else:
    overlay_png(base_image, value, target)
  return filename


def _figure(src: str, caption: str) -> str:
  return (f"<figure><img src='{html.escape(src, quote=True)}' alt='{html.escape(caption)}'>"
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _study_html(study: Mapping, index: int, directory: str, stem: str) -> str:
  title = str(study.get("study_id", index))
  image = study.get("image")
  figures = []
  if image is not None:
    src = _image_source(image, directory, f"{stem}_study{index}_image.png")
    figures.append(_figure(src, "image"))
  heatmaps = study.get("heatmaps") or {}
  for k, (caption, heat) in enumerate(heatmaps.items()):
    base = None
    if not _is_path(heat):
      if image is None:
        raise ValueError(f"study {title!r}: heat map {caption!r} needs the study's image")
      base = _load_grey(image) if _is_path(image) else image
    src = _image_source(heat, directory, f"{stem}_study{index}_heat{k}.png", base)
    figures.append(_figure(src, str(caption)))
  pathologies = study.get("pathologies") or ()
  if isinstance(pathologies, str):
    pathologies = (pathologies,)
  predicted = ", ".join(str(p) for p in pathologies) or "none"
  return (
      f"<section class='study'><h2>{html.escape(title)}</h2>"
      f"<div class='figures'>{''.join(figures)}</div>"
      f"<p><b>predicted pathologies:</b> {html.escape(predicted)}</p>"
      "<div class='reports'>"
      f"<div><h3>generated</h3><p>{html.escape(str(study.get('generated', '')))}</p></div>"
      f"<div><h3>reference</h3><p>{html.escape(str(study.get('reference', '')))}</p></div>"
      "</div></section>")


_STYLE = ("body{font-family:sans-serif;margin:2em}table.metrics{border-collapse:collapse}"
          "table.metrics td,table.metrics th{border:1px solid #999;padding:2px 8px}"
          ".figures{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}"
          "figure img{width:224px}.reports{display:flex;gap:2em}.reports>div{flex:1}"
          ".study{border-top:2px solid #333;margin-top:1.5em}")


def write_report_card(path, metrics: Mapping, studies: Sequence[Mapping],
                      title: str = "SS-ACL report card") -> None:
  """Write an HTML report card at `path` (PNG files go next to it).

  metrics: flat name -> value (floats shown with 4 decimals).
  Each study is a mapping with optional keys:
    study_id     shown as the heading (default: its index)
    image        grey uint8 [H, W] (or [H, W, 1]) array, or the path of an existing PNG
    heatmaps     {caption: float [H, W] heat map at image size (overlaid on `image`)
                  or the path of an existing PNG}, e.g. one per anatomy region
    generated    generated report text
    reference    reference report text
    pathologies  predicted pathology names
  Written images are named "<html stem>_study<i>_image.png" / "..._heat<k>.png".
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  body = "".join(_study_html(s, i, directory, stem) for i, s in enumerate(studies))
  page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
          f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
          f"{_metrics_table(metrics)}{body}</body></html>\n")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
