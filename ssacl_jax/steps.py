"""The update step of any task, and the one builder that jits it with its shardings.

The trainer, AOT compiles (ssacl_jax/aot.py) and the benchmarks (bench/) all take the
step from `jit_train_step`, so they compile the same program: the task's model and its
loss terms go in, nothing here knows which task it is.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import layers, optim, sharding, state as state_lib

DROPOUT_STREAM = 2**31 - 1  # folded into a step's key for its dropout key


def microbatches(batch, steps: int):
  """[B, ...] -> [steps, B / steps, ...], each microbatch spread over all devices."""
  def split(x):
    x = x.reshape(x.shape[0] // steps, steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_loss_fn(config, model, param_shardings=None):
  """loss_fn(params, batch, consts, rng) -> (total loss, metrics), as the train step runs it.

  The matmul weights are cast to the compute dtype while still sharded (param_shardings),
  so that fsdp all-gathers move compute-dtype bytes; with `mesh.gather_weights_once` they
  are then gathered over the fsdp axis once, for all three encoder passes and the backward
  pass (whose gradients are reduce-scattered once, in turn).
  """
  rules = sharding.rules(config)
  gathered = None
  if param_shardings is not None and config.mesh.get("gather_weights_once"):
    gathered = sharding.without_axis(param_shardings, "fsdp")

  def loss_fn(params, batch, consts, rng):
    params = layers.cast_matmul_weights(params, config.model.dtype)
    if param_shardings is not None:
      params = jax.lax.with_sharding_constraint(params, param_shardings)
    if gathered is not None:
      params = jax.lax.with_sharding_constraint(params, gathered)
    # Dropout draws from its own stream, derived from (never equal to) the masking key.
    rngs = {"mask": rng, layers.DROPOUT: jax.random.fold_in(rng, DROPOUT_STREAM)}
    with nn.logical_axis_rules(rules):
      return model.apply({"params": params}, batch, *consts, rngs=rngs)

  return loss_fn


def make_train_step(config, setup: state_lib.StateSetup, loss_terms):
  """train_step(state, batch, *consts, base_key) -> (state, metrics).

  loss_terms: the task's terms; metrics["loss_<term>"] of each must be finite, else the
  step leaves the state as it was. The masking key of step s (microbatch i) is
  fold_in(fold_in(base_key, s), i); dropout, on in training only, uses that key folded
  with DROPOUT_STREAM.
  """
  model, tx = setup.model, setup.tx
  schedule = optim.learning_rate_schedule(config)
  accum = config.train.grad_accum_steps
  loss_fn = make_loss_fn(config, model, setup.shardings["params"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, *args):
    consts, base_key = args[:-1], args[-1]
    rng = jax.random.fold_in(base_key, state["step"])
    params = state["params"]
    if accum == 1:
      (_, metrics), grads = grad_fn(params, batch, consts, rng)
    else:
      def micro(carry, xs):
        i, micro_batch = xs
        (_, m), g = grad_fn(params, micro_batch, consts, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, m)), None
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          lambda: grad_fn(params, jax.tree.map(lambda x: x[0], microbatches(batch, accum)),
                          consts, rng)))
      zeros = (zeros[1], zeros[0][1])
      (grads, metrics), _ = jax.lax.scan(micro, zeros, (jnp.arange(accum),
                                                        microbatches(batch, accum)))
      grads, metrics = jax.tree.map(lambda x: x / accum, (grads, metrics))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
           "opt_state": opt_state}
    finite = jnp.isfinite(grad_norm) & jnp.all(jnp.stack(
        [jnp.isfinite(metrics[f"loss_{k}"]) for k in loss_terms]))
    # A non-finite step leaves the state as it was; the host stops the run.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state["step"]),
                   finite=finite)
    return new, metrics

  return train_step


# ----------------------------------------------------------------------------- non-finite record
def no_nonfinite_step(num_terms: int) -> dict:
  """The device-side record of the first non-finite step, before any: step 0 = none."""
  return {"step": jnp.zeros((), jnp.int32), "losses": jnp.zeros((num_terms,), jnp.float32),
          "grad_norm": jnp.zeros((), jnp.float32)}


def record_first_nonfinite(record: dict, step, metrics, loss_terms) -> dict:
  """record, or this step's number and values when it is the first non-finite one."""
  first = (record["step"] == 0) & ~metrics["finite"]
  now = {"step": jnp.asarray(step, jnp.int32),
         "losses": jnp.stack([metrics[f"loss_{k}"] for k in loss_terms]).astype(jnp.float32),
         "grad_norm": metrics["grad_norm"].astype(jnp.float32)}
  return jax.tree.map(lambda n, r: jnp.where(first, n, r), now, record)


def with_nonfinite_record(train_step, loss_terms):
  """train_step that also carries the first non-finite step's record, so the host reads it
  only at log, eval and checkpoint steps instead of waiting for every step:
  step(state, batch, *consts, base_key, record) -> (state, metrics, record)."""
  def step(state, batch, *args):
    *args, record = args
    new, metrics = train_step(state, batch, *args)
    return new, metrics, record_first_nonfinite(record, state["step"] + 1, metrics, loss_terms)
  return step


# ----------------------------------------------------------------------------- the builder
def jit_train_step(config, setup: state_lib.StateSetup, mesh, num_consts: int, loss_terms, *,
                   nonfinite_record: bool = True, compiler_options=None):
  """The jitted train step: state in `setup.shardings` (donated), the batch over the
  batch axes, the task's consts, the base key (and the record) replicated.

  nonfinite_record: the trainer's step(state, batch, *consts, base_key, record) ->
  (state, metrics, record); else step(state, batch, *consts, base_key) -> (state, metrics).
  compiler_options: state.compiler_options() for the trainer's; None leaves them to
  the caller's compile.
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  step = make_train_step(config, setup, loss_terms)
  extra = (replicated,) * (num_consts + 1)   # consts and the base key
  outs = (setup.shardings, replicated)
  if nonfinite_record:
    step = with_nonfinite_record(step, loss_terms)
    extra += (replicated,)
    outs += (replicated,)
  return jax.jit(step, in_shardings=(setup.shardings, batch_sharding, *extra),
                 out_shardings=outs, donate_argnums=(0,), compiler_options=compiler_options)
