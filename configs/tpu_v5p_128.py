"""SS-ACL at the paper's sizes on a Cloud TPU v5p-128 slice (4x4x4 = 64 megacore chips,
95 GiB HBM each, 16 hosts of 4 chips).

Mesh (data 4, fsdp 16, tensor 1): parameters and AdamW moments sharded 16 ways, the batch
over all 64 chips (4 examples per chip at the paper's global batch of 256). Each mesh axis
must be a product of physical axes of the 4x4x4 torus (jax.make_mesh): 16 = 4x4, 4. bfloat16
compute, float32 parameters and optimizer state, no rematerialisation.

Launch:

  python launch/tpu_pod.py all --name ssacl-v5p-128 --zone us-east5-a \
      --accelerator-type v5p-128 --version v2-alpha-tpuv5 \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5p_128.py --workdir gs://BUCKET/runs/v5p_128

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v5p_128.py --workdir gs://BUCKET/runs/v5p_128

Check that it compiles and fits without a TPU:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5p_128.py --topology v5p:4x4x4

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the chips left),
accum=N, remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v5p_128`: the paper's recipe with what
`TARGETS["tpu_v5p_128"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v5p_128", arg)
