"""The tests' tiny SS-ACL model as a config file for the command-line tools
(`--config tests/tiny_config.py[:batch=N,fsdp=N,tensor=N]`; data takes the devices left).
The config itself is helpers.tiny_config."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from helpers import tiny_config  # noqa: E402
from ssacl_jax import config_lib  # noqa: E402


def get_config(arg=None):
  a = config_lib.parse_arg(arg, batch=8, fsdp=1, tensor=1)
  c = tiny_config()
  c.train.global_batch_size = a.batch
  c.mesh.shape = (-1, a.fsdp, a.tensor)
  return c
