"""What `--mode eval` writes from the per-study evaluators, to WORKDIR/eval/<split>/:

  reports.jsonl      per study: generated and reference report, predicted pathologies and
                     regions, labeler output for both, and its per-study scores
  metrics.json       language (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), clinical efficacy,
                     pathology head AUROC/F1, grounding (ours and baselines), zero-shot,
                     retrieval, and the trivial baselines of the same evaluators; "ci95":
                     study-level bootstrap intervals; "protocol": how it was scored
                     (every number: docs/EVALUATION.md)
  per_study.npz      the per-study statistics the intervals are computed from
                     (`python -m ssacl_jax.compare` reads it)
  heatmaps/*.png     per study: the image and its overlay per region and finding sentence
  report_card.html   headline numbers, all metrics, a browser over the studies
                     (config.eval.num_report_card of them; 0: all)
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from ssacl_jax import anatomy, inference
from ssacl_jax.evaluation import bootstrap, grounding, report_card
from ssacl_jax.evaluators import _studies

# The order of the evaluators' metrics in metrics.json's readers (the report card's
# table, the printed summary) and of their groups in per_study.npz; others follow.
ORDER = ("reports", "pathology_head", "grounding", "zero_shot")


def studies_scored(ctx) -> bool:
  return _studies.SCORES in ctx.cache


def write(config, ctx) -> dict:
  """metrics.json and the rest from the evaluators' scores; returns the metrics."""
  cfg = config.eval
  res, kept = ctx.cache[_studies.STUDIES], ctx.cache[_studies.SCORES]
  scores = _studies.Scores()
  for kind in sorted(kept, key=lambda k: (ORDER + (k,)).index(k)):
    scores.add(kept[kind])
  n = len(res["study_id"])
  metrics = {"step": ctx.step, "split": cfg.split, "examples": n,
             "pathology_source": cfg.pathology_source, **scores.metrics,
             "protocol": protocol(config, ctx, ctx.cache["labeler"].name)}
  if cfg.bootstrap_resamples:
    metrics["ci95"] = bootstrap.confidence_intervals(scores.groups, n, cfg.bootstrap_resamples)
  grid = config.model.image_size // config.model.patch
  out_dir = pathlib.Path(ctx.workdir) / "eval" / cfg.split
  if jax.process_index() == 0:
    about = dict(inference.provenance(ctx), **{"evaluated on": f"{cfg.split} split, "
                                               f"{metrics['examples']} studies"})
    write_outputs(out_dir, res, metrics, scores, grid, cfg, about)
  summary = {k: v for k, v in metrics.items()
             if k != "ci95" and ("/" not in k or k.count("/") == 1)}
  print(json.dumps(summary, default=float), flush=True)
  print(f"report card: {out_dir / 'report_card.html'}", flush=True)
  return metrics


def protocol(config, ctx, labeler_name: str) -> dict:
  """How the numbers were produced (metrics["protocol"]; docs/EVALUATION.md)."""
  cfg = config.eval
  return {"labeler": labeler_name, "dataset": config.data.dataset, "synthetic": config.data.dataset.startswith("synthetic"),
          "split": cfg.split, "checkpoint_step": int(ctx.step), "checkpoint_rule": ctx.step_rule,
          "lowercase": bool(cfg.lowercase), "pathology_source": cfg.pathology_source,
          "clinical_mapping": "positive = 1; uncertain, negative, blank = 0 "
                              "(clinical/uncertain_positive/*: uncertain = 1 too)",
          "grounding": "maps smoothed, resized nearest-neighbour; mIoU on [-1, 1] maps, "
                       "thresholds 0.1..0.5; pointing game: any tied maximum",
          "bootstrap": f"study-level, {cfg.bootstrap_resamples} resamples, seed {bootstrap.SEED}"}


def study_views(res, i: int, grid: int, out_dir: pathlib.Path) -> dict:
  """Study i of the report card: its image at a readable size, an overlay per region and
  per reference finding sentence (PNG files under heatmaps/, linked relative to the
  card), the two reports and their labels."""
  image = report_card.display_grey(res["raw_image"][i])
  heat_dir = out_dir / "heatmaps"
  base = heat_dir / f"{i:03d}_image.png"
  report_card.save_grey_png(image, base)
  named = [(region, res["anatomy_maps"][i, anatomy.NODE_INDEX[region]], region.replace(" ", "_"))
           for region in anatomy.REGIONS]
  named += [(f"finding: {sentence}", res["phrase_maps"][i, k], f"finding{k}")
            for k, sentence in enumerate(res["finding_sentences"][i])
            if res["finding_valid"][i, k]]
  heat = {}
  for caption, m, name in named:
    path = heat_dir / f"{i:03d}_{name}.png"
    report_card.overlay_png(image, grounding.smooth_and_resize(_studies.grid_maps(m, grid),
                                                                image.shape), path)
    heat[caption] = path.relative_to(out_dir).as_posix()
  return dict(study_id=str(res["study_id"][i]), image=base.relative_to(out_dir).as_posix(),
              heatmaps=heat, generated=str(res["generated"][i]),
              reference=str(res["reference"][i]),
              pathologies=anatomy.positive_pathologies(res["predicted"][i]),
              labels_generated=res["gen_labels"][i], labels_reference=res["ref_labels"][i])


def write_outputs(out_dir: pathlib.Path, res, metrics, scores: _studies.Scores, grid: int, cfg,
                  provenance: dict | None = None) -> None:
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
          "labels_reference": res["ref_labels"][i].tolist(),
          "scores": {k: _json_float(v[i]) for k, v in sorted(scores.per_study.items())}}) + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
  bootstrap.save(out_dir / bootstrap.FILENAME, res["study_id"], scores.groups)
  (out_dir / "heatmaps").mkdir(exist_ok=True)
  count = len(res["study_id"])
  shown = min(cfg.num_report_card, count) if cfg.num_report_card else count
  studies = [study_views(res, i, grid, out_dir) for i in range(shown)]
  report_card.write_report_card(out_dir / "report_card.html", metrics, studies,
                                title=f"SS-ACL report card: {cfg.split} split",
                                provenance=provenance)


def _json_float(v) -> float | None:
  """JSON has no NaN: an undefined per-study score (no box of that kind) is null."""
  return None if np.isnan(v) else float(v)
