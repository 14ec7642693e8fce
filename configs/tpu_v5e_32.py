"""SS-ACL at the paper's sizes on a Cloud TPU v5e-32 slice (v5litepod-32: 4x8 chips, 16 GiB
HBM each, 8 hosts of 4 chips): the v5e slice recommended for the paper recipe.

Mesh (data 1, fsdp 32, tensor 1): parameters and AdamW moments sharded over all 32 chips,
8 examples per chip at the paper's global batch of 256. bfloat16 compute, float32
parameters and optimizer state, no rematerialisation.

Predicted (offline roofline of the compiled step, bench/RESULTS.md "Recommended slice"):
24.9 ms per step overlapped (bound by compute, MFU 95%), 49.0 ms with nothing overlapped
(MFU 48%); 51 epochs (53,790 steps) in 0.37-0.73 h. The one chip measured so far (an H200)
ran 1.7x slower than its no-overlap prediction.

Launch:

  python launch/tpu_pod.py all --name ssacl-v5e-32 --zone us-west4-a \
      --accelerator-type v5litepod-32 --version v2-alpha-tpuv5-lite \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5e_32.py --workdir gs://BUCKET/runs/v5e_32

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v5e_32.py --workdir gs://BUCKET/runs/v5e_32

Check that it compiles and fits without a TPU, and predict its step:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_32.py --topology v5e:4x8 --roofline

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the chips left),
accum=N, remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v5e_32`: the paper's recipe with what
`TARGETS["tpu_v5e_32"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v5e_32", arg)
