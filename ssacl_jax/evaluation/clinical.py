"""Clinical efficacy (SPEC 5) from CheXpert-coded labels of generated and reference reports.

Inputs are [n, 14] arrays in anatomy.PATHOLOGIES order with the CheXpert coding
1 positive, 0 negative, -1 uncertain, -2 not mentioned. Two mappings to positive/negative:

- the release's (the default keys): only 1 is positive; uncertain, negative and blank
  are negative (the release's code does this, though its docstring says otherwise);
- uncertain = positive (1 and -1 positive), which other papers use: the same keys under
  "uncertain_positive/".

Scores, each as precision, recall and F1 (a ratio with a zero denominator is 0, and so is
F1 when precision + recall is 0):

- micro14 / micro5: counts pooled over all 14 observations / anatomy.FIVE_PATHOLOGIES;
- macro14 / macro5: per-observation precision, recall and F1 each averaged over the set,
  as sklearn's precision_recall_fscore_support(average="macro") does on multilabel input
  (so macro F1 is the mean of per-observation F1, an observation never predicted nor
  present scoring 0);
- per observation ("Edema/f1");
- example-based: per report, with G the predicted and R the reference positive set,
  precision |G & R| / |G|, recall |G & R| / |R|, F1 2 |G & R| / (|G| + |R|), each 0
  when its denominator is 0 (as in the release: a pair with no positive on either side
  scores 0), then averaged over reports.

Everything is computed from per-report counts (`study_counts`), so the bootstrap
(evaluation/bootstrap.py) recomputes the corpus scores of a resample with
`scores_from_counts` on weighted sums of the same counts.
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import anatomy

UNCERTAIN_POSITIVE = "uncertain_positive/"
MEASURES = ("precision", "recall", "f1")


def positives(labels, uncertain_positive: bool = False) -> np.ndarray:
  """bool [n, 14]: CheXpert label == 1 (or -1 too, with uncertain_positive)."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[1] != anatomy.NUM_PATHOLOGIES:
    raise ValueError(f"expected labels [n, {anatomy.NUM_PATHOLOGIES}], got {labels.shape}")
  return (labels == 1) | (uncertain_positive & (labels == -1))


def _ratio(num, den) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Elementwise precision, recall, F1 of count arrays."""
  p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
  return p, r, _ratio(2 * p * r, p + r)


def example_scores(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """float [n, 3] per-example precision, recall, F1 of bool [n, C] sets (0/0 -> 0)."""
  inter = (pred & ref).sum(1)
  n_pred, n_ref = pred.sum(1), ref.sum(1)
  return np.stack([_ratio(inter, n_pred), _ratio(inter, n_ref),
                   _ratio(2 * inter, n_pred + n_ref)], axis=1)


def study_counts(generated_labels, reference_labels,
                 uncertain_positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Per report: (counts int [n, 14, 3] of tp, fp, fn; example scores float [n, 3])."""
  pred = positives(generated_labels, uncertain_positive)
  ref = positives(reference_labels, uncertain_positive)
  if pred.shape != ref.shape:
    raise ValueError(f"label shapes differ: {pred.shape} vs {ref.shape}")
  if not len(pred):
    raise ValueError("clinical_efficacy needs at least one example")
  counts = np.stack([pred & ref, pred & ~ref, ~pred & ref], axis=-1).astype(np.int64)
  return counts, example_scores(pred, ref)


def scores_from_counts(counts, example_means) -> dict[str, np.ndarray]:
  """Scores of pooled counts [..., 14, 3] and mean example scores [..., 3].

  Leading axes are kept (one value per resample in the bootstrap); keys as in
  `clinical_efficacy`, without the mapping prefix.
  """
  counts = np.asarray(counts, np.float64)
  tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
  five = np.array([anatomy.PATHOLOGY_INDEX[p] for p in anatomy.FIVE_PATHOLOGIES])
  per_obs = _prf(tp, fp, fn)  # each [..., 14]
  out: dict[str, np.ndarray] = {}
  for name, idx in (("14", slice(None)), ("5", five)):
    micro = _prf(tp[..., idx].sum(-1), fp[..., idx].sum(-1), fn[..., idx].sum(-1))
    out.update(_named(f"micro{name}", micro))
    out.update(_named(f"macro{name}", [s[..., idx].mean(-1) for s in per_obs]))
  example_means = np.asarray(example_means, np.float64)
  out.update(_named("example", [example_means[..., k] for k in range(3)]))
  for k, obs in enumerate(anatomy.PATHOLOGIES):
    out.update(_named(obs, [s[..., k] for s in per_obs]))
  return out


def clinical_efficacy(generated_labels, reference_labels) -> dict[str, float]:
  """Clinical-efficacy scores under both mappings, flat keys (see the module docstring):

  {micro14,micro5,macro14,macro5,example,<observation>}/{precision,recall,f1} under the
  release's mapping, and the same keys prefixed with "uncertain_positive/".
  """
  out: dict[str, float] = {}
  for prefix, uncertain_positive in (("", False), (UNCERTAIN_POSITIVE, True)):
    counts, examples = study_counts(generated_labels, reference_labels, uncertain_positive)
    scores = scores_from_counts(counts.sum(0), examples.mean(0))
    out.update({prefix + k: float(v) for k, v in scores.items()})
  return out


def _named(prefix: str, prf) -> dict:
  return {f"{prefix}/{m}": v for m, v in zip(MEASURES, prf)}
