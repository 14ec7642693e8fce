"""Phrase grounding on config.eval.dataset (builders.PHRASE_GROUNDING: ms_cxr): each phrase
is scored against its boxes by two maps: the phrase encoded as a query (ours, SPEC 5) and
the class token's attention (the release's phrase-grounding script, which ignores the
phrase). Writes WORKDIR/eval/<dataset>/<split>/ (metrics.json, phrases.jsonl).
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from input_pipeline import features as features_lib, pipeline, transforms
from ssacl_jax import data as data_lib, inference
from ssacl_jax.evaluation import grounding
from ssacl_jax.evaluators import _studies

PHRASE_METHODS = ("ours", "cls_attention")
PHRASE_FIELDS = ("study_id", "image_path", "category", "phrase")  # kept in phrases.jsonl


def phrase_and_cls_maps(model, images, phrase_ids, phrase_mask):
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


def collect_phrase_maps(r, source, batch_size: int) -> dict:
  """{'maps' [n, 2, N] (PHRASE_METHODS order), 'box_mask' [n, S, S]} in source order."""
  opts = pipeline.DataOptions.from_config(r.config)

  def local_batches(source, process_index, process_count, per_process):
    examples = _PhraseExample(source, range(process_index, len(source), process_count), opts,
                              r.tokenizers.text)
    return pipeline.ordered_stream(len(source), examples, per_process, process_count, opts)

  maps_fn = inference.jit_method(r, phrase_and_cls_maps)
  chunks = []
  for batch, local in data_lib.eval_batches(source, local_batches, r.mesh, r.batch_sharding,
                                            ("image", "text_ids", "text_mask"), batch_size):
    maps = maps_fn(batch["image"], batch["text_ids"], batch["text_mask"])
    chunks.append({"maps": inference.gather(maps),
                   **inference.gather({k: local[k] for k in ("box_mask", "index", "valid")})})
  res = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  order = np.argsort(np.where(res["valid"], res["index"], len(source)), kind="stable")
  order = order[:int(res["valid"].sum())]
  return {"maps": res["maps"][order], "box_mask": res["box_mask"][order]}


def evaluate(config, ctx) -> dict:
  """Scores phrase grounding on eval.dataset; writes metrics.json and phrases.jsonl."""
  cfg, d = config.eval, config.data
  r = ctx.restored()
  source = data_lib.load_dataset_split(cfg.dataset, d.data_dir, cfg.manual_dir or d.manual_dir,
                                       dict(cfg.builder), cfg.split)
  if cfg.max_examples:
    source = data_lib.first_records(source, cfg.max_examples)
  res = collect_phrase_maps(r, source, cfg.batch_size)
  grid, size = config.model.image_size // config.model.patch, config.model.image_size
  scores = {method: [grounding.map_scores(_studies.grid_maps(m, grid), mask, (size, size))
                     for m, mask in zip(res["maps"][:, row], res["box_mask"])]
            for row, method in enumerate(PHRASE_METHODS)}
  phrases = [{k: features_lib.as_text(source[i][k]) for k in PHRASE_FIELDS}
             for i in range(len(source))]
  metrics = {"step": r.step, "split": cfg.split, "examples": len(phrases),
             **grounding.phrase_grounding_metrics([p["category"] for p in phrases], scores),
             "protocol": {"dataset": cfg.dataset, "checkpoint_step": r.step, "split": cfg.split,
                          "synthetic": False, "grounding_image_size": size}}
  out_dir = pathlib.Path(ctx.workdir) / "eval" / cfg.dataset / cfg.split
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
