"""SS-ACL at the paper's sizes on a Cloud TPU v4-64 slice (2x4x4 = 32 megacore chips,
32 GiB HBM each, 8 hosts of 4 chips).

Mesh (data 4, fsdp 8, tensor 1): parameters and AdamW moments sharded 8 ways, the batch
over all 32 chips (8 examples per chip at the paper's global batch of 256). Each mesh axis
must be a product of physical axes of the 2x4x4 torus (jax.make_mesh): 8 = 2x4, 4. bfloat16
compute, float32 parameters and optimizer state, no rematerialisation.

Launch:

  python launch/tpu_pod.py all --name ssacl-v4-64 --zone us-central2-b \
      --accelerator-type v4-64 --version tpu-ubuntu2204-base \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v4_64.py --workdir gs://BUCKET/runs/v4_64

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v4_64.py --workdir gs://BUCKET/runs/v4_64

Check that it compiles and fits without a TPU:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v4_64.py --topology v4:2x4x4

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the chips left),
accum=N, remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v4_64`: the paper's recipe with what
`TARGETS["tpu_v4_64"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v4_64", arg)
