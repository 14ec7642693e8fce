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
"""
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, bf16=False, batch=256, steps=0, low_memory=False,
                           from_scratch=False)
  c = config_lib.base_config()
  c.init.required = "" if a.from_scratch else config_lib.PAPER_PRETRAINED
  c.model.dtype = "bfloat16" if a.bf16 else "float32"
  c.model.scan_layers = c.model.remat = a.low_memory
  c.train.global_batch_size = a.batch
  c.train.num_steps = a.steps
  c.train.grad_accum_steps = 2
  return c
