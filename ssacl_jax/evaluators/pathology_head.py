"""The pathology head's evaluator: AUROC and F1 at its thresholds of the head's
probabilities on the eval split (pathology_head/auroc_mean, ...). The head itself, fitted
when WORKDIR has none, is ssacl_jax/pathology_head.py.
"""
from __future__ import annotations

import numpy as np

from ssacl_jax.evaluation import bootstrap, classification
from ssacl_jax.evaluators import _studies


def run(config, ctx, settings) -> dict:
  del settings
  if not (_studies.applies(config) and config.eval.pathology_source == _studies.PATHOLOGY_HEAD):
    return {}
  res = _studies.studies(config, ctx)
  return _studies.keep(ctx, "pathology_head", metrics(ctx.cache["pathology_head"], res))


def metrics(head, res) -> _studies.Scores:
  targets = res["labels"] == 1
  out = _studies.Scores({"pathology_head/auroc_mean": float(classification.mean_auroc(res["head_proba"], targets))})
  f1 = classification.f1_at_thresholds(res["head_proba"], targets, head["thresholds"])
  out.metrics.update({f"pathology_head/{k}": float(v) for k, v in f1.items() if np.ndim(v) == 0})
  out.groups.append(bootstrap.classifier_group("pathology_head/", res["head_proba"], targets,
                                               thresholds=head["thresholds"]))
  return out
