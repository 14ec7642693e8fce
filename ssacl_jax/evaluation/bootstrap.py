"""Study-level bootstrap: 95% intervals of every metric, and paired run comparison.

The studies are resampled with replacement (NUM_RESAMPLES resamples of all n studies,
fixed SEED), every metric is recomputed on each resample, and the interval is the 2.5th
and 97.5th percentile of the recomputed values. Recomputing stays cheap because each
metric is kept as per-study statistics in a `Group`, from which a resample's value
follows exactly (a resample is a weighting of the studies: how often each was drawn):

  bleu        coco-caption's per-study n-gram counts: BLEU_1..4 of the weighted sums
  cider       per-study n-gram counts: CIDEr-D with the resample's document frequencies
  clinical    per-study tp/fp/fn per observation and example scores: micro, macro,
              per-observation and example-based scores of the weighted sums
  ratio       per-study sums and counts (ROUGE-L, METEOR, grounding pairs, retrieval
              queries): weighted sum / weighted count, plus a fixed offset
  classifier  per-study scores and targets: weighted AUROC (and F1 at fixed thresholds)

Two approximations, both documented in docs/EVALUATION.md: METEOR's corpus score comes
from Java statistics we do not keep, so its interval is that of the mean per-study
METEOR, shifted by (corpus - mean); retrieval ranks each resampled query against the
full gallery (not a resampled one).

`paired_differences` applies the same resamples to two runs over the same studies.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from ssacl_jax.evaluation import classification, clinical, language

NUM_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
FILENAME = "per_study.npz"


@dataclasses.dataclass
class Group:
  """Per-study statistics of some metrics; each array's first axis is the study."""
  kind: str
  prefix: str             # key prefix of its metrics, e.g. "language/"
  arrays: dict[str, np.ndarray]


@dataclasses.dataclass
class Resamples:
  indices: np.ndarray     # int [B, n]: the studies drawn
  weights: np.ndarray     # float [B, n]: how often each study was drawn


def resamples(n: int, num: int = NUM_RESAMPLES, seed: int = SEED) -> Resamples:
  indices = np.random.default_rng(seed).integers(0, n, size=(num, n))
  weights = np.stack([np.bincount(row, minlength=n) for row in indices]).astype(np.float64)
  return Resamples(indices, weights)


def identity(n: int) -> Resamples:
  """The original sample as a single resample: its values are the point estimates."""
  return Resamples(np.arange(n)[None], np.ones((1, n)))


# ----------------------------------------------------------------------------- groups
def ratio_group(prefix: str, values: dict[str, np.ndarray], offsets=None) -> Group:
  """Metrics that are means over studies of per-study values [n] (nan: not defined)."""
  names = list(values)
  v = np.stack([np.asarray(values[k], np.float64) for k in names], axis=1)
  offsets = offsets or {}
  return Group("ratio", prefix, {
      "sums": np.nan_to_num(v), "counts": (~np.isnan(v)).astype(np.float64),
      "names": np.array(names), "offset": np.array([offsets.get(k, 0.0) for k in names])})


def pair_group(prefix: str, pairs: dict[str, np.ndarray], n: int) -> Group:
  """Means over pairs (grounding: `grounding.grounding_pair_scores`) grouped by study."""
  names = [k for k in pairs if k != "example"]
  sums, counts = np.zeros((n, len(names))), np.zeros((n, len(names)))
  for c, k in enumerate(names):
    v = np.asarray(pairs[k], np.float64)
    ok = ~np.isnan(v)
    np.add.at(sums[:, c], pairs["example"][ok], v[ok])
    np.add.at(counts[:, c], pairs["example"][ok], 1.0)
  return Group("ratio", prefix, {"sums": sums, "counts": counts, "names": np.array(names),
                                 "offset": np.zeros(len(names))})


def language_groups(prefix: str, generated, references, per_study: dict[str, np.ndarray],
                    corpus: dict[str, float], lowercase: bool) -> list[Group]:
  """BLEU and CIDEr exactly; ROUGE-L as a mean; METEOR as a mean shifted to the corpus."""
  stats = language.study_statistics(generated, references, lowercase)
  groups = [Group("bleu", prefix, {"stats": stats.pop("bleu")}), Group("cider", prefix, stats)]
  means = {k: per_study[k] for k in ("ROUGE_L", "METEOR") if k in per_study}
  offsets = {"METEOR": corpus["METEOR"] - per_study["METEOR"].mean()} if "METEOR" in means else {}
  return groups + [ratio_group(prefix, means, offsets)]


def clinical_groups(prefix: str, generated_labels, reference_labels) -> list[Group]:
  groups = []
  for sub, uncertain_positive in (("", False), (clinical.UNCERTAIN_POSITIVE, True)):
    counts, examples = clinical.study_counts(generated_labels, reference_labels,
                                             uncertain_positive)
    groups.append(Group("clinical", prefix + sub, {"counts": counts, "examples": examples}))
  return groups


def classifier_group(prefix: str, scores, targets, class_names=(), thresholds=None) -> Group:
  """AUROC per class (when named) and its mean; macro and micro F1 at fixed thresholds."""
  arrays = {"scores": np.asarray(scores, np.float64), "targets": np.asarray(targets) == 1,
            "names": np.array(list(class_names), dtype=str)}
  if thresholds is not None:
    arrays["thresholds"] = np.asarray(thresholds, np.float64)
  return Group("classifier", prefix, arrays)


# ----------------------------------------------------------------------------- draws
def _bleu(a, r: Resamples) -> dict:
  bleu = language.bleu_from_stats(r.weights @ a["stats"])
  return {f"BLEU_{k + 1}": bleu[:, k] for k in range(language.MAX_N)}


def _cider(a, r: Resamples) -> dict:
  return {"CIDEr": language.cider_from_statistics(a, r.weights)}


def _clinical(a, r: Resamples) -> dict:
  n = len(a["counts"])
  counts = (r.weights @ a["counts"].reshape(n, -1)).reshape(-1, *a["counts"].shape[1:])
  examples = r.weights @ a["examples"] / r.weights.sum(1, keepdims=True)
  return clinical.scores_from_counts(counts, examples)


def _ratio(a, r: Resamples) -> dict:
  sums, counts = r.weights @ a["sums"], r.weights @ a["counts"]
  means = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
  means = means + a["offset"]
  return {str(k): means[:, c] for c, k in enumerate(a["names"])}


def _classifier(a, r: Resamples) -> dict:
  aucs = classification.weighted_auroc(a["scores"], a["targets"], r.weights)
  out = {f"auroc/{name}": aucs[:, c] for c, name in enumerate(a["names"])}
  defined = ~np.isnan(aucs)
  out["auroc_mean"] = np.divide(np.nansum(aucs, 1), defined.sum(1),
                                out=np.full(len(aucs), np.nan), where=defined.any(1))
  if "thresholds" in a:
    pred, positive = a["scores"] >= a["thresholds"], a["targets"]
    f1 = classification.f1_from_counts(r.weights @ (pred & positive), r.weights @ pred,
                                       r.weights @ positive)
    out.update(macro_f1=f1["macro_f1"], micro_f1=f1["micro_f1"])
  return out


DRAWS = {"bleu": _bleu, "cider": _cider, "clinical": _clinical, "ratio": _ratio,
         "classifier": _classifier}


def draws(groups: list[Group], r: Resamples) -> dict[str, np.ndarray]:
  """Every metric of every group on every resample: {key: float [B]}."""
  out = {}
  for g in groups:
    out.update({g.prefix + k: np.asarray(v, np.float64) for k, v in DRAWS[g.kind](g.arrays, r).items()})
  return out


def intervals(values: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, list[float]]:
  """Percentile intervals, {key: [low, high]}; resamples where a metric is undefined
  (nan, e.g. an AUROC without positives) are left out; [nan, nan] when all are."""
  tail = 100 * (1 - level) / 2
  out = {}
  for k, v in values.items():
    v = v[~np.isnan(v)]
    out[k] = ([float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
              if v.size else [float("nan"), float("nan")])
  return out


def confidence_intervals(groups: list[Group], n: int, num: int = NUM_RESAMPLES,
                         seed: int = SEED) -> dict[str, list[float]]:
  return intervals(draws(groups, resamples(n, num, seed)))


# ----------------------------------------------------------------------------- comparison
def paired_differences(groups_a: list[Group], groups_b: list[Group], n: int,
                       num: int = NUM_RESAMPLES, seed: int = SEED) -> dict[str, dict]:
  """Per metric of both runs: difference A - B on the full set, its paired-bootstrap 95%
  interval, and the two-sided bootstrap p-value of "no difference":
  p = min(1, 2 * min(share of resampled differences <= 0, share >= 0)), each share
  counted as (k + 1) / (B + 1) so that p is never 0."""
  point_a, point_b = draws(groups_a, identity(n)), draws(groups_b, identity(n))
  r = resamples(n, num, seed)
  a, b = draws(groups_a, r), draws(groups_b, r)
  out = {}
  for k in sorted(a.keys() & b.keys()):
    d = a[k] - b[k]
    d = d[~np.isnan(d)]
    if not d.size:
      continue
    share = lambda hits: (hits + 1) / (d.size + 1)
    p = min(1.0, 2 * min(share((d <= 0).sum()), share((d >= 0).sum())))
    out[k] = {"difference": float(point_a[k][0] - point_b[k][0]),
              "ci95": intervals({k: d})[k], "p_value": float(p)}
  return out


# The arrays of each kind whose first axis is the study (the rest describe the metrics).
STUDY_ARRAYS = {"bleu": ("stats",), "cider": ("cider_lengths",), "clinical": ("counts", "examples"),
                "ratio": ("sums", "counts"), "classifier": ("scores", "targets")}


def reorder(group: Group, order) -> Group:
  """The group with its studies in `order` (new study i is old study order[i])."""
  arrays = dict(group.arrays)
  for name in STUDY_ARRAYS[group.kind]:
    arrays[name] = arrays[name][order]
  if group.kind == "cider":  # entries name their study
    arrays["cider_study"] = np.argsort(order)[arrays["cider_study"]]
  return Group(group.kind, group.prefix, arrays)


# ----------------------------------------------------------------------------- storage
def save(path, study_ids, groups: list[Group]) -> None:
  """One .npz: the study ids and every group's arrays, keyed 'index|kind|prefix|name'."""
  arrays = {"study_ids": np.array([str(s) for s in study_ids])}
  for i, g in enumerate(groups):
    arrays.update({f"{i}|{g.kind}|{g.prefix}|{k}": v for k, v in g.arrays.items()})
  np.savez_compressed(path, **arrays)


def load(path) -> tuple[np.ndarray, list[Group]]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: evaluate again with this version "
                            "(python -m ssacl_jax.main --mode eval), which writes it")
  groups: dict[int, Group] = {}
  with np.load(path, allow_pickle=False) as f:
    study_ids = f["study_ids"]
    for key in f.files:
      if key == "study_ids":
        continue
      i, kind, prefix, name = key.split("|", 3)
      groups.setdefault(int(i), Group(kind, prefix, {})).arrays[name] = f[key]
  return study_ids, [groups[i] for i in sorted(groups)]
