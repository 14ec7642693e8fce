"""The demo: build the synthetic set, pretrain SS-ACL, fit the pathology head, evaluate.

  python -m ssacl_jax.demo [--workdir runs/demo] [--config configs/demo.py]

Each stage is the same code `python -m ssacl_jax.main --mode train|head|eval` runs; a
stage whose outputs exist is resumed or reused, so running the demo twice is cheap.
`run` is the recipe itself; `python -m ssacl_jax.ablate` runs it once per ablation.

When the config has `warm_start.steps > 0`, training has two stages
(`config_lib.warm_start_configs`): stage 0 trains the same config with
`warm_start.loss_weights` (the demo's: L_ir + L_cl) for `warm_start.steps` steps into
WORKDIR/`warm_start.subdir`; stage 1 is the config itself, its `init` taking
`warm_start.parts` from stage 0's last checkpoint.
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

DEMO_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")


def define_flags(default_workdir: str) -> None:
  """--config and --workdir (defined only when run as a program, so importing stays clean)."""
  config_flags.DEFINE_config_file("config", DEMO_CONFIG, "Config file.", lock_config=True)
  flags.DEFINE_string("workdir", default_workdir, "Work directory.")


def eval_dir(config, workdir) -> pathlib.Path:
  """Where the eval stage writes metrics.json, reports and the report card."""
  return pathlib.Path(workdir) / "eval" / config.eval.split


def run(config, workdir: str, tag: str = "demo") -> dict:
  """The recipe: the training stages, the pathology head, eval. Returns the stage times (s)."""
  from ssacl_jax import config_lib, evaluate, pathology_head, train
  times = {}
  start = time.time()
  stages = config_lib.warm_start_configs(config, workdir)
  for stage_config, stage_dir in stages[:-1]:
    w = {k: v for k, v in stage_config.model.loss_weights.items() if v}
    print(f"[{tag}] warm start: {stage_config.train.num_steps} steps of {w} in {stage_dir}",
          flush=True)
    train.train_and_evaluate(stage_config, stage_dir)
    times["warm_start_s"] = time.time() - start
  config = stages[-1][0]
  t = time.time()
  init = f" from {config.init.parts} of {config.init.checkpoint}" if config.init.checkpoint else ""
  print(f"[{tag}] training SS-ACL ({config.train.num_steps} steps{init}) in {workdir}",
        flush=True)
  train.train_and_evaluate(config, workdir)
  times["train_s"] = time.time() - t
  print(f"[{tag}] fitting the pathology head on the frozen encoder", flush=True)
  t = time.time()
  pathology_head.train_head(config, workdir)
  times["head_s"] = time.time() - t
  print(f"[{tag}] evaluating on the {config.eval.split} split", flush=True)
  t = time.time()
  evaluate.evaluate(config, workdir)
  times["eval_s"] = time.time() - t
  times["total_s"] = time.time() - start
  return times


def main(argv):
  del argv
  import jax
  from ssacl_jax import config_lib
  logging.getLogger().setLevel(logging.WARNING)
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  config_lib.validate(config)
  times = run(config, workdir)
  print(json.dumps({"demo_times": {k: round(v, 1) for k, v in times.items()}}))
  card = eval_dir(config, workdir) / "report_card.html"
  print(f"[demo] done on {jax.device_count()} device(s). Report card: {card.resolve()}")


if __name__ == "__main__":
  from ssacl_jax import config_lib
  define_flags("runs/demo")
  config_lib.run_app(main)
