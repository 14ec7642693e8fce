#!/usr/bin/env python3
"""Train SS-ACL on a Cloud TPU VM pod slice with gcloud: create, set up, run, follow, delete.

  python launch/tpu_pod.py all --name ssacl-v5e-256 --zone us-west4-a \
      --accelerator-type v5litepod-256 --version v2-alpha-tpuv5-lite \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5e_256.py --workdir gs://BUCKET/runs/v5e_256

Subcommands: create | setup (install the project, then copy or mount the data, on every
worker) | run (start training on all workers at once, in the background, logging to a file)
| logs (follow worker 0's log until training ends) | stop | delete | all (create, setup,
run, logs, then delete unless --keep). `--dry-run` prints the exact commands instead of
running them, one per line.

Multi-slice (`--num-slices N`): N slices NAME-0 .. NAME-{N-1} of the accelerator type,
joined over the data-centre network. Every worker of slice i runs with
MEGASCALE_COORDINATOR_ADDRESS (slice 0's worker 0, which JAX also uses as its
coordinator), MEGASCALE_NUM_SLICES=N, MEGASCALE_SLICE_ID=i and MEGASCALE_PORT; the config
spreads its data axis over the slices (`configs/tpu_v5e_256.py:slices=2,batch=512`, i.e.
config.mesh.dcn_shape = (2, 1, 1)).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

REMOTE_REPO = "~/ssacl_jax"
TARBALL = "ssacl_jax.tar.gz"
SUBCOMMANDS = ("create", "setup", "run", "logs", "stop", "delete", "all")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("command", choices=SUBCOMMANDS)
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", help="GCP project (default: gcloud's)")
  p.add_argument("--accelerator-type", default="v5litepod-256",
                 help="e.g. v5litepod-256, v5p-128, v4-64")
  p.add_argument("--version", default="v2-alpha-tpuv5-lite",
                 help="TPU software version: v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p), "
                      "tpu-ubuntu2204-base (v4)")
  p.add_argument("--spot", action="store_true", help="create a Spot slice")
  p.add_argument("--num-slices", type=int, default=1,
                 help="slices joined over DCN (multi-slice); > 1 names them NAME-0, NAME-1, ...")
  p.add_argument("--coordinator-address", default="",
                 help="multi-slice: slice 0's worker 0 (default: its internal IP, looked up "
                      "with gcloud on each worker)")
  p.add_argument("--megascale-port", type=int, default=8080)
  src = p.add_mutually_exclusive_group()
  src.add_argument("--repo-url", help="git URL to clone on every worker")
  src.add_argument("--tarball", action="store_true",
                   help="ship the local checkout instead: git archive HEAD, scp to all workers")
  p.add_argument("--ref", default="", help="git ref to check out with --repo-url")
  p.add_argument("--local-repo", default=".", help="checkout to archive with --tarball")
  p.add_argument("--extras", default="tpu", help="pip extras installed with the project")
  p.add_argument("--data", default="", help="prepared TFDS data on GCS, gs://BUCKET/PATH")
  p.add_argument("--data-mode", choices=("rsync", "gcsfuse"), default="rsync",
                 help="copy the data to each worker's disk, or mount the bucket read-only")
  p.add_argument("--data-dir", default="/tmp/ssacl_data", help="data directory on workers")
  p.add_argument("--config", default="configs/tpu_v5e_256.py",
                 help="config file (relative to the repo), with :variants")
  p.add_argument("--workdir", default="", help="gs://BUCKET/runs/NAME or a path on workers")
  p.add_argument("--log", default="~/ssacl_train.log", help="log file on every worker")
  p.add_argument("--python", default="python3")
  p.add_argument("--keep", action="store_true", help="'all': do not delete the slice")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  argv = list(sys.argv[1:] if argv is None else argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  args = p.parse_args(argv[:cut])
  args.overrides = argv[cut + 1:]   # after --: extra flags for ssacl_jax.main
  if args.command in ("setup", "all") and not (args.repo_url or args.tarball):
    p.error(f"{args.command} needs --repo-url or --tarball")
  if args.command in ("run", "all") and not args.workdir:
    p.error(f"{args.command} needs --workdir")
  if args.data and not args.data.startswith("gs://"):
    p.error("--data must be a gs:// path")
  if args.num_slices < 1:
    p.error("--num-slices must be at least 1")
  return args


# ----------------------------------------------------------------------------- commands
def _tpu(args, verb: str, *rest: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
  return cmd + ([f"--project={args.project}"] if args.project else [])


def slice_names(args) -> list[str]:
  """The TPU VMs: NAME for one slice, NAME-0 .. NAME-{N-1} for N."""
  if args.num_slices == 1:
    return [args.name]
  return [f"{args.name}-{i}" for i in range(args.num_slices)]


def ssh(args, worker: str, remote: str, name: str | None = None) -> list[str]:
  return _tpu(args, "ssh", name or args.name, f"--worker={worker}", f"--command={remote}")


def ssh_all_slices(args, remote: str) -> list[list[str]]:
  return [ssh(args, "all", remote, name) for name in slice_names(args)]


def create_cmds(args) -> list[list[str]]:
  return [_tpu(args, "create", name, f"--accelerator-type={args.accelerator_type}",
               f"--version={args.version}") + (["--spot"] if args.spot else [])
          for name in slice_names(args)]


def install_cmds(args) -> list[list[str]]:
  """Put the project in REMOTE_REPO on every worker and pip install it (editable)."""
  pip = f"{args.python} -m pip install -q -U pip && {args.python} -m pip install -q -e '.[{args.extras}]'"
  if args.tarball:
    local = f"/tmp/{TARBALL}"
    return [
        ["git", "-C", args.local_repo, "archive", "--format=tar.gz", f"--output={local}",
         "HEAD"],
        *[_tpu(args, "scp", local, f"{name}:~/{TARBALL}", "--worker=all")
          for name in slice_names(args)],
        *ssh_all_slices(args, f"rm -rf {REMOTE_REPO} && mkdir -p {REMOTE_REPO} && "
                              f"tar -xzf ~/{TARBALL} -C {REMOTE_REPO} && cd {REMOTE_REPO} && "
                              f"{pip}"),
    ]
  checkout = f" && git checkout -q {shlex.quote(args.ref)}" if args.ref else ""
  return ssh_all_slices(args, f"rm -rf {REMOTE_REPO} && git clone -q "
                              f"{shlex.quote(args.repo_url)} {REMOTE_REPO} && cd {REMOTE_REPO}"
                              f"{checkout} && {pip}")


def data_cmds(args) -> list[list[str]]:
  """Copy (gsutil -m rsync) or mount (gcsfuse, read-only) the prepared data on all workers."""
  if not args.data:
    return []
  d = shlex.quote(args.data_dir)
  if args.data_mode == "rsync":
    return ssh_all_slices(args, f"mkdir -p {d} && gsutil -m -q rsync -r "
                                f"{shlex.quote(args.data)} {d}")
  bucket, _, prefix = args.data[len("gs://"):].partition("/")
  only = f"--only-dir={shlex.quote(prefix)} " if prefix else ""
  return ssh_all_slices(args, f"sudo mkdir -p {d} && sudo chown $USER {d} && "
                              f"(mountpoint -q {d} || gcsfuse -o ro --implicit-dirs {only}"
                              f"{shlex.quote(bucket)} {d})")


def train_command(args) -> str:
  """The python -m ssacl_jax.main line every worker runs."""
  parts = [args.python, "-m", "ssacl_jax.main", f"--config={args.config}",
           f"--workdir={args.workdir}"]
  if args.data:
    parts.append(f"--config.data.data_dir={args.data_dir}")
  return shlex.join(parts + list(args.overrides))


def slice_environment(args, slice_id: int) -> dict[str, str]:
  """Multi-slice: what JAX and libtpu read on every worker of slice `slice_id` to join the
  slices over DCN (slice 0's worker 0 coordinates); nothing for one slice."""
  if args.num_slices == 1:
    return {}
  coordinator = args.coordinator_address or (
      "$(" + shlex.join(_tpu(args, "describe", slice_names(args)[0],
                             "--format=value(networkEndpoints[0].ipAddress)")) + ")")
  return {"MEGASCALE_COORDINATOR_ADDRESS": f"{coordinator}:{args.megascale_port}",
          "MEGASCALE_NUM_SLICES": str(args.num_slices), "MEGASCALE_SLICE_ID": str(slice_id),
          "MEGASCALE_PORT": str(args.megascale_port)}


def run_cmds(args) -> list[list[str]]:
  """Start training on all workers of every slice at once, detached (nohup), its pid in
  LOG.pid; each slice with its slice_environment."""
  cmds = []
  for i, name in enumerate(slice_names(args)):
    env = " ".join(f"{k}={v}" for k, v in slice_environment(args, i).items())
    remote = (f"cd {REMOTE_REPO} && {env + ' ' if env else ''}SSACL_DISTRIBUTED=1 nohup "
              f"{train_command(args)} > {args.log} 2>&1 < /dev/null & echo $! > {args.log}.pid")
    cmds.append(ssh(args, "all", remote, name))
  return cmds


def logs_cmds(args) -> list[list[str]]:
  """Follow (slice 0's) worker 0's log from the start until its training process exits."""
  return [ssh(args, "0", f"tail -n +1 --pid=$(cat {args.log}.pid) -f {args.log}",
              slice_names(args)[0])]


def stop_cmds(args) -> list[list[str]]:
  return ssh_all_slices(args, f"kill $(cat {args.log}.pid) 2>/dev/null || true")


def delete_cmds(args) -> list[list[str]]:
  return [_tpu(args, "delete", name, "--quiet") for name in slice_names(args)]


def plan(args) -> list[list[str]]:
  """The commands of a subcommand, in order ('all': without the final delete)."""
  steps = {"create": create_cmds, "setup": lambda a: install_cmds(a) + data_cmds(a),
           "run": run_cmds, "logs": logs_cmds, "stop": stop_cmds, "delete": delete_cmds}
  if args.command == "all":
    return [cmd for name in ("create", "setup", "run", "logs") for cmd in steps[name](args)]
  return steps[args.command](args)


# ----------------------------------------------------------------------------- running
def execute(cmds, dry_run: bool, runner=subprocess.run) -> int:
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    code = runner(cmd).returncode
    if code:
      print(f"failed ({code}): {shlex.join(cmd)}", file=sys.stderr)
      return code
  return 0


def main(argv=None, runner=subprocess.run) -> int:
  args = parse_args(argv)
  if args.command == "all" and not args.keep and not args.workdir.startswith("gs://"):
    print(f"warning: --workdir {args.workdir} is on the workers' disks, which 'all' deletes "
          "at the end; use gs:// or --keep", file=sys.stderr)
  try:
    code = execute(plan(args), args.dry_run, runner)
  except KeyboardInterrupt:
    print(f"\ninterrupted; the slice is left as it is (training goes on if it started). "
          f"Delete it with: {'; '.join(map(shlex.join, delete_cmds(args)))}", file=sys.stderr)
    return 130
  if args.command == "all" and not args.keep:
    code = execute(delete_cmds(args), args.dry_run, runner) or code
  return code


if __name__ == "__main__":
  sys.exit(main())
