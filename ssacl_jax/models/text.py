"""BERT-style text encoder with pooler (SPEC 2): post-norm, GELU, eps 1e-12; in training,
dropout on the embeddings, every block's branches and attention probabilities (HF BERT's
hidden_dropout_prob and attention_probs_dropout_prob)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssacl_jax import layers

Dtype = Any


def embedding(num, width, names, *, dtype, param_dtype, name, stddev=0.02):
  return nn.Embed(num, width, dtype=dtype, param_dtype=param_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), names))


class TextEncoder(nn.Module):
  vocab_size: int = 30000
  max_len: int = 100
  width: int = 384
  depth: int = 6
  num_heads: int = 6
  mlp_dim: int = 1536
  type_vocab_size: int = 2
  eps: float = 1e-12
  remat: bool = False
  scan_layers: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    """ids, mask [B, L] -> (hidden [B, L, W], pooled [B, W] = tanh(W h[CLS] + b))."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if ids.shape[-1] > self.max_len:
      raise ValueError(f"text length {ids.shape[-1]} exceeds the text encoder's max_len "
                       f"{self.max_len}; set config.data.text_len <= config.model.text.max_len")
    x = embedding(self.vocab_size, self.width, ("vocab", "embed"), name="word_embed", **kw)(ids)
    pos = embedding(self.max_len, self.width, ("positions", "embed"), name="pos_embed", **kw)
    typ = embedding(self.type_vocab_size, self.width, (None, "embed"), name="type_embed", **kw)
    # Every token has type 0: add that one row instead of gathering it per token, whose
    # gradient is a scatter-add of B*L rows into one (26% of the paper step on an H200).
    x = x + pos(jnp.arange(ids.shape[-1]))[None] + typ(jnp.zeros((1, 1), jnp.int32))
    x = layers.layer_norm(self.eps, name="embed_norm", **kw)(x)
    x = layers.dropout(self, x, self.dropout)
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    x, _, _ = layers.BlockStack(self.depth, self.num_heads, self.mlp_dim, self.eps,
                                pre_norm=False, remat=self.remat, scan=self.scan_layers,
                                dropout=self.dropout, name="blocks", **kw)(
                                    x, layers.key_mask_bias(mask))
    pooled = jnp.tanh(layers.dense(self.width, ("embed", "mlp"), name="pooler", **kw)(x[:, 0]))
    return x, pooled
