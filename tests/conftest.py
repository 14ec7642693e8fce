"""Every test sees 8 fake CPU devices and parsed absl flags (Grain needs them)."""
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

from helpers import config_for, tiny_config  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  """../shared/data beside the clone; tests that need it skip (and say why) without it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent: these tests read the project's shared real data")
  return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """The tiny synthetic set (helpers.tiny_config sizes), built once per test session."""
  from input_pipeline import build
  config = tiny_config()
  data_dir = tmp_path_factory.mktemp("data")
  build.build_dataset(config.data.dataset, str(data_dir), **dict(config.data.builder))
  return str(data_dir)


@pytest.fixture(scope="session")
def uninterrupted(tiny_data_dir, tmp_path_factory):
  """A 6-step training run of the tiny config (helpers.config_for), never interrupted."""
  from ssacl_jax import train
  workdir = tmp_path_factory.mktemp("uninterrupted")
  train.train_and_evaluate(config_for(tiny_data_dir), str(workdir))
  return workdir
