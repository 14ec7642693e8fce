"""SS-ACL pretraining (config.task = 'ssacl'): the five losses over reports and images.

Its evaluators (config.evals) are the validation losses during training, then reports,
the pathology head, grounding and zero-shot in `--mode eval` (ssacl_jax/evaluators/).
"""
from __future__ import annotations

from ssacl_jax import data as data_lib, flops
from ssacl_jax.models import ssacl as model_lib
from ssacl_jax.tasks import Task

MODES = ("train", "head", "eval")


def build(config, mesh, batch_sharding, workdir) -> Task:
  data = data_lib.TrainingData(config, mesh, batch_sharding, workdir)
  return Task(model_lib.build_model(config.model), data, data.anatomy_tokens,
              model_lib.dummy_batch(config, 1), model_lib.LOSS_NAMES,
              flops_per_step=float(flops.hand_flops(config, config.train.global_batch_size)
                                   ["step"]))
