"""Metrics from process 0: JSON lines, TensorBoard event files (tensorboardX, no
TensorFlow), and a progress line. Other processes write nothing."""
from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


def _losses(metrics: dict) -> str:
  return " ".join(f"{k}={float(np.asarray(v)):.4f}" for k, v in metrics.items())


class MetricWriter:
  def __init__(self, workdir, *, total_steps: int, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self._last = None  # (time, step) of the previous progress line
    if not self.active:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
    self.tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.active:
      return
    record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    if self.tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, int(step))

  def progress(self, step: int, metrics: dict, examples_per_step: int):
    """Log step, losses, examples/s, time per step and time left since the last call."""
    now = time.time()
    if self._last is None:
      self._last = (now, step)
      rate = ""
    else:
      dt, ds = now - self._last[0], max(step - self._last[1], 1)
      self._last = (now, step)
      per_step = dt / ds
      left = per_step * max(self.total_steps - step, 0)
      rate = (f" | {examples_per_step / per_step:.1f} ex/s {per_step:.3f} s/step "
              f"{left / 60:.1f} min left")
    if self.active:
      losses = _losses({k: v for k, v in metrics.items() if k.startswith("loss")})
      print(f"step {step}/{self.total_steps} {losses}{rate}", flush=True)

  def validation(self, step: int, metrics: dict):
    """Print the validation losses of `step` (one line)."""
    if self.active:
      print(f"validation at step {step}: {_losses(metrics)}", flush=True)

  def close(self):
    if self.active:
      self.jsonl.close()
      if self.tb is not None:
        self.tb.close()
