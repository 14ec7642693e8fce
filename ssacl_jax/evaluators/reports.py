"""Generated reports scored against the references: language (BLEU-1..4, METEOR, ROUGE-L,
CIDEr-D) and clinical efficacy, beside the same scores of the most frequent training
report (baseline_most_frequent/*). Reports are prompted by config.eval.pathology_source.
"""
from __future__ import annotations

import collections

import numpy as np

from input_pipeline import features as features_lib
from ssacl_jax import data as data_lib
from ssacl_jax.evaluation import bootstrap, clinical, language
from ssacl_jax.evaluators import _studies


def run(config, ctx, settings) -> dict:
  del settings
  if not _studies.applies(config):
    return {}
  res, labeler = _studies.studies(config, ctx), ctx.cache["labeler"]
  lowercase, n = config.eval.lowercase, len(res["study_id"])
  scores = language_and_clinical(list(res["generated"]), list(res["reference"]),
                                 res["gen_labels"], res["ref_labels"], "", lowercase)
  frequent = most_frequent_report(config)
  scores.add(language_and_clinical([frequent] * n, list(res["reference"]),
                                   np.repeat(labeler.label_many([frequent]), n, 0),
                                   res["ref_labels"], "baseline_most_frequent/", lowercase))
  return _studies.keep(ctx, "reports", scores)


def language_and_clinical(generated, references, gen_labels, ref_labels, prefix: str,
                          lowercase: bool = False) -> _studies.Scores:
  corpus, per_study = language.language_scores(generated, references, lowercase=lowercase)
  out = _studies.Scores({f"{prefix}language/{k}": v for k, v in corpus.items()})
  out.metrics.update({f"{prefix}clinical/{k}": v for k, v in
                      clinical.clinical_efficacy(gen_labels, ref_labels).items()})
  out.groups = (bootstrap.language_groups(f"{prefix}language/", generated, references,
                                          per_study, corpus, lowercase) +
                bootstrap.clinical_groups(f"{prefix}clinical/", gen_labels, ref_labels))
  out.per_study = {f"{prefix}language/{k}": v for k, v in per_study.items()}
  examples = clinical.study_counts(gen_labels, ref_labels)[1]
  out.per_study.update({f"{prefix}clinical/example/{m}": examples[:, c]
                        for c, m in enumerate(clinical.MEASURES)})
  return out


def most_frequent_report(config) -> str:
  source = data_lib.load_source(config, config.data.train_split)
  counts = collections.Counter(features_lib.as_text(source[i]["report"]) for i in range(len(source)))
  return counts.most_common(1)[0][0]
