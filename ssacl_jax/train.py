"""Training: mesh, task (data + model), sharded state, update step, checkpoints, loop.

`train_and_evaluate(config, workdir)` is what `python -m ssacl_jax.main` runs; tests call
it directly. Sections read top to bottom like the run they set up. What is trained is the
`Task` of the module config.task names (ssacl_jax/tasks/); every task goes through the
same state, step (ssacl_jax/steps.py), checkpoints, logging and preemption.
"""
from __future__ import annotations

import ctypes
import logging
import signal

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssacl_jax import (checkpointing, cli, config_lib, data as data_lib, evaluators, flops, optim,
                       perf, pretrained, sharding, state as state_lib, steps, tasks)
from ssacl_jax.metric_writers import MetricWriter


class NonFiniteLossError(FloatingPointError):
  pass


# ----------------------------------------------------------------------------- host side of the step
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


def check_finite(record, loss_terms) -> None:
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
  evaluators.check(config)
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
    task = tasks.get(config.task).build(config, mesh, batch_sharding, workdir)
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
    # Update step (carrying the non-finite record) and the in-training evaluators.
    replicated = NamedSharding(mesh, P())
    train_step = steps.jit_train_step(config, setup, mesh, len(task.consts), task.loss_terms,
                                      compiler_options=state_lib.compiler_options())
    evaluation = evaluators.Context(config, workdir, mesh=mesh, batch_sharding=batch_sharding,
                                    model=task.model, tokenizers=getattr(data, "tokenizers", None),
                                    anatomy_tokens=task.consts)
    base_key = jax.random.key(t.seed)
    record = jax.device_put(steps.no_nonfinite_step(len(task.loss_terms)), replicated)

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
          meter.flops_per_step = (task.flops_per_step
                                  or flops.compiled_flops(compiled_step, mesh.size))
        step += 1
        profiler.before_step(step)
        with goodput.timing("train_steps"), profiler.annotate(step):
          state, metrics, record = compiled_step(state, batch, *task.consts, base_key, record)
        with goodput.timing("profiling"):
          profiler.after_step(step, state)
        logs = step % t.log_every_steps == 0 or step == t.num_steps
        saves = step % t.checkpoint_every_steps == 0 or step == t.num_steps
        evals = bool(evaluators.due(config, during_training=True, step=step))
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
          save_metrics = ({config.checkpoint.best_metric: val[config.checkpoint.best_metric]}
                          if config.checkpoint.best_metric in val else None)
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
