"""Host wait per training step: reading the finite flag after every step (before) against
reading the device-side non-finite record only at log steps (after, train.py today).

  python bench/host_sync.py --json bench/results/host_sync_tiny.json

The tiny test config on 8 fake CPU devices (data parallel), the trainer's jitted step with
the state donated and one device-resident batch reused, so only the loop's reads differ:
  before: step, then bool(metrics["finite"]) after every step (the old check_finite);
  after:  steps.with_nonfinite_record's step, then jax.device_get(record) every
          --log_every steps (train.check_finite at log/eval/checkpoint steps).
Reported per step: host seconds blocked on device values, seconds spent dispatching, and
wall seconds; medians over --repeats rounds of --steps steps, the two loops alternating.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from bench import benchlib  # noqa: E402
from ssacl_jax import sharding, state as state_lib, steps, train  # noqa: E402
from ssacl_jax.models import ssacl  # noqa: E402
from helpers import random_batch, tiny_config  # noqa: E402


def jitted_steps(config, setup, mesh):
  """The trainer's step without (before) and with (after) the non-finite record."""
  before, after = (steps.jit_train_step(config, setup, mesh, 2, ssacl.LOSS_NAMES,
                                        nonfinite_record=record) for record in (False, True))
  return (before, after, NamedSharding(mesh, sharding.batch_spec(config)),
          NamedSharding(mesh, P()))


def run_before(step, state, args, steps):
  wait = dispatch = 0.0
  t_start = time.perf_counter()
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, *args)
    t1 = time.perf_counter()
    bool(metrics["finite"])   # the old per-step check_finite
    dispatch += t1 - t0
    wait += time.perf_counter() - t1
  jax.block_until_ready(state)
  return state, {"wait": wait, "dispatch": dispatch, "wall": time.perf_counter() - t_start}


def run_after(step, state, args, record, steps, log_every):
  wait = dispatch = 0.0
  t_start = time.perf_counter()
  for i in range(1, steps + 1):
    t0 = time.perf_counter()
    state, metrics, record = step(state, *args, record)
    t1 = time.perf_counter()
    dispatch += t1 - t0
    if i % log_every == 0 or i == steps:
      train.check_finite(jax.device_get(record), ssacl.LOSS_NAMES)
      wait += time.perf_counter() - t1
  jax.block_until_ready(state)
  return state, record, {"wait": wait, "dispatch": dispatch, "wall": time.perf_counter() - t_start}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--log_every", type=int, default=5)
  p.add_argument("--json", default="")
  a = p.parse_args()
  config = tiny_config()
  mesh = sharding.make_mesh(config)
  jax.set_mesh(mesh)
  batch_np, tokens = random_batch(config, config.train.global_batch_size)
  setup = state_lib.setup_state(config, ssacl.build_model(config.model), mesh, tokens,
                                ssacl.dummy_batch(config, 1))
  before, after, batch_sharding, replicated = jitted_steps(config, setup, mesh)
  args = (jax.device_put(batch_np, batch_sharding), *jax.device_put(tokens, replicated),
          jax.device_put(jax.random.key(0), replicated))
  state_b = setup.init_fn(jax.random.key(0))
  state_a = setup.init_fn(jax.random.key(0))
  record = jax.device_put(steps.no_nonfinite_step(len(ssacl.LOSS_NAMES)), replicated)
  state_b, _ = run_before(before, state_b, args, 2)            # compile + warm up
  state_a, record, _ = run_after(after, state_a, args, record, 2, a.log_every)
  rounds = {"before": [], "after": []}
  for _ in range(a.repeats):
    state_b, r = run_before(before, state_b, args, a.steps)
    rounds["before"].append(r)
    state_a, record, r = run_after(after, state_a, args, record, a.steps, a.log_every)
    rounds["after"].append(r)

  def per_step(name, key):
    return round(statistics.median(r[key] for r in rounds[name]) / a.steps * 1e3, 3)

  report = {"bench": "host_sync", "config": "tests/tiny_config.py", "devices": mesh.size,
            "backend": jax.default_backend(), "steps_per_round": a.steps,
            "repeats": a.repeats, "log_every": a.log_every, "machine": benchlib.machine(),
            "load1": round(os.getloadavg()[0], 2)}
  for name in rounds:
    report[name] = {"host_wait_ms_per_step": per_step(name, "wait"),
                    "dispatch_ms_per_step": per_step(name, "dispatch"),
                    "wall_ms_per_step": per_step(name, "wall"),
                    "host_blocked_fraction": round(statistics.median(
                        r["wait"] / r["wall"] for r in rounds[name]), 3)}
  print(benchlib.write_json(a.json, report))


if __name__ == "__main__":
  main()
