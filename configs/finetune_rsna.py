"""Fine-tune the SS-ACL ViT-B/16 encoder on RSNA Pneumonia (binary).

  python -m input_pipeline.build --dataset rsna_pneumonia --data_dir data --manual_dir /data/rsna
  python -m ssacl_jax.main --mode finetune --workdir runs/rsna_10pct \
      --config configs/finetune_rsna.py:label_fraction=0.1,init=runs/vitb16 \
      --config.data.manual_dir=/data/rsna

Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init, steps, batch, lr,
image_size (configs/common.py finetune_config: the recipe).
Test metrics: WORKDIR/eval/test/metrics.json.
"""
from configs import common
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **common.FINETUNE_VARIANTS)
  return common.finetune_config(common.base_config(), dataset="rsna_pneumonia",
                                kind="classification", **a)
