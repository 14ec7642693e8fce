"""The demo: build the synthetic set, pretrain SS-ACL, fit the pathology head, evaluate.

  python -m ssacl_jax.demo [--workdir runs/demo] [--config configs/demo.py]

Each stage is the same code `python -m ssacl_jax.main --mode train|head|eval` runs; a
stage whose outputs exist is resumed or reused, so running the demo twice is cheap.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import time

# XLA:CPU runs one device's program on about one core; on a CPU-only machine the demo
# trains data-parallel over one fake device per core so every core works.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}")

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"),
    "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Work directory.")


def main(argv):
  del argv
  import jax
  from ssacl_jax import config_lib, evaluate, pathology_head, train
  logging.getLogger().setLevel(logging.WARNING)
  config = _CONFIG.value
  config_lib.validate(config)
  workdir = _WORKDIR.value
  times = {}
  start = time.time()
  print(f"[demo] training SS-ACL ({config.train.num_steps} steps) in {workdir}", flush=True)
  train.train_and_evaluate(config, workdir)
  times["train_s"] = time.time() - start
  print("[demo] fitting the pathology head on the frozen encoder", flush=True)
  t = time.time()
  pathology_head.train_head(config, workdir)
  times["head_s"] = time.time() - t
  print(f"[demo] evaluating on the {config.eval.split} split", flush=True)
  t = time.time()
  evaluate.evaluate(config, workdir)
  times["eval_s"] = time.time() - t
  times["total_s"] = time.time() - start
  print(json.dumps({"demo_times": {k: round(v, 1) for k, v in times.items()}}))
  card = pathlib.Path(workdir) / "eval" / config.eval.split / "report_card.html"
  print(f"[demo] done on {jax.device_count()} device(s). Report card: {card.resolve()}")


if __name__ == "__main__":
  from ssacl_jax import config_lib
  config_lib.run_app(main)
