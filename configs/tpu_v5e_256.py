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

Check that it compiles and fits without a TPU:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_256.py --topology v5e:16x16

Variants (`configs/tpu_v5e_256.py:batch=1024,remat`): batch=N (global), steps=N, fsdp=N and
tensor=N (data takes the chips left), accum=N (gradient accumulation), remat, fp32
(float32 compute), dataset=NAME.
"""
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, batch=256, steps=100_000, fsdp=16, tensor=1, accum=1,
                           remat=False, fp32=False, dataset="mimic_cxr")
  c = config_lib.base_config()
  c.model.dtype = "float32" if a.fp32 else "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = a.remat
  c.data.dataset = a.dataset
  c.data.num_workers = 4
  c.train.global_batch_size = a.batch
  c.train.grad_accum_steps = a.accum
  c.train.num_steps = a.steps
  c.mesh.shape = (-1, a.fsdp, a.tensor)
  c.sharding_rules = config_lib.DEFAULT_SHARDING_RULES   # embed->fsdp, mlp/heads/vocab->tensor
  c.eval.batch_size = 256          # one image per chip
  return c
