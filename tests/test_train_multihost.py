"""Two processes on localhost (4 fake CPU devices each) train the tiny config on a 2x4
mesh, checkpoint, and resume; their losses match one process with 8 devices."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from helpers import read_metrics

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def run_two_processes(data_dir, workdir, stop_at):
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), data_dir,
                             str(workdir), str(stop_at)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_like_one(tiny_data_dir, uninterrupted, tmp_path):
  multi = tmp_path / "multi"
  run_two_processes(tiny_data_dir, multi, stop_at=3)
  assert sorted(read_metrics(multi)) == [1, 2, 3]
  assert (multi / "checkpoints" / "3").is_dir()
  data_files = sorted(p.name for p in (multi / "checkpoints" / "3" / "data").iterdir())
  assert any("process_1" in name or "1" in name for name in data_files), data_files
  run_two_processes(tiny_data_dir, multi, stop_at=0)  # resumes from step 3

  # One process, 8 devices, mesh (8, 1, 1): same data, same steps.
  want, got = read_metrics(uninterrupted), read_metrics(multi)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  for step in range(1, 7):
    for k in ("loss", "loss_ir", "loss_cl", "loss_lm", "loss_ar", "loss_ac"):
      np.testing.assert_allclose(got[step][k], want[step][k], rtol=1e-5, err_msg=f"{k}@{step}")
