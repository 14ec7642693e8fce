"""Evaluation (`--mode eval`): restore, generate reports, ground them, score them.

Scores the checkpoint of config.eval.step (the best on validation by default) and writes
WORKDIR/eval/<split>/:
  reports.jsonl      per study: generated and reference report, predicted pathologies and
                     regions, labeler output for both, and its per-study scores
  metrics.json       language (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), clinical efficacy,
                     pathology head AUROC/F1, grounding (ours and baselines), zero-shot,
                     retrieval, and the trivial baselines of the same evaluators; "ci95":
                     study-level bootstrap intervals; "protocol": how it was scored
                     (every number: docs/EVALUATION.md)
  per_study.npz      the per-study statistics the intervals are computed from
                     (`python -m ssacl_jax.compare` reads it)
  heatmaps/*.png     per study: the image and its overlay per region and finding sentence
  report_card.html   headline numbers, all metrics, a browser over the studies
                     (config.eval.num_report_card of them; 0: all)

With eval.dataset a phrase grounding set (ms_cxr), `phrase_grounding` scores only that, into
WORKDIR/eval/<dataset>/<split>/ (metrics.json, phrases.jsonl).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import (builders, features as features_lib, labeler as labeler_lib, pipeline,
                            transforms)
from ssacl_jax import anatomy, generate, inference, pathology_head
from ssacl_jax.evaluation import (bootstrap, classification, clinical, grounding, language,
                                  report_card, retrieval, zero_shot)

ORACLE = "oracle_reference_labels"
HEAD = "head"


# ----------------------------------------------------------------------------- text helpers
def encode_batch(tok, texts, length: int, cls: bool = True):
  """Texts -> (ids [n, length], mask [n, length]) for the text encoder; cls False for
  grounding phrases, which are encoded like the leaf names they stand in for."""
  from input_pipeline import tokenizers as tok_lib
  pairs = [tok_lib.encode_text(tok, t, length, cls) for t in texts]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def prompt_batch(tok, prompts, prompt_len: int):
  """Pathology prompts -> right-padded decoder ids [n, prompt_len + 1] ending in newline."""
  ids = np.full((len(prompts), prompt_len + 1), tok.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, text in enumerate(prompts):
    if text:
      row = tok.encode(text)[:prompt_len] + [tok.newline_id]
      ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask


def decode_reports(tok, tokens, lengths) -> list[str]:
  out = []
  for row, n in zip(np.asarray(tokens), np.asarray(lengths)):
    # Ids past the tokenizer's vocabulary (the model's table may be larger) are dropped.
    row = [int(t) for t in row[:int(n)] if int(t) != tok.newline_id and int(t) < tok.vocab_size]
    out.append(tok.decode(row).strip())
  return out


def labels_to_prompt_and_mask(labels, prompt: bool = True):
  """Pathology prompts ('' for all with prompt False: `eval.pathology_prompt`) and leaf masks."""
  prompts = [anatomy.prompt_text(l) if prompt else "" for l in labels]
  masks = np.stack([anatomy.leaf_mask_from_labels(l) for l in labels]).astype(np.int32)
  return prompts, masks


# ----------------------------------------------------------------------------- model calls
def _maps_and_embeddings(model, images, anatomy_ids, anatomy_mask, phrase_ids, phrase_mask):
  """Anatomy maps [B, G+1, N], phrase maps [B, F+1, N], image emb [B, Dt]."""
  b = images.shape[0]
  anat = model.anatomy_attention(images, anatomy_ids, anatomy_mask)
  phrase_q = model.phrase_queries(phrase_ids, phrase_mask).reshape(b, -1, model.config.encoder.width)
  phrase = model.query_attention(images, phrase_q)
  cls, mean_patch, image_emb = model.image_features(images)
  feats = jnp.concatenate([cls, mean_patch], axis=-1).astype(jnp.float32)
  return anat, phrase, image_emb.astype(jnp.float32), feats


def _text_embeddings(model, ids, mask):
  return model.encode_text(ids, mask).astype(jnp.float32)


# ----------------------------------------------------------------------------- main loop
def generate_batch(r: inference.Restored, batch, predicted, decode_cfg) -> list[str]:
  """Reports for a model batch, prompted by the positive pathologies in `predicted`."""
  dec_tok = r.tokenizers[1]
  prompts, leaf_masks = labels_to_prompt_and_mask(predicted,
                                                  r.config.eval.get("pathology_prompt", True))
  prompt_ids, prompt_mask = prompt_batch(dec_tok, prompts, r.config.data.prompt_len)
  gen = generate.generate_reports(r.model, {"params": r.params}, batch["image"],
                                  *r.anatomy_tokens, jnp.asarray(leaf_masks), decode_cfg,
                                  prompt_ids=prompt_ids, prompt_mask=prompt_mask)
  return decode_reports(dec_tok, inference.gather(gen.tokens), inference.gather(gen.lengths))


def _decode_config(r: inference.Restored):
  dec_tok = r.tokenizers[1]
  return generate.decode_config(r.config.eval.decode, eos_id=dec_tok.newline_id,
                                pad_id=dec_tok.pad_id)


def validation_scores(r: inference.Restored, split: str, num_examples: int) -> dict:
  """Generation scores on the first `num_examples` of a validation split, for choosing the
  checkpoint (eval.val_generate_examples): BLEU, ROUGE-L, CIDEr (no METEOR) and clinical
  F1. The prompts are the reference labels (the pathology head is fitted after training)."""
  generated, references, decode_cfg = [], [], _decode_config(r)
  for batch, local in inference.eval_batches(r, split, max_examples=num_examples):
    valid = np.asarray(local["valid"], bool)
    reports = generate_batch(r, batch, np.asarray(local["labels"]), decode_cfg)
    generated += [g for g, ok in zip(reports, valid) if ok]
    references += [str(t) for t, ok in zip(local["report"], valid) if ok]
  labeler = labeler_lib.default_labeler()
  lang = language.language_metrics(generated, references, with_meteor=False,
                                   lowercase=r.config.eval.lowercase)
  ce = clinical.clinical_efficacy(labeler.label_many(generated), labeler.label_many(references))
  return {**{f"language/{k}": v for k, v in lang.items()},
          **{f"clinical/{k}": ce[k] for k in ("micro14/f1", "micro5/f1", "macro14/f1",
                                               "example/f1")}}


def collect(r: inference.Restored, split: str, head, cfg) -> dict:
  """Run every model output the evaluators need over a split (valid rows only)."""
  m, d = r.config.model, r.config.data
  text_tok = r.tokenizers[0]
  maps_fn = inference.jit_method(r, _maps_and_embeddings)
  text_fn = inference.jit_method(r, _text_embeddings)
  decode_cfg = _decode_config(r)
  out = collections.defaultdict(list)
  for batch, local in inference.eval_batches(r, split, max_examples=cfg.max_examples or None):
    valid = np.asarray(local["valid"], bool)
    b = len(valid)
    sentences = [[s or "" for s in row] for row in local["finding_sentences"]]
    flat = [s for row in sentences for s in row]
    p_ids, p_mask = encode_batch(text_tok, flat, min(d.anatomy_len * 4, m.text.max_len), cls=False)
    anat, phrase, image_emb, feats = maps_fn(batch["image"], *r.anatomy_tokens, p_ids, p_mask)
    feats = np.asarray(inference.gather(feats))
    if cfg.pathology_source == ORACLE:
      predicted = np.asarray(local["labels"])
    else:
      predicted = pathology_head.positives_from_head(head, feats)
      out["head_proba"].append(pathology_head.predict_proba(head, feats)[valid])
    reports = generate_batch(r, batch, predicted, decode_cfg)
    ref_ids, ref_mask = encode_batch(text_tok, [str(t).lower() for t in local["report"]], d.text_len)
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


# ----------------------------------------------------------------------------- metrics
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


def grid_maps(maps, grid: int):
  return maps.reshape(*maps.shape[:-1], grid, grid)


def grounding_metrics(res, grid: int, image_hw, seed: int = 0) -> Scores:
  """Ours vs. random-map and CLS-attention baselines, for leaves and findings."""
  out, n = Scores(), len(res["study_id"])
  has = res["has_boxes"].astype(bool)
  if not has.any():
    return out
  studies = np.nonzero(has)[0]
  leaf_maps = grid_maps(res["anatomy_maps"][has][:, anatomy.leaf_node_indices()], grid)
  cls_map = grid_maps(res["anatomy_maps"][has][:, -1:], grid)
  leaf_boxes, finding_boxes = res["leaf_boxes"][has], res["finding_boxes"][has]
  leaf_valid = np.ones(leaf_boxes.shape[:2], bool)
  finding_valid = res["finding_valid"][has] & (np.abs(finding_boxes).sum(-1) > 0)
  phrase_maps = grid_maps(res["phrase_maps"][has], grid)
  rng = np.random.default_rng(seed)
  for name, maps, boxes, valid in (("leaves", leaf_maps, leaf_boxes, leaf_valid),
                                   ("findings", phrase_maps, finding_boxes, finding_valid)):
    if not valid.any():
      continue
    cls = np.broadcast_to(cls_map, maps.shape)
    for source, m in (("ours", maps), ("cls_attention", cls), ("random", rng.random(maps.shape))):
      prefix = f"grounding/{name}/{source}/"
      pairs = grounding.grounding_pair_scores(m, boxes, valid, image_hw)
      pairs["example"] = studies[pairs["example"]]
      group = bootstrap.pair_group(prefix, pairs, n)
      means = bootstrap.draws([group], bootstrap.identity(n))
      out.metrics.update({k: float(v[0]) for k, v in means.items()})
      out.metrics[prefix + "count"] = len(pairs["example"])
      out.groups.append(group)
      sums, counts = group.arrays["sums"], group.arrays["counts"]
      out.per_study.update({prefix + str(k): np.divide(
          sums[:, c], counts[:, c], out=np.full(n, np.nan), where=counts[:, c] > 0)
          for c, k in enumerate(group.arrays["names"])})
  return out


def language_and_clinical(generated, references, gen_labels, ref_labels, prefix: str,
                          lowercase: bool = False) -> Scores:
  corpus, per_study = language.language_scores(generated, references, lowercase=lowercase)
  out = Scores({f"{prefix}language/{k}": v for k, v in corpus.items()})
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


def most_frequent_report(r: inference.Restored) -> str:
  from ssacl_jax import data as data_lib
  source = data_lib.load_source(r.config, r.config.data.train_split)
  counts = collections.Counter(features_lib.as_text(source[i]["report"]) for i in range(len(source)))
  return counts.most_common(1)[0][0]


def zero_shot_and_retrieval(r, res, text_fn) -> Scores:
  text_tok = r.tokenizers.text

  def encode_text(texts):
    ids, mask = encode_batch(text_tok, [t.lower() for t in texts], r.config.data.text_len)
    return np.asarray(text_fn(ids, mask))

  classes = [p for p in anatomy.PATHOLOGIES if p != "No Finding"]
  scores = zero_shot.zero_shot_scores(res["image_emb"], encode_text, [c.lower() for c in classes])
  targets = res["labels"][:, [anatomy.PATHOLOGY_INDEX[c] for c in classes]] == 1
  aucs = classification.auroc(scores, targets)
  out = Scores({f"zero_shot/auroc/{c}": float(a) for c, a in zip(classes, aucs)})
  out.metrics["zero_shot/auroc_mean"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
  out.groups.append(bootstrap.classifier_group("zero_shot/", scores, targets, classes))
  sim = zero_shot.l2_normalise(res["image_emb"]) @ zero_shot.l2_normalise(res["report_emb"]).T
  per_query = {f"retrieval/{k}": v for k, v in
               retrieval.per_query_scores(sim, res["labels"] == 1).items()}
  out.metrics.update({k: float(v.mean()) for k, v in per_query.items()})
  out.groups.append(bootstrap.ratio_group("", per_query))
  out.per_study.update(per_query)
  return out


def pathology_head_metrics(head, res) -> Scores:
  targets = res["labels"] == 1
  out = Scores({"pathology_head/auroc_mean": float(classification.mean_auroc(res["head_proba"], targets))})
  f1 = classification.f1_at_thresholds(res["head_proba"], targets, head["thresholds"])
  out.metrics.update({f"pathology_head/{k}": float(v) for k, v in f1.items() if np.ndim(v) == 0})
  out.groups.append(bootstrap.classifier_group("pathology_head/", res["head_proba"], targets,
                                               thresholds=head["thresholds"]))
  return out


def protocol(config, r: inference.Restored, labeler_name: str) -> dict:
  """How the numbers were produced (metrics["protocol"]; docs/EVALUATION.md)."""
  cfg = config.eval
  return {"labeler": labeler_name, "dataset": config.data.dataset, "synthetic": config.data.dataset.startswith("synthetic"),
          "split": cfg.split, "checkpoint_step": int(r.step), "checkpoint_rule": r.step_rule,
          "lowercase": bool(cfg.lowercase), "pathology_source": cfg.pathology_source,
          "clinical_mapping": "positive = 1; uncertain, negative, blank = 0 "
                              "(clinical/uncertain_positive/*: uncertain = 1 too)",
          "grounding": "maps smoothed, resized nearest-neighbour; mIoU on [-1, 1] maps, "
                       "thresholds 0.1..0.5; pointing game: any tied maximum",
          "bootstrap": f"study-level, {cfg.bootstrap_resamples} resamples, seed {bootstrap.SEED}"}


# ----------------------------------------------------------------------------- outputs
def study_views(res, i: int, grid: int, out_dir: pathlib.Path) -> dict:
  """Study i of the report card: its image at a readable size, an overlay per region and
  per reference finding sentence (PNG files under heatmaps/, linked relative to the
  card), the two reports and their labels."""
  image = report_card.display_grey(res["raw_image"][i])
  heat_dir = out_dir / "heatmaps"
  base = heat_dir / f"{i:03d}_image.png"
  report_card.save_grey_png(image, base)
  named = [(region, res["anatomy_maps"][i, anatomy.NODE_INDEX[region]], region.replace(" ", "_"))
           for region in anatomy.REGIONS]
  named += [(f"finding: {sentence}", res["phrase_maps"][i, k], f"finding{k}")
            for k, sentence in enumerate(res["finding_sentences"][i])
            if res["finding_valid"][i, k]]
  heat = {}
  for caption, m, name in named:
    path = heat_dir / f"{i:03d}_{name}.png"
    report_card.overlay_png(image, grounding.smooth_and_resize(grid_maps(m, grid), image.shape), path)
    heat[caption] = path.relative_to(out_dir).as_posix()
  return dict(study_id=str(res["study_id"][i]), image=base.relative_to(out_dir).as_posix(),
              heatmaps=heat, generated=str(res["generated"][i]),
              reference=str(res["reference"][i]),
              pathologies=anatomy.positive_pathologies(res["predicted"][i]),
              labels_generated=res["gen_labels"][i], labels_reference=res["ref_labels"][i])


def write_outputs(out_dir: pathlib.Path, res, metrics, scores: Scores, grid: int, cfg,
                  provenance: dict | None = None) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "reports.jsonl", "w") as f:
    for i in range(len(res["study_id"])):
      pred = res["predicted"][i]
      f.write(json.dumps({
          "study_id": str(res["study_id"][i]), "generated": str(res["generated"][i]),
          "reference": str(res["reference"][i]),
          "predicted_pathologies": list(anatomy.positive_pathologies(pred)),
          "predicted_regions": list(anatomy.regions_for_pathologies(anatomy.positive_pathologies(pred))),
          "labels_dataset": res["labels"][i].tolist(),
          "labels_generated": res["gen_labels"][i].tolist(),
          "labels_reference": res["ref_labels"][i].tolist(),
          "scores": {k: _json_float(v[i]) for k, v in sorted(scores.per_study.items())}}) + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
  bootstrap.save(out_dir / bootstrap.FILENAME, res["study_id"], scores.groups)
  (out_dir / "heatmaps").mkdir(exist_ok=True)
  count = len(res["study_id"])
  shown = min(cfg.num_report_card, count) if cfg.num_report_card else count
  studies = [study_views(res, i, grid, out_dir) for i in range(shown)]
  report_card.write_report_card(out_dir / "report_card.html", metrics, studies,
                                title=f"SS-ACL report card: {cfg.split} split",
                                provenance=provenance)


def make_labeler(cfg, batch_sharding):
  """The clinical-efficacy labeler of config.eval (CheXbert labels on the eval mesh)."""
  kind = cfg.get("labeler", labeler_lib.RULES)
  if kind != labeler_lib.CHEXBERT:
    return labeler_lib.make_labeler(kind)
  return labeler_lib.make_labeler(kind, chexbert_checkpoint=cfg.chexbert_checkpoint,
                                  chexbert_vocab=cfg.chexbert_vocab,
                                  batch_size=cfg.chexbert_batch_size,
                                  batch_sharding=batch_sharding)


def _json_float(v) -> float | None:
  """JSON has no NaN: an undefined per-study score (no box of that kind) is null."""
  return None if np.isnan(v) else float(v)


def evaluate(config, workdir) -> dict:
  cfg = config.eval
  if cfg.get("dataset") in builders.PHRASE_GROUNDING:
    return phrase_grounding(config, workdir)
  r = inference.restore(config, workdir, step=str(cfg.step))
  head = None
  if cfg.pathology_source == HEAD:
    head = pathology_head.load_head(workdir)
  elif cfg.pathology_source != ORACLE:
    raise ValueError(f"config.eval.pathology_source must be {HEAD!r} or {ORACLE!r}")
  labeler = make_labeler(cfg, r.batch_sharding)  # before generating: bad paths fail early
  res = collect(r, cfg.split, head, cfg)
  res["gen_labels"] = labeler.label_many(list(res["generated"]))
  res["ref_labels"] = labeler.label_many(list(res["reference"]))
  grid = config.model.image_size // config.model.patch
  n = len(res["study_id"])
  scores = language_and_clinical(list(res["generated"]), list(res["reference"]),
                                 res["gen_labels"], res["ref_labels"], "", cfg.lowercase)
  frequent = most_frequent_report(r)
  scores.add(language_and_clinical([frequent] * n, list(res["reference"]),
                                   np.repeat(labeler.label_many([frequent]), n, 0),
                                   res["ref_labels"], "baseline_most_frequent/", cfg.lowercase))
  if head is not None:
    scores.add(pathology_head_metrics(head, res))
  scores.add(grounding_metrics(res, grid, res["raw_image"].shape[1:]))
  scores.add(zero_shot_and_retrieval(r, res, inference.jit_method(r, _text_embeddings)))
  metrics = {"step": r.step, "split": cfg.split, "examples": n,
             "pathology_source": cfg.pathology_source, **scores.metrics,
             "protocol": protocol(config, r, labeler.name)}
  if cfg.bootstrap_resamples:
    metrics["ci95"] = bootstrap.confidence_intervals(scores.groups, n, cfg.bootstrap_resamples)
  out_dir = pathlib.Path(workdir) / "eval" / cfg.split
  if jax.process_index() == 0:
    about = dict(inference.provenance(r), **{"evaluated on": f"{cfg.split} split, "
                                             f"{metrics['examples']} studies"})
    write_outputs(out_dir, res, metrics, scores, grid, cfg, about)
  summary = {k: v for k, v in metrics.items()
             if k != "ci95" and ("/" not in k or k.count("/") == 1)}
  print(json.dumps(summary, default=float), flush=True)
  print(f"report card: {out_dir / 'report_card.html'}", flush=True)
  return metrics


# ----------------------------------------------------------------------------- phrase grounding
# eval.dataset names a phrase grounding set (ms_cxr): each phrase is scored against its
# boxes by two maps: the phrase encoded as a query (ours, SPEC 5) and the class token's
# attention (the release's phrase-grounding script, which ignores the phrase).
PHRASE_METHODS = ("ours", "cls_attention")
PHRASE_FIELDS = ("study_id", "image_path", "category", "phrase")  # kept in phrases.jsonl


def _phrase_and_cls_maps(model, images, phrase_ids, phrase_mask):
  """[B, 2, N]: each image's map for its own phrase as the query, then its CLS map."""
  return model.query_attention(images, model.phrase_queries(phrase_ids, phrase_mask)[:, None])


class _PhraseExample:
  """Local position -> one phrase's model input and its box mask at the model's size
  (a padding row, valid False, past this process's records)."""

  def __init__(self, source, indices: range, opts, text_tok):
    self.source, self.indices, self.opts, self.text_tok = source, indices, opts, text_tok

  def __call__(self, position: int) -> dict:
    s = self.opts.image_size
    if position >= len(self.indices):
      return {"image": np.zeros((s, s, self.opts.channels), np.float32),
              **transforms.text_sequence("", self.text_tok, self.opts.text_len),
              "box_mask": np.zeros((s, s), bool), "index": np.int32(-1), "valid": np.bool_(False)}
    index = self.indices[position]
    record = self.source[index]
    grey = transforms.load_grey(record["image"])
    boxes = transforms.resize_boxes(record["boxes"], grey.shape, s)
    # Lower-cased like every text the text encoder reads (transforms.contrastive_text).
    phrase = transforms.contrastive_text(features_lib.as_text(record["phrase"]), None)
    return {"image": transforms.normalise(transforms.resize_grey(grey, s), self.opts.channels),
            **transforms.text_sequence(phrase, self.text_tok, self.opts.text_len),
            "box_mask": grounding.boxes_to_mask(boxes, (s, s)), "index": np.int32(index),
            "valid": np.bool_(True)}


def collect_phrase_maps(r: inference.Restored, source, batch_size: int) -> dict:
  """{'maps' [n, 2, N] (PHRASE_METHODS order), 'box_mask' [n, S, S]} in source order."""
  opts = pipeline.DataOptions.from_config(r.config)
  p, count = jax.process_index(), jax.process_count()
  examples = _PhraseExample(source, range(p, len(source), count), opts, r.tokenizers.text)
  maps_fn = inference.jit_method(r, _phrase_and_cls_maps)
  chunks = []
  for local in pipeline.ordered_stream(len(source), examples, batch_size // count, count, opts):
    batch = pipeline.make_global_batch({k: local[k] for k in ("image", "text_ids", "text_mask")},
                                       r.mesh, r.batch_sharding.spec)
    maps = maps_fn(batch["image"], batch["text_ids"], batch["text_mask"])
    chunks.append({"maps": inference.gather(maps),
                   **inference.gather({k: local[k] for k in ("box_mask", "index", "valid")})})
  res = inference.concat(chunks)
  order = np.argsort(np.where(res["valid"], res["index"], len(source)), kind="stable")
  order = order[:int(res["valid"].sum())]
  return {"maps": res["maps"][order], "box_mask": res["box_mask"][order]}


def phrase_grounding(config, workdir) -> dict:
  """Scores phrase grounding on eval.dataset; writes metrics.json and phrases.jsonl to
  WORKDIR/eval/<dataset>/<split>/."""
  from ssacl_jax import data as data_lib
  cfg, d = config.eval, config.data
  r = inference.restore(config, workdir, step=str(cfg.step))
  source = data_lib.load_dataset_split(cfg.dataset, d.data_dir, cfg.manual_dir or d.manual_dir,
                                       dict(cfg.builder), cfg.split)
  if cfg.max_examples:
    source = data_lib._Head(source, cfg.max_examples)
  res = collect_phrase_maps(r, source, cfg.batch_size)
  grid, size = config.model.image_size // config.model.patch, config.model.image_size
  scores = {method: [grounding.map_scores(grid_maps(m, grid), mask, (size, size))
                     for m, mask in zip(res["maps"][:, row], res["box_mask"])]
            for row, method in enumerate(PHRASE_METHODS)}
  phrases = [{k: features_lib.as_text(source[i][k]) for k in PHRASE_FIELDS}
             for i in range(len(source))]
  metrics = {"step": r.step, "split": cfg.split, "examples": len(phrases),
             **grounding.phrase_grounding_metrics([p["category"] for p in phrases], scores),
             "protocol": {"dataset": cfg.dataset, "checkpoint_step": r.step, "split": cfg.split,
                          "synthetic": False, "grounding_image_size": size}}
  out_dir = pathlib.Path(workdir) / "eval" / cfg.dataset / cfg.split
  if jax.process_index() == 0:
    write_phrase_outputs(out_dir, phrases, scores, metrics)
  print(json.dumps({k: v for k, v in metrics.items() if k.startswith("phrase_grounding/all/")}),
        flush=True)
  print(f"phrase grounding: {out_dir / 'metrics.json'}", flush=True)
  return metrics


def write_phrase_outputs(out_dir: pathlib.Path, phrases, scores, metrics) -> None:
  """metrics.json, and phrases.jsonl: each phrase with its scores under every method."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "phrases.jsonl", "w") as f:
    for i, phrase in enumerate(phrases):
      f.write(json.dumps({**phrase, **{m: scores[m][i] for m in PHRASE_METHODS}}) + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
