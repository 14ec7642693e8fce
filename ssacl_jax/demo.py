"""The demo: build the synthetic set, pretrain SS-ACL, fit the pathology head, evaluate.

  python -m ssacl_jax.demo [--workdir runs/demo] [--config configs/demo.py]

Each stage is the same code `python -m ssacl_jax.main --mode train|head|eval` runs; a
stage whose outputs exist is resumed or reused, so running the demo twice is cheap.
`run` is the recipe itself; `python -m ssacl_jax.ablate` runs it once per ablation.

When the config has `warm_start.steps > 0`, training has two stages
(`warm_start_configs`): stage 0 trains the same config with
`warm_start.loss_weights` (the demo's: L_ir + L_cl) for `warm_start.steps` steps into
WORKDIR/`warm_start.subdir`; stage 1 is the config itself, its `init` taking
`warm_start.parts` from stage 0's last checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

# XLA:CPU runs one device's program on about one core; on a CPU-only machine the demo
# trains data-parallel over one fake device per core so every core works.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}")


# Seconds per unit of each stage on 2 CPU cores (README, "Demo results": warm start 199 s
# for 1500 steps, training 403 s for 600, head 6 s, eval 30 s): the overall ETA's prior,
# rescaled by how fast the finished stages actually ran.
_REFERENCE_SECONDS = {"warm start": 199 / 1500, "training": 403 / 600, "head": 6.0, "eval": 30.0}


def eta_seconds(plan, done: int, elapsed: float) -> float:
  """Seconds left after `done` of the (stage, units) in `plan`, `elapsed` seconds in."""
  expected = [_REFERENCE_SECONDS[stage] * units for stage, units in plan]
  speed = elapsed / sum(expected[:done]) if done and sum(expected[:done]) > 0 else 1.0
  return speed * sum(expected[done:])


def warm_start_configs(config, workdir):
  """[(config, workdir)] of the training stages: the warm start (if any), then the run."""
  ws = config.get("warm_start")
  if not ws or not ws.steps:
    return [(config, workdir)]
  stage0_dir = str(pathlib.Path(workdir) / ws.subdir)
  stage0 = config.copy_and_resolve_references()
  stage0.model.loss_weights = dict(ws.loss_weights)
  stage0.train.num_steps = ws.steps
  stage0.train.eval_every_steps = 0  # nothing to select: stage 1 takes the last step
  for evaluator in stage0.get("evals", {}).values():
    evaluator.every_steps = 0        # (resolved above: no longer follows eval_every_steps)
  stage0.warm_start.steps = 0
  stage1 = config.copy_and_resolve_references()
  stage1.init.checkpoint, stage1.init.step, stage1.init.parts = stage0_dir, -1, ws.parts
  return [(stage0, stage0_dir), (stage1, workdir)]


def eval_dir(config, workdir) -> pathlib.Path:
  """Where the eval stage writes metrics.json, reports and the report card."""
  return pathlib.Path(workdir) / "eval" / config.eval.split


def run(config, workdir, tag: str = "demo") -> dict:
  """The four stages (three without a warm start), each announced with the time left.
  Returns the stage times (s)."""
  import jax
  from ssacl_jax import evaluators, pathology_head, tasks, train
  tasks.validate(config)
  stages = warm_start_configs(config, workdir)
  config = stages[-1][0]
  plan = [("warm start", c.train.num_steps) for c, _ in stages[:-1]]
  plan += [("training", config.train.num_steps), ("head", 1), ("eval", 1)]
  times, start = {}, time.time()

  def begin(k: int, what: str) -> float:
    left = eta_seconds(plan, k, time.time() - start)
    print(f"[{tag}] stage {k + 1} of {len(plan)}: {what} (about {left / 60:.0f} min left "
          "in all)", flush=True)
    return time.time()

  print(f"[{tag}] data: {config.data.dataset} in {os.path.abspath(config.data.data_dir)} "
        f"(--config.data.data_dir); workdir: {os.path.abspath(workdir)}", flush=True)
  for k, (stage_config, stage_dir) in enumerate(stages[:-1]):
    w = {n: v for n, v in stage_config.model.loss_weights.items() if v}
    begin(k, f"warm start, {stage_config.train.num_steps} steps of {w} in {stage_dir}")
    train.train_and_evaluate(stage_config, stage_dir)
    times["warm_start_s"] = time.time() - start
  k = len(stages) - 1
  init = f" from {config.init.parts} of {config.init.checkpoint}" if config.init.checkpoint else ""
  t = begin(k, f"training SS-ACL, {config.train.num_steps} steps{init}, in {workdir}")
  train.train_and_evaluate(config, workdir)
  times["train_s"] = time.time() - t
  t = begin(k + 1, "fitting the pathology head on the frozen encoder")
  pathology_head.fit(config, workdir)
  times["head_s"] = time.time() - t
  t = begin(k + 2, f"evaluating on the {config.eval.split} split")
  evaluators.evaluate_workdir(config, workdir)
  times["eval_s"] = time.time() - t
  times["total_s"] = time.time() - start
  print(json.dumps({f"{tag}_times": {n: round(v, 1) for n, v in times.items()}}))
  card = eval_dir(config, workdir) / "report_card.html"
  print(f"[{tag}] done on {jax.device_count()} device(s). Open the report card in a browser: "
        f"{card.resolve().as_uri()}")
  return times


def define_flags(default_workdir: str):
  """--config (configs/demo.py) and --workdir, defined only when run as a program (the demo
  and the ablation runner), so importing this module defines none."""
  from absl import flags
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"),
      "Config file.", lock_config=True)
  workdir = flags.DEFINE_string("workdir", default_workdir, "Work directory.")
  return config, workdir


def _cli() -> None:
  from ssacl_jax import cli
  config, workdir = define_flags("runs/demo")
  cli.run_app(lambda argv: run(config.value, workdir.value))


if __name__ == "__main__":
  _cli()
