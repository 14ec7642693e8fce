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


def main(argv):
  del argv
  from ssacl_jax import cli, config_lib, train
  initialize_hosts()
  config = _CONFIG.value
  config_lib.validate(config)
  mode, finetuning = _MODE.value, config.get("task", "ssacl") == "finetune"
  if finetuning != (mode == "finetune") and not (finetuning and mode == "eval"):
    raise config_lib.ConfigError(
        f"--mode {mode} does not fit config.task={config.get('task')!r}: fine-tuning configs "
        "(configs/finetune_*.py) run with --mode finetune or eval, pretraining configs with "
        "train, head or eval")
  cli.say(f"data: {config.data.dataset} in {os.path.abspath(config.data.data_dir)} "
          "(set with --config.data.data_dir)")
  if finetuning:
    from ssacl_jax import finetune
    if mode == "finetune":
      finetune.run(config, _WORKDIR.value)
    else:
      finetune.evaluate(config, _WORKDIR.value)
  elif mode == "train":
    train.train_and_evaluate(config, _WORKDIR.value)
  elif mode == "head":
    from ssacl_jax import pathology_head
    pathology_head.train_head(config, _WORKDIR.value)
  else:
    from ssacl_jax import evaluate
    evaluate.evaluate(config, _WORKDIR.value)


def run():
  from ssacl_jax import cli
  cli.run_app(main)


if __name__ == "__main__":
  run()
