"""Tasks: what the one trainer trains, found by `config.task`.

A task is a module `ssacl_jax/tasks/<name>.py` (config.task = '<name>') providing
  build(config, mesh, batch_sharding, workdir) -> Task
  MODES: the `--mode`s of ssacl_jax.main it runs under ('train' and 'finetune' train it)
  problems(config) -> [str] (optional): its own config checks, listed by `validate`
What is scored, during training and in `--mode eval`, is config.evals (ssacl_jax/evaluators/).
Adding a task is adding its module; nothing else names it.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import ModuleType

import flax.linen as nn


@dataclasses.dataclass
class Task:
  """What the trainer trains.

  model.apply({"params": p}, batch, *consts, rngs={"mask": key}) -> (loss, metrics) with
  metrics["loss_<term>"] for every term in loss_terms (checked for finiteness, named in
  errors). data: next_train_batch(), train_iterator (checkpointed), train_source,
  skip_stats(). flops_per_step: the update step's FLOPs over all devices counted by hand
  (for MFU); None takes XLA's count of the compiled step.
  """
  model: nn.Module
  data: object
  consts: tuple               # model inputs that are the same for every batch
  example_batch: dict         # one-row model batch, for init
  loss_terms: tuple[str, ...]
  flops_per_step: float | None = None


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def get(name: str) -> ModuleType:
  """The module of task `name` (config.task)."""
  if name not in available():
    raise ValueError(f"config.task {name!r} is not a task; available: "
                     f"{', '.join(available())} (modules in ssacl_jax/tasks/)")
  return importlib.import_module(f"{__name__}.{name}")


def validate(config) -> None:
  """config_lib.validate with config.task's own checks: one ConfigError naming them all."""
  from ssacl_jax import config_lib
  name = config.get("task", "ssacl")
  if name not in available():
    task_problems = [f"task {name!r} must be one of {', '.join(available())}"]
  else:
    task_problems = getattr(get(name), "problems", lambda c: [])(config)
  config_lib.validate(config, task_problems)
