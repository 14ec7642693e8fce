"""The smallest SS-ACL config, for fast tests."""
from configs import demo


def tiny_config():
  c = demo.get_config("steps=4,batch=8")
  m = c.model
  m.image_size, m.patch = 32, 8
  m.encoder = dict(width=32, depth=2, num_heads=4, mlp_dim=64)
  m.image_decoder = dict(width=32, depth=1, num_heads=4, mlp_dim=64)
  m.text = dict(vocab_size=512, max_len=24, width=32, depth=1, num_heads=4, mlp_dim=64)
  m.report = dict(vocab_size=512, max_positions=96, width=32, depth=2, num_heads=4, mlp_dim=64)
  d = c.data
  d.text_len, d.report_len, d.prompt_len, d.decoder_len, d.anatomy_len = 24, 20, 6, 28, 6
  d.builder = dict(train_size=32, validation_size=8, test_size=8, image_size=48, seed=0)
  return c


def get_config(arg=None):
  """So the command line can use it: --config tests/tiny_config.py."""
  del arg
  return tiny_config()
