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


def _weighted_auroc_1d(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """AUROC [B] of one class for each weighting [B, n] of the examples.

  Mann-Whitney: every (positive, negative) pair counts w_pos * w_neg, 1 when the positive
  scores higher and 1/2 on a tie, over (sum of positive w) (sum of negative w). Integer
  weights give the AUROC of the sample with example i repeated w_i times (a bootstrap
  resample). nan where a weighting leaves one class only.
  """
  order = np.argsort(scores, kind="stable")
  s, pos, w = scores[order], positive[order], weights[:, order]
  neg_w = np.where(pos, 0.0, w)
  # Ties form contiguous runs of the sorted scores: negatives below a run, and within it.
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  run = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
  below = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg_w, axis=1)], axis=1)
  ends = np.r_[starts[1:], len(s)]
  neg_below, neg_tied = below[:, starts], below[:, ends] - below[:, starts]
  wins = (np.where(pos, w, 0.0) * (neg_below + 0.5 * neg_tied)[:, run]).sum(1)
  n_pos, n_neg = np.where(pos, w, 0.0).sum(1), neg_w.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def weighted_auroc(scores, targets, weights) -> np.ndarray:
  """float64 [B, C] AUROC per class of each weighting [B, n] of the examples."""
  scores, positive = _check(scores, targets)
  weights = np.atleast_2d(np.asarray(weights, np.float64))
  return np.stack([_weighted_auroc_1d(scores[:, c], positive[:, c], weights)
                   for c in range(scores.shape[1])], axis=1)


def auroc(scores, targets) -> np.ndarray:
  """float64 [C] AUROC per class (ties count one half); nan for a class whose targets
  hold one label only."""
  return weighted_auroc(scores, targets, np.ones((1, len(np.asarray(scores)))))[0]


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
  scores = f1_from_counts((pred & positive).sum(0), pred.sum(0), positive.sum(0))
  return {k: v if np.ndim(v) else float(v) for k, v in scores.items()}


def f1_from_counts(tp, n_pred, n_pos) -> dict[str, np.ndarray]:
  """`f1_at_thresholds`'s scores of per-class counts [..., C] (leading axes kept)."""
  tp, n_pred, n_pos = (np.asarray(x, np.float64) for x in (tp, n_pred, n_pos))
  f1 = _ratio(2 * tp, n_pred + n_pos)
  return {"precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_pos), "f1": f1,
          "macro_f1": f1.mean(-1),
          "micro_f1": _ratio(2 * tp.sum(-1), n_pred.sum(-1) + n_pos.sum(-1))}


def _ratio(num, den) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
