"""Clinical efficacy (SPEC 5) from CheXpert-coded labels of generated and reference reports.

Inputs are [n, 14] arrays in anatomy.PATHOLOGIES order with the CheXpert coding
1 positive, 0 negative, -1 uncertain, -2 not mentioned. Only 1 counts as positive;
uncertain and everything else count as negative, as the release does.

Conventions for zero denominators:
- micro and per-observation scores: a ratio with a zero denominator is 0 (e.g. precision
  of an observation that is never predicted), and F1 is 0 when precision + recall is 0.
- example-based scores: per example, with G the predicted positive set and R the
  reference positive set, precision = |G & R| / |G|, recall = |G & R| / |R|,
  F1 = 2 |G & R| / (|G| + |R|); when both sets are empty the example scores 1 on all
  three (full agreement), and when only the denominator's set is empty the ratio is 0.
  Each of P, R, F1 is then averaged over examples (so the example F1 is the mean of
  per-example F1, not the harmonic mean of the averaged P and R). "No Finding" is one of
  the 14 observations, so empty sets are rare in practice.
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import anatomy


def positives(labels) -> np.ndarray:
  """bool [n, 14]: CheXpert label == 1."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] != anatomy.NUM_PATHOLOGIES:
    raise ValueError(f"expected labels [n, {anatomy.NUM_PATHOLOGIES}], got {labels.shape}")
  return labels == 1


def _ratio(num, den) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _prf(tp, fp, fn) -> tuple[float, float, float]:
  p, r = float(_ratio(tp, tp + fp)), float(_ratio(tp, tp + fn))
  return p, r, float(_ratio(2 * p * r, p + r))


def _counts(pred: np.ndarray, ref: np.ndarray):
  """Per-observation (tp, fp, fn), each int [14]."""
  return ((pred & ref).sum(0), (pred & ~ref).sum(0), (~pred & ref).sum(0))


def example_based(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
  """Mean per-example precision, recall, F1 of bool [n, C] sets (see module docstring)."""
  inter = (pred & ref).sum(1)
  n_pred, n_ref = pred.sum(1), ref.sum(1)
  both_empty = (n_pred == 0) & (n_ref == 0)
  p = np.where(both_empty, 1.0, _ratio(inter, n_pred))
  r = np.where(both_empty, 1.0, _ratio(inter, n_ref))
  f = np.where(both_empty, 1.0, _ratio(2 * inter, n_pred + n_ref))
  return float(p.mean()), float(r.mean()), float(f.mean())


def clinical_efficacy(generated_labels, reference_labels) -> dict[str, float]:
  """Clinical-efficacy scores, flat keys:

  micro14/{precision,recall,f1}   micro over all 14 observations
  micro5/{precision,recall,f1}    micro over anatomy.FIVE_PATHOLOGIES
  example/{precision,recall,f1}   example-based (see module docstring)
  {observation}/{precision,recall,f1}  per observation, e.g. "Edema/f1"
  """
  pred, ref = positives(generated_labels), positives(reference_labels)
  if pred.shape != ref.shape:
    raise ValueError(f"label shapes differ: {pred.shape} vs {ref.shape}")
  if not len(pred):
    raise ValueError("clinical_efficacy needs at least one example")
  tp, fp, fn = _counts(pred, ref)
  five = np.array([anatomy.PATHOLOGY_INDEX[p] for p in anatomy.FIVE_PATHOLOGIES])
  groups = {"micro14": slice(None), "micro5": five}
  out: dict[str, float] = {}
  for name, idx in groups.items():
    scores = _prf(tp[idx].sum(), fp[idx].sum(), fn[idx].sum())
    out.update(_named(name, scores))
  out.update(_named("example", example_based(pred, ref)))
  for k, obs in enumerate(anatomy.PATHOLOGIES):
    out.update(_named(obs, _prf(tp[k], fp[k], fn[k])))
  return out


def _named(prefix: str, prf: tuple[float, float, float]) -> dict[str, float]:
  return {f"{prefix}/{m}": v for m, v in zip(("precision", "recall", "f1"), prf)}
