"""SS-ACL at the paper's sizes on a Cloud TPU v5p-32 slice (2x2x4 = 16 megacore chips,
95 GiB HBM each, 4 hosts of 4 chips): the slice recommended for the paper recipe.

Mesh (data 1, fsdp 16, tensor 1): parameters and AdamW moments sharded over all 16 chips,
16 examples per chip at the paper's global batch of 256. Against plain data parallelism
(`:fsdp=1`) each chip updates 1/16 of the float32 state instead of all of it (3.9 GB less
device-memory traffic a step) for 0.5 GB more on the interconnect. bfloat16 compute,
float32 parameters and optimizer state, no rematerialisation.

Predicted (offline roofline of the compiled step, bench/RESULTS.md "Recommended slice"):
21.3 ms per step with compute, memory and interconnect overlapped (bound by compute, MFU
95%), 43.9 ms with none overlapped (MFU 46%); 51 epochs (53,790 steps) in 0.32-0.66 h.
The one chip measured so far (an H200) ran 1.7x slower than its no-overlap prediction.

Launch:

  python launch/tpu_pod.py all --name ssacl-v5p-32 --zone us-east5-a \
      --accelerator-type v5p-32 --version v2-alpha-tpuv5 \
      --repo-url https://github.com/OWNER/ssacl_jax.git --data gs://BUCKET/tfds \
      --config configs/tpu_v5p_32.py --workdir gs://BUCKET/runs/v5p_32

Each host then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/tpu_v5p_32.py --workdir gs://BUCKET/runs/v5p_32

Check that it compiles and fits without a TPU, and predict its step:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5p_32.py --topology v5p:2x2x4 --roofline

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the chips left),
accum=N, remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=tpu_v5p_32`: the paper's recipe with what
`TARGETS["tpu_v5p_32"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("tpu_v5p_32", arg)
