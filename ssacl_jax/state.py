"""The train state of any task's model: its abstract tree, shardings and initialiser.

One builder for every caller: the trainer, restore for inference, the converter, AOT
compiles and the benchmarks.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import optim, sharding


def compiler_options() -> dict | None:
  """XLA options for the jitted train/eval steps, per backend.

  XLA:CPU: the memory-optimized instruction scheduler instead of the default
  concurrency-optimized one. On the paper config (batch 4, 2 cores) the step's temporary
  buffers shrink from 4.8 to 3.2 GiB (7.3 to 5.4 GiB at batch 8) at the same or slightly
  better step time (bench/RESULTS.md, "CPU utilisation"): the dots already use every core
  internally, so running independent ops concurrently buys little and costs memory. The
  schedule only orders the same ops, so results are unchanged.
  """
  if jax.default_backend() == "cpu":
    # = XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false; as a compile
    # option only the enum field takes effect.
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  return None


@dataclasses.dataclass
class StateSetup:
  """How the train state is laid out: its abstract tree and shardings, and the optimizer."""
  model: nn.Module
  tx: optax.GradientTransformation
  abstract_state: dict        # ShapeDtypeStructs with shardings
  shardings: dict
  init_fn: Callable           # rng -> state, jitted straight into `shardings`


def init_params_fn(model, example_batch, consts=()):
  """rng -> the model's parameters (boxed with their logical axis names)."""
  def init_params(rng):
    return model.init({"params": rng, "mask": rng}, example_batch, *consts)["params"]
  return init_params


def abstract_params(model, example_batch, consts=()) -> dict:
  """The model's parameter tree as ShapeDtypeStructs (nothing materialised)."""
  return nn.meta.unbox(jax.eval_shape(init_params_fn(model, example_batch, consts),
                                      jax.random.key(0)))


def setup_state(config, model, mesh, consts, example_batch) -> StateSetup:
  """Build the state abstractly (eval_shape), derive shardings, jit the initialiser.

  consts: the model's per-run inputs after the batch (SS-ACL: the anatomy tokens);
  example_batch: a model batch for init (the task's).
  """
  init_params = init_params_fn(model, example_batch, consts)
  boxed = jax.eval_shape(init_params, jax.random.key(0))
  param_shardings = sharding.logical_shardings(boxed, mesh, config)
  abstract_params = nn.meta.unbox(boxed)
  tx = optim.make_optimizer(config, abstract_params)

  def init_state(rng):
    params = nn.meta.unbox(init_params(rng))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_state, jax.random.key(0))
  flat_params = sharding.flatten_by_path({"params": param_shardings})
  shapes = {k: v.shape for k, v in sharding.flatten_by_path({"params": abstract_params}).items()}
  # Optimizer moments follow their parameter's sharding (matched by path suffix).
  flat_params_nokey = {k[1:]: v for k, v in flat_params.items()}
  shapes_nokey = {k[1:]: v for k, v in shapes.items()}
  shardings = {
      "step": NamedSharding(mesh, P()),
      "params": param_shardings,
      "opt_state": sharding.match_shardings_by_path(abstract["opt_state"], flat_params_nokey,
                                                    shapes_nokey, mesh),
  }
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  init_fn = jax.jit(init_state, out_shardings=shardings, compiler_options=compiler_options())
  return StateSetup(model, tx, abstract, shardings, init_fn)
