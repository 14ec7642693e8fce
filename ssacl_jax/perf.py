"""Where a training run's time goes: goodput, per-interval throughput and MFU, profiler
traces of chosen steps, and the persistent compilation cache.

The step loop dispatches steps without waiting for them, so host clocks measure device
work only where the host waits for it: at log, eval and checkpoint steps. The goodput's
`train_steps` seconds are the dispatches plus those waits.
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import time

import jax

from ssacl_jax import hardware

GOODPUT_PARTS = ("initialization", "restore", "compilation", "data_wait", "train_steps",
                 "evaluation", "checkpointing", "profiling")


class Goodput:
  """Seconds spent in each part of a run since it started (GOODPUT_PARTS)."""

  def __init__(self, clock=time.perf_counter):
    self.clock = clock
    self.started = clock()
    self.seconds = dict.fromkeys(GOODPUT_PARTS, 0.0)

  @contextlib.contextmanager
  def timing(self, part: str):
    t0 = self.clock()
    try:
      yield
    finally:
      self.seconds[part] += self.clock() - t0

  def summary(self) -> dict:
    """{"goodput/<part>_s": seconds, "goodput/total_s", "goodput/other_s",
    "goodput/productive_fraction"}: the productive part is the training steps."""
    total = self.clock() - self.started
    out = {f"goodput/{part}_s": round(s, 3) for part, s in self.seconds.items()}
    out["goodput/total_s"] = round(total, 3)
    out["goodput/other_s"] = round(total - sum(self.seconds.values()), 3)
    out["goodput/productive_fraction"] = round(self.seconds["train_steps"] / max(total, 1e-9), 4)
    return out


def peak_flops_per_device(config, device_kind: str) -> float | None:
  """train.peak_flops_per_device, else the chip table's dense bf16 peak; None (no MFU) for
  devices the table does not know, such as CPUs."""
  given = config.train.get("peak_flops_per_device", 0.0)
  if given:
    return float(given)
  chip = hardware.chip_for_device_kind(device_kind)
  return chip.peak_bf16_flops if chip else None


class IntervalMeter:
  """Step time, examples/s and MFU over each log interval.

  Step time counts the training-step and data-wait seconds of the goodput (not evaluation
  or checkpointing inside the interval), divided by the steps run.
  """

  def __init__(self, goodput: Goodput, examples_per_step: int, num_devices: int,
               peak_per_device: float | None, start_step: int):
    self.goodput, self.examples = goodput, examples_per_step
    self.peak_total = peak_per_device * num_devices if peak_per_device else None
    self.flops_per_step = None
    self._mark = (start_step, self._busy(), goodput.seconds["data_wait"])

  def _busy(self) -> float:
    return self.goodput.seconds["train_steps"] + self.goodput.seconds["data_wait"]

  def measure(self, step: int) -> dict:
    """The interval since the last call (or the start), ending after `step`."""
    last_step, last_busy, last_wait = self._mark
    busy, wait = self._busy(), self.goodput.seconds["data_wait"]
    self._mark = (step, busy, wait)
    steps = step - last_step
    if steps <= 0:
      return {}
    step_time = (busy - last_busy) / steps
    out = {"perf/step_time_s": step_time, "data_wait_s": wait - last_wait,
           "perf/examples_per_s": self.examples / max(step_time, 1e-12)}
    if self.peak_total and self.flops_per_step:
      out["perf/mfu"] = self.flops_per_step / (max(step_time, 1e-12) * self.peak_total)
    return out


class StepProfiler:
  """jax.profiler trace of steps start..stop (inclusive, 1-based) into WORKDIR/profile on
  process 0, readable by TensorBoard's profile plugin and XProf; every step carries a
  StepTraceAnnotation so the tools split the trace by step."""

  def __init__(self, workdir, profile_steps):
    start, stop = (tuple(profile_steps) + (0, 0))[:2] if profile_steps else (0, 0)
    self.start, self.stop = int(start), int(stop)
    self.enabled = self.start > 0 and self.stop >= self.start and jax.process_index() == 0
    self.directory = posixpath.join(str(workdir), "profile")
    self.tracing = False

  def annotate(self, step: int):
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def before_step(self, step: int) -> None:
    if self.enabled and step == self.start:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after_step(self, step: int, outputs) -> None:
    if self.tracing and step >= self.stop:
      jax.block_until_ready(outputs)  # the trace must hold the device work of the last step
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info("profile of steps %d-%d written to %s", self.start, self.stop, self.directory)


def compilation_cache_dir(config, workdir) -> str | None:
  """train.compilation_cache_dir: 'auto' = a `compilation_cache` folder beside the workdir
  (shared by the runs under one parent folder), '' = no persistent cache, else that path."""
  wanted = config.train.get("compilation_cache_dir", "")
  if wanted != "auto":
    return wanted or None
  workdir = str(workdir).rstrip("/")
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return posixpath.join(posixpath.dirname(workdir), "compilation_cache")


def use_compilation_cache(path: str | None) -> None:
  """Persistent compilation cache at `path` through jax.config. JAX opens its cache once per
  process: a directory already set (JAX_COMPILATION_CACHE_DIR, an earlier run in this
  process) is kept."""
  if not path:
    return
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # A 2-process CPU (gloo) run resumed with a cache hit died on a collective mismatch.
    logging.info("no persistent compilation cache for multi-process CPU runs")
    return
  current = jax.config.jax_compilation_cache_dir
  if current:
    if current != path:
      logging.info("compilation cache stays at %s (already set in this process)", current)
    return
  jax.config.update("jax_compilation_cache_dir", path)
