"""SS-ACL at the paper's sizes on a Cloud TPU v5e-64 slice (v5litepod-64: 8x8 chips, 16 GiB
HBM each, 16 hosts of 4 chips).

Mesh (data 64, fsdp 1, tensor 1): plain data parallelism, 4 examples per chip at the
paper's global batch of 256; parameters and AdamW state (3.0 GiB) fit on every chip, so
no weight is gathered and each step all-reduces the gradients once. bfloat16 compute,
float32 parameters and optimizer state, no rematerialisation.

Predicted (offline roofline of the compiled step, bench/RESULTS.md "Recommended slice"):
20.0 ms per step overlapped, 38.7 ms with nothing overlapped (MFU 59-30%); 51 epochs in
0.30-0.58 h. Four examples per chip leave the chips idle a third of the time or more: the
recommended v5e slice is the v5e-32 (configs/tpu_v5e_32.py).

Launch:

  python launch/tpu_pod.py all --name ssacl-v5e-64 --zone us-west4-a \
      --accelerator-type v5litepod-64 --version v2-alpha-tpuv5-lite \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5e_64.py --workdir gs://BUCKET/runs/v5e_64

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v5e_64.py --workdir gs://BUCKET/runs/v5e_64

Check that it compiles and fits without a TPU, and predict its step:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_64.py --topology v5e:8x8 --roofline

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the chips left),
accum=N, remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v5e_64`: the paper's recipe with what
`TARGETS["tpu_v5e_64"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v5e_64", arg)
