"""Natural-language generation metrics, computed as the coco-caption toolkit does.

Preprocessing (SPEC 5, as the release does): a space is put before every '.', and all
whitespace (newlines included) is collapsed to single spaces with the ends stripped. The
text is not lower-cased by default (the release scores it as it is); `lowercase=True`
(config eval.lowercase) lower-cases both sides first, as R2Gen-style code bases do. The
coco-caption PTB tokenizer is not used; the scorers split on single spaces, which the
preprocessing guarantees.

References are scored in full (never truncated; SPEC 5). CIDEr here is coco-caption's
`Cider` class, which is CIDEr-D (Gaussian length penalty, clipped counts), with document
frequencies taken from the scored references, as coco-caption does. METEOR runs the
Java meteor-1.5 jar; its process is always shut down before `language_scores` returns.

For the study-level bootstrap (evaluation/bootstrap.py), BLEU and CIDEr are recomputed
per resample from per-study n-gram statistics (`study_statistics`): `bleu_from_stats`
and `cider_from_statistics` give exactly what coco-caption gives on the resampled set
(duplicated studies included), without re-running it.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
MAX_N = 4
# coco-caption's BleuScorer constants: they keep a zero count from dividing by zero.
_BLEU_SMALL, _BLEU_TINY = 1e-9, 1e-15
_CIDER_SIGMA = 6.0


def preprocess_report(text: str, lowercase: bool = False) -> str:
  """Put a space before every '.', collapse whitespace, strip; lower-case on request."""
  text = text.lower() if lowercase else text
  return " ".join(text.replace(".", " .").split())


def _as_coco(texts: Sequence[str], lowercase: bool) -> dict[int, list[str]]:
  return {i: [preprocess_report(t, lowercase)] for i, t in enumerate(texts)}


def _close_meteor(scorer) -> None:
  """Stop the METEOR java process now instead of whenever the GC runs `__del__`.

  The lock is replaced so that `Meteor.__del__` cannot block on a lock left held by a
  `compute_score` call that raised.
  """
  proc = scorer.meteor_p
  for stream in (proc.stdin, proc.stdout, proc.stderr):
    try:
      stream.close()
    except OSError:
      pass
  proc.kill()
  proc.wait()
  scorer.lock = threading.Lock()


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, np.ndarray]:
  """(corpus METEOR, per-study METEOR) of preprocessed texts (one java process)."""
  from pycocoevalcap.meteor.meteor import Meteor
  scorer = Meteor()
  try:
    score, per_study = scorer.compute_score(gts, res)
  finally:
    _close_meteor(scorer)
  return float(score), np.asarray(per_study, np.float64)


def _check_pairs(generated: Sequence[str], references: Sequence[str]) -> None:
  if len(generated) != len(references):
    raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
  if not generated:
    raise ValueError("language_metrics needs at least one report pair")


def language_scores(generated: Sequence[str], references: Sequence[str],
                    with_meteor: bool = True, lowercase: bool = False
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """(corpus scores, per-study scores [n] by the same names) of paired reports.

  Corpus scores are BLEU_1..4, METEOR, ROUGE_L and CIDEr (CIDEr-D) as coco-caption
  computes them. Per study: coco-caption's sentence BLEU_4, METEOR, ROUGE_L and CIDEr
  (document frequencies of the whole set). `generated[i]` is scored against the single
  reference `references[i]`; empty generated reports score zero. `with_meteor=False`
  skips the java-based METEOR (its key is then absent).
  """
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  _check_pairs(generated, references)
  res, gts = _as_coco(generated, lowercase), _as_coco(references, lowercase)
  bleu, sentence_bleu = Bleu(MAX_N).compute_score(gts, res, verbose=0)
  corpus = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
  per_study = {"BLEU_4": np.asarray(sentence_bleu[-1], np.float64)}
  if with_meteor:
    corpus["METEOR"], per_study["METEOR"] = meteor_score(gts, res)
  corpus["ROUGE_L"], per_study["ROUGE_L"] = Rouge().compute_score(gts, res)
  corpus["CIDEr"], per_study["CIDEr"] = Cider().compute_score(gts, res)
  corpus = {k: float(v) for k, v in corpus.items()}
  return corpus, {k: np.asarray(v, np.float64) for k, v in per_study.items()}


def language_metrics(generated: Sequence[str], references: Sequence[str],
                     with_meteor: bool = True, lowercase: bool = False) -> dict[str, float]:
  """Corpus-level scores of `language_scores`."""
  return language_scores(generated, references, with_meteor, lowercase)[0]


# ----------------------------------------------------------------------------- per study
def study_statistics(generated: Sequence[str], references: Sequence[str],
                     lowercase: bool = False) -> dict[str, np.ndarray]:
  """What BLEU and CIDEr-D of any resample of the studies are computed from.

  bleu: float [n, 2 + 2 * MAX_N]: candidate length, reference length, candidate n-grams
  of each order (coco's "guess") and clipped matches (its "correct").
  cider_*: one entry per (study, n-gram in its candidate or reference): study, n-gram id,
  order (1..4), candidate and reference counts; cider_lengths [n, 2]: bigram counts of
  candidate and reference (coco's CIDEr-D length penalty counts bigrams).
  """
  from pycocoevalcap.bleu import bleu_scorer
  from pycocoevalcap.cider import cider_scorer
  _check_pairs(generated, references)
  bleu, entries, lengths, ids = [], [], [], {}
  for s, (g, r) in enumerate(zip(generated, references)):
    g, r = preprocess_report(g, lowercase), preprocess_report(r, lowercase)
    cooked = bleu_scorer.cook_test(g, bleu_scorer.cook_refs([r], n=MAX_N), n=MAX_N)
    bleu.append([cooked["testlen"], cooked["reflen"][0], *cooked["guess"], *cooked["correct"]])
    hyp, ref = cider_scorer.precook(g, MAX_N), cider_scorer.precook(r, MAX_N)
    for gram in sorted(hyp.keys() | ref.keys()):  # sorted: the same ids under any hash seed
      entries.append((s, ids.setdefault(gram, len(ids)), len(gram), hyp.get(gram, 0),
                      ref.get(gram, 0)))
    lengths.append([sum(c for k, c in hyp.items() if len(k) == 2),
                    sum(c for k, c in ref.items() if len(k) == 2)])
  e = np.asarray(entries, np.int32).reshape(-1, 5)  # int32: half the size of per_study.npz
  return {"bleu": np.asarray(bleu, np.float64), "cider_study": e[:, 0], "cider_gram": e[:, 1],
          "cider_order": e[:, 2], "cider_hyp": e[:, 3], "cider_ref": e[:, 4],
          "cider_lengths": np.asarray(lengths, np.float64)}


def bleu_from_stats(stats) -> np.ndarray:
  """Corpus BLEU_1..4 [..., 4] of summed per-study `bleu` statistics [..., 10]."""
  stats = np.asarray(stats, np.float64)
  test_len, ref_len = stats[..., 0], stats[..., 1]
  guess, correct = stats[..., 2:2 + MAX_N], stats[..., 2 + MAX_N:]
  cumulative = np.cumprod((correct + _BLEU_TINY) / (guess + _BLEU_SMALL), axis=-1)
  bleu = cumulative ** (1.0 / np.arange(1, MAX_N + 1))
  ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
  brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, _BLEU_TINY)), 1.0)
  return bleu * brevity[..., None]


def cider_from_statistics(stats: dict[str, np.ndarray], weights) -> np.ndarray:
  """Corpus CIDEr-D [B] of each weighting [B, n] of the studies (counts of a resample).

  A study of weight w counts w times, in the document frequencies too, exactly as if it
  were passed to coco-caption w times; weights of ones give coco-caption's score.
  """
  weights = np.atleast_2d(np.asarray(weights, np.float64))
  study, gram, order = stats["cider_study"], stats["cider_gram"], stats["cider_order"]
  hyp, ref = stats["cider_hyp"].astype(np.float64), stats["cider_ref"].astype(np.float64)
  n = len(stats["cider_lengths"])
  in_ref = ref > 0
  segment = study * MAX_N + order - 1
  delta = stats["cider_lengths"][:, 0] - stats["cider_lengths"][:, 1]
  penalty = np.exp(-delta ** 2 / (2 * _CIDER_SIGMA ** 2))
  num_grams = int(gram.max()) + 1 if len(gram) else 0
  out = np.empty(len(weights))
  for b, w in enumerate(weights):
    df = np.bincount(gram[in_ref], weights=w[study[in_ref]], minlength=num_grams)
    idf2 = ((np.log(w.sum()) - np.log(np.maximum(1.0, df))) ** 2)[gram]
    sums = [np.bincount(segment, weights=v * idf2, minlength=n * MAX_N).reshape(n, MAX_N)
            for v in (np.minimum(hyp, ref) * ref, hyp ** 2, ref ** 2)]
    norm = np.sqrt(sums[1]) * np.sqrt(sums[2])
    cos = np.divide(sums[0], norm, out=np.zeros_like(norm), where=norm > 0)
    per_study = 10.0 * (cos * penalty[:, None]).mean(1)
    out[b] = (w * per_study).sum() / w.sum()
  return out
