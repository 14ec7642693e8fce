"""Run a trained SS-ACL on your own chest radiograph.

  python -m ssacl_jax.predict --workdir runs/demo --image chest.png \
      [--phrase "left pleural effusion" ...] --out out/

Reads a PNG, JPEG or DICOM image, prints the generated report and the predicted
pathologies, and writes the per-region heat maps (and one per --phrase), prediction.json
and a one-page index.html into --out. The model's config and tokenizers are read from
the workdir (saved there by training).
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from input_pipeline import transforms
from ssacl_jax import anatomy, config_lib, evaluate, generate, inference, pathology_head
from ssacl_jax.evaluation import grounding, report_card

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (checkpoints, config.json).")
_IMAGES = flags.DEFINE_multi_string("image", None, "Radiograph file(s): PNG, JPEG or DICOM.")
_PHRASES = flags.DEFINE_multi_string("phrase", [], "Phrases to ground (each a heat map).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")


def load_image(path) -> np.ndarray:
  """Grey float [H, W] in [0, 1] from any supported file; a clear error otherwise."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  try:
    return transforms.decode_image_bytes(path.read_bytes())
  except transforms.BadRecord as e:
    raise ValueError(f"{path}: cannot read this image ({e}); expected a PNG, JPEG or DICOM "
                     "chest radiograph") from e


def _maps(model, images, anatomy_ids, anatomy_mask, phrase_ids, phrase_mask):
  anat = model.anatomy_attention(images, anatomy_ids, anatomy_mask)
  phrase = model.query_attention(images, model.phrase_queries(phrase_ids, phrase_mask))
  cls, mean_patch, _ = model.image_features(images)
  return anat, phrase, jnp.concatenate([cls, mean_patch], -1).astype(jnp.float32)


def predict(r: inference.Restored, workdir, image_path, phrases, out_dir) -> dict:
  c = r.config
  grey = load_image(image_path)
  resized = transforms.resize_grey(grey, c.model.image_size)
  images = transforms.normalise(resized, c.model.channels)[None]
  texts = list(phrases) or ["lungs"]
  p_ids, p_mask = evaluate.encode_batch(r.tokenizers.text, [t.lower() for t in texts],
                                        c.data.text_len, cls=False)
  anat, phrase_maps, feats = inference.jit_method(r, _maps)(images, *r.anatomy_tokens, p_ids, p_mask)
  try:
    head = pathology_head.load_head(workdir)
    labels = pathology_head.positives_from_head(head, np.asarray(feats))
    probs = pathology_head.predict_proba(head, np.asarray(feats))[0]
  except FileNotFoundError:
    head, labels, probs = None, np.zeros((1, anatomy.NUM_PATHOLOGIES), np.int8), None
  prompts, leaf_masks = evaluate.labels_to_prompt_and_mask(labels)
  dec_tok = r.tokenizers.decoder
  prompt_ids, prompt_mask = evaluate.prompt_batch(dec_tok, prompts, c.data.prompt_len)
  cfg = generate.decode_config(c.eval.decode, eos_id=dec_tok.newline_id, pad_id=dec_tok.pad_id)
  gen = generate.generate_reports(r.model, {"params": r.params}, images, *r.anatomy_tokens,
                                  jnp.asarray(leaf_masks), cfg, prompt_ids=prompt_ids,
                                  prompt_mask=prompt_mask)
  report = evaluate.decode_reports(dec_tok, gen.tokens, gen.lengths)[0]
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
  result = {"image": str(image_path), "report": report, "pathologies": pathologies,
            "pathology_probabilities": None if probs is None else dict(zip(anatomy.PATHOLOGIES, map(float, probs))),
            "regions": list(anatomy.regions_for_pathologies(pathologies)), "heatmaps": heat,
            "checkpoint_step": r.step, "pathology_head": head is not None}
  (out_dir / "prediction.json").write_text(json.dumps(result, indent=1))
  report_card.write_report_card(out_dir / "index.html", {"checkpoint step": r.step}, [dict(
      study_id=pathlib.Path(image_path).name, image=shown, heatmaps=heat, generated=report,
      reference="(none)", pathologies=", ".join(pathologies) or "none")],
      title="SS-ACL prediction")
  return result


def main(argv):
  del argv
  config = config_lib.load_workdir_config(_WORKDIR.value)
  config.mesh.shape = (-1, 1, 1)
  r = inference.restore(config, _WORKDIR.value, step=_STEP.value)
  for i, image in enumerate(_IMAGES.value):
    out = pathlib.Path(_OUT.value) / (pathlib.Path(image).stem if len(_IMAGES.value) > 1 else "")
    result = predict(r, _WORKDIR.value, image, _PHRASES.value, out)
    print(f"== {image}")
    print(f"pathologies: {', '.join(result['pathologies']) or 'none'}"
          + ("" if result["pathology_head"] else " (no pathology head in the workdir: run --mode head)"))
    print(f"report: {result['report']}")
    print(f"wrote {out / 'index.html'}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "image", "out"])
  app.run(main)
