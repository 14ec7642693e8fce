"""Fine-tune the SS-ACL ViT-B/16 encoder on NIH ChestX-ray14 (14 findings, multi-label).

  python -m input_pipeline.build --dataset nih_cxr14 --data_dir data --manual_dir /data/nih
  python -m ssacl_jax.main --mode finetune --workdir runs/nih_1pct \
      --config configs/finetune_nih.py:label_fraction=0.01,init=runs/vitb16 \
      --config.data.manual_dir=/data/nih

Variants: label_fraction (1.0, 0.1, 0.01), linear_probe, init, steps, batch, lr
(config_lib.finetune_config). Test metrics: WORKDIR/eval/test/metrics.json.
"""
from ssacl_jax import config_lib


def get_config(arg=None):
  return config_lib.finetune_config(arg, dataset="nih_cxr14", kind="classification")
