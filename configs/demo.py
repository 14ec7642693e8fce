"""A tiny SS-ACL that trains on 2 CPU cores in minutes, on the built-in synthetic set.

  python -m ssacl_jax.main --config configs/demo.py --workdir runs/demo

Variants: `steps=N`, `batch=N`, `warm_steps=N` (0: no warm start), `ablate=NAME`: one of
`ABLATIONS` below, the fields it changes (`python -m ssacl_jax.ablate` runs them all).

`python -m ssacl_jax.demo` first runs `warm_start`: the same config with L_ir and L_cl
alone (`model.loss_weights`; the other terms are not computed) for `warm_steps` steps into
WORKDIR/warm_start, then this config with `init` taking the image encoder/decoder, the
text encoder and the contrastive projection from it (SPEC 2 allows a pretrained image
encoder; from scratch, 600 joint steps leave the mean-pooled image vector without report
signal and L_cl at chance, README "Demo results"). By hand:

  python -m ssacl_jax.main --config configs/demo.py --workdir runs/demo/warm_start \
      --config.model.loss_weights.cl=1 --config.model.loss_weights.lm=0 \
      --config.model.loss_weights.ar=0 --config.model.loss_weights.ac=0 \
      --config.train.num_steps=1500 --config.train.eval_every_steps=0
  python -m ssacl_jax.main --config configs/demo.py --workdir runs/demo \
      --config.init.checkpoint=runs/demo/warm_start \
      --config.init.parts=image_encoder,image_decoder,text_encoder,image_to_text,visible_w,visible_b,logit_scale
"""
import ml_collections
from ml_collections.config_flags import config_path

from configs import common
from ssacl_jax import config_lib

# Each ablation of issue 20: what it leaves out, and the config fields that do it (every
# other field as in the full model). Without L_cl the warm start is L_ir alone, so no stage
# sees L_cl (the text encoder and contrastive projection leave stage 0 as initialised).
ABLATIONS = {
    "full": ("full SS-ACL", {}),
    "ac": ("without L_ac", {"model.loss_weights.ac": 0.0}),
    "ar": ("without L_ar", {"model.loss_weights.ar": 0.0}),
    "ar_ac": ("without L_ar and L_ac",
              {"model.loss_weights.ar": 0.0, "model.loss_weights.ac": 0.0}),
    "cl": ("without L_cl (warm start: L_ir alone)",
           {"model.loss_weights.cl": 0.0, "warm_start.loss_weights.cl": 0.0}),
    "mask": ("without the anatomy mask in L_lm (every leaf visible)",
             {"model.lm_anatomy_mask": False}),
    "prompt": ("without the pathology prompt (training and test)",
               {"data.prompt_prob": 0.0, "eval.pathology_prompt": False}),
}


def apply_ablation(config, name: str) -> None:
  """Sets ablation `name`'s fields in config, in place (field references stay live)."""
  if name not in ABLATIONS:
    raise config_lib.ConfigError(f"unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}")
  for field, value in ABLATIONS[name][1].items():
    config_path.set_value(field, config, value)


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=600, batch=32, warm_steps=1500, ablate="full")
  c = common.base_config()
  m = c.model
  m.image_size, m.patch = 64, 8
  m.encoder = dict(width=128, depth=4, num_heads=4, mlp_dim=256)
  m.image_decoder = dict(width=96, depth=2, num_heads=4, mlp_dim=192)
  m.text = dict(vocab_size=1000, max_len=64, width=96, depth=2, num_heads=4, mlp_dim=192)
  m.report = dict(vocab_size=1000, max_positions=256, width=128, depth=3, num_heads=4,
                  mlp_dim=256)
  # The README's demo figures were measured with these (the paper: 0.1 and the release's
  # decoder positions).
  m.dropout = 0.0
  m.position_tables = dict(image_encoder="mae", image_decoder="mae")
  d = c.data
  d.builder = dict(train_size=2000, validation_size=200, test_size=200, image_size=96, seed=0)
  # Synthetic reports are 50-150 SentencePiece tokens (median 74).
  d.text_len, d.report_len, d.prompt_len, d.decoder_len, d.anatomy_len = 64, 128, 16, 146, 8
  t = c.train
  t.num_steps = a.steps
  t.global_batch_size = a.batch
  t.checkpoint_every_steps = 100
  t.log_every_steps = 10
  t.eval_every_steps = 200
  o = c.optim
  o.learning_rate = 1e-3
  o.warmup_steps = 50
  c.eval.batch_size = 32
  c.eval.decode.max_new_tokens = 130
  # SPEC's 80 counts GPT-2 tokens of MIMIC reports. Synthetic reports are 75 tokens at the
  # median; on the validation split min 40 / 60 / 75 gave 26 / 31 / 38 words against the
  # references' 39, and BLEU-1 0.375 / 0.447 / 0.518 (the brevity penalty).
  c.eval.decode.min_new_tokens = 75
  # Stage 0 of ssacl_jax.demo (demo.warm_start_configs): L_ir + L_cl, same data and optimiser.
  # (L_ir alone, 800 steps, left L_cl at chance and grounding below the random map.)
  c.warm_start = ml_collections.ConfigDict(dict(
      steps=a.warm_steps, subdir="warm_start",
      parts="image_encoder,image_decoder,text_encoder,image_to_text,visible_w,visible_b,"
            "logit_scale",
      loss_weights=dict(ir=1.0, cl=1.0, lm=0.0, ar=0.0, ac=0.0)))
  apply_ablation(c, a.ablate)
  return c
