"""One process of the two-process test (tests/test_train_multihost.py); not a test itself.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR STOP_AT
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)
# The repo (ssacl_jax, configs) and tests/ (helpers), however the package is installed.
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.dirname(os.path.abspath(__file__))]


def main():
  process_id, num_processes, port = map(int, sys.argv[1:4])
  data_dir, workdir, stop_at = sys.argv[4], sys.argv[5], int(sys.argv[6])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=num_processes, process_id=process_id)
  from helpers import config_for
  from ssacl_jax import train
  config = config_for(data_dir, stop_at_step=stop_at)
  config.mesh.shape = (2, 4, 1)
  train.train_and_evaluate(config, workdir)
  print(f"process {process_id}: done", flush=True)


if __name__ == "__main__":
  main()
