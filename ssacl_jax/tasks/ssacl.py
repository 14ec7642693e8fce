"""SS-ACL pretraining (config.task = 'ssacl'): the five losses over reports and images.

Validation (until the evaluators take it over): the mean validation losses, and with
eval.val_generate_examples the scores of reports generated for the first examples.
"""
from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import data as data_lib, flops, layers, sharding, state as state_lib
from ssacl_jax.models import ssacl as model_lib
from ssacl_jax.tasks import Task

MODES = ("train", "head", "eval")
EVALUATE = "ssacl_jax.evaluate:evaluate"


def build(config, mesh, batch_sharding, workdir) -> Task:
  data = data_lib.TrainingData(config, mesh, batch_sharding, workdir)
  return Task(model_lib.build_model(config.model), data, data.anatomy_tokens,
              model_lib.dummy_batch(config, 1), model_lib.LOSS_NAMES,
              flops_per_step=float(flops.hand_flops(config, config.train.global_batch_size)
                                   ["step"]))


# ----------------------------------------------------------------------------- validation
def make_eval_step(config, setup: state_lib.StateSetup):
  model, rules = setup.model, sharding.rules(config)

  def eval_step(params, batch, *args):
    consts, key = args[:-1], args[-1]
    params = layers.cast_matmul_weights(params, config.model.dtype)
    with nn.logical_axis_rules(rules):
      _, metrics = model.apply({"params": params}, batch, *consts, rngs={"mask": key})
    return metrics

  return eval_step


def evaluate_loss(config, eval_step, state, data) -> dict:
  """Mean validation losses (fixed masking key) over the validation split."""
  key = jax.random.key(config.train.seed + 1)
  totals, count = {}, 0
  for batch in data.eval_batches(config.data.eval_split, config.train.global_batch_size,
                                 max_examples=config.eval.max_examples or None):
    metrics = eval_step(state["params"], batch, *data.anatomy_tokens, key)
    for k, v in metrics.items():
      if k.startswith("loss"):
        totals[k] = totals.get(k, 0.0) + float(v)
    count += 1
  return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}


def validation_generation(config, state, data, mesh, batch_sharding) -> dict:
  """{"val_language/BLEU_4", "val_clinical/micro14/f1", ...} of reports generated for the
  first eval.val_generate_examples validation examples (evaluate.validation_scores), so
  that checkpoint.best_metric can choose the checkpoint by them."""
  # Evaluation sits above tasks: imported here until the evaluators take this over.
  from ssacl_jax import evaluate, inference
  restored = inference.Restored(config, mesh, model_lib.build_model(config.model),
                                state["params"], data.tokenizers, data.anatomy_tokens,
                                int(state["step"]), batch_sharding)
  scores = evaluate.validation_scores(restored, config.data.eval_split,
                                      config.eval.val_generate_examples)
  return {f"val_{k}": v for k, v in scores.items()}


def make_validate(config, task: Task, setup: state_lib.StateSetup, mesh, batch_sharding):
  """state -> the mean validation losses (and generation scores)."""
  replicated = NamedSharding(mesh, P())
  eval_step = jax.jit(make_eval_step(config, setup),
                      in_shardings=(setup.shardings["params"], batch_sharding, replicated,
                                    replicated, replicated),
                      out_shardings=replicated, compiler_options=state_lib.compiler_options())

  def validate(state):
    scores = evaluate_loss(config, eval_step, state, task.data)
    if config.eval.val_generate_examples:
      scores.update(validation_generation(config, state, task.data, mesh, batch_sharding))
    return scores

  return validate
