"""Zero-shot pathology AUROC from image and prompt embeddings, and image-to-report
retrieval (Recall@K, MRR, label precision) over the eval split's studies."""
from __future__ import annotations

import numpy as np

from ssacl_jax import anatomy, inference, losses
from ssacl_jax.evaluation import bootstrap, classification, retrieval, zero_shot
from ssacl_jax.evaluators import _studies


def run(config, ctx, settings) -> dict:
  del settings
  if not _studies.applies(config):
    return {}
  res = _studies.studies(config, ctx)
  text_fn = inference.jit_method(ctx, inference.text_embeddings)
  return _studies.keep(ctx, "zero_shot", zero_shot_and_retrieval(ctx, res, text_fn))


def zero_shot_and_retrieval(r, res, text_fn) -> _studies.Scores:
  text_tok = r.tokenizers.text

  def encode_text(texts):
    ids, mask = inference.encode_batch(text_tok, [t.lower() for t in texts], r.config.data.text_len)
    return np.asarray(text_fn(ids, mask))

  classes = [p for p in anatomy.PATHOLOGIES if p != "No Finding"]
  scores = zero_shot.zero_shot_scores(res["image_emb"], encode_text, [c.lower() for c in classes])
  targets = res["labels"][:, [anatomy.PATHOLOGY_INDEX[c] for c in classes]] == 1
  aucs = classification.auroc(scores, targets)
  out = _studies.Scores({f"zero_shot/auroc/{c}": float(a) for c, a in zip(classes, aucs)})
  out.metrics["zero_shot/auroc_mean"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
  out.groups.append(bootstrap.classifier_group("zero_shot/", scores, targets, classes))
  sim = losses.l2_normalize(res["image_emb"]) @ losses.l2_normalize(res["report_emb"]).T
  per_query = {f"retrieval/{k}": v for k, v in
               retrieval.per_query_scores(sim, res["labels"] == 1).items()}
  out.metrics.update({k: float(v.mean()) for k, v in per_query.items()})
  out.groups.append(bootstrap.ratio_group("", per_query))
  out.per_study.update(per_query)
  return out
