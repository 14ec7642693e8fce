"""The pass over config.eval.split that the per-study evaluators share (reports,
pathology_head, grounding, zero_shot): every model output they score, per study, and
the clinical labels of the generated and reference reports. Run once per evaluation
(kept in ctx.cache); each evaluator adds its `Scores` to it for _outputs.py.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from input_pipeline import labeler as labeler_lib
from ssacl_jax import inference, pathology_head

ORACLE = "oracle_reference_labels"      # eval.pathology_source: the reference labels prompt
PATHOLOGY_HEAD = "head"                 # eval.pathology_source: the pathology head's positives
STUDIES = "studies"                     # ctx.cache keys
SCORES = "scores"


@dataclasses.dataclass
class Scores:
  """Metrics of n studies with what their bootstrap intervals are computed from."""
  metrics: dict = dataclasses.field(default_factory=dict)       # key -> float
  groups: list = dataclasses.field(default_factory=list)        # bootstrap.Group
  per_study: dict = dataclasses.field(default_factory=dict)     # key -> float [n]

  def add(self, other: "Scores") -> None:
    self.metrics.update(other.metrics)
    self.groups += other.groups
    self.per_study.update(other.per_study)


def applies(config) -> bool:
  """The per-study evaluators score data.dataset's eval.split; an eval.dataset (a phrase
  grounding set, scored by the grounding evaluator alone) replaces them."""
  return not config.eval.get("dataset")


def keep(ctx, kind: str, scores: Scores) -> dict:
  """Record an evaluator's scores for the written outputs; returns its metrics."""
  ctx.cache.setdefault(SCORES, {})[kind] = scores
  return scores.metrics


def make_labeler(cfg, batch_sharding):
  """The clinical-efficacy labeler of config.eval (CheXbert labels on the eval mesh)."""
  kind = cfg.get("labeler", labeler_lib.RULES)
  if kind != labeler_lib.CHEXBERT:
    return labeler_lib.make_labeler(kind)
  return labeler_lib.make_labeler(kind, chexbert_checkpoint=cfg.chexbert_checkpoint,
                                  chexbert_vocab=cfg.chexbert_vocab,
                                  batch_size=cfg.chexbert_batch_size,
                                  batch_sharding=batch_sharding)


def studies(config, ctx) -> dict:
  """The shared pass (run on first use): per study, its ids, reports, labels, maps, boxes,
  embeddings and pathology-head probabilities; ctx.cache["labeler"] the labeler."""
  if STUDIES not in ctx.cache:
    cfg = config.eval
    if cfg.pathology_source not in (PATHOLOGY_HEAD, ORACLE):
      raise ValueError(f"config.eval.pathology_source must be {PATHOLOGY_HEAD!r} or {ORACLE!r}")
    r = ctx.restored()
    head = None
    if cfg.pathology_source == PATHOLOGY_HEAD:
      head = pathology_head.load_or_fit(config, ctx)
    labeler = make_labeler(cfg, r.batch_sharding)  # before generating: bad paths fail early
    res = collect(r, cfg.split, head, cfg)
    res["gen_labels"] = labeler.label_many(list(res["generated"]))
    res["ref_labels"] = labeler.label_many(list(res["reference"]))
    ctx.cache.update({STUDIES: res, "labeler": labeler, "pathology_head": head})
  return ctx.cache[STUDIES]


def collect(r, split: str, head, cfg) -> dict:
  """Run every model output the evaluators need over a split (valid rows only)."""
  m, d = r.config.model, r.config.data
  text_tok = r.tokenizers.text
  maps_fn = inference.jit_method(r, inference.grounding_maps)
  text_fn = inference.jit_method(r, inference.text_embeddings)
  decode_cfg = inference.decode_config(r)
  out = collections.defaultdict(list)
  for batch, local in inference.eval_batches(r, split, max_examples=cfg.max_examples):
    valid = np.asarray(local["valid"], bool)
    b = len(valid)
    sentences = [[s or "" for s in row] for row in local["finding_sentences"]]
    flat = [s for row in sentences for s in row]
    p_ids, p_mask = inference.encode_batch(text_tok, flat, min(d.anatomy_len * 4, m.text.max_len),
                                           cls=False)
    anat, phrase, image_emb, feats = maps_fn(batch["image"], *r.anatomy_tokens, p_ids, p_mask)
    feats = np.asarray(inference.gather(feats))
    if head is None:
      predicted = np.asarray(local["labels"])
    else:
      predicted = pathology_head.positives(head, feats)
      out["head_proba"].append(pathology_head.predict_proba(head, feats)[valid])
    reports = inference.generate_reports(r, batch["image"], predicted, decode_cfg)
    ref_ids, ref_mask = inference.encode_batch(text_tok, [str(t).lower() for t in local["report"]],
                                               d.text_len)
    report_emb = text_fn(ref_ids, ref_mask)
    rows = dict(
        study_id=np.asarray(local["study_id"], object), reference=np.asarray(local["report"], object),
        generated=np.asarray(reports, object), predicted=predicted, labels=np.asarray(local["labels"]),
        anatomy_maps=np.asarray(anat), phrase_maps=np.asarray(phrase)[:, :-1],
        leaf_boxes=np.asarray(local["leaf_boxes"]), finding_boxes=np.asarray(local["finding_boxes"]),
        has_boxes=np.asarray(local["has_boxes"]), raw_image=np.asarray(local["raw_image"]),
        finding_valid=np.array([[bool(s) for s in row] for row in sentences]),
        finding_sentences=np.array(sentences, object),
        image_emb=np.asarray(image_emb), report_emb=np.asarray(report_emb))
    for k, v in rows.items():
      out[k].append(v[valid] if len(v) == b else v)
  return {k: np.concatenate(v) for k, v in out.items()}


def grid_maps(maps, grid: int):
  return maps.reshape(*maps.shape[:-1], grid, grid)
