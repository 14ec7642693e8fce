"""Multi-label classification scores: AUROC and F1 at validation-picked thresholds.

`scores` and `targets` are [n, C]. A target counts as positive where it equals 1 and
negative otherwise, so CheXpert-coded arrays (1/0/-1/-2) behave as in clinical.py.
"""
from __future__ import annotations

import numpy as np


def _check(scores, targets) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(targets) == 1
  if scores.ndim != 2 or scores.shape != positive.shape:
    raise ValueError(f"expected matching [n, C] scores and targets, got "
                     f"{scores.shape} and {positive.shape}")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN")
  return scores, positive


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of a 1-D array, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
  return ranks


def _auroc_1d(scores: np.ndarray, positive: np.ndarray) -> float:
  """Mann-Whitney U / (n_pos n_neg); ties count one half. nan with one class only."""
  n_pos = int(positive.sum())
  n_neg = len(positive) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  rank_sum = average_ranks(scores)[positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(scores, targets) -> np.ndarray:
  """float64 [C] AUROC per class; nan for a class whose targets hold one label only."""
  scores, positive = _check(scores, targets)
  return np.array([_auroc_1d(scores[:, c], positive[:, c]) for c in range(scores.shape[1])])


def mean_auroc(scores, targets) -> float:
  """Mean AUROC over the classes where it is defined (nan when none is)."""
  per_class = auroc(scores, targets)
  valid = ~np.isnan(per_class)
  return float(per_class[valid].mean()) if valid.any() else float("nan")


def _best_threshold_1d(scores: np.ndarray, positive: np.ndarray) -> float:
  """Threshold t maximising F1 of `scores >= t`; the highest such t on ties.

  Candidate thresholds are the distinct scores. With no positive at all every
  threshold scores F1 = 0, and the one returned predicts nothing.
  """
  if not positive.any():
    return float(np.nextafter(scores.max(), np.inf))
  order = np.argsort(-scores, kind="stable")
  s, pos = scores[order], positive[order]
  tp = np.cumsum(pos)
  n_pred = np.arange(1, len(s) + 1)
  last_of_group = np.append(s[1:] != s[:-1], True)  # cut only between distinct scores
  f1 = 2.0 * tp / (n_pred + pos.sum())
  f1 = np.where(last_of_group, f1, -1.0)
  return float(s[int(np.argmax(f1))])


def pick_thresholds(scores, targets) -> np.ndarray:
  """float64 [C] per-class thresholds maximising F1 of `scores >= t` (use on validation)."""
  scores, positive = _check(scores, targets)
  return np.array([_best_threshold_1d(scores[:, c], positive[:, c])
                   for c in range(scores.shape[1])])


def f1_at_thresholds(scores, targets, thresholds) -> dict[str, np.ndarray | float]:
  """Scores of `scores >= thresholds` (per class).

  Returns precision, recall, f1 (float64 [C] each; 0 where a denominator is 0),
  macro_f1 (mean of per-class F1) and micro_f1 (from counts pooled over classes).
  """
  scores, positive = _check(scores, targets)
  thresholds = np.asarray(thresholds, np.float64)
  if thresholds.shape != (scores.shape[1],):
    raise ValueError(f"expected {scores.shape[1]} thresholds, got {thresholds.shape}")
  pred = scores >= thresholds
  tp = (pred & positive).sum(0).astype(np.float64)
  n_pred, n_pos = pred.sum(0), positive.sum(0)
  precision, recall = _ratio(tp, n_pred), _ratio(tp, n_pos)
  f1 = _ratio(2 * tp, n_pred + n_pos)
  micro = float(_ratio(2 * tp.sum(), n_pred.sum() + n_pos.sum()))
  return {"precision": precision, "recall": recall, "f1": f1,
          "macro_f1": float(f1.mean()), "micro_f1": micro}


def _ratio(num, den) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
