"""Fine-tune the SS-ACL ViT-B/16 encoder for SIIM-ACR pneumothorax segmentation.

  python -m input_pipeline.build --dataset siim_acr --data_dir data --manual_dir /data/siim
  python -m ssacl_jax.main --mode finetune --workdir runs/siim \
      --config configs/finetune_siim.py:init=runs/vitb16 --config.data.manual_dir=/data/siim

Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init, steps, batch, lr
(config_lib.finetune_config). Test metrics (Dice and the empty-mask baseline):
WORKDIR/eval/test/metrics.json.
"""
from ssacl_jax import config_lib


def get_config(arg=None):
  return config_lib.finetune_config(arg, dataset="siim_acr", kind="segmentation")
