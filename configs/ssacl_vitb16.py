"""SS-ACL at the paper's sizes: ViT-B/16 224 px, MAE decoder 4x768/6, text 6x384/6, GPT-2 small.

  python -m ssacl_jax.main --config configs/ssacl_vitb16.py --workdir runs/vitb16 \
      --config.data.dataset=mimic_cxr --config.data.manual_dir=/data/mimic-cxr-jpg \
      --config.init.gpt2=/weights/gpt2 --config.init.mae=/weights/mae_pretrain_vit_base.pth

Training needs the pretrained weights the paper starts from (SPEC 2):
`--config.init.gpt2=FOLDER` (a Hugging Face GPT-2 folder: the report decoder and its BPE
vocabulary) and `--config.init.mae=FILE.pth` (MAE ViT-B/16); without them the run stops
naming both. `:from_scratch` trains both from random initialisation (a different
experiment) with a SentencePiece report vocabulary.

The release's schedule: 51 epochs (2 of warm-up) of global batches of 256 made of 2
gradient-accumulation steps of 128. L_cl and L_ac contrast within each step's 128 examples,
gathered over all devices: the release's 32 per GPU on 4 GPUs (its global batch is
32 x 2 x GPUs; for G GPUs use `batch=64*G`).

Variants: `:bf16` (bfloat16 compute, float32 parameters), `batch=N`, `steps=N` (instead of
the 51 epochs), `from_scratch` (no pretrained GPT-2 / MAE: a different experiment),
`low_memory` (`model.scan_layers` + `model.remat`: each block stack one rematerialised
`nn.scan`; on XLA:CPU 2.9 GB fewer temporaries at batch 8 for a slower step,
bench/RESULTS.md).

Pod targets: `:target=NAME` (one of `TARGETS` below; `configs/NAME.py` is the same config,
its docstring the launch and ahead-of-time compile commands) is this recipe on an
accelerator slice: bfloat16 compute, float32 parameters, a (data, fsdp, tensor) mesh, the
global batch in one step (no accumulation), MIMIC-CXR. Its variants then are batch=N
(global), steps=N (0: the 51 epochs), fsdp=N and tensor=N (data takes the devices left),
accum=N, remat, fp32 (float32 compute), dataset=NAME, from_scratch, and slices=N: N such
slices joined over DCN, the data axis across them (mesh.dcn_shape (N, 1, 1); the batch is
the global one over all slices), e.g.

  python -m ssacl_jax.main --config configs/ssacl_vitb16.py:target=tpu_v5e_256,batch=1024,remat ...
"""
from configs import common
from ssacl_jax import config_lib

# What each pod target sets: the mesh's fsdp axis (parameters and AdamW moments sharded
# that many ways; 1: plain data parallelism), data loader workers per host, eval batch.
TARGETS = {
    "tpu_v4_64": dict(fsdp=8, num_workers=4, eval_batch_size=64),
    "tpu_v5e_32": dict(fsdp=32, num_workers=4, eval_batch_size=64),
    "tpu_v5e_64": dict(fsdp=1, num_workers=4, eval_batch_size=64),
    "tpu_v5e_256": dict(fsdp=16, num_workers=4, eval_batch_size=256),   # one image per chip
    "tpu_v5p_32": dict(fsdp=16, num_workers=4, eval_batch_size=128),
    "tpu_v5p_128": dict(fsdp=16, num_workers=4, eval_batch_size=128),
    "gpu_8xh200": dict(fsdp=8, num_workers=8, eval_batch_size=64),
}


def get_config(arg=None):
  target, arg = config_lib.pop_variant(arg, "target")
  if target:
    return target_config(target, arg)
  a = config_lib.parse_arg(arg, bf16=False, batch=256, steps=0, low_memory=False,
                           from_scratch=False)
  c = common.base_config()
  c.init.required = "" if a.from_scratch else common.PAPER_PRETRAINED
  c.model.dtype = "bfloat16" if a.bf16 else "float32"
  c.model.scan_layers = c.model.remat = a.low_memory
  c.train.global_batch_size = a.batch
  c.train.num_steps = a.steps
  c.train.grad_accum_steps = 2
  return c


def target_config(name, arg=None):
  """This recipe on pod target `name` (TARGETS), with the target's variants in arg."""
  if name not in TARGETS:
    raise config_lib.ConfigError(f"unknown pod target {name!r}; valid: {', '.join(TARGETS)}")
  t = TARGETS[name]
  a = config_lib.parse_arg(arg, batch=256, steps=0, fsdp=t["fsdp"], tensor=1, accum=1,
                           remat=False, fp32=False, dataset="mimic_cxr", from_scratch=False,
                           slices=1)
  c = get_config("from_scratch" if a.from_scratch else None)
  c.model.dtype = "float32" if a.fp32 else "bfloat16"
  c.model.remat = a.remat
  c.data.dataset = a.dataset
  c.data.num_workers = t["num_workers"]
  c.train.global_batch_size = a.batch
  c.train.grad_accum_steps = a.accum
  c.train.num_steps = a.steps
  c.mesh.shape = (-1, a.fsdp, a.tensor)
  c.mesh.dcn_shape = (a.slices, 1, 1) if a.slices > 1 else ()
  c.eval.batch_size = t["eval_batch_size"]
  return c
