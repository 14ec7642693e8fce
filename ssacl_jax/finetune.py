"""Scoring a fine-tuned encoder (ssacl_jax/tasks/finetune.py) on a downstream split.

The selected checkpoint is scored on `eval.split` and WORKDIR/eval/<split>/metrics.json
written: per-class AUROC and their mean, or Dice with the empty-mask baseline beside it.
"""
from __future__ import annotations

import json
import math
import pathlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import checkpointing, config_lib, optim, sharding, state as state_lib
from ssacl_jax.evaluation import classification
from ssacl_jax.models import finetune as models
from ssacl_jax.tasks.finetune import FinetuneData, build_model, example_batch

VAL_METRICS = {models.CLASSIFICATION: ("auroc_mean",),
               models.SEGMENTATION: ("dice", "dice_empty_baseline")}


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


# ----------------------------------------------------------------------------- test
def evaluate(config, workdir, split: str | None = None) -> dict:
  """Score the selected checkpoint on `split` (default eval.split); write metrics.json."""
  split = split or config.eval.split
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  data = FinetuneData(config, mesh, batch_sharding, training=False)
  model = build_model(config)
  setup = state_lib.setup_state(config, model, mesh, (), example_batch(config))
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
