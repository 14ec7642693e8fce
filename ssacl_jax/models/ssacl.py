"""The SS-ACL model: image encoder/decoder, text encoder, report decoder, the five losses.

`SSACL.__call__` is the training forward (SPEC 3): it returns the weighted total loss and
a dict of metrics holding the five losses. The encoder runs three times per step: the MAE
pass, one unmasked pass carrying the graph queries (whose leaf entries are the leaf
queries, so it serves L_ar, L_ac and L_lm exactly, SPEC 3 "note on cost"), and the masked
pass with graph queries. `model.share_unmasked_pass=False` runs the release's separate
leaf-query pass instead (same losses; tested).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssacl_jax import anatomy, layers, losses
from ssacl_jax.models.image import ImageDecoder, ImageEncoder, position_table
from ssacl_jax.models.report import CACHE_SLOT_AXIS, ReportDecoder
from ssacl_jax.models.text import TextEncoder

LOSS_NAMES = ("ir", "cl", "lm", "ar", "ac")

# The top-level parameter groups, in the order SSACL.setup creates them: what the converter
# maps, config.init.parts selects and the logs name.
PARTS = ("image_encoder", "image_decoder", "text_encoder", "report_decoder", "image_to_text",
         "text_to_query", "to_decoder", "visible_w", "visible_b", "logit_scale")
# The networks among PARTS and their section of config.model (the rest are projections and
# scalars).
CONFIG_SECTION = {"image_encoder": "encoder", "image_decoder": "image_decoder",
                  "text_encoder": "text", "report_decoder": "report"}


def parse_parts(spec: str) -> tuple[str, ...] | None:
  """'a,b' -> (a, b); 'all' -> PARTS; '' or 'auto' -> None (whatever the source gives)."""
  spec = (spec or "").strip()
  if spec in ("", "auto"):
    return None
  if spec == "all":
    return PARTS
  names = tuple(p.strip() for p in spec.split(",") if p.strip())
  bad = [p for p in names if p not in PARTS]
  if bad:
    raise ValueError(f"unknown part(s) {', '.join(bad)}; valid: all, auto, {', '.join(PARTS)}")
  return names

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str):
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
  return DTYPES[name]


class SSACL(nn.Module):
  config: ml_collections.FrozenConfigDict  # config.model

  def setup(self):
    c = self.config
    kw = dict(dtype=dtype_from_name(c.dtype), param_dtype=dtype_from_name(c.param_dtype))
    e, d, t, r = c.encoder, c.image_decoder, c.text, c.report
    dropout = c.get("dropout", 0.0)  # workdirs saved before the field trained without
    self.image_encoder = ImageEncoder(
        c.image_size, c.patch, c.channels, e.width, e.depth, e.num_heads, e.mlp_dim,
        remat=c.remat, scan_layers=c.scan_layers,
        position_table=position_table(c, "image_encoder"), **kw)
    num_patches = (c.image_size // c.patch) ** 2
    self.image_decoder = ImageDecoder(
        num_patches, c.patch, c.channels, d.width, d.depth, d.num_heads, d.mlp_dim,
        remat=c.remat, scan_layers=c.scan_layers,
        position_table=position_table(c, "image_decoder"), **kw)
    self.text_encoder = TextEncoder(
        t.vocab_size, t.max_len, t.width, t.depth, t.num_heads, t.mlp_dim, remat=c.remat,
        scan_layers=c.scan_layers, dropout=dropout, **kw)
    self.report_decoder = ReportDecoder(
        r.vocab_size, r.max_positions, r.width, r.depth, r.num_heads, r.mlp_dim,
        remat=c.remat, scan_layers=c.scan_layers, dropout=dropout, **kw)
    self.image_to_text = layers.dense(t.width, ("embed", "mlp"), **kw)
    self.text_to_query = layers.dense(e.width, ("mlp", "embed"), **kw)
    self.to_decoder = layers.dense(r.width, ("embed", "mlp"), **kw)
    self.visible_w = self.param(
        "visible_w", nn.with_logical_partitioning(nn.initializers.zeros, ("positions",)),
        (num_patches,), kw["param_dtype"])
    self.visible_b = self.param(
        "visible_b", nn.with_logical_partitioning(nn.initializers.zeros, ()), (), kw["param_dtype"])
    self.logit_scale = self.param(
        "logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(1.0 / c.init_temperature), ()),
        (), jnp.float32)

  # -- pieces shared by training, generation and grounding --------------------------------
  def leaf_queries(self, anatomy_ids, anatomy_mask):
    """Leaf names' tokens [K, L] -> leaf queries [K, D] (pooled text, projected)."""
    _, pooled = self.text_encoder(anatomy_ids, anatomy_mask)
    return self.text_to_query(pooled)

  def encode_text(self, ids, mask):
    """Report / phrase tokens -> pooled sentence embeddings [B, Dt]."""
    return self.text_encoder(ids, mask)[1]

  def decoder_prefix(self, leaf_tokens, cls_token, patch_tokens, leaf_mask):
    """Prefix embeddings [B, K + 1 + N, Wd] and their key mask (SPEC 3.6).

    With `model.lm_anatomy_mask` False (an ablation) every leaf is visible, whatever leaf_mask.
    """
    tokens = jnp.concatenate([leaf_tokens, cls_token[:, None], patch_tokens], axis=1)
    prefix = self.to_decoder(tokens)
    b, n = patch_tokens.shape[:2]
    if not self.config.get("lm_anatomy_mask", True):  # configs saved before the field: True
      leaf_mask = jnp.ones_like(leaf_mask)
    valid = jnp.concatenate([leaf_mask.astype(jnp.int32), jnp.zeros((b, 1), jnp.int32),
                             jnp.ones((b, n), jnp.int32)], axis=1)
    return prefix, valid

  def unmasked_query_pass(self, images, leaf_q, graph_q, return_attention=False):
    """(node tokens [B, G, D], leaf tokens [B, K, D], CLS [B, D], patches [B, N, D], attn)."""
    out = self.image_encoder(images, queries=graph_q, return_attention=return_attention)
    tokens, g = out["tokens"], graph_q.shape[0]
    nodes = tokens[:, :g]
    if self.config.share_unmasked_pass:
      leaves = nodes[:, anatomy.leaf_node_indices()]
      cls, patches = tokens[:, g], tokens[:, g + 1:]
    else:
      leaf_tokens = self.image_encoder(images, queries=leaf_q)["tokens"]
      k = leaf_q.shape[0]
      leaves, cls, patches = leaf_tokens[:, :k], leaf_tokens[:, k], leaf_tokens[:, k + 1:]
    return nodes, leaves, cls, patches, out["attention"]

  def report_logits(self, prefix, prefix_valid, dec_ids, dec_mask):
    """Logits [B, Ld, V] scoring dec_ids[:, t] from everything before it."""
    dec = self.report_decoder.embed_tokens(dec_ids)
    seq = jnp.concatenate([prefix.astype(dec.dtype), dec], axis=1)
    valid = jnp.concatenate([prefix_valid, dec_mask.astype(jnp.int32)], axis=1)
    hidden, _ = self.report_decoder(seq, valid)
    p = prefix.shape[1]
    return self.report_decoder.logits(hidden[:, p - 1:p - 1 + dec_ids.shape[1]])

  # -- inference: features, grounding ------------------------------------------------------
  def image_features(self, images):
    """Unmasked, query-free pass -> (CLS [B, D], mean patch token [B, D], image emb [B, Dt])."""
    tokens = self.image_encoder(images)["tokens"]
    mean_patch = jnp.mean(tokens[:, 1:], axis=1)
    return tokens[:, 0], mean_patch, self.image_to_text(mean_patch)

  def phrase_queries(self, ids, mask):
    """Any text (anatomy names, report phrases) -> encoder queries [n, D] (SPEC 5)."""
    return self.text_to_query(self.encode_text(ids, mask))

  def query_attention(self, images, queries):
    """Last-block attention of each query and of CLS over the patches, head-averaged.

    queries [M, D] or [B, M, D] -> [B, M + 1, N] (row M is the CLS token's map).
    """
    out = self.image_encoder(images, queries=queries, return_attention=True)
    m1 = out["attention"].shape[2]
    return jnp.mean(out["attention"][:, :, :, m1:].astype(jnp.float32), axis=1)

  def anatomy_attention(self, images, anatomy_ids, anatomy_mask):
    """Graph-query heat maps [B, G + 1, N] (anatomy.NODES order, then CLS)."""
    leaf_q = self.leaf_queries(anatomy_ids, anatomy_mask)
    return self.query_attention(images, anatomy.restore_graph_queries(leaf_q))

  # -- generation ---------------------------------------------------------------------------
  def generation_prefix(self, images, anatomy_ids, anatomy_mask, leaf_mask):
    """Images -> (prefix [B, K + 1 + N, Wd], prefix key mask [B, K + 1 + N]) for decoding."""
    leaf_q = self.leaf_queries(anatomy_ids, anatomy_mask)
    _, leaves, cls, patches, _ = self.unmasked_query_pass(
        images, leaf_q, anatomy.restore_graph_queries(leaf_q))
    return self.decoder_prefix(leaves, cls, patches, leaf_mask)

  def embed_report_tokens(self, ids):
    return self.report_decoder.embed_tokens(ids)

  def decode(self, embeds, key_valid, caches, cache_index, positions):
    """One incremental decoder call: embeds [B, L, Wd] written at cache_index.

    key_valid [B, S_max] marks the cache slots that may be attended (written and not
    hidden); positions [B, L] are the inputs' positions. Returns (hidden [B, L, Wd], new
    caches); `decoder_logits` maps hidden states to the vocabulary.
    """
    return self.report_decoder(embeds, key_valid, caches=caches, cache_index=cache_index,
                               positions=positions)

  def decoder_logits(self, hidden):
    """Hidden states [B, L, Wd] -> logits [B, L, V] float32 (the tied output embedding)."""
    return self.report_decoder.logits(hidden).astype(jnp.float32)

  decoder_cache_slot_axis = CACHE_SLOT_AXIS

  def init_decoder_cache(self, batch, max_len):
    return self.report_decoder.init_cache(batch, max_len, dtype_from_name(self.config.dtype))

  # -- the training forward -----------------------------------------------------------------
  def __call__(self, batch, anatomy_ids, anatomy_mask):
    """Returns (total loss, metrics). Needs rngs={'mask': key}; with a 'dropout' key too
    (the train step's) the text encoder and report decoder drop at model.dropout.

    A term whose `loss_weights` entry is 0.0 is not computed (an MAE-only warm start,
    `ir` alone, costs one MAE pass); its metric reads 0.0. Init computes every term, so the
    parameter tree does not depend on the weights.
    """
    c = self.config
    w = c.loss_weights
    on = {k: self.is_initializing() or w[k] != 0.0 for k in LOSS_NAMES}
    images = batch["image"]
    mae_rng, graph_rng = jax.random.split(self.make_rng("mask"))
    terms = {k: jnp.zeros((), jnp.float32) for k in LOSS_NAMES}

    # L_ir: MAE pass and pixel reconstruction.
    mae = self.image_encoder(images, mask_ratio=c.mask_ratio, rng=mae_rng)
    if on["ir"]:
      pred = self.image_decoder(mae["tokens"], mae["ids_restore"])
      target = losses.patchify(images, c.patch)
      terms["ir"] = losses.masked_reconstruction_loss(pred, target, mae["mask"],
                                                      norm_pix=c.norm_pix)

    # L_cl: mean visible patch token vs. the pooled shuffled-report embedding.
    scale = self.logit_scale
    if on["cl"] or on["ac"]:
      text_vec = self.encode_text(batch["text_ids"], batch["text_mask"])
    if on["cl"]:
      image_vec = self.image_to_text(jnp.mean(mae["tokens"][:, 1:], axis=1))
      terms["cl"] = losses.global_contrastive_loss(image_vec, text_vec, scale,
                                                   1.0 - mae["mask"], self.visible_w,
                                                   self.visible_b)

    if on["ar"] or on["ac"] or on["lm"]:
      leaf_q = self.leaf_queries(anatomy_ids, anatomy_mask)
      graph_q = anatomy.restore_graph_queries(leaf_q)
      # One unmasked pass with graph queries (serves L_ar, L_ac, L_lm).
      nodes_u, leaves, cls, patches, _ = self.unmasked_query_pass(images, leaf_q, graph_q)

    if on["ar"]:
      # L_ar: children (masked pass with graph queries) vs. parent (unmasked pass) through
      # the image decoder.
      nodes_m = self.image_encoder(images, queries=graph_q, mask_ratio=c.mask_ratio,
                                   rng=graph_rng)["tokens"][:, :graph_q.shape[0]]
      seqs, valid, _ = losses.anatomy_reconstruction_inputs(nodes_m)
      _, _, parents = losses.anatomy_reconstruction_inputs(nodes_u)
      terms["ar"] = losses.anatomy_reconstruction_loss(
          self.image_decoder.predict_token0(seqs, valid),
          self.image_decoder.predict_token0(parents))

    if on["ac"]:
      # L_ac: leaf-query tokens against report similarity.
      terms["ac"] = losses.anatomical_consistency_loss(leaves, text_vec, scale,
                                                       lam=c.ac_lambda,
                                                       chunk_size=c.ac_chunk_size or None)

    if on["lm"]:
      # L_lm: anatomy-guided report generation.
      prefix, prefix_valid = self.decoder_prefix(leaves, cls, patches, batch["leaf_mask"])
      logits = self.report_logits(prefix, prefix_valid, batch["dec_ids"], batch["dec_mask"])
      terms["lm"] = losses.report_lm_loss(logits, batch["dec_ids"], batch["dec_loss_mask"])

    total = sum((w[k] * terms[k] for k in LOSS_NAMES if on[k]), jnp.zeros((), jnp.float32))
    metrics = {f"loss_{k}": v for k, v in terms.items()}
    metrics.update(loss=total, logit_scale=scale,
                   visible_scale_mean=jnp.mean(jax.nn.softplus(
                       (1.0 - mae["mask"]) @ self.visible_w + self.visible_b)))
    return total, metrics


def build_model(model_config) -> SSACL:
  return SSACL(ml_collections.FrozenConfigDict(model_config))


def dummy_batch(config, batch_size: int) -> dict:
  """Zeros shaped like one model batch (for init, eval_shape and compile)."""
  m, d = config.model, config.data
  s = m.image_size
  return {
      "image": np.zeros((batch_size, s, s, m.channels), np.float32),
      "text_ids": np.zeros((batch_size, d.text_len), np.int32),
      "text_mask": np.ones((batch_size, d.text_len), np.int32),
      "dec_ids": np.zeros((batch_size, d.decoder_len), np.int32),
      "dec_mask": np.ones((batch_size, d.decoder_len), np.int32),
      "dec_loss_mask": np.ones((batch_size, d.decoder_len), np.float32),
      "leaf_mask": np.ones((batch_size, anatomy.NUM_LEAVES), np.int32),
      "labels": np.zeros((batch_size, anatomy.NUM_PATHOLOGIES), np.int8),
  }


def dummy_anatomy_tokens(config):
  length = config.data.anatomy_len
  ids = np.zeros((anatomy.NUM_LEAVES, length), np.int32)
  mask = np.zeros((anatomy.NUM_LEAVES, length), np.int32)
  mask[:, :2] = 1
  return ids, mask
