"""Parity of converted weights: the release's PyTorch modules vs our model on the same inputs.

A tiny PyTorch model with the release's module names (timm-style ViT blocks written here,
Hugging Face BertModel / GPT2LMHeadModel from config objects with random weights) is saved
as a `.pth`, converted, and compared within 1e-4 (float32): encoder tokens with and without
prompt queries and with the same MAE mask, the pooled text embedding, decoder logits, and
the five loss values. Losses: our training forward (SSACL.__call__) runs with the converted
parameters; its masks are read back with capture_intermediates and fed to the PyTorch side,
whose loss formulas follow ../shared/peer/torch_peer.py (PeerSSACL.forward).
Needs the `convert` extra plus transformers; skipped without them.
"""
from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install '.[convert]')")
transformers = pytest.importorskip(
    "transformers", reason="parity tests need transformers (pip install '.[convert]')")
pytest.importorskip("safetensors", reason="parity tests need safetensors (the convert extra)")
F = torch.nn.functional

from ssacl_jax import anatomy, checkpointing, convert, pretrained  # noqa: E402
from ssacl_jax.models import image as image_lib, ssacl  # noqa: E402
from helpers import (ReleaseLike, gpt2_config, mae_file, mae_sincos, randomise,  # noqa: E402
                     release_wordpiece_json, tiny_config)

TOL = dict(rtol=1e-4, atol=1e-4)


def parity_config():
  """Tiny, with every width different so a transposed or swapped projection cannot fit."""
  c = tiny_config()
  m = c.model
  m.image_size, m.patch = 32, 8
  m.encoder = dict(width=32, depth=2, num_heads=4, mlp_dim=64)
  m.image_decoder = dict(width=24, depth=2, num_heads=4, mlp_dim=48)
  m.text = dict(vocab_size=64, max_len=24, width=16, depth=2, num_heads=2, mlp_dim=32)
  m.report = dict(vocab_size=80, max_positions=96, width=40, depth=2, num_heads=4, mlp_dim=80)
  return c


# ----------------------------------------------------------------------------- torch reference
def to_torch(x):
  return torch.from_numpy(np.array(x))


def nchw(images):
  return to_torch(np.transpose(np.asarray(images), (0, 3, 1, 2)).copy())


def keep_from_restore(ids_restore, n_keep):
  """Our (ids_restore) -> the kept patch indices in order (ids_shuffle[:, :n_keep])."""
  return to_torch(np.argsort(np.asarray(ids_restore), axis=1)[:, :n_keep].copy()).long()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """(config, torch model, .pth path, converted params, report)."""
  config = parity_config()
  model = randomise(ReleaseLike(config))
  path = tmp_path_factory.mktemp("release") / "ssacl-tiny.pth"
  torch.save({"model": model.state_dict(), "epoch": 3}, path)
  params, report = convert.convert("ssacl_release", path, config)
  return config, model, path, jax.tree.map(jnp.asarray, params), report


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
  """The project's tokenizer from a WordPiece JSON in the release file's layout."""
  from input_pipeline import tokenizers
  return tokenizers.load_tokenizer(
      release_wordpiece_json(tmp_path_factory.mktemp("wordpiece") / "mimic_wordpiece.json"))


TEXTS = ("The heart is normal in size. There is no pleural effusion.",
         "Small left pleural effusion and opacities in the right lower lung zone, 12 cm.",
         "Pneumothorax at the left apical zone.")


def random_inputs(config, tok, b=3, seed=0):
  """Random images and decoder ids; text-encoder ids as the release builds them (reports
  "[CLS] " + text, leaf names without [CLS]) by the project's tokenizer `tok`."""
  from input_pipeline import tokenizers
  rng = np.random.default_rng(seed)
  m, d = config.model, config.data
  batch = ssacl.dummy_batch(config, b)
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  for i in range(b):
    batch["text_ids"][i], batch["text_mask"][i] = tokenizers.encode_text(
        tok, TEXTS[i % len(TEXTS)], d.text_len)
  t = d.decoder_len
  batch["dec_ids"] = rng.integers(0, m.report.vocab_size, size=(b, t)).astype(np.int32)
  batch["dec_mask"][:] = 1
  batch["dec_mask"][1, -4:] = 0                      # a shorter report
  batch["dec_mask"][2, 2] = 0                        # a padded prompt token mid-sequence
  batch["dec_loss_mask"] = batch["dec_mask"].astype(np.float32)
  batch["dec_loss_mask"][:, :3] = 0                  # the prompt: no loss
  batch["leaf_mask"] = rng.integers(0, 2, size=batch["leaf_mask"].shape).astype(np.int32)
  anat_ids, anat_mask = tokenizers.anatomy_tokens(tok, d.anatomy_len)
  return batch, anat_ids, anat_mask


def apply(config, params, fn, *args, **kw):
  return ssacl.build_model(config.model).apply({"params": params}, *args,
                                               method=lambda m, *a: fn(m, *a), **kw)


# ----------------------------------------------------------------------------- the report
def test_release_report_accounts_for_every_tensor(release):
  config, model, _, params, report = release
  assert not report.unmapped and not report.missing
  skipped = {s: why for s, _, why in report.skipped}
  assert skipped["pos_embed"].startswith("fixed sin-cos table, formula mae (max |diff|: mae 0")
  assert skipped["decoder_pos_embed"].startswith("fixed sin-cos table, formula mae")
  assert report.position_tables == {"image_encoder": "mae", "image_decoder": "mae"}
  assert "tied" in skipped["opt_model.lm_head.weight"]
  assert "unused" in skipped["logit_scale"]
  assert all("masked-LM head" in why for s, why in skipped.items()
             if s.startswith("bert_encoder.model.cls."))
  mapped = {s for row in report.mapped for s in row[0].split(", ")}
  assert mapped | set(skipped) == set(model.state_dict())
  assert set(report.parts) == set(ssacl.PARTS)
  want = jax.tree.map(lambda x: x.shape, convert.abstract_params(config))
  assert jax.tree.map(lambda x: x.shape, params) == want
  text = report.text()
  assert "blocks.0.attn.qkv.weight [96, 32] -> image_encoder/blocks/block0/attn/query/kernel [32, 32]" in text


def test_weight_decay_mask_is_the_release_rule_on_its_own_tensors(release):
  """add_weight_decay in the release's main_pretrain.py: no decay for 1-D tensors and biases."""
  from ssacl_jax import optim
  _, _, _, params, report = release
  ours = convert.flatten(optim.decay_mask(params))
  release_rule = {dst: not (len(shape) == 1 or src.endswith(".bias"))
                  for src, shape, dst, _, _ in report.mapped}
  assert release_rule == ours
  assert ours["logit_scale"] and ours["visible_w"] and not ours["visible_b"]


# ----------------------------------------------------------------------------- forward parity
def test_encoder_tokens_match_with_and_without_queries(release, wordpiece):
  config, model, _, params, _ = release
  batch, _, _ = random_inputs(config, wordpiece)
  images = batch["image"]
  queries = np.random.default_rng(1).normal(size=(5, config.model.encoder.width)).astype(np.float32)
  with torch.no_grad():
    plain = model.encode(nchw(images)).numpy()
    with_q = model.encode(nchw(images), queries=to_torch(queries)[None]).numpy()
  ours = apply(config, params, lambda m, x: m.image_encoder(x)["tokens"], images)
  ours_q = apply(config, params, lambda m, x, q: m.image_encoder(x, queries=q)["tokens"], images, queries)
  np.testing.assert_allclose(ours, plain, **TOL)
  np.testing.assert_allclose(ours_q, with_q, **TOL)


def test_masked_encoder_tokens_match_given_the_same_mask(release, wordpiece):
  config, model, _, params, _ = release
  batch, _, _ = random_inputs(config, wordpiece)
  images = batch["image"]
  out = apply(config, params, lambda m, x: m.image_encoder(x, mask_ratio=0.5, rng=jax.random.key(4)),
              images)
  keep = keep_from_restore(out["ids_restore"], out["tokens"].shape[1] - 1)
  with torch.no_grad():
    ref = model.encode(nchw(images), keep=keep).numpy()
  np.testing.assert_allclose(out["tokens"], ref, **TOL)


def test_text_pooled_output_matches(release, wordpiece):
  config, model, _, params, _ = release
  batch, _, _ = random_inputs(config, wordpiece)
  with torch.no_grad():
    ref = model.text(to_torch(batch["text_ids"]).long(), to_torch(batch["text_mask"]).long()).numpy()
  ours = apply(config, params, lambda m, i, k: m.encode_text(i, k), batch["text_ids"], batch["text_mask"])
  np.testing.assert_allclose(ours, ref, **TOL)


def gpt2_reference_logits(gpt, prefix, prefix_valid, ids, mask):
  """HF GPT-2 on [prefix embeds, token embeds] (positions arange), logits at P-1 .. P+T-2."""
  embeds = torch.cat([to_torch(prefix), gpt.transformer.wte(to_torch(ids).long())], 1)
  att = torch.cat([to_torch(prefix_valid).long(), to_torch(mask).long()], 1)
  with torch.no_grad():
    logits = gpt(inputs_embeds=embeds, attention_mask=att).logits.numpy()
  p = prefix.shape[1]
  return logits[:, p - 1:p - 1 + ids.shape[1]]


def decoder_inputs(config, seed=2):
  rng = np.random.default_rng(seed)
  r = config.model.report
  prefix = rng.normal(size=(3, 7, r.width)).astype(np.float32)
  prefix_valid = np.ones((3, 7), np.int32)
  prefix_valid[:, :2] = rng.integers(0, 2, size=(3, 2))
  prefix_valid[1, 3] = 0
  ids = rng.integers(0, r.vocab_size, size=(3, 6)).astype(np.int32)
  mask = np.ones((3, 6), np.int32)
  mask[2, -2:] = 0
  return prefix, prefix_valid, ids, mask


def test_decoder_logits_match(release):
  config, model, _, params, _ = release
  prefix, prefix_valid, ids, mask = decoder_inputs(config)
  ref = gpt2_reference_logits(model.opt_model, prefix, prefix_valid, ids, mask)
  ours = apply(config, params, lambda m, *a: m.report_logits(*a), prefix, prefix_valid, ids, mask)
  np.testing.assert_allclose(ours, ref, **TOL)


# ----------------------------------------------------------------------------- loss parity
def torch_graph_queries(leaf_q):
  """Leaf queries [1, K, D] -> node queries [1, G, D] in anatomy.NODES order (parents = mean)."""
  feats = {n: leaf_q[:, i] for i, n in enumerate(anatomy.LEAVES)}

  def node(n):
    if n not in feats:
      feats[n] = torch.stack([node(c) for c in anatomy.CHILDREN[n]], 1).mean(1)
    return feats[n]
  return torch.stack([node(n) for n in anatomy.NODES], 1)


def torch_losses(tm, batch, anat_ids, anat_mask, mae_restore, graph_restore, config):
  """The five losses of torch_peer.PeerSSACL.forward, on the release-named modules."""
  img = nchw(batch["image"])
  b, p, g = img.shape[0], config.model.patch, config.model.image_size // config.model.patch
  n_keep = int(g * g * (1 - config.model.mask_ratio))
  k_leaves = anatomy.NUM_LEAVES
  # L_ir
  restore = to_torch(np.asarray(mae_restore)).long()
  latent = tm.encode(img, keep=keep_from_restore(mae_restore, n_keep))
  masked = torch.ones(b, g * g)
  masked[:, :n_keep] = 0
  masked = masked.gather(1, restore)
  pred = tm.decode_pixels(latent, restore)
  target = img.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, -1)
  loss_img = (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()
  # L_cl
  img_g = tm.img_mlp(latent)[:, 1:].mean(1)
  txt_g = tm.text(to_torch(batch["text_ids"]).long(), to_torch(batch["text_mask"]).long())
  scale = F.softplus(tm.pos_weight_img(1.0 - masked))
  a, t = F.normalize(img_g, dim=-1), F.normalize(txt_g, dim=-1)
  l_it, l_ti = tm.Tpar * a @ t.t(), tm.Tpar * t @ a.t()
  y, w = torch.arange(b), scale.detach().squeeze(-1)
  loss_c = (F.cross_entropy(l_it * scale, y) + F.cross_entropy(l_ti * scale, y)
            + F.cross_entropy(l_it, y, weight=w) + F.cross_entropy(l_ti, y, weight=w)) / 4
  # queries; the leaf-query pass -> L_lm
  leaf_q = tm.bert_proj(tm.text(to_torch(anat_ids).long(), to_torch(anat_mask).long()))[None]
  graph_q = torch_graph_queries(leaf_q)
  latent_leaf = tm.encode(img, queries=leaf_q)
  att = torch.zeros(b, latent_leaf.shape[1], dtype=torch.long)
  att[:, k_leaves + 1:] = 1
  att[:, :k_leaves] = to_torch(batch["leaf_mask"]).long()
  ids = to_torch(batch["dec_ids"]).long()
  emb = torch.cat([tm.opt_proj(latent_leaf), tm.opt_model.transformer.wte(ids)], 1)
  labels = torch.cat([torch.full(att.shape, -100, dtype=torch.long),
                      ids.masked_fill(to_torch(batch["dec_loss_mask"]) == 0, -100)], 1)
  loss_lm = tm.opt_model(inputs_embeds=emb, labels=labels,
                         attention_mask=torch.cat([att, to_torch(batch["dec_mask"]).long()], 1)).loss
  # L_ar: children from the masked graph pass, parents from the unmasked one
  nq = graph_q.shape[1]
  full_g = tm.encode(img, queries=graph_q)[:, :nq]
  part_g = tm.encode(img, keep=keep_from_restore(graph_restore, n_keep), queries=graph_q)[:, :nq]
  rec = []
  for parent, kids in anatomy.CHILDREN.items():
    ch = part_g[:, [anatomy.NODE_INDEX[c] for c in kids]]
    ch_pred = tm.decoder_token0(torch.cat([ch.mean(1, keepdim=True), ch], 1))
    i = anatomy.NODE_INDEX[parent]
    par_pred = tm.decoder_token0(full_g[:, i:i + 1])
    rec.append(((ch_pred - par_pred.detach()) ** 2).mean())
  loss_ar = sum(rec) / len(rec)
  # L_ac
  q = F.normalize(latent_leaf[:, :k_leaves], dim=-1)
  s = F.normalize(txt_g, dim=-1)
  sim_q = torch.einsum("ikd,jld->ijkl", q, q) * tm.Tpar
  soft = F.softmax(s @ s.t() * tm.Tpar, -1).detach()
  tgt = 0.9 * torch.eye(k_leaves)[None, None] + 0.1 * soft[..., None, None]
  loss_ac = -(F.log_softmax(sim_q, -1) * tgt).sum(-1).mean()
  return {"ir": loss_img, "cl": loss_c, "lm": loss_lm, "ar": loss_ar, "ac": loss_ac}


def test_training_losses_match_the_peer_formulas(release, wordpiece):
  config, model, _, params, _ = release
  batch, anat_ids, anat_mask = random_inputs(config, wordpiece)
  is_encoder = lambda mdl, name: isinstance(mdl, image_lib.ImageEncoder) and name == "__call__"
  forward = jax.jit(lambda p, *a: ssacl.build_model(config.model).apply(
      {"params": p}, *a, rngs={"mask": jax.random.key(7)}, capture_intermediates=is_encoder,
      mutable=["intermediates"]))
  (_, metrics), state = forward(params, batch, anat_ids, anat_mask)
  calls = state["intermediates"]["image_encoder"]["__call__"]
  assert len(calls) == 3  # the MAE pass, the unmasked graph pass, the masked graph pass
  with torch.no_grad():
    ref = torch_losses(model, batch, anat_ids, anat_mask, calls[0]["ids_restore"],
                       calls[2]["ids_restore"], config)
  for k, v in ref.items():
    np.testing.assert_allclose(float(metrics[f"loss_{k}"]), float(v), err_msg=f"L_{k}", **TOL)


# ----------------------------------------------------------------------------- position tables
@pytest.mark.parametrize("encoder_table", ["mae", "release"])
def test_release_position_tables_are_identified_and_reproduced(release, wordpiece, tmp_path,
                                                               encoder_table):
  """The release's decoder always has its own formula; its encoder MAE's (started from MAE)
  or the release's. The converted model reproduces encoder tokens and decoder pixels."""
  config, model, _, params, _ = release
  grid, m = config.model.image_size // config.model.patch, config.model
  tm = copy.deepcopy(model)
  with torch.no_grad():
    tm.pos_embed.copy_(torch.from_numpy(mae_sincos(m.encoder.width, grid,
                                                   release=encoder_table == "release"))[None])
    tm.decoder_pos_embed.copy_(torch.from_numpy(
        mae_sincos(m.image_decoder.width, grid, release=True))[None])
  path = tmp_path / "release_tables.pth"
  torch.save({"model": tm.state_dict()}, path)
  cfg = parity_config()
  converted, report = convert.convert("ssacl_release", path, cfg)
  want = {"image_encoder": encoder_table, "image_decoder": "release"}
  assert report.position_tables == want
  assert f"position tables: image_encoder={encoder_table}, image_decoder=release" in report.text()
  convert.set_position_tables(cfg, report)
  assert dict(cfg.model.position_tables) == want
  images = random_inputs(cfg, wordpiece)[0]["image"]
  out = apply(cfg, converted, lambda mm, x: mm.image_encoder(x, mask_ratio=0.5,
                                                             rng=jax.random.key(4)), images)
  pixels = apply(cfg, converted, lambda mm, t, r: mm.image_decoder(t, r), out["tokens"],
                 out["ids_restore"])
  restore = to_torch(np.asarray(out["ids_restore"])).long()
  with torch.no_grad():
    latent = tm.encode(nchw(images), keep=keep_from_restore(out["ids_restore"],
                                                           out["tokens"].shape[1] - 1))
    ref_pixels = tm.decode_pixels(latent, restore).numpy()
  np.testing.assert_allclose(out["tokens"], latent.numpy(), **TOL)
  np.testing.assert_allclose(pixels, ref_pixels, **TOL)
  # The old behaviour, MAE's formula everywhere, predicts other pixels.
  stale = apply(config, converted, lambda mm, t, r: mm.image_decoder(t, r), out["tokens"],
                out["ids_restore"])
  assert np.max(np.abs(np.asarray(stale) - ref_pixels)) > 1e-2
  # A run whose config disagrees is told which field to set: from an MAE file converted on
  # the fly, or from a converted checkpoint (its config.json).
  other = parity_config()
  if encoder_table == "mae":
    # An MAE file's decoder table is never imported (the release's decoder keeps its own
    # formula), so only its encoder's must agree, and it does.
    mae_file(tm, tmp_path / "mae.pth")
    other.init.mae = str(tmp_path / "mae.pth")
    pretrained.load_initial_params(other, convert.abstract_params(other), fresh_params(other))
    return
  convert.run("ssacl_release", path, parity_config(), tmp_path / "converted")
  other.init.checkpoint = str(tmp_path / "converted")
  with pytest.raises(pretrained.InitError,
                     match=r"has the 'release' position table for image_decoder, but "
                           r"config.model.position_tables.image_decoder is 'mae': set "
                           r"--config.model.position_tables.image_decoder=release"):
    pretrained.load_initial_params(other, convert.abstract_params(other), fresh_params(other))


def test_a_table_of_no_known_formula_fails(release, tmp_path):
  config, model, _, _, _ = release
  sd = dict(model.state_dict())
  sd["decoder_pos_embed"] = sd["decoder_pos_embed"] * 1.5
  torch.save({"model": sd}, tmp_path / "odd.pth")
  with pytest.raises(convert.ConversionError, match="position table of image_decoder matches no"):
    convert.convert("ssacl_release", tmp_path / "odd.pth", config)


# ----------------------------------------------------------------------------- GPT-2 folders
@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  config = parity_config()
  torch.manual_seed(0)
  gpt = randomise(transformers.GPT2LMHeadModel(gpt2_config(config.model.report)), seed=3)
  folder = tmp_path_factory.mktemp("gpt2")
  gpt.save_pretrained(folder, safe_serialization=True)
  (folder / "vocab.json").write_text(json.dumps({"a": 0}))
  return config, gpt, folder


def test_gpt2_safetensors_folder_converts_to_matching_logits(hf_gpt2):
  config, gpt, folder = hf_gpt2
  assert (folder / "model.safetensors").is_file()
  converted, report = convert.convert("gpt2", folder, config)
  assert report.parts == ("report_decoder",) and not report.unmapped and not report.missing
  params = jax.tree.map(jnp.asarray, convert.merge_into(fresh_params(config), converted))
  prefix, prefix_valid, ids, mask = decoder_inputs(config)
  ref = gpt2_reference_logits(gpt, prefix, prefix_valid, ids, mask)
  ours = apply(config, params, lambda m, *a: m.report_logits(*a), prefix, prefix_valid, ids, mask)
  np.testing.assert_allclose(ours, ref, **TOL)


def test_gpt2_flax_msgpack_gives_the_same_parameters(hf_gpt2, tmp_path):
  config, _, folder = hf_gpt2
  try:
    flax_gpt = transformers.FlaxGPT2LMHeadModel.from_pretrained(folder, from_pt=True)
  except Exception as e:  # noqa: BLE001 - the HF Flax classes are deprecated upstream
    pytest.skip(f"transformers' Flax GPT-2 is unavailable here: {e}")
  flax_gpt.save_pretrained(tmp_path)
  assert (tmp_path / "flax_model.msgpack").is_file()
  from_st, _ = convert.convert("gpt2", folder, config)
  from_msgpack, report = convert.convert("gpt2", tmp_path, config)
  assert "flax_model.msgpack" in report.notes[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7), from_st, from_msgpack)


def test_gpt2_size_mismatch_names_the_config_fields(hf_gpt2):
  _, _, folder = hf_gpt2
  config = parity_config()
  config.model.report.width = 48
  with pytest.raises(convert.ConversionError, match=r"config.model.report.width=48 but the GPT-2 "
                     r"config has 40(.|\n)*--config.model.report.width=40"):
    convert.convert("gpt2", folder, config)


# ----------------------------------------------------------------------------- MAE
def test_mae_encoder_and_decoder_convert(release, tmp_path):
  config, model, _, params, _ = release
  sd = mae_file(model, tmp_path / "mae.pth")
  converted, report = convert.convert("mae", tmp_path / "mae.pth", config)
  assert report.parts == ("image_encoder", "image_decoder")
  assert not report.unmapped and not report.missing
  assert {s for s, _, _ in report.skipped} == {"pos_embed", "decoder_pos_embed"}
  assert len(report.mapped) == len(jax.tree.leaves(converted))
  assert {s for row in report.mapped for s in row[0].split(", ")} == set(sd) - {"pos_embed", "decoder_pos_embed"}
  for part in ("image_encoder", "image_decoder"):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), converted[part], params[part])


def test_mae_encoder_only_and_clear_shape_errors(release, tmp_path):
  config, model, _, _, _ = release
  mae_file(model, tmp_path / "enc.pth", with_decoder=False)
  converted, report = convert.convert("mae", tmp_path / "enc.pth", config)
  assert tuple(converted) == ("image_encoder",)
  other = parity_config()
  other.model.image_decoder = dict(width=32, depth=1, num_heads=4, mlp_dim=64)
  mae_file(model, tmp_path / "full.pth")
  with pytest.raises(convert.ConversionError) as err:
    convert.convert("mae", tmp_path / "full.pth", other)
  msg = str(err.value)
  assert "image_decoder/embed/kernel: source decoder_embed.weight gives [32, 24], the model has [32, 32]" in msg
  assert "image_decoder: the source has 2 blocks, the model 1 (config.model.image_decoder.depth)" in msg
  converted, report = convert.convert("mae", tmp_path / "full.pth", other, parts=("image_encoder",))
  assert tuple(converted) == ("image_encoder",)
  assert all("not requested" in why for s, _, why in report.skipped
             if s.startswith("decoder_") and s != "decoder_pos_embed")


def test_super_resolution_head_is_kept_fresh_and_reported(release, tmp_path):
  config, model, _, _, _ = release
  sd = dict(model.state_dict())
  d = config.model.image_decoder.width
  sd["decoder_pred.weight"] = torch.zeros((2 * config.model.patch) ** 2 * 3, d)
  sd["decoder_pred.bias"] = torch.zeros((2 * config.model.patch) ** 2 * 3)
  torch.save({"model": sd}, tmp_path / "sr.pth")
  converted, report = convert.convert("ssacl_release", tmp_path / "sr.pth", config)
  assert "head" not in converted["image_decoder"]
  assert [m[0] for m in report.missing] == ["image_decoder/head/kernel", "image_decoder/head/bias"]
  assert "super-resolution" in dict((s, w) for s, _, w in report.skipped)["decoder_pred.weight"]


def test_unknown_tensors_fail_unless_allowed(release, tmp_path):
  config, model, _, _, _ = release
  sd = dict(model.state_dict(), extra_head=torch.zeros(3))
  torch.save({"model": sd}, tmp_path / "x.pth")
  with pytest.raises(convert.ConversionError, match="1 source tensor.* map to nothing: extra_head"):
    convert.convert("ssacl_release", tmp_path / "x.pth", config)
  _, report = convert.convert("ssacl_release", tmp_path / "x.pth", config, allow_unmapped=True)
  assert report.unmapped == [("extra_head", (3,))]


# ----------------------------------------------------------------------------- Orbax + config.init
def fresh_params(config, seed=0):
  """Random parameters shaped like the model's (stand-ins for a fresh initialisation)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(a.dtype)),
                      convert.abstract_params(config))


def test_converted_checkpoint_feeds_config_init(release, tmp_path, capsys):
  _, _, path, params, _ = release
  config = parity_config()
  out = tmp_path / "converted"
  convert.run("ssacl_release", path, config, out)
  printed = capsys.readouterr().out
  assert "conversion report: kind=ssacl_release" in printed and "wrote " in printed
  assert (out / "config.json").is_file() and (out / "conversion_report.txt").is_file()
  meta = checkpointing.Checkpointer(out, config, read_only=True).read_meta(0)
  assert meta["converted"]["parts"] == list(ssacl.PARTS)

  abstract, fresh = convert.abstract_params(config), fresh_params(config, seed=5)
  config.init.checkpoint = str(out)
  loaded = pretrained.load_initial_params(config, abstract, fresh)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), loaded, params)

  config.init.parts = "text_encoder,logit_scale"
  loaded = pretrained.load_initial_params(config, abstract, fresh)
  np.testing.assert_array_equal(loaded["logit_scale"], params["logit_scale"])
  jax.tree.map(np.testing.assert_array_equal, loaded["text_encoder"], params["text_encoder"])
  jax.tree.map(np.testing.assert_array_equal, loaded["image_encoder"], fresh["image_encoder"])


def test_scanned_layers_take_converted_weights_and_either_checkpoint_layout(release, tmp_path):
  from ssacl_jax import layers
  _, _, path, params, _ = release
  unrolled, scanned = parity_config(), parity_config()
  scanned.model.scan_layers = True
  # Converting straight into the scanned layout stacks each stack's blocks.
  got, _ = convert.convert("ssacl_release", path, scanned)
  want = layers.stack_layers(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # A checkpoint in one layout initialises a model in the other, both ways.
  for written, loading in ((unrolled, scanned), (scanned, unrolled)):
    out = tmp_path / f"scan_{written.model.scan_layers}"
    convert.run("ssacl_release", path, written, out)
    cfg = loading.copy_and_resolve_references()
    cfg.init.checkpoint = str(out)
    loaded = pretrained.load_initial_params(cfg, convert.abstract_params(cfg),
                                            fresh_params(cfg, seed=5))
    expect = want if cfg.model.scan_layers else params
    assert jax.tree.structure(loaded) == jax.tree.structure(expect)
    jax.tree.map(np.testing.assert_array_equal, loaded, expect)


def test_config_init_gpt2_on_the_fly_and_errors(hf_gpt2, release, tmp_path):
  _, gpt, folder = hf_gpt2
  config = parity_config()
  abstract, fresh = convert.abstract_params(config), fresh_params(config)
  config.init.gpt2 = str(folder)
  loaded = pretrained.load_initial_params(config, abstract, fresh)
  np.testing.assert_allclose(loaded["report_decoder"]["wte"]["embedding"],
                             gpt.transformer.wte.weight.detach().numpy())
  jax.tree.map(np.testing.assert_array_equal, loaded["text_encoder"], fresh["text_encoder"])

  config.init.parts = "report_decoder,image_encoder"
  with pytest.raises(pretrained.InitError, match="asks for image_encoder, which no init source"):
    pretrained.load_initial_params(config, abstract, fresh)

  config.init.gpt2, config.init.parts = "", "auto"
  config.init.checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.init.checkpoint=.*nowhere"):
    pretrained.load_initial_params(config, abstract, fresh)

  # A converted checkpoint whose shapes differ from the model's: named, both shapes.
  _, _, path, _, _ = release
  out = tmp_path / "converted"
  convert.run("ssacl_release", path, parity_config(), out)
  other = parity_config()
  other.model.text = dict(other.model.text, mlp_dim=48)
  other.init.checkpoint, other.init.parts = str(out), "text_encoder"
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"text_encoder/blocks/block0/mlp/fc1/kernel: model \(16, 48\) vs "
                           r"checkpoint \(16, 32\)"):
    pretrained.load_initial_params(other, convert.abstract_params(other), fresh_params(other))


def test_import_without_torch_paths():
  """The module's numpy side needs no torch: a state dict of numpy arrays converts."""
  config = parity_config()
  model = randomise(ReleaseLike(config))
  arrays = {k: v.numpy() for k, v in model.state_dict().items()}
  t = convert.Tensors(arrays)
  report = convert.Report("ssacl_release", "memory")
  tree = convert.convert_tensors("ssacl_release", t, config.model, report)
  assert not t.unaccounted() and set(tree) == set(ssacl.PARTS)


# ----------------------------------------------------------------------------- train / eval
@pytest.mark.slow
def test_training_starts_from_and_eval_restores_a_converted_release(tiny_data_dir, tmp_path):
  from ssacl_jax import inference, train
  config = tiny_config()
  config.data.data_dir = tiny_data_dir
  model = randomise(ReleaseLike(config))
  path = tmp_path / "release.pth"
  torch.save({"model": model.state_dict()}, path)
  out = tmp_path / "converted"
  convert.run("ssacl_release", path, config, out)
  converted, _ = convert.convert("ssacl_release", path, config)

  # Evaluation reads the converted directory like a training workdir.
  restored = inference.restore(config, str(out))
  assert restored.step == 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0),
               restored.params, converted)

  # Training starts from it (learning rate 0: the step-1 parameters are the converted ones).
  config.init.checkpoint = str(out)
  config.train.num_steps = config.train.checkpoint_every_steps = 1
  config.train.eval_every_steps = 0
  config.optim.learning_rate = config.optim.init_learning_rate = 0.0
  config.optim.warmup_steps = 1
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  trained = inference.restore(config, str(workdir)).params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7),
               trained, converted)


@pytest.mark.slow
def test_converted_gpt2_checkpoint_gives_only_the_decoder(hf_gpt2, tmp_path):
  _, gpt, folder = hf_gpt2
  config = parity_config()
  out = tmp_path / "gpt2"
  convert.run("gpt2", folder, config, out)
  saved = json.loads((out / "config.json").read_text())
  assert saved["init"]["gpt2"] == str(folder.absolute())  # its vocabulary follows it
  abstract, fresh = convert.abstract_params(config), fresh_params(config)
  config.init.checkpoint = str(out)
  loaded = pretrained.load_initial_params(config, abstract, fresh)
  np.testing.assert_array_equal(loaded["report_decoder"]["wpe"]["embedding"],
                                gpt.transformer.wpe.weight.detach().numpy())
  for part in set(ssacl.PARTS) - {"report_decoder"}:  # fresh in the file: not taken
    jax.tree.map(np.testing.assert_array_equal, loaded[part], fresh[part])
