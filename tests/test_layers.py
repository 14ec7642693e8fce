"""model.scan_layers: the same model with each block stack as one nn.scan over stacked
parameters (the low-memory layout with remat). Same losses, gradients, attention maps and
reports as the unrolled layout, with the parameters stacked by layers.stack_layers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssacl_jax import generate as gen
from ssacl_jax import layers, optim
from ssacl_jax.models import ssacl
from helpers import random_batch, tiny_config


def scanned(model_config, remat=True):
  c = model_config.copy_and_resolve_references()
  c.scan_layers, c.remat = True, remat
  return c


@pytest.fixture(scope="module")
def pair():
  config = tiny_config()
  batch, tokens = random_batch(config, 4)
  model = ssacl.build_model(config.model)
  variables = nn.meta.unbox(jax.jit(lambda r: model.init({"params": r, "mask": r}, batch, *tokens))(
      jax.random.key(0)))
  return config, model, variables, batch, tokens


def loss_and_grads(model, params, batch, tokens):
  def loss(p):
    return model.apply({"params": p}, batch, *tokens, rngs={"mask": jax.random.key(2)})
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.fixture(scope="module")
def unrolled_grads(pair):
  _, model, variables, batch, tokens = pair
  return loss_and_grads(model, variables["params"], batch, tokens)


def test_scanned_parameters_are_the_unrolled_ones_stacked(pair):
  config, _, variables, batch, tokens = pair
  model = ssacl.build_model(scanned(config.model))
  fresh = nn.meta.unbox(jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0), "mask": jax.random.key(1)}, batch, *tokens)))
  stacked = layers.stack_layers(variables)
  assert jax.tree.structure(stacked) == jax.tree.structure(fresh)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(fresh)):
    assert a.shape == b.shape
  q = stacked["params"]["image_encoder"]["blocks"]["layers"]["block"]["attn"]["query"]["kernel"]
  enc = variables["params"]["image_encoder"]["blocks"]
  assert q.shape == (config.model.encoder["depth"],) + enc["block0"]["attn"]["query"]["kernel"].shape
  np.testing.assert_array_equal(q[1], enc["block1"]["attn"]["query"]["kernel"])
  back = layers.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  assert layers.has_scanned_layers(stacked) and not layers.has_scanned_layers(variables)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_model_gives_the_same_losses_and_gradients(pair, unrolled_grads, remat):
  config, _, variables, batch, tokens = pair
  (total, metrics), grads = unrolled_grads
  model_s = ssacl.build_model(scanned(config.model, remat))
  (total_s, metrics_s), grads_s = loss_and_grads(
      model_s, layers.stack_layers(variables)["params"], batch, tokens)
  np.testing.assert_allclose(total_s, total, rtol=2e-5)
  for k in ssacl.LOSS_NAMES:
    np.testing.assert_allclose(metrics_s[f"loss_{k}"], metrics[f"loss_{k}"], rtol=2e-5, err_msg=k)
  want = layers.stack_layers(grads)
  assert jax.tree.structure(grads_s) == jax.tree.structure(want)
  for path, g in jax.tree_util.tree_leaves_with_path(grads_s):
    w = want
    for k in path:
      w = w[k.key]
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_scanned_model_gives_the_same_attention_maps_and_reports(pair):
  config, model, variables, batch, tokens = pair
  model_s = ssacl.build_model(scanned(config.model))
  variables_s = layers.stack_layers(variables)
  images = batch["image"]
  maps = model.apply(variables, images, *tokens, method=model.anatomy_attention)
  maps_s = model_s.apply(variables_s, images, *tokens, method=model_s.anatomy_attention)
  np.testing.assert_allclose(maps_s, maps, rtol=1e-5, atol=1e-7)
  leaf_mask = batch["leaf_mask"]
  for method in ("greedy", "beam"):
    cfg = gen.DecodeConfig(method=method, num_beams=3, max_new_tokens=6, min_new_tokens=2,
                           repetition_penalty=2.0, eos_id=5, pad_id=0)
    out = gen.generate_reports(model, variables, images, *tokens, jnp.asarray(leaf_mask), cfg)
    out_s = gen.generate_reports(model_s, variables_s, images, *tokens, jnp.asarray(leaf_mask),
                                 cfg)
    np.testing.assert_array_equal(out_s.tokens, out.tokens, err_msg=method)
    np.testing.assert_allclose(out_s.scores, out.scores, rtol=1e-5, err_msg=method)


def test_the_stacked_axis_does_not_count_for_weight_decay(pair):
  _, _, variables, _, _ = pair
  stacked = layers.stack_layers(variables["params"])
  mask_s = optim.decay_mask(stacked)
  want = layers.stack_layers(optim.decay_mask(variables["params"]),
                             stack=lambda leaves: np.array(leaves[0]))
  assert jax.tree.leaves(mask_s) == jax.tree.leaves(want)
  assert any(jax.tree.leaves(mask_s)) and not all(jax.tree.leaves(mask_s))


def test_a_scanned_stack_refuses_the_kv_cache_path():
  stack = layers.BlockStack(depth=2, num_heads=2, mlp_dim=8, scan=True)
  x = jnp.zeros((1, 3, 4))
  params = stack.init(jax.random.key(0), x)
  caches = [(jnp.zeros((1, 2, 3, 2)),) * 2] * 2
  with pytest.raises(ValueError, match="unstack_layers"):
    stack.apply(params, x, caches=caches, cache_index=0)
