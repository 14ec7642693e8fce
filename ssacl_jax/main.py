"""Entry point: `python -m ssacl_jax.main --config configs/<name>.py --workdir DIR [--mode M]`.

Modes: train (default; resumes from WORKDIR), head (stage 2: the pathology head),
eval (restore, generate, score), finetune (a downstream config, configs/finetune_*.py:
train the encoder with its head, then score the test split; eval rescores it).
Config fields are overridden with `--config.a.b=value`; variants with `configs/x.py:a=1`.
"""
from __future__ import annotations

import logging
import os

from absl import flags
from ml_collections import config_flags

from ssacl_jax import cli, config_lib, tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variants]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "head", "eval", "finetune"],
                              "train: pretrain SS-ACL; head: fit the pathology head on the frozen "
                              "encoder; eval: restore, generate and score; finetune: fine-tune "
                              "the encoder on a downstream task and score it on the test split.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_hosts() -> None:
  """jax.distributed.initialize() when this is one of several processes (pod or cluster)."""
  import jax
  multi = os.environ.get("SSACL_DISTRIBUTED") == "1" or any(
      v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                                "MEGASCALE_COORDINATOR_ADDRESS"))
  if multi and os.environ.get("SSACL_SINGLE_PROCESS") != "1":
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def evaluate_workdir(config, workdir: str):
  """--mode eval: config.evals' evaluators over the checkpoint of eval.step."""
  from ssacl_jax import evaluators
  return evaluators.evaluate_workdir(config, workdir)


def train_task(config, workdir: str):
  """--mode train: train config's task (resuming when WORKDIR has checkpoints)."""
  from ssacl_jax import train
  return train.train_and_evaluate(config, workdir)


def train_then_evaluate(config, workdir: str):
  """--mode finetune: train, then score."""
  train_task(config, workdir)
  return evaluate_workdir(config, workdir)


def fit_pathology_head(config, workdir: str):
  """--mode head: fit (or refit) the pathology head on the frozen encoder."""
  from ssacl_jax import pathology_head
  return pathology_head.fit(config, workdir)


MODES = {"train": train_task, "head": fit_pathology_head,
         "eval": evaluate_workdir, "finetune": train_then_evaluate}


def main(argv):
  del argv
  initialize_hosts()
  config = _CONFIG.value
  tasks.validate(config)
  mode, task_modes = _MODE.value, tasks.get(config.task).MODES
  if mode not in task_modes:
    raise config_lib.ConfigError(
        f"--mode {mode} does not fit config.task={config.task!r}, which runs with --mode "
        f"{' or '.join(task_modes)}")
  cli.say(f"data: {config.data.dataset} in {os.path.abspath(config.data.data_dir)} "
          "(set with --config.data.data_dir)")
  MODES[mode](config, _WORKDIR.value)


def run():
  cli.run_app(main)


if __name__ == "__main__":
  run()
