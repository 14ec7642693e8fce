"""Fine-tune the SS-ACL ViT-B/16 encoder on NIH ChestX-ray14 (14 findings, multi-label).

  python -m input_pipeline.build --dataset nih_cxr14 --data_dir data --manual_dir /data/nih
  python -m ssacl_jax.main --mode finetune --workdir runs/nih_1pct \
      --config configs/finetune_nih.py:label_fraction=0.01,init=runs/vitb16 \
      --config.data.manual_dir=/data/nih

Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init, steps, batch, lr,
image_size (configs/common.py finetune_config: the recipe).
Test metrics: WORKDIR/eval/test/metrics.json.
"""
from configs import common
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **common.FINETUNE_VARIANTS)
  return common.finetune_config(common.base_config(), dataset="nih_cxr14",
                                kind="classification", **a)
