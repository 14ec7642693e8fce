"""Natural-language generation metrics, computed as the coco-caption toolkit does.

Preprocessing (SPEC 5, R2Gen practice): both generated and reference reports are
lower-cased, a space is put before every '.', and all whitespace (newlines included)
is collapsed to single spaces with the ends stripped. R2Gen's tokenizer additionally
deletes other punctuation when it cleans reports; SPEC 5 asks only for the '.' split,
so commas and the like stay attached to their words on both sides alike. The
coco-caption PTB tokenizer is not used (R2Gen does not use it either); the scorers split
on single spaces, which the preprocessing guarantees.

References are scored in full (never truncated; SPEC 5). CIDEr here is coco-caption's
`Cider` class, which is CIDEr-D (Gaussian length penalty, clipped counts), with document
frequencies taken from the scored references, as coco-caption does. METEOR runs the
Java meteor-1.5 jar; its process is always shut down before `language_metrics` returns.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

METRIC_NAMES = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")


def preprocess_report(text: str) -> str:
  """Lower-case, put a space before every '.', collapse whitespace, strip."""
  return " ".join(text.lower().replace(".", " .").split())


def _as_coco(texts: Sequence[str]) -> dict[int, list[str]]:
  return {i: [preprocess_report(t)] for i, t in enumerate(texts)}


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


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
  """Corpus METEOR of already preprocessed texts (starts and stops one java process)."""
  from pycocoevalcap.meteor.meteor import Meteor
  scorer = Meteor()
  try:
    score, _ = scorer.compute_score(gts, res)
  finally:
    _close_meteor(scorer)
  return float(score)


def language_metrics(generated: Sequence[str], references: Sequence[str],
                     with_meteor: bool = True) -> dict[str, float]:
  """Corpus-level BLEU_1..4, METEOR, ROUGE_L and CIDEr (CIDEr-D) of paired reports.

  `generated[i]` is scored against the single reference `references[i]`. Empty
  generated reports are allowed (they score zero). `with_meteor=False` skips the
  java-based METEOR (e.g. for quick validation passes); its key is then absent.
  """
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  if len(generated) != len(references):
    raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
  if not generated:
    raise ValueError("language_metrics needs at least one report pair")
  res, gts = _as_coco(generated), _as_coco(references)
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  out = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
  if with_meteor:
    out["METEOR"] = meteor_score(gts, res)
  out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
  out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
  return out
