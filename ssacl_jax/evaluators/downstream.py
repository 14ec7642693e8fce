"""A fine-tuned encoder on its downstream task: per-class AUROC and their mean, or Dice
with the empty-mask baseline beside it.

Inside training (every_steps > 0) it scores the validation split and returns the
selection metrics (val_auroc_mean, or val_dice and val_dice_empty_baseline); in
`--mode eval` it scores config.eval.split with the checkpoint of config.eval.step and
writes WORKDIR/eval/<split>/metrics.json.
"""
from __future__ import annotations

import json
import math
import pathlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from input_pipeline import finetune_pipeline
from ssacl_jax import (checkpointing, config_lib, data as data_lib, inference, optim, sharding,
                       state as state_lib)
from ssacl_jax.evaluation import classification
from ssacl_jax.models import finetune as models
from ssacl_jax.tasks import finetune

VAL_METRICS = {models.CLASSIFICATION: ("auroc_mean",),
               models.SEGMENTATION: ("dice", "dice_empty_baseline")}


def run(config, ctx, settings) -> dict:
  del settings
  if ctx.during_training:
    scores = score_split(config, ctx.restored(restore), config.data.eval_split)
    return {f"val_{k}": scores[k] for k in VAL_METRICS[config.finetune.kind]}
  return evaluate(config, ctx.restored(restore))


# ----------------------------------------------------------------------------- scores
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


# ----------------------------------------------------------------------------- model
def restore(config, workdir, *, step: str) -> inference.Restored:
  """The fine-tuned model of `config` with the parameters of checkpoint `step`
  (checkpointing.select_step)."""
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  model = finetune.build_model(config)
  setup = state_lib.setup_state(config, model, mesh, (), finetune.example_batch(config))
  ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: fine-tune first "
                            f"(--mode finetune --workdir {workdir})")
  chosen, rule = checkpointing.select_step(config, workdir, steps, step)
  params = ckpt.restore(chosen, setup.abstract_state, params_only=True)["params"]
  ckpt.close()
  return inference.Restored(config, mesh, model, params, None, (), chosen,
                            NamedSharding(mesh, sharding.batch_spec(config)), rule)


def predict_fn(config, ctx):
  """Jitted params, images -> probabilities ([B, C] or [B, S, S]), replicated out; compiled
  once per run (ctx.compiled)."""
  if "downstream_predict" not in ctx.compiled:
    rules, model = sharding.rules(config), ctx.model

    def predict(params, images):
      with nn.logical_axis_rules(rules):
        return model.apply({"params": params}, images, method=models.Finetuner.predict)

    ctx.compiled["downstream_predict"] = jax.jit(
        predict, out_shardings=NamedSharding(ctx.mesh, P()),
        compiler_options=state_lib.compiler_options())
  return ctx.compiled["downstream_predict"]


def score_split(config, ctx, split: str) -> dict:
  """The task's scores over one split, plus its example count."""
  names = finetune.class_names(config)
  with_mask = config.finetune.kind == models.SEGMENTATION
  source = finetune.load_split(config, split)

  def local_batches(source, process_index, process_count, per_process):
    return finetune_pipeline.make_eval_iterator(
        source, config, with_mask=with_mask, num_classes=len(names),
        process_index=process_index, process_count=process_count, batch_size=per_process)

  predict = predict_fn(config, ctx)
  probs, labels, masks = [], [], []
  for batch, local in data_lib.eval_batches(source, local_batches, ctx.mesh, ctx.batch_sharding,
                                            ("image", "labels", "mask"), config.eval.batch_size):
    valid = np.asarray(inference.gather(local["valid"]), bool)
    probs.append(np.asarray(inference.gather(predict(ctx.params, batch["image"])))[valid])
    labels.append(np.asarray(inference.gather(batch["labels"]))[valid])
    if with_mask:
      masks.append(np.asarray(inference.gather(batch["mask"]))[valid] >= 0.5)
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  out = {"num_examples": int(len(probs))}
  if with_mask:
    out.update(segmentation_scores(probs, np.concatenate(masks)))
  else:
    out.update(classification_scores(probs, labels, names))
  return out


def evaluate(config, ctx) -> dict:
  """Score ctx's checkpoint on eval.split; write metrics.json."""
  split, workdir = config.eval.split, ctx.workdir
  # How the checkpoint was trained: the workdir's own config when there is one.
  trained = (config_lib.load_workdir_config(workdir)
             if (pathlib.Path(workdir) / config_lib.CONFIG_FILE).is_file() else config)
  metrics = {"split": split, "dataset": config.data.dataset, "kind": config.finetune.kind,
             "label_fraction": float(trained.finetune.label_fraction),
             "train_split": finetune.train_split(config),
             "linear_probe": "image_encoder" in optim.frozen_groups(trained),
             "init": trained.init.checkpoint or "random", "checkpoint_step": int(ctx.step),
             "selected_by": ctx.step_rule,
             **score_split(config, ctx, split)}
  if jax.process_index() == 0:
    out = pathlib.Path(workdir) / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  print(json.dumps({"finetune_eval": metrics}), flush=True)
  return metrics
