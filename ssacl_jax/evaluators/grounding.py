"""Grounding: how well the model's maps fall on the boxes of the eval split's studies, for
leaves (anatomy maps) and findings (each reference finding sentence as a query), beside
the class token's attention and random maps (CNR, mIoU, pointing game). With
config.eval.dataset a phrase grounding set (ms_cxr), that set's phrases instead
(_phrase_grounding.py), written to WORKDIR/eval/<dataset>/<split>/.
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import anatomy
from ssacl_jax.evaluation import bootstrap, grounding
from ssacl_jax.evaluators import _phrase_grounding, _studies


def run(config, ctx, settings) -> dict:
  del settings
  if not _studies.applies(config):
    return _phrase_grounding.evaluate(config, ctx)
  res = _studies.studies(config, ctx)
  grid = config.model.image_size // config.model.patch
  return _studies.keep(ctx, "grounding", grounding_metrics(res, grid, res["raw_image"].shape[1:]))


def grounding_metrics(res, grid: int, image_hw, seed: int = 0) -> _studies.Scores:
  """Ours vs. random-map and CLS-attention baselines, for leaves and findings."""
  out, n = _studies.Scores(), len(res["study_id"])
  has = res["has_boxes"].astype(bool)
  if not has.any():
    return out
  studies = np.nonzero(has)[0]
  leaf_maps = _studies.grid_maps(res["anatomy_maps"][has][:, anatomy.leaf_node_indices()], grid)
  cls_map = _studies.grid_maps(res["anatomy_maps"][has][:, -1:], grid)
  leaf_boxes, finding_boxes = res["leaf_boxes"][has], res["finding_boxes"][has]
  leaf_valid = np.ones(leaf_boxes.shape[:2], bool)
  finding_valid = res["finding_valid"][has] & (np.abs(finding_boxes).sum(-1) > 0)
  phrase_maps = _studies.grid_maps(res["phrase_maps"][has], grid)
  rng = np.random.default_rng(seed)
  for name, maps, boxes, valid in (("leaves", leaf_maps, leaf_boxes, leaf_valid),
                                   ("findings", phrase_maps, finding_boxes, finding_valid)):
    if not valid.any():
      continue
    cls = np.broadcast_to(cls_map, maps.shape)
    for source, m in (("ours", maps), ("cls_attention", cls), ("random", rng.random(maps.shape))):
      prefix = f"grounding/{name}/{source}/"
      pairs = grounding.grounding_pair_scores(m, boxes, valid, image_hw)
      pairs["example"] = studies[pairs["example"]]
      group = bootstrap.pair_group(prefix, pairs, n)
      means = bootstrap.draws([group], bootstrap.identity(n))
      out.metrics.update({k: float(v[0]) for k, v in means.items()})
      out.metrics[prefix + "count"] = len(pairs["example"])
      out.groups.append(group)
      sums, counts = group.arrays["sums"], group.arrays["counts"]
      out.per_study.update({prefix + str(k): np.divide(
          sums[:, c], counts[:, c], out=np.full(n, np.nan), where=counts[:, c] > 0)
          for c, k in enumerate(group.arrays["names"])})
  return out
