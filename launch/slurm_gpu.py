#!/usr/bin/env python3
"""Train SS-ACL on a multi-node GPU cluster with SLURM: write an sbatch script and submit it.

  python launch/slurm_gpu.py --nodes 2 --gpus-per-node 8 --partition gpu \
      --config configs/gpu_8xh200.py --workdir /shared/runs/h200x16 --data-dir /shared/tfds

srun starts `python -m ssacl_jax.main` once per GPU (default) or once per node; there,
`jax.distributed.initialize()` (ssacl_jax.main.initialize_hosts, triggered by
SLURM_NTASKS) reads the coordinator (first node of SLURM_STEP_NODELIST, a port derived
from SLURM_JOB_ID), the process count and index (SLURM_NTASKS, SLURM_PROCID) from SLURM.
  per GPU:  --ntasks-per-node = GPUs; JAX gives process i of a node GPU SLURM_LOCALID, so
            every task must see all of its node's GPUs (srun --gpu-bind=none).
  per node: one task per node with JAX_LOCAL_DEVICE_IDS=0,...,G-1 (all of the node's GPUs;
            without it JAX would take only GPU SLURM_LOCALID = 0).
`--dry-run` prints the script and the sbatch command instead of writing and submitting.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys

DEFAULT_XLA_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--nodes", type=int, default=1)
  p.add_argument("--gpus-per-node", type=int, default=8)
  p.add_argument("--process-per", choices=("gpu", "node"), default="gpu",
                 help="one JAX process per GPU (default) or per node")
  p.add_argument("--cpus-per-gpu", type=int, default=12, help="CPU cores per GPU (data loading)")
  p.add_argument("--partition", default="")
  p.add_argument("--account", default="")
  p.add_argument("--qos", default="")
  p.add_argument("--time", default="48:00:00", help="wall-clock limit")
  p.add_argument("--job-name", default="ssacl")
  p.add_argument("--config", default="configs/gpu_8xh200.py", help="config file, with :variants")
  p.add_argument("--workdir", required=True, help="shared directory for checkpoints and metrics")
  p.add_argument("--data-dir", default="", help="prepared TFDS data on a shared file system")
  p.add_argument("--repo-dir", default=".",
                 help="the checkout, on a file system every node sees (default: this one)")
  p.add_argument("--venv", default="", help="virtualenv to activate on every node")
  p.add_argument("--python", default="python")
  p.add_argument("--xla-flags", default=DEFAULT_XLA_FLAGS)
  p.add_argument("--log-dir", default="", help="SLURM output files (default WORKDIR/slurm)")
  p.add_argument("--script", default="", help="where to write the script "
                 "(default WORKDIR/slurm/JOB_NAME.sbatch)")
  p.add_argument("--dry-run", action="store_true", help="print the script and the command")
  argv = list(sys.argv[1:] if argv is None else argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  args = p.parse_args(argv[:cut])
  args.overrides = argv[cut + 1:]   # after --: extra flags for ssacl_jax.main
  if args.nodes < 1 or args.gpus_per_node < 1:
    p.error("--nodes and --gpus-per-node must be >= 1")
  args.repo_dir = os.path.abspath(args.repo_dir)
  return args


def tasks_per_node(args) -> int:
  return args.gpus_per_node if args.process_per == "gpu" else 1


def log_dir(args) -> str:
  return args.log_dir or f"{args.workdir.rstrip('/')}/slurm"


def script_path(args) -> str:
  return args.script or f"{log_dir(args)}/{args.job_name}.sbatch"


def train_command(args) -> list[str]:
  cmd = [args.python, "-m", "ssacl_jax.main", f"--config={args.config}",
         f"--workdir={args.workdir}"]
  if args.data_dir:
    cmd.append(f"--config.data.data_dir={args.data_dir}")
  return cmd + list(args.overrides)


def srun_command(args) -> list[str]:
  cmd = ["srun", "--kill-on-bad-exit=1", f"--ntasks-per-node={tasks_per_node(args)}"]
  if args.process_per == "gpu":
    cmd.append("--gpu-bind=none")
  return cmd + train_command(args)


def sbatch_script(args) -> str:
  """The batch script: resources, environment, one srun over every task."""
  per_node = tasks_per_node(args)
  directives = [
      f"--job-name={args.job_name}",
      f"--nodes={args.nodes}",
      f"--ntasks-per-node={per_node}",
      f"--gpus-per-node={args.gpus_per_node}",
      f"--cpus-per-task={args.cpus_per_gpu * args.gpus_per_node // per_node}",
      f"--time={args.time}",
      f"--output={log_dir(args)}/%x-%j.out",
      "--exclusive",
  ]
  directives += [f"--{k}={v}" for k, v in (("partition", args.partition),
                                          ("account", args.account), ("qos", args.qos)) if v]
  lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives] + [
      "",
      f"# SS-ACL: {args.nodes} node(s) x {args.gpus_per_node} GPUs, one process per "
      f"{args.process_per} ({args.nodes * per_node} processes).",
      "set -euo pipefail",
      f"cd {shlex.quote(args.repo_dir)}",
  ]
  if args.venv:
    lines.append(f"source {shlex.quote(args.venv)}/bin/activate")
  if args.xla_flags:
    lines.append(f"export XLA_FLAGS={shlex.quote(args.xla_flags)}")
  if args.process_per == "node":
    lines.append("export JAX_LOCAL_DEVICE_IDS=" + ",".join(map(str, range(args.gpus_per_node))))
  lines += [
      f"mkdir -p {shlex.quote(args.workdir)}",
      'echo "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $SLURM_NTASKS processes"',
      shlex.join(srun_command(args)),
      "",
  ]
  return "\n".join(lines)


def sbatch_command(args) -> list[str]:
  return ["sbatch", script_path(args)]


def main(argv=None, runner=subprocess.run) -> int:
  args = parse_args(argv)
  script, cmd = sbatch_script(args), sbatch_command(args)
  if args.dry_run:
    print(f"# {script_path(args)}")
    print(script)
    print(shlex.join(cmd))
    return 0
  path = pathlib.Path(script_path(args))
  path.parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(log_dir(args)).mkdir(parents=True, exist_ok=True)
  path.write_text(script)
  print(f"wrote {path}")
  print(shlex.join(cmd), flush=True)
  return runner(cmd).returncode


if __name__ == "__main__":
  sys.exit(main())
