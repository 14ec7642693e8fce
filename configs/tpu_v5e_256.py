"""SS-ACL at the paper's sizes on a Cloud TPU v5e-256 slice (v5litepod-256: 16x16 chips,
16 GiB HBM each, 64 hosts of 4 chips).

Mesh (data 16, fsdp 16, tensor 1): parameters and AdamW moments sharded 16 ways (ZeRO-3),
the batch over all 256 chips. Each mesh axis must be a product of physical axes of the
16x16 torus (jax.make_mesh). bfloat16 compute, float32 parameters and optimizer state,
no rematerialisation (1 example per chip at the paper's global batch of 256).

Launch (create the slice, install, copy the prepared MIMIC-CXR TFDS data, train on all 64
hosts, follow worker 0, delete):

  python launch/tpu_pod.py all --name ssacl-v5e-256 --zone us-west4-a \
      --accelerator-type v5litepod-256 --version v2-alpha-tpuv5-lite \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5e_256.py --workdir gs://BUCKET/runs/v5e_256

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v5e_256.py --workdir gs://BUCKET/runs/v5e_256

Check that it compiles and fits without a TPU:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_256.py --topology v5e:16x16

Variants (`configs/tpu_v5e_256.py:batch=1024,remat`): batch=N (global), steps=N, fsdp=N and
tensor=N (data takes the chips left), accum=N (gradient accumulation), remat, fp32
(float32 compute), dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v5e_256`: the paper's recipe with what
`TARGETS["tpu_v5e_256"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v5e_256", arg)
