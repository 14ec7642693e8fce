"""Pod and cluster launch: dry runs of launch/tpu_pod.py and launch/slurm_gpu.py, the
SLURM hand-off to jax.distributed, and the per-process data split a multi-host run relies on.
No network: every launcher call here is a dry run or uses a recording runner."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_pod = load("tpu_pod")
slurm_gpu = load("slurm_gpu")

POD = ["--name", "ssacl-v5e", "--zone", "us-west4-a", "--project", "proj",
       "--accelerator-type", "v5litepod-256", "--version", "v2-alpha-tpuv5-lite"]


def dry_run(script: str, *args: str) -> list[str]:
  out = subprocess.run([sys.executable, f"launch/{script}.py", "--dry-run", *args], cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return out.stdout.splitlines()


class Recorder:
  """A runner that records commands and fails the ones containing `fail_on`."""

  def __init__(self, fail_on: str | None = None, interrupt_on: str | None = None):
    self.calls, self.fail_on, self.interrupt_on = [], fail_on, interrupt_on

  def __call__(self, cmd):
    self.calls.append(cmd)
    line = shlex.join(cmd)
    if self.interrupt_on and self.interrupt_on in line:
      raise KeyboardInterrupt
    return types.SimpleNamespace(returncode=1 if self.fail_on and self.fail_on in line else 0)


# ----------------------------------------------------------------------------- TPU pod
def test_tpu_pod_all_dry_run_prints_every_step():
  lines = dry_run("tpu_pod", "all", *POD, "--repo-url", "https://example.org/ssacl_jax.git",
                  "--ref", "v1.0", "--data", "gs://bucket/tfds", "--config",
                  "configs/tpu_v5e_256.py:batch=1024", "--workdir", "gs://bucket/runs/v5e",
                  "--", "--config.train.num_steps=10")
  assert len(lines) == 6
  create, install, data, run, logs, delete = (shlex.split(line) for line in lines)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "ssacl-v5e"]
  assert {"--zone=us-west4-a", "--project=proj", "--accelerator-type=v5litepod-256",
          "--version=v2-alpha-tpuv5-lite"} <= set(create)
  for cmd in (install, data, run):
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "ssacl-v5e"]
    assert "--worker=all" in cmd and "--zone=us-west4-a" in cmd
  remote = lambda cmd: next(a for a in cmd if a.startswith("--command="))[len("--command="):]
  assert "git clone -q https://example.org/ssacl_jax.git ~/ssacl_jax" in remote(install)
  assert "git checkout -q v1.0" in remote(install)
  assert "pip install -q -e '.[tpu]'" in remote(install)
  assert remote(data) == "mkdir -p /tmp/ssacl_data && gsutil -m -q rsync -r gs://bucket/tfds /tmp/ssacl_data"
  r = remote(run)
  assert r.startswith("cd ~/ssacl_jax && SSACL_DISTRIBUTED=1 nohup python3 -m ssacl_jax.main ")
  assert ("--config=configs/tpu_v5e_256.py:batch=1024 --workdir=gs://bucket/runs/v5e "
          "--config.data.data_dir=/tmp/ssacl_data --config.train.num_steps=10") in r
  assert r.endswith("> ~/ssacl_train.log 2>&1 < /dev/null & echo $! > ~/ssacl_train.log.pid")
  assert "--worker=0" in logs
  assert remote(logs) == "tail -n +1 --pid=$(cat ~/ssacl_train.log.pid) -f ~/ssacl_train.log"
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ssacl-v5e"]
  assert "--quiet" in delete


def test_tpu_pod_tarball_and_gcsfuse():
  lines = dry_run("tpu_pod", "setup", *POD, "--tarball", "--data", "gs://bucket/prepared/tfds",
                  "--data-mode", "gcsfuse", "--data-dir", "/mnt/data")
  archive, scp, install, mount = (shlex.split(line) for line in lines)
  assert archive[:4] == ["git", "-C", ".", "archive"] and archive[-1] == "HEAD"
  assert scp[4:7] == ["scp", "/tmp/ssacl_jax.tar.gz", "ssacl-v5e:~/ssacl_jax.tar.gz"]
  assert "--worker=all" in scp
  assert "tar -xzf ~/ssacl_jax.tar.gz -C ~/ssacl_jax" in " ".join(install)
  assert "gcsfuse -o ro --implicit-dirs --only-dir=prepared/tfds bucket /mnt/data" in " ".join(mount)


@pytest.mark.parametrize("command,first", [
    ("create", "create"), ("run", "ssh"), ("logs", "ssh"), ("stop", "ssh"), ("delete", "delete")])
def test_tpu_pod_single_subcommands(command, first):
  lines = dry_run("tpu_pod", command, *POD, "--workdir", "gs://b/w")
  assert len(lines) == 1 and shlex.split(lines[0])[4] == first


def test_tpu_pod_rejects_incomplete_arguments():
  with pytest.raises(SystemExit):
    tpu_pod.parse_args(["setup", *POD])                       # no --repo-url / --tarball
  with pytest.raises(SystemExit):
    tpu_pod.parse_args(["run", *POD])                         # no --workdir
  with pytest.raises(SystemExit):
    tpu_pod.parse_args(["all", *POD, "--tarball", "--workdir", "w", "--data", "/local"])


def test_tpu_pod_all_stops_on_failure_and_still_deletes():
  runner = Recorder(fail_on="ssacl_jax.main")
  code = tpu_pod.main(["all", *POD, "--tarball", "--workdir", "gs://b/w"], runner=runner)
  assert code == 1
  verbs = [c[4] if c[0] == "gcloud" else c[0] for c in runner.calls]
  assert verbs == ["create", "git", "scp", "ssh", "ssh", "delete"]   # no logs after the failure


def test_tpu_pod_all_keep_and_interrupt_leave_the_slice():
  runner = Recorder()
  assert tpu_pod.main(["all", *POD, "--tarball", "--workdir", "gs://b/w", "--keep"],
                      runner=runner) == 0
  assert runner.calls[-1][4] == "ssh" and "--worker=0" in runner.calls[-1]
  runner = Recorder(interrupt_on="tail -n +1")
  assert tpu_pod.main(["all", *POD, "--tarball", "--workdir", "gs://b/w"], runner=runner) == 130
  assert all(c[4] != "delete" for c in runner.calls if c[0] == "gcloud")


def test_tpu_pod_multi_slice_dry_run_shows_each_slices_megascale_environment():
  lines = dry_run("tpu_pod", "all", *POD, "--num-slices", "2", "--tarball", "--config",
                  "configs/tpu_v5e_256.py:slices=2,batch=512", "--workdir", "gs://b/w")
  verbs = [(shlex.split(x)[4], shlex.split(x)[5]) if x.startswith("gcloud") else x.split()[0]
           for x in lines]
  assert verbs == [("create", "ssacl-v5e-0"), ("create", "ssacl-v5e-1"), "git",
                   ("scp", "/tmp/ssacl_jax.tar.gz"), ("scp", "/tmp/ssacl_jax.tar.gz"),
                   ("ssh", "ssacl-v5e-0"), ("ssh", "ssacl-v5e-1"),   # install
                   ("ssh", "ssacl-v5e-0"), ("ssh", "ssacl-v5e-1"),   # run
                   ("ssh", "ssacl-v5e-0"),                            # logs
                   ("delete", "ssacl-v5e-0"), ("delete", "ssacl-v5e-1")]
  coordinator = ("MEGASCALE_COORDINATOR_ADDRESS=$(gcloud compute tpus tpu-vm describe "
                 "ssacl-v5e-0 '--format=value(networkEndpoints[0].ipAddress)' "
                 "--zone=us-west4-a --project=proj):8080")
  for slice_id, line in enumerate(lines[7:9]):
    remote = shlex.split(line)[7].removeprefix("--command=")
    assert "--worker=all" in line
    assert (f"{coordinator} MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={slice_id} "
            "MEGASCALE_PORT=8080 SSACL_DISTRIBUTED=1 nohup python3 -m ssacl_jax.main "
            "--config=configs/tpu_v5e_256.py:slices=2,batch=512") in remote
  given = tpu_pod.slice_environment(tpu_pod.parse_args(
      ["run", *POD, "--num-slices", "3", "--coordinator-address", "10.0.0.2", "--workdir", "w"]), 2)
  assert given == {"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2:8080", "MEGASCALE_NUM_SLICES": "3",
                   "MEGASCALE_SLICE_ID": "2", "MEGASCALE_PORT": "8080"}
  assert tpu_pod.slice_environment(tpu_pod.parse_args(["run", *POD, "--workdir", "w"]), 0) == {}


# ----------------------------------------------------------------------------- SLURM
def test_slurm_per_gpu_script_and_command():
  lines = dry_run("slurm_gpu", "--nodes", "2", "--gpus-per-node", "8", "--partition", "h200",
                  "--account", "acct", "--workdir", "/shared/runs/h200x16", "--data-dir",
                  "/shared/tfds", "--venv", "/shared/venv", "--", "--config.train.num_steps=5")
  assert lines[0] == "# /shared/runs/h200x16/slurm/ssacl.sbatch"
  assert lines[1] == "#!/bin/bash"
  assert lines[-1] == "sbatch /shared/runs/h200x16/slurm/ssacl.sbatch"
  script = "\n".join(lines[1:-1])
  for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                    "--cpus-per-task=12", "--partition=h200", "--account=acct",
                    "--output=/shared/runs/h200x16/slurm/%x-%j.out"):
    assert f"#SBATCH {directive}\n" in script
  assert f"cd {ROOT}\n" in script
  assert "source /shared/venv/bin/activate" in script
  assert "JAX_LOCAL_DEVICE_IDS" not in script
  srun = shlex.split(next(line for line in lines if line.startswith("srun ")))
  assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=8", "--gpu-bind=none"]
  assert srun[4:] == ["python", "-m", "ssacl_jax.main", "--config=configs/gpu_8xh200.py",
                      "--workdir=/shared/runs/h200x16", "--config.data.data_dir=/shared/tfds",
                      "--config.train.num_steps=5"]


def test_slurm_per_node_sees_all_gpus():
  script = slurm_gpu.sbatch_script(slurm_gpu.parse_args(
      ["--nodes", "4", "--gpus-per-node", "4", "--process-per", "node", "--workdir", "/w"]))
  assert "#SBATCH --ntasks-per-node=1\n" in script
  assert "#SBATCH --cpus-per-task=48\n" in script
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3\n" in script
  assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1 python -m ssacl_jax.main" in script
  assert "--gpu-bind" not in script


def test_slurm_submit_writes_the_script(tmp_path):
  runner = Recorder()
  script = tmp_path / "job.sbatch"
  code = slurm_gpu.main(["--workdir", str(tmp_path / "w"), "--script", str(script)],
                        runner=runner)
  assert code == 0 and runner.calls == [["sbatch", str(script)]]
  assert script.read_text().startswith("#!/bin/bash\n#SBATCH --job-name=ssacl\n")
  assert (tmp_path / "w" / "slurm").is_dir()


def test_slurm_environment_starts_jax_distributed():
  """What srun sets is enough for main.initialize_hosts -> jax.distributed.initialize, and
  JAX's SLURM detection finds the coordinator, process count and index in it."""
  code = (
      "import jax\n"
      "from jax._src import clusters\n"
      "calls = []\n"
      "jax.distributed.initialize = lambda *a, **k: calls.append((a, k))\n"
      "from ssacl_jax import main\n"
      "main.initialize_hosts()\n"
      "c = clusters.SlurmCluster\n"
      "print(len(calls), c.is_env_present(), c.get_coordinator_address(None, None),\n"
      "      c.get_process_count(), c.get_process_id(), c.get_local_process_id())\n")
  env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[003-004]",
             SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1", JAX_PLATFORMS="cpu")
  env.pop("SSACL_SINGLE_PROCESS", None)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  port = 4242 % 2**12 + 65535 - 2**12 + 1                 # JAX: a port from the job id
  assert out == ["1", "True", f"gpu003:{port}", "16", "9", "1"]


# ----------------------------------------------------------------------------- data split
REPORTS = ["The heart is normal in size.", "Left lower lobe opacity.", "No pleural effusion.",
           "Small right pleural effusion.", "Mild cardiomegaly.", "No pneumothorax."]


def _record(i: int) -> dict:
  from input_pipeline import features
  from ssacl_jax import anatomy
  labels = np.full(anatomy.NUM_PATHOLOGIES, -2, np.int8)
  labels[i % anatomy.NUM_PATHOLOGIES] = 1
  y, x = np.mgrid[:40, :36]
  return {"image": ((x * 7 + y * i) % 256).astype(np.uint8)[..., None],
          "report": " ".join(REPORTS[(i + j) % len(REPORTS)] for j in range(2)).encode(),
          "study_id": f"s{i:04d}".encode(), **features.label_fields(labels)}


class StudySource:
  """A list source that remembers the study_id of every record read."""

  def __init__(self, records):
    self.records, self.seen = records, []

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    record = self.records[int(i)]
    self.seen.append(record["study_id"].decode())
    return record


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  from input_pipeline import tokenizers as T
  d = tmp_path_factory.mktemp("tok")
  reports = [" ".join(REPORTS[(i + j) % len(REPORTS)] for j in range(2)) for i in range(12)]
  text = T.train_sentencepiece([r.lower() for r in reports], str(d / "text"), 300, "text")
  dec = T.train_sentencepiece(reports, str(d / "dec"), 300, "decoder")
  return T.TokenizerPair(T.load_tokenizer(text), T.load_tokenizer(dec))


def test_processes_read_disjoint_shares_covering_an_epoch(tokenizers):
  import ml_collections
  from input_pipeline import pipeline
  n, global_batch = 16, 8
  records = [_record(i) for i in range(n)]
  config = ml_collections.ConfigDict({
      "data": dict(image_size=32, channels=3, text_len=16, report_len=20, prompt_len=6,
                   decoder_len=28, affine_degrees=0.0, affine_scale=(1.0, 1.0)),
      "train": {"global_batch_size": global_batch}})
  everyone = {f"s{i:04d}" for i in range(n)}
  for process_count in (1, 2, 4):
    shares = []
    for p in range(process_count):
      source = StudySource(records)
      ds, tracker = pipeline.make_train_dataset(source, config, tokenizers, p, process_count,
                                                seed=3)
      it = iter(ds)
      per_epoch = n // global_batch                     # global batches in one epoch
      batches = [next(it) for _ in range(per_epoch)]
      assert all(b["image"].shape[0] == global_batch // process_count for b in batches)
      assert len(source.seen) == n // process_count == tracker.seen
      shares.append(set(source.seen))
    assert set().union(*shares) == everyone, process_count
    assert sum(len(s) for s in shares) == n, process_count          # pairwise disjoint
