"""A tiny SS-ACL that trains on 2 CPU cores in minutes, on the built-in synthetic set.

  python -m ssacl_jax.main --config configs/demo.py --workdir runs/demo

Variants: `steps=N`, `batch=N`.
"""
from ssacl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=600, batch=32)
  c = config_lib.base_config()
  m = c.model
  m.image_size, m.patch = 64, 8
  m.encoder = dict(width=128, depth=4, num_heads=4, mlp_dim=256)
  m.image_decoder = dict(width=96, depth=2, num_heads=4, mlp_dim=192)
  m.text = dict(vocab_size=1000, max_len=64, width=96, depth=2, num_heads=4, mlp_dim=192)
  m.report = dict(vocab_size=1000, max_positions=256, width=128, depth=3, num_heads=4,
                  mlp_dim=256)
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
  c.eval.decode.min_new_tokens = 40  # SPEC's 80 counts GPT-2 tokens of MIMIC reports
  return c
