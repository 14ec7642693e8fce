"""Training: mesh, task (data + model), sharded state, update step, checkpoints, loop.

`train_and_evaluate(config, workdir)` is what `python -m ssacl_jax.main` runs; tests call
it directly. Sections read top to bottom like the step they set up. What is trained comes
from a `Task` chosen by `config.task`: SS-ACL pretraining ('ssacl', the five losses) or
fine-tuning the image encoder on a downstream set ('finetune', ssacl_jax/finetune.py).
Both go through the same state, step, checkpoints, logging and preemption.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import (checkpointing, cli, config_lib, data as data_lib, evaluators, flops, layers,
                       optim, perf, pretrained, sharding, state as state_lib)
from ssacl_jax.metric_writers import MetricWriter
from ssacl_jax.models import ssacl


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------- task
@dataclasses.dataclass
class Task:
  """What the trainer trains.

  model.apply({"params": p}, batch, *consts, rngs={"mask": key}) -> (loss, metrics) with
  metrics["loss_<term>"] for every term in loss_terms (checked for finiteness, named in
  errors). data: next_train_batch(), train_iterator (checkpointed), skip_stats().
  Validation: the evaluators of config.evals with an interval (ssacl_jax/evaluators/).
  """
  model: nn.Module
  data: object
  consts: tuple               # model inputs that are the same for every batch
  example_batch: dict         # one-row model batch, for init
  loss_terms: tuple[str, ...]


def pretraining_task(config, mesh, batch_sharding, workdir) -> Task:
  """SS-ACL pretraining: the five losses."""
  data = data_lib.TrainingData(config, mesh, batch_sharding, workdir)
  return Task(ssacl.build_model(config.model), data, data.anatomy_tokens,
              ssacl.dummy_batch(config, 1), ssacl.LOSS_NAMES)


def make_task(config, mesh, batch_sharding, workdir) -> Task:
  name = config.get("task", "ssacl")
  if name == "ssacl":
    return pretraining_task(config, mesh, batch_sharding, workdir)
  if name == "finetune":
    from ssacl_jax import finetune
    return finetune.make_task(config, mesh, batch_sharding, workdir)
  raise ValueError(f"config.task {name!r}: expected 'ssacl' (pretraining) or 'finetune'")


# ----------------------------------------------------------------------------- step
def release_freed_host_memory() -> None:
  """Hands the heap pages freed since the last call back to the OS (glibc malloc_trim).

  Compiling the paper-size step leaves about 1 GiB of freed compiler memory in the heap,
  which the step's large buffers (allocated with mmap) never reuse: trimming it before the
  first step lowers the process's peak RSS by that much (0.94 GiB at batch 8 on CPU,
  bench/RESULTS.md). A no-op where the C library has no malloc_trim.
  """
  try:
    ctypes.CDLL(None).malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _microbatches(batch, steps: int):
  """[B, ...] -> [steps, B / steps, ...], each microbatch spread over all devices."""
  def split(x):
    x = x.reshape(x.shape[0] // steps, steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


DROPOUT_STREAM = 2**31 - 1  # folded into a step's key for its dropout key


def make_loss_fn(config, model, param_shardings=None):
  """loss_fn(params, batch, consts, rng) -> (total loss, metrics), as the train step runs it.

  The matmul weights are cast to the compute dtype while still sharded (param_shardings),
  so that fsdp all-gathers move compute-dtype bytes; with `mesh.gather_weights_once` they
  are then gathered over the fsdp axis once, for all three encoder passes and the backward
  pass (whose gradients are reduce-scattered once, in turn).
  """
  rules = sharding.rules(config)
  compute_dtype = ssacl.dtype_from_name(config.model.dtype)
  gathered = None
  if param_shardings is not None and config.mesh.get("gather_weights_once"):
    gathered = sharding.without_axis(param_shardings, "fsdp")

  def loss_fn(params, batch, consts, rng):
    params = layers.cast_matmul_weights(params, compute_dtype)
    if param_shardings is not None:
      params = jax.lax.with_sharding_constraint(params, param_shardings)
    if gathered is not None:
      params = jax.lax.with_sharding_constraint(params, gathered)
    # Dropout draws from its own stream, derived from (never equal to) the masking key.
    rngs = {"mask": rng, layers.DROPOUT: jax.random.fold_in(rng, DROPOUT_STREAM)}
    with nn.logical_axis_rules(rules):
      return model.apply({"params": params}, batch, *consts, rngs=rngs)

  return loss_fn


def make_train_step(config, setup: state_lib.StateSetup, loss_terms=ssacl.LOSS_NAMES):
  """train_step(state, batch, *consts, base_key) -> (state, metrics).

  The masking key of step s (microbatch i) is fold_in(fold_in(base_key, s), i); dropout,
  on in training only, uses that key folded with DROPOUT_STREAM. Evaluation passes no
  dropout key, so it is deterministic.
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
          lambda: grad_fn(params, jax.tree.map(lambda x: x[0], _microbatches(batch, accum)),
                          consts, rng)))
      zeros = (zeros[1], zeros[0][1])
      (grads, metrics), _ = jax.lax.scan(micro, zeros, (jnp.arange(accum),
                                                        _microbatches(batch, accum)))
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


def check_batch_fits_mesh(global_batch: int, accum: int, mesh) -> None:
  """Each microbatch must split evenly over the batch-sharded mesh axes and processes."""
  shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
  micro = global_batch // accum
  if global_batch % accum or micro % shards or global_batch % jax.process_count():
    raise ValueError(
        f"train.global_batch_size {global_batch} with train.grad_accum_steps {accum} gives "
        f"microbatches of {global_batch / accum:g}, which must be a multiple of the "
        f"{shards} data x fsdp shards of the mesh {dict(mesh.shape)} (and the batch a "
        f"multiple of the {jax.process_count()} processes)")


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


def check_finite(record, loss_terms=ssacl.LOSS_NAMES) -> None:
  """Raise naming the first non-finite step and its terms (record from the host)."""
  step = int(record["step"])
  if not step:
    return
  losses = dict(zip(loss_terms, np.asarray(record["losses"]).tolist()))
  bad = [k for k, v in losses.items() if not np.isfinite(v)]
  if not np.isfinite(float(record["grad_norm"])):
    bad.append("gradient norm")
  raise NonFiniteLossError(
      f"non-finite {', '.join(bad) or 'value'} at step {step} (loss terms: "
      + ", ".join(f"{k}={v}" for k, v in losses.items())
      + "). That step left the state as it was, and nothing newer than the last good "
      "checkpoint was saved; lower the learning rate or enable clipping "
      "(--config.optim.clip_grad_norm=1.0).")


# ----------------------------------------------------------------------------- preemption
class PreemptionFlag:
  """Set by SIGTERM; the loop saves at the next step boundary and exits cleanly."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: preemption handling stays off
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, sync_point: bool = True) -> bool:
    """Whether any process got SIGTERM. Across processes that takes an all-gather, which
    waits for the device, so it is asked only at sync points (log, eval, checkpoint steps)."""
    if jax.process_count() == 1:
      return self.raised
    if not sync_point:
      return False
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.raised))))


# ----------------------------------------------------------------------------- loop
def restore_or_initialise(config, ckpt, setup, state, data) -> dict:
  """The state to start from: WORKDIR's latest checkpoint (and the data stream's position),
  else config.init's pretrained weights for a fresh run, else `state` as initialised."""
  start = ckpt.latest_step()
  discarded = (f" (discarded incomplete checkpoint {', '.join(map(str, ckpt.discarded))})"
               if ckpt.discarded else "")
  if start is not None:
    cli.say(f"resuming from step {start} in {ckpt.directory}{discarded}")
    restored = ckpt.restore(start, setup.abstract_state, data.train_iterator)
    if set(restored) == {"params"}:  # partial restore: the rest stays freshly initialised
      return dict(state, params=checkpointing.merge_params(state["params"], restored["params"]))
    return restored
  if discarded:
    cli.say(f"starting from step 0{discarded}")
  if pretrained.requested(config):  # a fresh run: start from config.init's weights
    return dict(state, params=pretrained.load_initial_params(
        config, setup.abstract_state["params"], state["params"]))
  return state


def log_metrics(writer, step: int, metrics, data, meter, examples_per_step: int) -> dict:
  """Write a log step's metrics (losses, skip counts, the interval's step time, examples/s,
  data wait and MFU) and the progress line; returns them."""
  logged = jax.device_get(metrics)
  logged.pop("finite")
  logged.update(data.skip_stats())
  logged.update(meter.measure(step))
  writer.write(step, logged)
  writer.progress(step, logged, examples_per_step)
  return logged


def log_goodput(writer, step: int, goodput) -> dict:
  """The run's goodput summary: into metrics.jsonl and the log."""
  summary = goodput.summary()
  writer.write(step, summary)
  logging.info("goodput: %s", ", ".join(f"{k.split('/')[1]} {v}" for k, v in summary.items()))
  return summary


def train_and_evaluate(config, workdir: str) -> dict:
  """Train config's task; resume from WORKDIR/checkpoints when present.

  The host waits for the device only at log, eval and checkpoint steps (and when a
  profile ends); a non-finite step is found there, before anything newer is saved.
  Returns the last logged metrics.
  """
  config_lib.check_required_init(config)
  goodput = perf.Goodput()
  perf.use_compilation_cache(perf.compilation_cache_dir(config, workdir))
  t = config.train
  with goodput.timing("initialization"):
    # Mesh.
    mesh = sharding.make_mesh(config)
    jax.set_mesh(mesh)
    batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
    check_batch_fits_mesh(t.global_batch_size, t.grad_accum_steps, mesh)
    if jax.process_index() == 0:
      config_lib.save_workdir_config(config, workdir)

    # Input and model.
    task = make_task(config, mesh, batch_sharding, workdir)
    data = task.data
    config = optim.with_schedule(config, len(data.train_source))  # step counts from epochs
    t = config.train

    # Sharded state.
    setup = state_lib.setup_state(config, task.model, mesh, task.consts, task.example_batch)
    ckpt = checkpointing.Checkpointer(workdir, config)
    state = setup.init_fn(jax.random.key(t.seed))
  with goodput.timing("restore"):
    state = restore_or_initialise(config, ckpt, setup, state, data)
  start = int(state["step"])

  with goodput.timing("initialization"):
    # Update step (carrying the non-finite record) and validation.
    replicated = NamedSharding(mesh, P())
    consts_shardings = (replicated,) * len(task.consts)
    train_step = jax.jit(
        with_nonfinite_record(make_train_step(config, setup, task.loss_terms), task.loss_terms),
        in_shardings=(setup.shardings, batch_sharding, *consts_shardings, replicated,
                      replicated),
        out_shardings=(setup.shardings, replicated, replicated), donate_argnums=(0,),
        compiler_options=state_lib.compiler_options())
    evaluation = evaluators.Context(config, workdir, mesh=mesh, batch_sharding=batch_sharding,
                                    model=task.model, tokenizers=getattr(data, "tokenizers", None),
                                    anatomy_tokens=task.consts)
    base_key = jax.random.key(t.seed)
    record = jax.device_put(no_nonfinite_step(len(task.loss_terms)), replicated)

    writer = MetricWriter(workdir, total_steps=t.num_steps)
    batches = data_lib.DevicePrefetcher(data, config.data.get("device_prefetch", 1))
    profiler = perf.StepProfiler(workdir, t.get("profile_steps", ()))
    meter = perf.IntervalMeter(goodput, t.global_batch_size, mesh.size,
                               perf.peak_flops_per_device(config, jax.devices()[0].device_kind),
                               start)

  # Loop.
  last, step, compiled_step = {}, start, None
  try:
    with PreemptionFlag() as preempted:
      while step < t.num_steps:
        with goodput.timing("data_wait"):
          batch = batches.next()
        if compiled_step is None:
          with goodput.timing("compilation"):
            compiled_step = train_step.lower(state, batch, *task.consts, base_key,
                                             record).compile()
            release_freed_host_memory()
          meter.flops_per_step = flops.train_step_flops(config, compiled_step, mesh.size)
        step += 1
        profiler.before_step(step)
        with goodput.timing("train_steps"), profiler.annotate(step):
          state, metrics, record = compiled_step(state, batch, *task.consts, base_key, record)
        with goodput.timing("profiling"):
          profiler.after_step(step, state)
        logs = step % t.log_every_steps == 0 or step == t.num_steps
        evals = t.eval_every_steps and (step % t.eval_every_steps == 0 or step == t.num_steps)
        saves = step % t.checkpoint_every_steps == 0 or step == t.num_steps
        stop = step == t.stop_at_step or preempted.should_stop(sync_point=logs or evals or saves)
        saves = saves or stop
        if not (logs or evals or saves):
          continue
        with goodput.timing("train_steps"):  # the host waits for the dispatched steps here
          check_finite(jax.device_get(record), task.loss_terms)
        save_metrics = None
        if logs:
          last = log_metrics(writer, step, metrics, data, meter, t.global_batch_size)
        if evals:
          with goodput.timing("evaluation"):
            val = evaluators.run_all(config, evaluation.at(state), during_training=True,
                                     step=step)
          writer.write(step, val)
          writer.validation(step, val)
          last.update(val)
          save_metrics = {config.checkpoint.best_metric: val.get(config.checkpoint.best_metric, 0.0)} \
              if config.checkpoint.best_metric in val else None
        if saves or save_metrics:
          with goodput.timing("checkpointing"):
            ckpt.save(step, state, batches.position(), metrics=save_metrics, force=stop)
        if stop:
          logging.warning("stopping after step %d (checkpoint saved)", step)
          break
  finally:
    profiler.close()
    batches.close()
    with goodput.timing("checkpointing"):
      ckpt.close()
    log_goodput(writer, step, goodput)
    writer.close()
  return last
