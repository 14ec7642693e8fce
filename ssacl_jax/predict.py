"""Run a trained SS-ACL on your own chest radiograph.

  python -m ssacl_jax.predict --workdir runs/demo --image chest.png [--image more.jpg ...] \
      [--phrase "left pleural effusion" ...] --out out/

Reads PNG, JPEG or DICOM images and writes, for each, OUT/<image stem>/: the per-region
heat maps (and one per --phrase), prediction.json and index.html; the generated report
and the predicted pathologies are printed. Every image is checked before the model
loads: one that cannot be read is named on one line and skipped, the others are
processed, and the exit status is 2 if any was skipped. Every output says which data set
the model was trained on and its step; a model trained on synthetic images says it is a
demo, not for clinical use. The model's config and tokenizers are read from the workdir.

Images are resized to the model's square input without keeping the aspect ratio, as
training does (SPEC 6: bicubic resize); a non-square image is noted in every output.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
from absl import flags

from input_pipeline import transforms
from ssacl_jax import anatomy, cli, config_lib, inference
from ssacl_jax.evaluation import grounding, report_card
from ssacl_jax import pathology_head

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (checkpoints, config.json).")
_IMAGES = flags.DEFINE_multi_string("image", None, "Radiograph file(s): PNG, JPEG or DICOM.")
_PHRASES = flags.DEFINE_multi_string("phrase", [], "Phrases to ground (each a heat map).")
_OUT = flags.DEFINE_string("out", None, "Output directory (one folder per image inside).")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")

DEMO_WARNING = "demo model: not for clinical use (trained on synthetic images)"


def load_image(path) -> np.ndarray:
  """Grey float [H, W] in [0, 1] from any supported file; a clear error otherwise."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  try:
    return transforms.decode_image_bytes(path.read_bytes())
  except transforms.BadRecord as e:
    raise ValueError(f"{path}: {e}") from e


def read_images(paths) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
  """([(path, grey image)] of the readable files, [one error line per unreadable one])."""
  images, errors = [], []
  for path in paths:
    try:
      images.append((path, load_image(path)))
    except (OSError, ValueError) as e:
      errors.append(f"error: skipping {e}")  # the message starts with the path
  return images, errors


def output_dirs(paths, out) -> list[pathlib.Path]:
  """OUT/<stem>/ per image (OUT/<stem>_<k>/ when stems repeat), for one image or many."""
  dirs, seen = [], {}
  for path in paths:
    stem = pathlib.Path(path).stem
    seen[stem] = seen.get(stem, 0) + 1
    dirs.append(pathlib.Path(out) / (stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
  return dirs


def check_writable(out) -> None:
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if not os.access(out, os.W_OK):
    raise PermissionError(13, "Permission denied (not writable)", str(out))


def aspect_note(grey, size: int) -> str | None:
  h, w = grey.shape
  if h == w:
    return None
  return (f"the {w}x{h} image was resized to {size}x{size} without keeping its aspect "
          "ratio, as training does (SPEC 6)")


def provenance_lines(about: dict) -> list[str]:
  lines = [f"model: trained on {about['trained on']}, checkpoint step {about['checkpoint step']}"]
  if about["synthetic"]:
    lines.append(DEMO_WARNING)
  return lines


def predict(r: inference.Restored, workdir, image_path, grey, phrases, out_dir) -> dict:
  c = r.config
  resized = transforms.resize_grey(grey, c.model.image_size)
  images = transforms.normalise(resized, c.model.channels)[None]
  texts = list(phrases) or ["lungs"]
  p_ids, p_mask = inference.encode_batch(r.tokenizers.text, [t.lower() for t in texts],
                                         c.data.text_len, cls=False)
  anat, phrase_maps, _, feats = inference.jit_method(r, inference.grounding_maps)(
      images, *r.anatomy_tokens, p_ids, p_mask)
  try:
    head = pathology_head.load(workdir)
    labels = anatomy.no_finding_exclusive(pathology_head.positives(head, np.asarray(feats)))
    probs = pathology_head.predict_proba(head, np.asarray(feats))[0]
  except FileNotFoundError:
    head, labels, probs = None, np.zeros((1, anatomy.NUM_PATHOLOGIES), np.int8), None
  report = inference.generate_reports(r, images, labels, inference.decode_config(r))[0]
  pathologies = list(anatomy.positive_pathologies(labels[0]))

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  grid = c.model.image_size // c.model.patch
  shown = transforms.to_uint8(transforms.resize_grey(grey, max(c.model.image_size, 256)))
  heat = {}
  named_maps = [(region, np.asarray(anat)[0, anatomy.NODE_INDEX[region]]) for region in anatomy.REGIONS]
  named_maps += [(f"phrase: {t}", np.asarray(phrase_maps)[0, i]) for i, t in enumerate(phrases)]
  for k, (name, m) in enumerate(named_maps):
    full = grounding.smooth_and_resize(m.reshape(grid, grid), shown.shape)
    path = out_dir / f"heatmap_{k:02d}.png"
    report_card.overlay_png(shown, full, path)
    heat[name] = path.name
  about = inference.provenance(r)
  notes = [n for n in (aspect_note(grey, c.model.image_size),) if n]
  result = {"image": str(image_path), "report": report, "pathologies": pathologies,
            "pathology_probabilities": None if probs is None else dict(zip(anatomy.PATHOLOGIES, map(float, probs))),
            "regions": list(anatomy.regions_for_pathologies(pathologies)), "heatmaps": heat,
            "checkpoint_step": r.step, "pathology_head": head is not None,
            "trained_on": about["trained on"], "synthetic_training_data": about["synthetic"],
            "warning": DEMO_WARNING if about["synthetic"] else None, "notes": notes}
  (out_dir / "prediction.json").write_text(json.dumps(result, indent=1))
  report_card.write_report_card(out_dir / "index.html", {}, [dict(
      study_id=pathlib.Path(image_path).name, image=shown, heatmaps=heat, generated=report,
      reference="(none)", pathologies=pathologies)],
      title="SS-ACL prediction", provenance=dict(about, **{f"note {i + 1}": n for i, n in enumerate(notes)}))
  return result


def main(argv):
  del argv
  config = config_lib.load_workdir_config(_WORKDIR.value)
  images, errors = read_images(_IMAGES.value)
  for line in errors:
    print(line, file=sys.stderr, flush=True)
  if not images:
    raise ValueError("none of the --image files could be read; nothing to do")
  check_writable(_OUT.value)
  config.mesh.shape = (-1, 1, 1)
  r = inference.restore(config, _WORKDIR.value, step=_STEP.value)
  for line in provenance_lines(inference.provenance(r)):
    print(line, flush=True)
  for (image, grey), out in zip(images, output_dirs([p for p, _ in images], _OUT.value)):
    result = predict(r, _WORKDIR.value, image, grey, _PHRASES.value, out)
    print(f"== {image}")
    print(f"pathologies: {', '.join(result['pathologies']) or 'none'}"
          + ("" if result["pathology_head"] else " (no pathology head in the workdir: run --mode head)"))
    for note in result["notes"]:
      print(f"note: {note}")
    print(f"report: {result['report']}")
    print(f"wrote {out / 'index.html'}", flush=True)
  if errors:
    print(f"error: skipped {len(errors)} of {len(errors) + len(images)} images (named above); "
          "pass PNG, JPEG or DICOM files", file=sys.stderr, flush=True)
    sys.exit(cli.EXIT_USAGE)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "image", "out"])
  cli.run_app(main)
