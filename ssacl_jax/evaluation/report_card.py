"""Heat-map overlays and a static, self-contained HTML report card.

The card is one HTML file (inline CSS and a small inline script, nothing from the network);
its images are PNG files in the same folder tree, linked relative to the page, so the
folder works opened from anywhere, moved, zipped or served. All text is escaped.

Top to bottom the page shows: what was evaluated (data set, a banner when it is
synthetic, checkpoint), the headline numbers beside their baselines and 95% intervals with
a one-line explanation each, the full metrics table folded away, and a browser over every
study (filters by pathology and by label agreement, an overlay per region and finding,
generated and reference reports side by side with their label chips).
"""
from __future__ import annotations

import dataclasses
import html
import os
import pathlib
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


def save_grey_png(image, path) -> None:
  from PIL import Image
  Image.fromarray(_grey2d(image).astype(np.uint8)).save(path)


def _is_path(value) -> bool:
  return isinstance(value, (str, os.PathLike))


def _load_grey(path) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("L"))


def display_grey(image, size: int = 256) -> np.ndarray:
  """uint8 [H', W'] grey image upscaled (bicubic) so its long side is at least `size`:
  a readable base for overlays when the model's input is small (the demo's is 64 px)."""
  from PIL import Image
  grey = _grey2d(image).astype(np.uint8)
  scale = size / max(grey.shape)
  if scale <= 1:
    return grey
  hw = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
  return np.asarray(Image.fromarray(grey).resize(hw, Image.Resampling.BICUBIC))


def _format_value(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    return f"{float(v):.4f}"
  return str(v)


# ----------------------------------------------------------------------------- headlines
EVALUATION_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "EVALUATION.md"
RESERVED_KEYS = ("ci95", "protocol")   # metrics.json keys that are not numbers


@dataclasses.dataclass(frozen=True)
class Headline:
  label: str
  key: str                                  # our number in metrics.json
  baselines: tuple[tuple[str, str], ...]    # (name, metrics key) shown beside it
  meaning: str                              # one line: what it measures, which way is good


_MOST_FREQUENT = (("most frequent report", "baseline_most_frequent/{key}"),)


def _grounding(level: str, metric: str, label: str, meaning: str) -> Headline:
  key = f"grounding/{level}/ours/{metric}"
  return Headline(label, key, (("random map", key.replace("/ours/", "/random/")),
                               ("CLS attention", key.replace("/ours/", "/cls_attention/"))),
                  meaning)


HEADLINES = (
    ("Language", (
        Headline("BLEU-4", "language/BLEU_4", _MOST_FREQUENT,
                 "shared 4-word sequences with the reference report, 0-1, higher is better"),
        Headline("METEOR", "language/METEOR", _MOST_FREQUENT,
                 "word matches incl. stems and synonyms, weighted to recall, 0-1"),
        Headline("ROUGE-L", "language/ROUGE_L", _MOST_FREQUENT,
                 "longest common word subsequence with the reference, 0-1"),
        Headline("CIDEr-D", "language/CIDEr", _MOST_FREQUENT,
                 "n-gram agreement weighted to rare, informative words, 0-10"))),
    ("Clinical efficacy (labels read from the reports)", (
        Headline("CE micro-F1, 14", "clinical/micro14/f1", _MOST_FREQUENT,
                 "positive findings the generated report states correctly, pooled over 14 labels"),
        Headline("CE macro-F1, 14", "clinical/macro14/f1", _MOST_FREQUENT,
                 "the same F1 averaged per label, so rare findings count as much as common"),
        Headline("CE micro-F1, 5", "clinical/micro5/f1", _MOST_FREQUENT,
                 "micro-F1 over the 5 most common findings (CheXpert competition set)"),
        Headline("CE macro-F1, 5", "clinical/macro5/f1", _MOST_FREQUENT,
                 "macro-F1 over the same 5 findings"),
        Headline("pathology head AUROC", "pathology_head/auroc_mean", (),
                 "how well the head ranks studies with a finding above those without, 0.5 = chance"))),
    ("Grounding: anatomy (leaf regions)", (
        _grounding("leaves", "cnr", "CNR", "contrast of the map inside vs outside the box, "
                   "in standard deviations; 0 = no contrast"),
        _grounding("leaves", "miou", "mIoU", "overlap of the thresholded map with the box, 0-1"),
        _grounding("leaves", "pointing_game", "pointing game",
                   "share of maps whose hottest point is in the box"))),
    ("Grounding: findings (report sentences)", (
        _grounding("findings", "cnr", "CNR", "as above, for each finding sentence's box"),
        _grounding("findings", "miou", "mIoU", "as above, for each finding sentence's box"),
        _grounding("findings", "pointing_game", "pointing game",
                   "as above, for each finding sentence's box"))),
)


def _number(metrics: Mapping, key: str) -> str:
  v = metrics.get(key)
  if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
    return "&ndash;"
  ci = (metrics.get("ci95") or {}).get(key)
  interval = (f" <span class='ci'>[{float(ci[0]):.3f}, {float(ci[1]):.3f}]</span>"
              if ci is not None and len(ci) == 2 else "")
  return f"{float(v):.3f}{interval}"


def _doc_link(anchor: str) -> str:
  # An absolute file URI: the page can move, the repository's doc stays where it is.
  href = html.escape(f"{EVALUATION_DOC.as_uri()}#{anchor}", quote=True)
  return f"<a class='doc' href='{href}'>docs/EVALUATION.md</a>"


def _headline_rows(metrics: Mapping) -> str:
  sections = []
  for title, headlines in HEADLINES:
    rows = []
    for h in headlines:
      if h.key not in metrics:
        continue
      base = "<br>".join(f"{html.escape(name)}: {_number(metrics, k.format(key=h.key))}"
                         for name, k in h.baselines) or "&ndash;"
      rows.append(f"<tr><th>{html.escape(h.label)}</th><td class='num'>{_number(metrics, h.key)}"
                  f"</td><td class='num'>{base}</td><td>{html.escape(h.meaning)} "
                  f"({_doc_link(h.key.split('/')[0])})</td></tr>")
    if rows:
      sections.append(f"<tr class='group'><td colspan='4'>{html.escape(title)}</td></tr>"
                      + "".join(rows))
  if not sections:
    return ""
  return ("<table class='headline'><tr><th></th><th>ours [95% CI]</th><th>baselines</th>"
          f"<th>what it measures</th></tr>{''.join(sections)}</table>")


def _full_table(metrics: Mapping) -> str:
  rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format_value(v))}"
                 f"</td></tr>" for k, v in metrics.items())
  return (f"<details><summary>All {len(metrics)} "
          "metrics</summary><table class='metrics'><tr><th>metric</th><th>value</th></tr>"
          f"{rows}</table></details>")


# ----------------------------------------------------------------------------- provenance
def _about(metrics: Mapping, provenance: Mapping) -> dict:
  """What was evaluated: provenance given by the caller, else metrics.json's "protocol"."""
  about = dict(metrics.get("protocol") or {})
  about.update({k: v for k, v in provenance.items() if v is not None})
  return about


def _about_html(about: Mapping) -> str:
  banner = ""
  if about.get("synthetic"):
    banner = ("<p class='banner'>Synthetic data: the model was trained and scored on "
              "generated images and template reports. These numbers test the pipeline; "
              "they say nothing about clinical performance. Demo model: not for clinical "
              "use.</p>")
  items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(_format_value(v))}</li>"
                  for k, v in about.items())
  return f"{banner}<ul class='about'>{items}</ul>" if items else banner


# ----------------------------------------------------------------------------- studies
def _image_source(value, directory: str, filename: str, base_image=None) -> str:
  """Link relative to the page for an existing PNG, or write the array and link to it.

  A relative path is taken relative to the page's directory (where the page's files
  live), an absolute one is re-expressed relative to it. An array with `base_image`
  given is a heat map overlaid on that image; otherwise a grey image saved as it is.
  """
  if _is_path(value):
    value = os.fspath(value)
    link = os.path.relpath(value, directory) if os.path.isabs(value) else value
    return pathlib.PurePath(link).as_posix()
  target = os.path.join(directory, filename)
  if base_image is None:
    save_grey_png(value, target)
  else:
    overlay_png(base_image, value, target)
  return filename


_LABEL_NAMES = {1: "positive", 0: "negative", -1: "uncertain"}


def _chips(labels, other) -> str:
  """Label chips of one report: mentioned observations, each marked as agreeing with the
  other report or not (positive vs not positive, as clinical efficacy counts them)."""
  from ssacl_jax import anatomy
  chips = []
  for name, v, w in zip(anatomy.PATHOLOGIES, labels, other):
    v, w = int(v), int(w)
    if v not in _LABEL_NAMES and w != 1:
      continue
    state = _LABEL_NAMES.get(v, "not mentioned")
    agree = (v == 1) == (w == 1)
    chips.append(f"<span class='chip {state.replace(' ', '-')} {'agree' if agree else 'disagree'}' "
                 f"title='{state}; {'agrees' if agree else 'disagrees'} with the other report'>"
                 f"{'&#10003;' if agree else '&#10007;'} {html.escape(name)}</span>")
  return f"<div class='chips'>{''.join(chips) or '<i>no findings mentioned</i>'}</div>"


def _names(labels) -> str:
  from ssacl_jax import anatomy
  return "|".join(anatomy.positive_pathologies(labels))


def _study_html(study: Mapping, index: int, directory: str, stem: str) -> str:
  title = str(study.get("study_id", index))
  image = study.get("image")
  views = []   # (caption, src) for the overlay toggle; the first is shown
  if image is not None:
    views.append(("image", _image_source(image, directory, f"{stem}_study{index}_image.png")))
  for k, (caption, heat) in enumerate((study.get("heatmaps") or {}).items()):
    base = None
    if not _is_path(heat):
      if image is None:
        raise ValueError(f"study {title!r}: heat map {caption!r} needs the study's image")
      base = _load_grey(os.path.join(directory, image)) if _is_path(image) else image
    views.append((str(caption), _image_source(heat, directory, f"{stem}_study{index}_heat{k}.png", base)))
  viewer = ""
  if views:
    thumbs = "".join(
        f"<button type='button' class='view' data-src='{html.escape(src, quote=True)}'>"
        f"<img src='{html.escape(src, quote=True)}' alt='{html.escape(c, quote=True)}'>"
        f"{html.escape(c)}</button>" for c, src in views)
    viewer = (f"<div class='viewer'><img class='main' src='{html.escape(views[0][1], quote=True)}'"
              f" alt='{html.escape(title, quote=True)}'><div class='views'>{thumbs}</div></div>")
  pathologies = study.get("pathologies") or ()
  if isinstance(pathologies, str):
    pathologies = (pathologies,)
  predicted = ", ".join(str(p) for p in pathologies) or "none"
  gen_labels, ref_labels = study.get("labels_generated"), study.get("labels_reference")
  labelled = gen_labels is not None and ref_labels is not None
  attrs = ""
  if labelled:
    agree = all((int(g) == 1) == (int(r) == 1) for g, r in zip(gen_labels, ref_labels))
    attrs = (f" data-gen='{html.escape(_names(gen_labels), quote=True)}'"
             f" data-ref='{html.escape(_names(ref_labels), quote=True)}'"
             f" data-agree='{int(agree)}'")
  reports = []
  for name, key, own, other in (("generated", "generated", gen_labels, ref_labels),
                                ("reference", "reference", ref_labels, gen_labels)):
    chips = _chips(own, other) if labelled else ""
    reports.append(f"<div><h3>{name}</h3>{chips}<p>{html.escape(str(study.get(key, '')))}</p></div>")
  return (f"<section class='study'{attrs}><h2>{html.escape(title)}</h2>"
          f"<div class='body'>{viewer}<div class='text'>"
          f"<p><b>predicted pathologies (prompt):</b> {html.escape(predicted)}</p>"
          f"<div class='reports'>{''.join(reports)}</div></div></div></section>")


def _filters(studies_html: Sequence[str], labelled: bool) -> str:
  from ssacl_jax import anatomy
  if not labelled:
    return ""
  options = "".join(f"<option>{html.escape(p)}</option>" for p in anatomy.PATHOLOGIES)
  return ("<div class='filters'><label>pathology (positive in either report) "
          f"<select id='pathology'><option value=''>any</option>{options}</select></label> "
          "<label>labels <select id='agreement'><option value=''>all studies</option>"
          "<option value='1'>generated agrees with reference</option>"
          "<option value='0'>generated disagrees</option></select></label> "
          f"<span id='shown'>{len(studies_html)} studies</span><div class='legend'>Label chips "
          "(CheXpert labels read from each report): <span class='chip positive'>positive</span>"
          "<span class='chip negative'>negative</span><span class='chip uncertain'>uncertain"
          "</span><span class='chip not-mentioned'>not mentioned</span>; &#10003; agrees, "
          "<span class='chip disagree'>&#10007; disagrees</span> with the other report "
          "(positive or not, as clinical efficacy counts). Click a thumbnail to overlay a "
          "region's or a finding's heat map.</div></div>")


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;"
    "color:#222}h1{margin-bottom:.2em}.banner{background:#fff3cd;border:1px solid #e0a800;"
    "padding:.6em 1em;font-weight:600}.about{color:#555;padding-left:1.2em}"
    "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 10px;"
    "text-align:left;vertical-align:top}.headline td.num{white-space:nowrap;"
    "font-variant-numeric:tabular-nums}.ci{color:#777;font-size:.85em}"
    ".group td{background:#f0f0f0;font-weight:600}a.doc{font-size:.85em}"
    "details{margin:1em 0}table.metrics td{font-family:monospace;font-size:.85em}"
    ".filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:2px solid #333}"
    ".legend{font-size:.8em;color:#555;margin-top:.3em}"
    ".study{border-bottom:1px solid #bbb;padding:.5em 0}.study h2{font-size:1.1em}"
    ".body{display:flex;gap:1.5em;flex-wrap:wrap}.viewer img.main{width:384px;height:auto;"
    "display:block;image-rendering:auto}.views{display:flex;flex-wrap:wrap;gap:4px;"
    "max-width:384px;margin-top:4px}.view{font-size:.75em;border:1px solid #aaa;"
    "background:#fafafa;padding:2px;cursor:pointer;width:92px}.view img{width:88px;"
    "display:block}.view.on{border-color:#06c;background:#e6f0ff}.text{flex:1;min-width:320px}"
    ".reports{display:flex;gap:1.5em}.reports>div{flex:1}"
    ".chip{display:inline-block;border-radius:1em;padding:0 .6em;margin:2px;font-size:.8em;"
    "border:2px solid transparent}.chip.positive{background:#f8d7da}"
    ".chip.negative{background:#d4edda}.chip.uncertain{background:#fff3cd}"
    ".chip.not-mentioned{background:#eee;color:#777}.chip.disagree{border-color:#c00}")

_SCRIPT = """
document.querySelectorAll('.study').forEach(function (s) {
  var main = s.querySelector('img.main'), views = s.querySelectorAll('.view');
  views.forEach(function (b, i) {
    if (i === 0) b.classList.add('on');
    b.addEventListener('click', function () {
      main.src = b.dataset.src;
      views.forEach(function (o) { o.classList.toggle('on', o === b); });
    });
  });
});
function applyFilters() {
  var p = document.getElementById('pathology').value;
  var a = document.getElementById('agreement').value, n = 0;
  document.querySelectorAll('.study').forEach(function (s) {
    var names = (s.dataset.gen + '|' + s.dataset.ref).split('|');
    var show = (!p || names.indexOf(p) >= 0) && (!a || s.dataset.agree === a);
    s.style.display = show ? '' : 'none';
    n += show ? 1 : 0;
  });
  document.getElementById('shown').textContent = n + ' studies';
}
if (document.getElementById('pathology')) {
  document.getElementById('pathology').addEventListener('change', applyFilters);
  document.getElementById('agreement').addEventListener('change', applyFilters);
}
"""


def write_report_card(path, metrics: Mapping, studies: Sequence[Mapping],
                      title: str = "SS-ACL report card", provenance: Mapping | None = None) -> None:
  """Write an HTML report card at `path` (PNG files go next to it).

  metrics: metrics.json's dict: flat name -> value, plus the optional reserved keys
    "ci95" {key: [low, high]} and "protocol" {setting: value} (data set, synthetic, ...).
  provenance: what was evaluated, shown at the top ({"dataset": ..., "synthetic": bool,
    "checkpoint step": ...}); overrides "protocol"'s entries of the same name. A true
    "synthetic" adds a banner.
  Each study is a mapping with optional keys:
    study_id          shown as the heading (default: its index)
    image             grey uint8 [H, W] (or [H, W, 1]) array, or the path of an existing PNG
    heatmaps          {caption: float [H, W] heat map at image size (overlaid on `image`)
                       or the path of an existing PNG}, e.g. one per region and finding
    generated         generated report text
    reference         reference report text
    pathologies       predicted pathology names
    labels_generated  14 CheXpert-coded labels of each report (1, 0, -1 uncertain,
    labels_reference  -2 not mentioned): label chips and the browser's filters
  Paths are relative to the page's directory, or absolute. Written images are named
  "<html stem>_study<i>_image.png" / "..._heat<k>.png".
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  studies_html = [_study_html(s, i, directory, stem) for i, s in enumerate(studies)]
  labelled = any(s.get("labels_generated") is not None for s in studies)
  numbers = {k: v for k, v in metrics.items() if k not in RESERVED_KEYS}
  page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
          f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
          f"{_about_html(_about(metrics, provenance or {}))}{_headline_rows(metrics)}"
          f"{_full_table(numbers) if numbers else ''}{_filters(studies_html, labelled)}"
          f"{''.join(studies_html)}<script>{_SCRIPT}</script></body></html>\n")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
