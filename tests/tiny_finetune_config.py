"""Tiny fine-tuning configs on the synthetic downstream set (tests/tiny_config.py's model
at 64 px with 16 px patches: the same 16 tokens as tiny_config, findings more visible)."""
from configs import common
from configs.finetune_synthetic import synthetic_finetune_config
from ssacl_jax import config_lib
from tiny_config import tiny_config


def tiny_finetune_config(kind="classification", arg=None):
  variants = config_lib.parse_arg(arg or "steps=40,batch=16", **common.FINETUNE_VARIANTS)
  c = synthetic_finetune_config(tiny_config(), kind, **variants)
  c.model.image_size, c.model.patch = 64, 16
  c.checkpoint.async_save = False
  return c


def get_config(arg=None):
  """So the command line can use it: --config tests/tiny_finetune_config.py:kind=..."""
  a = config_lib.parse_arg(arg, kind="classification")
  return tiny_finetune_config(a.kind)
