import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import ssacl_vitb16
from ssacl_jax import convert, layers, param_count, sharding, steps
from ssacl_jax.models import ssacl
from helpers import encode_with_queries, random_batch, tiny_config


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 4)
  variables = model.init({"params": jax.random.key(0), "mask": jax.random.key(1)}, batch, *tokens)
  return config, model, nn.meta.unbox(variables), batch, tokens


def test_forward_returns_five_losses_and_weighted_total(tiny):
  config, model, variables, batch, tokens = tiny
  total, metrics = model.apply(variables, batch, *tokens, rngs={"mask": jax.random.key(2)})
  w = config.model.loss_weights
  expected = sum(w[k] * metrics[f"loss_{k}"] for k in ssacl.LOSS_NAMES)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert w["cl"] == 0.15 and all(w[k] == 1.0 for k in ("ir", "lm", "ar", "ac"))
  for k in ssacl.LOSS_NAMES:
    assert np.isfinite(metrics[f"loss_{k}"]) and metrics[f"loss_{k}"] > 0
  assert float(metrics["logit_scale"]) == pytest.approx(1 / 0.03)


def test_zero_weight_terms_are_skipped_and_the_rest_unchanged(tiny):
  config, _, variables, batch, tokens = tiny
  rngs = {"mask": jax.random.key(2)}
  _, full = ssacl.build_model(config.model).apply(variables, batch, *tokens, rngs=rngs)
  for kept in (("ir",), ("ir", "cl"), ("lm", "ac")):
    only = config.model.copy_and_resolve_references()
    only.loss_weights = {k: (1.0 if k in kept else 0.0) for k in ssacl.LOSS_NAMES}
    model = ssacl.build_model(only)
    total, metrics = model.apply(variables, batch, *tokens, rngs=rngs)
    for k in ssacl.LOSS_NAMES:
      want = full[f"loss_{k}"] if k in kept else 0.0
      np.testing.assert_allclose(metrics[f"loss_{k}"], want, rtol=2e-5, err_msg=f"{kept}: {k}")
    np.testing.assert_allclose(total, sum(full[f"loss_{k}"] for k in kept), rtol=2e-5)
    # Init still creates every parameter, whatever the weights.
    fresh = model.init({"params": jax.random.key(0), "mask": jax.random.key(1)}, batch, *tokens)
    assert jax.tree.structure(nn.meta.unbox(fresh)) == jax.tree.structure(variables)
  # An MAE-only step touches only the image encoder and decoder (nothing else is computed).
  only = config.model.copy_and_resolve_references()
  only.loss_weights = {k: (1.0 if k == "ir" else 0.0) for k in ssacl.LOSS_NAMES}
  model = ssacl.build_model(only)
  grads = jax.grad(lambda p: model.apply({"params": p}, batch, *tokens, rngs=rngs)[0])(
      variables["params"])
  touched = {k for k, g in grads.items()
             if any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))}
  assert touched == {"image_encoder", "image_decoder"}


def test_dropout_acts_in_training_only(tiny):
  config, plain, variables, batch, tokens = tiny
  assert config.model.dropout == 0.0  # the demo's (and so the tiny config's)
  paper = config.model.copy_and_resolve_references()
  paper.dropout = 0.1
  model = ssacl.build_model(paper)
  mask = {"mask": jax.random.key(2)}
  train_rngs = lambda seed: {**mask, "dropout": jax.random.key(seed)}  # noqa: E731
  _, want = plain.apply(variables, batch, *tokens, rngs=mask)
  _, zero_rate = plain.apply(variables, batch, *tokens, rngs=train_rngs(3))
  _, evaluated = model.apply(variables, batch, *tokens, rngs=mask)  # no dropout key: eval
  for metrics in (zero_rate, evaluated):
    for k, v in want.items():
      np.testing.assert_array_equal(metrics[k], v, err_msg=k)
  _, a = model.apply(variables, batch, *tokens, rngs=train_rngs(3))
  _, b = model.apply(variables, batch, *tokens, rngs=train_rngs(4))
  for k in ("loss_cl", "loss_lm", "loss_ar", "loss_ac"):  # they read the text models
    assert len({float(a[k]), float(b[k]), float(want[k])}) == 3, k
  assert float(a["loss_ir"]) == float(b["loss_ir"]) == float(want["loss_ir"])  # image side
  # Generation's inputs: the same with and without the rate (no dropout key there).
  prefix = lambda m: m.apply(variables, batch["image"], *tokens, batch["leaf_mask"],  # noqa: E731
                             method=m.generation_prefix)
  np.testing.assert_array_equal(prefix(model)[0], prefix(plain)[0])


def test_shared_unmasked_pass_gives_the_release_losses(tiny):
  config, _, variables, batch, tokens = tiny
  separate = config.model.copy_and_resolve_references()
  separate.share_unmasked_pass = False
  rngs = {"mask": jax.random.key(3)}
  _, shared_m = ssacl.build_model(config.model).apply(variables, batch, *tokens, rngs=rngs)
  _, separate_m = ssacl.build_model(separate).apply(variables, batch, *tokens, rngs=rngs)
  for k in ssacl.LOSS_NAMES:
    np.testing.assert_allclose(shared_m[f"loss_{k}"], separate_m[f"loss_{k}"], rtol=2e-5,
                               err_msg=k)


def test_queries_do_not_see_each_other_and_patches_do_not_see_queries(tiny):
  config, model, variables, batch, tokens = tiny
  images = jnp.asarray(batch["image"])
  q = jax.random.normal(jax.random.key(4), (6, config.model.encoder.width))

  def encode(queries):
    return model.apply(variables, images, queries,
                       method=encode_with_queries)["tokens"]

  full, sub = encode(q), encode(q[:2])
  np.testing.assert_allclose(full[:, 6:], sub[:, 2:], atol=1e-5)   # CLS and patches
  np.testing.assert_allclose(full[:, :2], sub[:, :2], atol=1e-5)   # each query alone
  moved = encode(q.at[5].set(0.0))
  np.testing.assert_allclose(full[:, :5], moved[:, :5], atol=1e-5)
  assert not np.allclose(full[:, 5], moved[:, 5], atol=1e-3)


def test_position_table_formulas_against_hand_computed_values():
  """dim 8: two frequencies a coordinate, w = (1, 10000^-1/2) for MAE and (1, 10000^-1/4)
  for the release; row y * 2 + x of a 2x2 grid is [sin xw, cos xw, sin yw, cos yw]."""
  s1, c1 = 0.8414709848, 0.5403023059                  # sin 1, cos 1
  mae_x = [s1, 0.0099998333, c1, 0.9999500004]          # sin/cos of 0.01
  release_x = [s1, 0.0998334166, c1, 0.9950041653]      # sin/cos of 0.1
  zero = [0.0, 0.0, 1.0, 1.0]
  mae, release = layers.sincos_2d(8, 2, "mae"), layers.sincos_2d(8, 2, "release")
  np.testing.assert_allclose(mae, [zero + zero, mae_x + zero, zero + mae_x, mae_x + mae_x],
                             atol=1e-7)
  np.testing.assert_allclose(release, [zero + zero, release_x + zero, zero + release_x,
                                       release_x + release_x], atol=1e-7)
  # One frequency a coordinate (dim 4): exponent 0 in both, the same table.
  np.testing.assert_array_equal(layers.sincos_2d(4, 3, "mae"), layers.sincos_2d(4, 3, "release"))
  with pytest.raises(ValueError, match="'cubic'"):
    layers.sincos_2d(8, 2, "cubic")


def test_masking_keeps_half_the_patches_and_restores_order(tiny):
  config, model, variables, batch, _ = tiny
  out = model.apply(variables, jnp.asarray(batch["image"]),
                    method=lambda m, x: m.image_encoder(x, mask_ratio=0.5, rng=jax.random.key(5)))
  n = (config.model.image_size // config.model.patch) ** 2
  assert out["tokens"].shape[1] == 1 + n // 2
  np.testing.assert_array_equal(out["mask"].sum(1), n - n // 2)
  assert sorted(np.asarray(out["ids_restore"][0]).tolist()) == list(range(n))


def test_decoder_padding_and_future_tokens_do_not_change_earlier_logits(tiny):
  config, model, variables, batch, tokens = tiny
  images = jnp.asarray(batch["image"])

  def logits(dec_ids, dec_mask):
    def f(m):
      prefix, valid = m.generation_prefix(images, *tokens, jnp.asarray(batch["leaf_mask"]))
      return m.report_logits(prefix, valid, dec_ids, dec_mask)
    return model.apply(variables, method=f)

  ids, mask = jnp.asarray(batch["dec_ids"]), jnp.asarray(batch["dec_mask"])
  base = logits(ids, mask)
  changed = logits(ids.at[:, 10:].set(7), mask)
  np.testing.assert_allclose(base[:, :11], changed[:, :11], atol=1e-5)
  assert not np.allclose(base[:, 12:], changed[:, 12:], atol=1e-4)


def test_bf16_compute_with_fp32_parameters(tiny):
  config, _, variables, batch, tokens = tiny
  c = config.model.copy_and_resolve_references()
  c.dtype = "bfloat16"
  model = ssacl.build_model(c)
  rngs = {"mask": jax.random.key(6)}
  v = nn.meta.unbox(model.init({"params": jax.random.key(0), **rngs}, batch, *tokens))
  assert {x.dtype for x in jax.tree.leaves(v)} == {jnp.dtype("float32")}
  total, metrics = model.apply(variables, batch, *tokens, rngs=rngs)
  total32, _ = ssacl.build_model(config.model).apply(variables, batch, *tokens, rngs=rngs)
  assert total.dtype == jnp.float32
  np.testing.assert_allclose(total, total32, rtol=0.05)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_jitted_forward_backward_on_8_device_mesh_with_fsdp_params(tiny, scan_layers):
  config, model, variables, batch, tokens = tiny
  config = config.copy_and_resolve_references()
  config.mesh.shape = (2, 4, 1)
  if scan_layers:  # stacked [depth, ...] parameters: the 'layers' axis stays unsharded
    config.model.scan_layers = config.model.remat = True
    model = ssacl.build_model(config.model)
    variables = layers.stack_layers(variables)
  mesh = sharding.make_mesh(config)
  assert mesh.devices.size == 8
  boxed = jax.eval_shape(lambda r: model.init({"params": r, "mask": r}, batch, *tokens),
                         jax.random.key(0))["params"]
  shardings = sharding.logical_shardings(boxed, mesh, config)
  spec = shardings["image_encoder"]["patch_embed"]["kernel"].spec
  assert spec == P(None, "fsdp")
  params = jax.device_put(variables["params"], shardings)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  big, _ = random_batch(config, 8, seed=1)
  # The train step's loss: weights cast, then gathered over fsdp once (mesh.gather_weights_once).
  assert config.mesh.gather_weights_once

  def loss(fn):
    return lambda p, b: fn(p, b, tokens, jax.random.key(7))

  replicated = NamedSharding(mesh, P())
  step = jax.jit(jax.value_and_grad(loss(steps.make_loss_fn(config, model, shardings)),
                                    has_aux=True),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=((replicated, replicated), shardings))
  with jax.set_mesh(mesh):
    (value, metrics), grads = step(params, jax.device_put(big, batch_sharding))
  (ref_value, ref_metrics), ref_grads = jax.jit(jax.value_and_grad(
      loss(steps.make_loss_fn(config, model)), has_aux=True))(variables["params"], big)
  np.testing.assert_allclose(value, ref_value, rtol=1e-4)
  for name in ssacl.LOSS_NAMES:   # each of the five losses, sharded as unsharded
    np.testing.assert_allclose(metrics[f"loss_{name}"], ref_metrics[f"loss_{name}"],
                               rtol=1e-4, atol=1e-6, err_msg=name)
  assert grads["image_encoder"]["patch_embed"]["kernel"].sharding.spec == P(None, "fsdp")
  if scan_layers:
    fc1 = grads["image_encoder"]["blocks"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "fsdp", "tensor")
  np.testing.assert_allclose(grads["report_decoder"]["wte"]["embedding"],
                             ref_grads["report_decoder"]["wte"]["embedding"], atol=1e-5)


def test_a_dimension_the_mesh_does_not_divide_stays_whole_and_the_losses_match():
  """GPT-2's 50257-token vocabulary cannot split over tensor=2; here a 514-token report
  vocabulary over tensor 4 (mesh 1 x 2 x 4): the embedding keeps its vocabulary axis whole,
  the rest of the rules still apply, and the sharded step's losses equal the unsharded."""
  config = tiny_config()
  config.model.report.vocab_size = 514
  config.mesh.shape = (1, 2, 4)
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 8, seed=3)
  mesh = sharding.make_mesh(config)
  boxed = jax.eval_shape(lambda r: model.init({"params": r, "mask": r}, batch, *tokens),
                         jax.random.key(0))["params"]
  shardings = sharding.logical_shardings(boxed, mesh, config)
  assert shardings["report_decoder"]["wte"]["embedding"].spec == P(None, "fsdp")
  assert shardings["text_encoder"]["word_embed"]["embedding"].spec == P("tensor", "fsdp")
  params = nn.meta.unbox(model.init({"params": jax.random.key(0), "mask": jax.random.key(1)},
                                    batch, *tokens))["params"]
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))

  def loss(fn):
    return lambda p, b: fn(p, b, tokens, jax.random.key(7))[1]

  with jax.set_mesh(mesh):
    sharded = jax.jit(loss(steps.make_loss_fn(config, model, shardings)),
                      in_shardings=(shardings, batch_sharding))(
        jax.device_put(params, shardings), jax.device_put(batch, batch_sharding))
  reference = jax.jit(loss(steps.make_loss_fn(config, model)))(params, batch)
  for name in ssacl.LOSS_NAMES:
    np.testing.assert_allclose(sharded[f"loss_{name}"], reference[f"loss_{name}"],
                               rtol=1e-4, atol=1e-6, err_msg=name)


def test_evenly_divided_drops_only_the_axes_that_do_not_divide():
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  s = NamedSharding(mesh, P("tensor", "fsdp"))
  assert sharding.evenly_divided(s, (8, 4)) is s
  assert sharding.evenly_divided(s, (6, 4)).spec == P(None, "fsdp")
  assert sharding.evenly_divided(s, (6, 3)).spec == P(None, None)
  both = NamedSharding(mesh, P(("fsdp", "tensor")))
  assert sharding.evenly_divided(both, (16, 3)) is both
  assert sharding.evenly_divided(both, (12, 3)).spec == P(None, None)   # 12 % 8


def test_paper_config_parameter_counts_match_the_release():
  counts = param_count.count_by_component(ssacl_vitb16.get_config())
  pos_table = 197 * 768  # the release stores its fixed position tables as parameters
  release = {"image_encoder": 85.8e6 - pos_table, "image_decoder": 29.7e6 - pos_table,
             "text_encoder": 34.1e6 - (384 * 384 + 384 + 2 * 384 + 384 * 30000 + 30000),
             "report_decoder": 124.4e6,
             # img->text, text->query, ->decoder, keep-mask scale, two logit scales
             "projections_and_scales": 295_296 + 295_680 + 590_592 + 197 + 2}
  for name, want in release.items():
    assert counts[name] == pytest.approx(want, rel=0.01), name


def test_paper_config_weight_decay_follows_the_release_rule():
  """The release exempts its 1-D tensors (LayerNorm scales and biases) and biases, nothing
  else; the rule reads per-layer shapes, so the scanned layout gives the same mask."""
  from ssacl_jax import convert, optim
  params = convert.abstract_params(ssacl_vitb16.get_config())
  decayed = {"image_encoder/cls", "image_decoder/mask_token", "logit_scale", "visible_w",
             "text_encoder/word_embed/embedding", "text_encoder/pos_embed/embedding",
             "text_encoder/type_embed/embedding", "report_decoder/wte/embedding",
             "report_decoder/wpe/embedding", "image_encoder/patch_embed/kernel",
             "report_decoder/blocks/block11/mlp/fc2/kernel"}
  for scanned in (False, True):
    mask = convert.flatten(optim.decay_mask(layers.relayout_shapes(params, scanned)))
    for path, decays in mask.items():
      parent, name = path.split("/")[-2:] if "/" in path else ("", path)
      norm = "norm" in parent and name in ("scale", "bias")
      assert decays == (not (norm or name == "bias" or path == "visible_b")), path
    if not scanned:
      assert decayed <= {p for p, d in mask.items() if d}
      exempt = sorted(p for p, d in mask.items() if not d)
      # 12 + 4 + 6 + 12 blocks with 2 LayerNorms, 4 attention and 2 MLP biases each; 4
      # final/embedding norms; the biases of the patch embedding, 3 projections, the image
      # decoder's embedding and head and the pooler; visible_b.
      assert len(exempt) == 34 * (2 * 2 + 4 + 2) + 4 * 2 + 7 + 1
