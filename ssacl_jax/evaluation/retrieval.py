"""Image-to-report retrieval scores from a similarity matrix (SPEC 5).

`similarity[i, j]` scores image i against report j; the true report of image i is
report i (n_img <= n_rep, so extra reports act as distractors).

- Rank of the true report: 1 + the number of other reports scoring strictly higher or
  equal (ties are resolved against the true report, so a constant similarity cannot
  score well). Recall@K = fraction of images with rank <= K; MRR = mean of 1 / rank.
- Label-based precision@K (as in CXR retrieval papers): the top-K reports of image i
  (descending similarity, ties broken by lower report index) are compared with image
  i's own report; a retrieved report is relevant when it shares at least one positive
  CheXpert label (== 1, "No Finding" included) with it. The true report counts when it
  is retrieved. K is capped at n_rep; keys keep the requested K ("precision@100").
  A query whose report has no positive label has no relevant report (precision 0).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
PRECISION_KS = (5, 10, 100)


def _check_similarity(similarity) -> np.ndarray:
  s = np.asarray(similarity, np.float64)
  if s.ndim != 2 or s.shape[0] > s.shape[1] or s.shape[0] == 0:
    raise ValueError(f"expected similarity [n_img, n_rep] with 0 < n_img <= n_rep, "
                     f"got {s.shape}")
  return s


def true_match_ranks(similarity) -> np.ndarray:
  """int [n_img] 1-based rank of report i for image i (ties count against it)."""
  s = _check_similarity(similarity)
  idx = np.arange(s.shape[0])
  true = s[idx, idx][:, None]
  ahead = (s >= true).sum(1) - 1  # every other report at least as similar
  return ahead + 1


def top_k(similarity, k: int) -> np.ndarray:
  """int [n_img, min(k, n_rep)] report indices by descending similarity, stable."""
  s = _check_similarity(similarity)
  return np.argsort(-s, axis=1, kind="stable")[:, :min(k, s.shape[1])]


def label_precision_per_query(similarity, report_labels, k: int) -> np.ndarray:
  """float [n_img]: fraction of each query's top-k reports sharing a positive label."""
  s = _check_similarity(similarity)
  positive = np.asarray(report_labels) == 1
  if positive.ndim != 2 or positive.shape[0] != s.shape[1]:
    raise ValueError(f"expected report_labels [{s.shape[1]}, C], got {positive.shape}")
  retrieved = positive[top_k(s, k)]  # [n_img, k, C]
  query = positive[:s.shape[0], None, :]
  relevant = (retrieved & query).any(-1)
  return relevant.mean(1)


def per_query_scores(similarity, report_labels=None,
                     recall_ks: Sequence[int] = RECALL_KS,
                     precision_ks: Sequence[int] = PRECISION_KS) -> dict[str, np.ndarray]:
  """Each query's share of `retrieval_metrics` (float [n_img] each): every metric is
  their mean over the queries."""
  ranks = true_match_ranks(similarity)
  out = {f"recall@{k}": (ranks <= k).astype(np.float64) for k in recall_ks}
  out["mrr"] = 1.0 / ranks
  if report_labels is not None:
    for k in precision_ks:
      out[f"precision@{k}"] = label_precision_per_query(similarity, report_labels, k)
  return out


def retrieval_metrics(similarity, report_labels=None,
                      recall_ks: Sequence[int] = RECALL_KS,
                      precision_ks: Sequence[int] = PRECISION_KS) -> dict[str, float]:
  """{"recall@K", "mrr", and with report_labels [n_rep, C] also "precision@K"}."""
  return {k: float(v.mean()) for k, v in
          per_query_scores(similarity, report_labels, recall_ks, precision_ks).items()}
