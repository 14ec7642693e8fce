"""SS-ACL at the paper's sizes on SLURM nodes of 8 NVIDIA H200 (141 GB HBM3e each); one
node by default, any number of nodes with the same file.

Mesh (data -1, fsdp 8, tensor 1): parameters and AdamW moments sharded over the 8 GPUs of
a node (NVLink), the batch over every GPU; data takes the nodes (1 node: 32 examples per
GPU at the paper's global batch of 256). bfloat16 compute, float32 parameters and
optimizer state, no rematerialisation.

Launch (writes an sbatch script, one process per GPU, and submits it):

  python launch/slurm_gpu.py --nodes 1 --gpus-per-node 8 --partition PARTITION \
      --config configs/gpu_8xh200.py --workdir /shared/runs/h200 \
      --data-dir /shared/tfds

Each GPU process then runs, with the launcher's data and jax.distributed settings:

  python -m ssacl_jax.main --config configs/gpu_8xh200.py --workdir /shared/runs/h200

Check that it compiles and fits without a GPU (jax-cuda12-plugin and jax-cuda12-pjrt
0.10.2 installed with --no-deps):

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/gpu_8xh200.py --topology h200:1x1x8

Variants: batch=N (global), steps=N, fsdp=N, tensor=N (data takes the GPUs left), accum=N,
remat, fp32, dataset=NAME.

This is `configs/ssacl_vitb16.py:target=gpu_8xh200`: the paper's recipe with what
`TARGETS["gpu_8xh200"]` and `target_config` there change (its docstring lists every
variant, from_scratch and slices=N too).
"""
from configs import ssacl_vitb16


def get_config(arg=None):
  return ssacl_vitb16.target_config("gpu_8xh200", arg)
