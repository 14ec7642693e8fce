"""Restore a trained model for inference and run jitted functions over a split.

Shared by the pathology-head stage, evaluation and prediction: one place that turns
(config, workdir) into a mesh, tokenizers, the model and its restored parameters.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from input_pipeline import pipeline, tokenizers as tok_lib
from ssacl_jax import checkpointing, data as data_lib, pretrained, sharding, train, state as state_lib
from ssacl_jax.models import ssacl


@dataclasses.dataclass
class Restored:
  config: object
  mesh: object
  model: ssacl.SSACL
  params: dict
  tokenizers: tok_lib.TokenizerPair
  anatomy_tokens: tuple
  step: int
  batch_sharding: NamedSharding
  step_rule: str = "latest"   # how `step` was chosen (checkpointing.select_step)


def restore(config, workdir, *, step: int | str | None = None) -> Restored:
  """The model of `config` with parameters from WORKDIR/checkpoints.

  step: None or a negative number: the latest; a number: that step; "best", "latest" or
  a number as text: as config.eval.step (checkpointing.select_step).
  """
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  tokenizers = data_lib.load_tokenizers(config, workdir=workdir)
  anatomy_tokens = tok_lib.anatomy_tokens(tokenizers.text, config.data.anatomy_len)
  model = ssacl.build_model(config.model)
  setup = state_lib.setup_state(config, model, mesh, anatomy_tokens, ssacl.dummy_batch(config, 1))
  ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
  steps = ckpt.all_steps()
  if not steps and pretrained.requested(config):  # evaluate imported weights directly
    fresh = setup.init_fn(jax.random.key(config.train.seed))["params"]
    params = pretrained.load_initial_params(config, setup.abstract_state["params"], fresh)
    return Restored(config, mesh, model, params, tokenizers, anatomy_tokens, 0,
                    NamedSharding(mesh, sharding.batch_spec(config)),
                    f"imported weights ({config.init.checkpoint or 'config.init'})")
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                            f"(python -m ssacl_jax.main --config ... --workdir {workdir})")
  if isinstance(step, str):
    step, rule = checkpointing.select_step(config, workdir, steps, step)
  else:
    step, rule = (max(steps), "latest") if step is None or step < 0 else (step, f"step {step}")
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt.directory}; "
                            f"available: {sorted(steps)}")
  params = ckpt.restore(step, setup.abstract_state, params_only=True)["params"]
  logging.info("restored parameters of step %d from %s", step, ckpt.directory)
  return Restored(config, mesh, model, params, tokenizers, anatomy_tokens, step,
                  NamedSharding(mesh, sharding.batch_spec(config)), rule)


def provenance(r: Restored) -> dict:
  """What every output of a model says about it: its training data set and step."""
  from input_pipeline import build
  dataset = r.config.data.dataset
  return {"trained on": dataset, "synthetic": build.is_synthetic(dataset),
          "checkpoint step": r.step}


def gather(tree):
  """Per-process outputs -> the same full arrays on every process (numpy)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def eval_batches(r: Restored, split: str, *, batch_size: int | None = None,
                 max_examples: int | None = None, use_prompt: bool = False):
  """(global model batch, local host batch with passthrough fields) over one split."""
  source = data_lib.load_source(r.config, split)
  if max_examples:
    source = data_lib._Head(source, max_examples)
  batch_size = batch_size or r.config.eval.batch_size
  it = pipeline.make_eval_iterator(source, r.config, r.tokenizers, jax.process_index(),
                                   jax.process_count(), batch_size // jax.process_count(),
                                   use_prompt)
  for local in it:
    model_batch = pipeline.make_global_batch({k: local[k] for k in pipeline.TRAIN_KEYS},
                                             r.mesh, r.batch_sharding.spec)
    yield model_batch, local


def jit_method(r: Restored, fn):
  """jit `fn(model, *args)` applied with the restored parameters."""
  def run(params, *args):
    return r.model.apply({"params": params}, *args, method=lambda m, *a: fn(m, *a))
  jitted = jax.jit(run)
  return lambda *args: jitted(r.params, *args)


def concat(chunks: list[dict]) -> dict:
  return {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
