"""Fine-tuning the SS-ACL image encoder on a downstream set (config.task = 'finetune').

  python -m ssacl_jax.main --mode finetune --workdir runs/nih_1pct \
      --config configs/finetune_nih.py:label_fraction=0.01,init=runs/vitb16

The pretraining checkpoint's `image_encoder` is restored into a fresh state
(config.init, ssacl_jax/pretrained.py), a classification head (multi-label: one sigmoid
per class) or a light segmentation decoder goes on top (models/finetune.py), and the one
trainer trains on the training split of `finetune.label_fraction`, validating every
`train.eval_every_steps` and keeping the best checkpoint by `checkpoint.best_metric`
(val_auroc_mean or val_dice, the `downstream` evaluator). `--mode finetune` then scores the
selected checkpoint on `eval.split` (ssacl_jax/evaluators/downstream.py). Linear probing:
`optim.freeze=image_encoder` (the configs' `linear_probe` variant).
"""
from __future__ import annotations

import logging

import jax

from input_pipeline import builders, finetune_pipeline, pipeline
from input_pipeline.builders import downstream
from ssacl_jax import data as data_lib, optim
from ssacl_jax.models import finetune as models
from ssacl_jax.tasks import Task

MODES = ("finetune", "eval")


def problems(config) -> list[str]:
  """This task's checks of config.finetune (tasks.validate lists them with the rest)."""
  if config.get("finetune") is None:
    return ["task 'finetune' needs a finetune section (configs/finetune_*.py have one)"]
  f, problems = config.finetune, []
  if f.kind not in ("classification", "segmentation"):
    problems.append(f"finetune.kind {f.kind!r} must be 'classification' or 'segmentation'")
  try:
    downstream.split_for_fraction(f.label_fraction)
  except ValueError as e:
    problems.append(f"finetune.label_fraction: {e}")
  if config.data.dataset not in builders.DOWNSTREAM:
    problems.append(f"data.dataset {config.data.dataset!r} is not a downstream set "
                    f"({', '.join(builders.DOWNSTREAM)})")
  wanted = {"classification": "val_auroc_mean", "segmentation": "val_dice"}.get(f.kind)
  if config.checkpoint.best_metric != wanted or config.checkpoint.best_mode != "max":
    problems.append(f"checkpoint.best_metric/best_mode {config.checkpoint.best_metric!r}/"
                    f"{config.checkpoint.best_mode!r}: {f.kind} selects on {wanted!r}, 'max'")
  return problems


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
def train_split(config) -> str:
  """The training split of finetune.label_fraction."""
  return downstream.split_for_fraction(config.finetune.label_fraction)


def load_split(config, split: str):
  try:
    return data_lib.load_source(config, split)
  except KeyError as e:
    raise KeyError(f"{e.args[0]}. The label-fraction splits come from the split lists "
                   f"({downstream.SPLITS_HELP}); rebuild with them to use {split}") from None


class FinetuneData:
  """Training iterator (checkpointable) of a downstream set."""

  def __init__(self, config, mesh, batch_sharding):
    self.config, self.mesh, self.spec = config, mesh, batch_sharding.spec
    self.class_names = class_names(config)
    self.train_split = train_split(config)
    self.train_source = load_split(config, self.train_split)
    logging.info("fine-tuning on %s/%s: %d examples", config.data.dataset, self.train_split,
                 len(self.train_source))
    ds, self.tracker = finetune_pipeline.make_train_dataset(
        self.train_source, config, with_mask=config.finetune.kind == models.SEGMENTATION,
        seed=config.data.shuffle_seed + config.train.seed, process_index=jax.process_index(),
        process_count=jax.process_count(),
        batch_size=config.train.global_batch_size // jax.process_count())
    self.train_iterator = iter(ds)

  def next_train_batch(self) -> dict:
    return pipeline.make_global_batch(next(self.train_iterator), self.mesh, self.spec)

  def skip_stats(self) -> dict:
    return {"data_records_seen": self.tracker.seen, "data_records_skipped": self.tracker.skipped}


# ----------------------------------------------------------------------------- task
def build_model(config) -> models.Finetuner:
  return models.build_model(config, len(class_names(config)),
                            frozen_encoder="image_encoder" in optim.frozen_groups(config))


def example_batch(config) -> dict:
  return models.dummy_batch(config, len(class_names(config)), 1)


def build(config, mesh, batch_sharding, workdir) -> Task:
  del workdir
  data = FinetuneData(config, mesh, batch_sharding)
  return Task(build_model(config), data, (), example_batch(config),
              models.loss_terms(config.finetune.kind))
