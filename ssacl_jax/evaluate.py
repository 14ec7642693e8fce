"""Evaluation (`--mode eval`): restore, generate reports, ground them, score them.

Writes WORKDIR/eval/<split>/:
  reports.jsonl      per study: generated and reference report, predicted pathologies and
                     regions, labeler output for both
  metrics.json       language (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), clinical efficacy,
                     pathology head AUROC/F1, grounding (ours and baselines), zero-shot,
                     retrieval, and the trivial baselines of the same evaluators
  heatmaps/*.png     per-region overlays for a sample of studies
  report_card.html   the sample side by side, metrics on top
"""
from __future__ import annotations

import collections
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import features as features_lib, labeler as labeler_lib
from ssacl_jax import anatomy, generate, inference, pathology_head
from ssacl_jax.evaluation import (classification, clinical, grounding, language, report_card,
                                  retrieval, zero_shot)

ORACLE = "oracle_reference_labels"
HEAD = "head"


# ----------------------------------------------------------------------------- text helpers
def encode_batch(tok, texts, length: int, cls: bool = True):
  """Texts -> (ids [n, length], mask [n, length]) for the text encoder; cls False for
  grounding phrases, which are encoded like the leaf names they stand in for."""
  from input_pipeline import tokenizers as tok_lib
  pairs = [tok_lib.encode_text(tok, t, length, cls) for t in texts]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def prompt_batch(tok, prompts, prompt_len: int):
  """Pathology prompts -> right-padded decoder ids [n, prompt_len + 1] ending in newline."""
  ids = np.full((len(prompts), prompt_len + 1), tok.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, text in enumerate(prompts):
    if text:
      row = tok.encode(text)[:prompt_len] + [tok.newline_id]
      ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask


def decode_reports(tok, tokens, lengths) -> list[str]:
  out = []
  for row, n in zip(np.asarray(tokens), np.asarray(lengths)):
    # Ids past the tokenizer's vocabulary (the model's table may be larger) are dropped.
    row = [int(t) for t in row[:int(n)] if int(t) != tok.newline_id and int(t) < tok.vocab_size]
    out.append(tok.decode(row).strip())
  return out


def labels_to_prompt_and_mask(labels):
  prompts = [anatomy.prompt_text(l) for l in labels]
  masks = np.stack([anatomy.leaf_mask_from_labels(l) for l in labels]).astype(np.int32)
  return prompts, masks


# ----------------------------------------------------------------------------- model calls
def _maps_and_embeddings(model, images, anatomy_ids, anatomy_mask, phrase_ids, phrase_mask):
  """Anatomy maps [B, G+1, N], phrase maps [B, F+1, N], image emb [B, Dt]."""
  b = images.shape[0]
  anat = model.anatomy_attention(images, anatomy_ids, anatomy_mask)
  phrase_q = model.phrase_queries(phrase_ids, phrase_mask).reshape(b, -1, model.config.encoder.width)
  phrase = model.query_attention(images, phrase_q)
  cls, mean_patch, image_emb = model.image_features(images)
  feats = jnp.concatenate([cls, mean_patch], axis=-1).astype(jnp.float32)
  return anat, phrase, image_emb.astype(jnp.float32), feats


def _text_embeddings(model, ids, mask):
  return model.encode_text(ids, mask).astype(jnp.float32)


# ----------------------------------------------------------------------------- main loop
def collect(r: inference.Restored, split: str, head, cfg) -> dict:
  """Run every model output the evaluators need over a split (valid rows only)."""
  m, d = r.config.model, r.config.data
  text_tok, dec_tok = r.tokenizers
  maps_fn = inference.jit_method(r, _maps_and_embeddings)
  text_fn = inference.jit_method(r, _text_embeddings)
  decode_cfg = generate.decode_config(cfg.decode, eos_id=dec_tok.newline_id, pad_id=dec_tok.pad_id)
  out = collections.defaultdict(list)
  for batch, local in inference.eval_batches(r, split, max_examples=cfg.max_examples or None):
    valid = np.asarray(local["valid"], bool)
    b = len(valid)
    sentences = [[s or "" for s in row] for row in local["finding_sentences"]]
    flat = [s for row in sentences for s in row]
    p_ids, p_mask = encode_batch(text_tok, flat, min(d.anatomy_len * 4, m.text.max_len), cls=False)
    anat, phrase, image_emb, feats = maps_fn(batch["image"], *r.anatomy_tokens, p_ids, p_mask)
    feats = np.asarray(inference.gather(feats))
    if cfg.pathology_source == ORACLE:
      predicted = np.asarray(local["labels"])
    else:
      predicted = pathology_head.positives_from_head(head, feats)
      out["head_proba"].append(pathology_head.predict_proba(head, feats)[valid])
    prompts, leaf_masks = labels_to_prompt_and_mask(predicted)
    prompt_ids, prompt_mask = prompt_batch(dec_tok, prompts, d.prompt_len)
    gen = generate.generate_reports(r.model, {"params": r.params}, batch["image"],
                                    *r.anatomy_tokens, jnp.asarray(leaf_masks), decode_cfg,
                                    prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    reports = decode_reports(dec_tok, inference.gather(gen.tokens), inference.gather(gen.lengths))
    ref_ids, ref_mask = encode_batch(text_tok, [str(t).lower() for t in local["report"]], d.text_len)
    report_emb = text_fn(ref_ids, ref_mask)
    rows = dict(
        study_id=np.asarray(local["study_id"], object), reference=np.asarray(local["report"], object),
        generated=np.asarray(reports, object), predicted=predicted, labels=np.asarray(local["labels"]),
        anatomy_maps=np.asarray(anat), phrase_maps=np.asarray(phrase)[:, :-1],
        leaf_boxes=np.asarray(local["leaf_boxes"]), finding_boxes=np.asarray(local["finding_boxes"]),
        has_boxes=np.asarray(local["has_boxes"]), raw_image=np.asarray(local["raw_image"]),
        finding_valid=np.array([[bool(s) for s in row] for row in sentences]),
        image_emb=np.asarray(image_emb), report_emb=np.asarray(report_emb))
    for k, v in rows.items():
      out[k].append(v[valid] if len(v) == b else v)
  return {k: np.concatenate(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- metrics
def grid_maps(maps, grid: int):
  return maps.reshape(*maps.shape[:-1], grid, grid)


def grounding_metrics(res, grid: int, image_hw, seed: int = 0) -> dict:
  """Ours vs. random-map and CLS-attention baselines, for leaves and findings."""
  has = res["has_boxes"].astype(bool)
  if not has.any():
    return {}
  leaf_maps = grid_maps(res["anatomy_maps"][has][:, anatomy.leaf_node_indices()], grid)
  cls_map = grid_maps(res["anatomy_maps"][has][:, -1:], grid)
  leaf_boxes, finding_boxes = res["leaf_boxes"][has], res["finding_boxes"][has]
  leaf_valid = np.ones(leaf_boxes.shape[:2], bool)
  finding_valid = res["finding_valid"][has] & (np.abs(finding_boxes).sum(-1) > 0)
  phrase_maps = grid_maps(res["phrase_maps"][has], grid)
  rng = np.random.default_rng(seed)
  rand = lambda shape: rng.random(shape)
  out = {}
  for name, maps, boxes, valid in (("leaves", leaf_maps, leaf_boxes, leaf_valid),
                                   ("findings", phrase_maps, finding_boxes, finding_valid)):
    if not valid.any():
      continue
    cls = np.broadcast_to(cls_map, maps.shape)
    for source, m in (("ours", maps), ("cls_attention", cls), ("random", rand(maps.shape))):
      scores = grounding.grounding_scores(m, boxes, valid, image_hw)
      out.update({f"grounding/{name}/{source}/{k}": float(v) for k, v in scores.items()})
  return out


def language_and_clinical(generated, references, gen_labels, ref_labels, prefix: str) -> dict:
  out = {f"{prefix}language/{k}": v for k, v in language.language_metrics(generated, references).items()}
  out.update({f"{prefix}clinical/{k}": v for k, v in clinical.clinical_efficacy(gen_labels, ref_labels).items()})
  return out


def most_frequent_report(r: inference.Restored) -> str:
  from ssacl_jax import data as data_lib
  source = data_lib.load_source(r.config, r.config.data.train_split)
  counts = collections.Counter(features_lib.as_text(source[i]["report"]) for i in range(len(source)))
  return counts.most_common(1)[0][0]


def zero_shot_and_retrieval(r, res, text_fn) -> dict:
  text_tok = r.tokenizers.text

  def encode_text(texts):
    ids, mask = encode_batch(text_tok, [t.lower() for t in texts], r.config.data.text_len)
    return np.asarray(text_fn(ids, mask))

  classes = [p for p in anatomy.PATHOLOGIES if p != "No Finding"]
  scores = zero_shot.zero_shot_scores(res["image_emb"], encode_text, [c.lower() for c in classes])
  targets = res["labels"][:, [anatomy.PATHOLOGY_INDEX[c] for c in classes]] == 1
  aucs = classification.auroc(scores, targets)
  out = {f"zero_shot/auroc/{c}": float(a) for c, a in zip(classes, aucs)}
  out["zero_shot/auroc_mean"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
  sim = zero_shot.l2_normalise(res["image_emb"]) @ zero_shot.l2_normalise(res["report_emb"]).T
  out.update({f"retrieval/{k}": float(v) for k, v in
              retrieval.retrieval_metrics(sim, res["labels"] == 1).items()})
  return out


# ----------------------------------------------------------------------------- outputs
def write_outputs(out_dir: pathlib.Path, res, metrics, grid: int, cfg) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "reports.jsonl", "w") as f:
    for i in range(len(res["study_id"])):
      pred = res["predicted"][i]
      f.write(json.dumps({
          "study_id": str(res["study_id"][i]), "generated": str(res["generated"][i]),
          "reference": str(res["reference"][i]),
          "predicted_pathologies": list(anatomy.positive_pathologies(pred)),
          "predicted_regions": list(anatomy.regions_for_pathologies(anatomy.positive_pathologies(pred))),
          "labels_dataset": res["labels"][i].tolist(),
          "labels_generated": res["gen_labels"][i].tolist(),
          "labels_reference": res["ref_labels"][i].tolist()}) + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
  studies = []
  heat_dir = out_dir / "heatmaps"
  heat_dir.mkdir(exist_ok=True)
  for i in range(min(cfg.num_report_card, len(res["study_id"]))):
    image = res["raw_image"][i]
    heat = {}
    for region in anatomy.REGIONS:
      m = grid_maps(res["anatomy_maps"][i, anatomy.NODE_INDEX[region]], grid)
      full = grounding.smooth_and_resize(m, image.shape)
      path = heat_dir / f"{i:03d}_{region.replace(' ', '_')}.png"
      report_card.overlay_png(image, full, path)
      heat[region] = str(path.relative_to(out_dir))
    studies.append(dict(study_id=str(res["study_id"][i]), image=image, heatmaps=heat,
                        generated=str(res["generated"][i]), reference=str(res["reference"][i]),
                        pathologies=", ".join(anatomy.positive_pathologies(res["predicted"][i])) or "none"))
  report_card.write_report_card(out_dir / "report_card.html", metrics, studies)


def evaluate(config, workdir) -> dict:
  cfg = config.eval
  r = inference.restore(config, workdir, step=cfg.checkpoint_step)
  head = None
  if cfg.pathology_source == HEAD:
    head = pathology_head.load_head(workdir)
  elif cfg.pathology_source != ORACLE:
    raise ValueError(f"config.eval.pathology_source must be {HEAD!r} or {ORACLE!r}")
  res = collect(r, cfg.split, head, cfg)
  labeler = labeler_lib.default_labeler()
  res["gen_labels"] = labeler.label_many(list(res["generated"]))
  res["ref_labels"] = labeler.label_many(list(res["reference"]))
  grid = config.model.image_size // config.model.patch
  metrics = {"step": r.step, "split": cfg.split, "examples": int(len(res["study_id"])),
             "pathology_source": cfg.pathology_source}
  metrics.update(language_and_clinical(list(res["generated"]), list(res["reference"]),
                                       res["gen_labels"], res["ref_labels"], ""))
  frequent = most_frequent_report(r)
  n = len(res["reference"])
  metrics.update(language_and_clinical([frequent] * n, list(res["reference"]),
                                       np.repeat(labeler.label_many([frequent]), n, 0),
                                       res["ref_labels"], "baseline_most_frequent/"))
  if head is not None:
    targets = res["labels"] == 1
    metrics["pathology_head/auroc_mean"] = float(classification.mean_auroc(res["head_proba"], targets))
    f1 = classification.f1_at_thresholds(res["head_proba"], targets, head["thresholds"])
    metrics.update({f"pathology_head/{k}": float(v) for k, v in f1.items() if np.ndim(v) == 0})
  metrics.update(grounding_metrics(res, grid, res["raw_image"].shape[1:]))
  metrics.update(zero_shot_and_retrieval(r, res, inference.jit_method(r, _text_embeddings)))
  out_dir = pathlib.Path(workdir) / "eval" / cfg.split
  if jax.process_index() == 0:
    write_outputs(out_dir, res, metrics, grid, cfg)
  summary = {k: v for k, v in metrics.items() if "/" not in k or k.count("/") == 1}
  print(json.dumps(summary, default=float), flush=True)
  print(f"report card: {out_dir / 'report_card.html'}", flush=True)
  return metrics
