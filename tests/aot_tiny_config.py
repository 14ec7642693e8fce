"""tests/tiny_config.py as a config file for the CLIs (`--config tests/aot_tiny_config.py`).

Variants: `batch=N` (global batch), `fsdp=N`, `tensor=N` (data takes the devices left).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ssacl_jax import config_lib  # noqa: E402
from tiny_config import tiny_config  # noqa: E402


def get_config(arg=None):
  a = config_lib.parse_arg(arg, batch=8, fsdp=1, tensor=1)
  c = tiny_config()
  c.train.global_batch_size = a.batch
  c.mesh.shape = (-1, a.fsdp, a.tensor)
  return c
