"""Fine-tune the demo's SS-ACL encoder on the synthetic set's 14 labels or finding masks.

  python -m ssacl_jax.demo --workdir runs/demo
  python -m ssacl_jax.main --mode finetune --workdir runs/ft_1pct \
      --config configs/finetune_synthetic.py:label_fraction=0.01,init=runs/demo
  python -m ssacl_jax.main --mode finetune --workdir runs/ft_1pct_random \
      --config configs/finetune_synthetic.py:label_fraction=0.01

Variants: kind (classification, segmentation), label_fraction (1.0, 0.1, 0.01; of 1600
training images), linear_probe, init, steps, batch, lr, seed (configs/common.py finetune_config: the recipe).
Test metrics: WORKDIR/eval/test/metrics.json.
"""
from configs import common, demo
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, kind="classification", seed=0, steps=100, batch=16, lr=0.0,
                           label_fraction=1.0, linear_probe=False, init="")
  c = synthetic_finetune_config(
      demo.get_config(), a.kind, label_fraction=a.label_fraction, linear_probe=a.linear_probe,
      init=a.init, steps=a.steps, batch=a.batch,
      lr=a.lr or (1e-2 if a.linear_probe else 1e-3))
  c.train.seed = a.seed
  return c


def synthetic_finetune_config(base, kind, **variants):
  """common.finetune_config of base (a demo-sized model) on the synthetic set: 1600
  training images at 64 px, no random affine (the finding boxes are the segmentation
  targets). variants: those of common.FINETUNE_VARIANTS."""
  c = common.finetune_config(base, dataset="synthetic_finetune", kind=kind, **variants)
  c.data.builder = dict(train_size=1600, validation_size=64, test_size=128, image_size=64, seed=0)
  c.data.affine_degrees, c.data.affine_scale = 0.0, (1.0, 1.0)
  c.eval.batch_size = 64
  return c
