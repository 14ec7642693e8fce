"""Fine-tuning the SS-ACL image encoder on a downstream set (config.task = 'finetune').

  python -m ssacl_jax.main --mode finetune --workdir runs/nih_1pct \
      --config configs/finetune_nih.py:label_fraction=0.01,init=runs/vitb16

The pretraining checkpoint's `image_encoder` is restored into a fresh state
(config.init, ssacl_jax/pretrained.py), a classification head (multi-label: one sigmoid
per class) or a light segmentation decoder goes on top (models/finetune.py), and the one
trainer trains on the training split of `finetune.label_fraction`, validating every
`train.eval_every_steps` and keeping the best checkpoint by `checkpoint.best_metric`
(val_auroc_mean or val_dice). `--mode finetune` then scores the selected checkpoint on
`eval.split` (ssacl_jax/finetune.py's evaluate). Linear probing:
`optim.freeze=image_encoder` (the configs' `linear_probe` variant).
"""
from __future__ import annotations

import logging

import jax

from input_pipeline import builders, finetune_pipeline, pipeline
from input_pipeline.builders import downstream
from ssacl_jax import data as data_lib
from ssacl_jax.models import finetune as models
from ssacl_jax.tasks import Task

MODES = ("finetune", "eval")
EVALUATE = "ssacl_jax.finetune:evaluate"


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


# ----------------------------------------------------------------------------- task
def build_model(config) -> models.Finetuner:
  return models.build_model(config, len(class_names(config)))


def example_batch(config) -> dict:
  return models.dummy_batch(config, len(class_names(config)), 1)


def build(config, mesh, batch_sharding, workdir) -> Task:
  del workdir
  data = FinetuneData(config, mesh, batch_sharding)
  return Task(build_model(config), data, (), example_batch(config),
              models.loss_terms(config.finetune.kind))


def make_validate(config, task: Task, setup, mesh, batch_sharding):
  """state -> the validation split's val_auroc_mean, or val_dice and its empty baseline."""
  # Evaluation sits above tasks: imported here until the evaluators take this over.
  from ssacl_jax import finetune
  predict = finetune.make_predict(config, task.model, setup, mesh, batch_sharding)

  def validate(state):
    scores = finetune.score_split(config, task.data, predict, state["params"],
                                  config.data.eval_split)
    return {f"val_{k}": scores[k] for k in finetune.VAL_METRICS[config.finetune.kind]}

  return validate
