"""Fine-tuning the SS-ACL image encoder on a downstream task (`--mode finetune`).

  python -m ssacl_jax.main --mode finetune --workdir runs/nih_1pct \
      --config configs/finetune_nih.py:label_fraction=0.01,init=runs/vitb16

The pretraining checkpoint's `image_encoder` is restored into a fresh state
(config.init, ssacl_jax/pretrained.py), a classification head (multi-label: one sigmoid
per class) or a light segmentation decoder goes on top (models/finetune.py), and the one
trainer (train.py, config.task = 'finetune') trains on the training split of
`finetune.label_fraction`, validating every `train.eval_every_steps` and keeping the best
checkpoint by `checkpoint.best_metric` (val_auroc_mean or val_dice). Then the selected
checkpoint is scored on `eval.split` and WORKDIR/eval/<split>/metrics.json written:
per-class AUROC and their mean, or Dice with the empty-mask baseline beside it.
Linear probing: `optim.freeze=image_encoder` (the configs' `linear_probe` variant).
"""
from __future__ import annotations

import json
import logging
import math
import pathlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from input_pipeline import builders, finetune_pipeline, pipeline
from input_pipeline.builders import downstream
from ssacl_jax import checkpointing, config_lib, data as data_lib, optim, sharding, train, state as state_lib
from ssacl_jax.evaluation import classification
from ssacl_jax.models import finetune as models

VAL_METRICS = {models.CLASSIFICATION: ("auroc_mean",),
               models.SEGMENTATION: ("dice", "dice_empty_baseline")}


def class_names(config) -> tuple[str, ...]:
  name = config.data.dataset
  if name not in builders.DOWNSTREAM:
    raise ValueError(f"config.data.dataset {name!r} is not a downstream data set; "
                     f"fine-tuning reads one of {', '.join(builders.DOWNSTREAM)}")
  cls = builders.get_builder_class(name)
  if config.finetune.kind == models.SEGMENTATION and not cls.is_segmentation():
    raise ValueError(f"finetune.kind 'segmentation' needs masks, and {name} has none")
  return tuple(cls.CLASS_NAMES)


# ----------------------------------------------------------------------------- data
class FinetuneData:
  """Training iterator (checkpointable) and evaluation batches of a downstream set."""

  def __init__(self, config, mesh, batch_sharding, *, training: bool = True):
    self.config, self.mesh, self.spec = config, mesh, batch_sharding.spec
    self.class_names = class_names(config)
    self.with_mask = config.finetune.kind == models.SEGMENTATION
    self.train_split = downstream.split_for_fraction(config.finetune.label_fraction)
    if not training:
      return
    self.train_source = self.source(self.train_split)
    logging.info("fine-tuning on %s/%s: %d examples", config.data.dataset, self.train_split,
                 len(self.train_source))
    ds, self.tracker = finetune_pipeline.make_train_dataset(
        self.train_source, config, with_mask=self.with_mask,
        seed=config.data.shuffle_seed + config.train.seed, process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=config.train.global_batch_size // jax.process_count())
    self.train_iterator = iter(ds)

  def source(self, split: str):
    try:
      return data_lib.load_source(self.config, split)
    except KeyError as e:
      raise KeyError(f"{e.args[0]}. The label-fraction splits come from the split lists "
                     f"({downstream.SPLITS_HELP}); rebuild with them to use {split}") from None

  def next_train_batch(self) -> dict:
    return pipeline.make_global_batch(next(self.train_iterator), self.mesh, self.spec)

  def skip_stats(self) -> dict:
    return {"data_records_seen": self.tracker.seen, "data_records_skipped": self.tracker.skipped}

  def eval_batches(self, split: str):
    """(global batch, local valid [b]) over one pass of `split`."""
    it = finetune_pipeline.make_eval_iterator(
        self.source(split), self.config, with_mask=self.with_mask,
        num_classes=len(self.class_names), process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=self.config.eval.batch_size // jax.process_count())
    for local in it:
      valid = local.pop("valid")
      yield pipeline.make_global_batch(local, self.mesh, self.spec), valid


# ----------------------------------------------------------------------------- scores
def gather(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def dice_per_image(pred, target) -> np.ndarray:
  """Dice of bool masks [n, ...] per image; 1 where both are empty (the SIIM convention)."""
  pred = np.asarray(pred, bool).reshape(len(pred), -1)
  target = np.asarray(target, bool).reshape(len(target), -1)
  inter = (pred & target).sum(1)
  total = pred.sum(1) + target.sum(1)
  return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def classification_scores(probs, labels, names) -> dict:
  per_class = classification.auroc(probs, labels)
  return {"auroc": {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, per_class)},
          "auroc_mean": classification.mean_auroc(probs, labels)}


def segmentation_scores(probs, masks, threshold: float = 0.5) -> dict:
  """Mean per-image Dice of probs >= threshold, and of the empty prediction."""
  dice = dice_per_image(np.asarray(probs) >= threshold, masks)
  empty = dice_per_image(np.zeros_like(masks, bool), masks)
  has = np.asarray(masks).reshape(len(masks), -1).any(1)
  return {"dice": float(dice.mean()), "dice_empty_baseline": float(empty.mean()),
          "dice_on_positive_images": float(dice[has].mean()) if has.any() else None,
          "positive_images": int(has.sum())}


def make_predict(config, model, setup, mesh, batch_sharding):
  """Jitted params, images -> probabilities ([B, C] or [B, S, S]), replicated out."""
  rules = sharding.rules(config)

  def predict(params, images):
    with nn.logical_axis_rules(rules):
      return model.apply({"params": params}, images, method=models.Finetuner.predict)

  return jax.jit(predict, in_shardings=(setup.shardings["params"], batch_sharding),
                 out_shardings=NamedSharding(mesh, P()), compiler_options=state_lib.compiler_options())


def score_split(config, data: FinetuneData, predict, params, split: str) -> dict:
  """The task's scores over one split, plus its example count."""
  probs, labels, masks = [], [], []
  for batch, valid in data.eval_batches(split):
    valid = np.asarray(gather(valid), bool)
    probs.append(np.asarray(gather(predict(params, batch["image"])))[valid])
    labels.append(np.asarray(gather(batch["labels"]))[valid])
    if data.with_mask:
      masks.append(np.asarray(gather(batch["mask"]))[valid] >= 0.5)
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  out = {"num_examples": int(len(probs))}
  if data.with_mask:
    out.update(segmentation_scores(probs, np.concatenate(masks)))
  else:
    out.update(classification_scores(probs, labels, data.class_names))
  return out


# ----------------------------------------------------------------------------- task
def build_model(config) -> models.Finetuner:
  return models.build_model(config, len(class_names(config)))


def make_task(config, mesh, batch_sharding, workdir) -> train.Task:
  del workdir
  data = FinetuneData(config, mesh, batch_sharding)
  model = build_model(config)
  kind = config.finetune.kind

  def make_validate(setup, mesh, batch_sharding):
    predict = make_predict(config, model, setup, mesh, batch_sharding)

    def validate(state):
      scores = score_split(config, data, predict, state["params"], config.data.eval_split)
      return {f"val_{k}": scores[k] for k in VAL_METRICS[kind]}
    return validate

  return train.Task(model, data, (), models.dummy_batch(config, len(data.class_names), 1),
                    models.loss_terms(kind), make_validate)


# ----------------------------------------------------------------------------- test
def evaluate(config, workdir, split: str | None = None) -> dict:
  """Score the selected checkpoint on `split` (default eval.split); write metrics.json."""
  split = split or config.eval.split
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  data = FinetuneData(config, mesh, batch_sharding, training=False)
  model = build_model(config)
  setup = state_lib.setup_state(config, model, mesh, (),
                            models.dummy_batch(config, len(data.class_names), 1))
  ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: fine-tune first "
                            f"(--mode finetune --workdir {workdir})")
  step, how = checkpointing.select_step(config, workdir, steps)
  params = ckpt.restore(step, setup.abstract_state, params_only=True)["params"]
  ckpt.close()
  predict = make_predict(config, model, setup, mesh, batch_sharding)
  # How the checkpoint was trained: the workdir's own config when there is one.
  trained = (config_lib.load_workdir_config(workdir)
             if (pathlib.Path(workdir) / config_lib.CONFIG_FILE).is_file() else config)
  metrics = {"split": split, "dataset": config.data.dataset, "kind": config.finetune.kind,
             "label_fraction": float(trained.finetune.label_fraction),
             "train_split": data.train_split,
             "linear_probe": "image_encoder" in optim.frozen_groups(trained),
             "init": trained.init.checkpoint or "random", "checkpoint_step": int(step),
             "selected_by": how,
             **score_split(config, data, predict, params, split)}
  if jax.process_index() == 0:
    out = pathlib.Path(workdir) / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  print(json.dumps({"finetune_eval": metrics}), flush=True)
  return metrics


def run(config, workdir) -> dict:
  """Fine-tune (resuming when WORKDIR has checkpoints), then score eval.split."""
  train.train_and_evaluate(config, workdir)
  return evaluate(config, workdir)
