"""Tiny fine-tuning configs on the synthetic downstream set (tests/tiny_config.py's model
at 64 px with 16 px patches: the same 16 tokens as tiny_config, findings more visible)."""
from ssacl_jax import config_lib
from tiny_config import tiny_config


def tiny_finetune_config(kind="classification", arg=None):
  c = config_lib.finetune_config(arg or "steps=40,batch=16", dataset="synthetic_finetune",
                                 kind=kind, base=tiny_config())
  c.model.image_size, c.model.patch = 64, 16
  c.data.builder = dict(train_size=1600, validation_size=64, test_size=128, image_size=64,
                        seed=0)
  c.data.affine_degrees, c.data.affine_scale = 0.0, (1.0, 1.0)
  c.checkpoint.async_save = False
  c.eval.batch_size = 64
  return c


def get_config(arg=None):
  """So the command line can use it: --config tests/tiny_finetune_config.py:kind=..."""
  a = config_lib.parse_arg(arg, kind="classification")
  return tiny_finetune_config(a.kind)
