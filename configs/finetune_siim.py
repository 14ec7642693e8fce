"""Fine-tune the SS-ACL ViT-B/16 encoder for SIIM-ACR pneumothorax segmentation.

  python -m input_pipeline.build --dataset siim_acr --data_dir data --manual_dir /data/siim
  python -m ssacl_jax.main --mode finetune --workdir runs/siim \
      --config configs/finetune_siim.py:init=runs/vitb16 --config.data.manual_dir=/data/siim

Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init, steps, batch, lr,
image_size (configs/common.py finetune_config: the recipe).
Test metrics (Dice and the empty-mask baseline):
WORKDIR/eval/test/metrics.json.
"""
from configs import common
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **common.FINETUNE_VARIANTS)
  return common.finetune_config(common.base_config(), dataset="siim_acr",
                                kind="segmentation", **a)
