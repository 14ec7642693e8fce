"""GPT-2 style report decoder (SPEC 2): causal, pre-norm, tied output embedding, KV cache;
in training, dropout on the input embeddings (prefix included, as HF GPT-2 drops
inputs_embeds + positions), every block's residual branches and attention probabilities.

Positions are 0..S-1 over the whole sequence, prefix included. In generation a row's
tokens keep the positions they have in training even when the cache holds padding
between its prompt and its report (the caller passes them).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssacl_jax import layers
from ssacl_jax.models.text import embedding

Dtype = Any

CACHE_SLOT_AXIS = 2  # init_cache: (keys, values) [B, H, slots, Dh]
CACHE_AXES = ("batch", "act_heads", None, "act_kv")  # their logical axes


class ReportDecoder(nn.Module):
  vocab_size: int = 50257
  max_positions: int = 1024
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  eps: float = 1e-5
  remat: bool = False
  scan_layers: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.wte = embedding(self.vocab_size, self.width, ("vocab", "embed"), name="wte", **kw)
    self.wpe = embedding(self.max_positions, self.width, ("positions", "embed"), name="wpe",
                         stddev=0.01, **kw)
    self.blocks = layers.BlockStack(self.depth, self.num_heads, self.mlp_dim, self.eps,
                                    activation="gelu_tanh", remat=self.remat,
                                    scan=self.scan_layers, dropout=self.dropout, **kw)
    self.norm = layers.layer_norm(self.eps, **kw)

  def embed_tokens(self, ids):
    return self.wte(ids)

  def __call__(self, embeds, key_valid, *, caches=None, cache_index=None, positions=None):
    """embeds [B, L, W]; key_valid [B, S] (S = L without cache, S_max with cache).

    Without cache: causal attention over the L inputs at positions 0..L-1.
    With cache: the inputs are written at cache slots cache_index..cache_index+L-1 and
    attend causally (by slot) to the whole cache; key_valid covers the cache. positions
    [B, L] (default: the slots) are the position embeddings' indices. Returns (hidden
    after the final norm [B, L, W], new caches or None).
    """
    length = embeds.shape[1]
    if key_valid.shape[1] > self.max_positions:
      raise ValueError(f"sequence of {key_valid.shape[1]} tokens exceeds the decoder's "
                       f"{self.max_positions} positions")
    if caches is None:
      slots = jnp.arange(length)
      causal = layers.causal_bias(length)
    else:
      slots = cache_index + jnp.arange(length)
      key_slots = jnp.arange(key_valid.shape[1])
      causal = jnp.where(key_slots[None, :] <= slots[:, None], 0.0, layers.NEG_INF)[None, None]
    if positions is None:
      positions = slots[None]
    x = layers.dropout(self, embeds + self.wpe(positions), self.dropout)
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    bias = causal + layers.key_mask_bias(key_valid)
    x, new_caches, _ = self.blocks(x, bias, caches=caches, cache_index=cache_index)
    return self.norm(x), new_caches

  def logits(self, hidden):
    out = self.wte.attend(hidden.astype(self.dtype))
    return layers.constrain(out, ("batch", "length", "act_vocab"))

  def init_cache(self, batch: int, max_len: int, dtype=jnp.float32):
    """Zero caches: a list (one per block) of (keys, values) [B, H, max_len, Dh]."""
    shape = (batch, self.num_heads, max_len, self.width // self.num_heads)
    # Rows follow the batch sharding; left unconstrained, XLA replicated the whole cache
    # on every chip (bench/RESULTS.md, AOT).
    zeros = lambda: layers.constrain(jnp.zeros(shape, dtype), CACHE_AXES)  # noqa: E731
    return [(zeros(), zeros()) for _ in range(self.depth)]
