"""Image side of SS-ACL: ViT encoder with MAE masking and prompt queries, MAE decoder."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssacl_jax import layers
from ssacl_jax.losses import patchify

Dtype = Any


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float):
  """MAE masking: keep int(N * (1 - r)) patches per sample, chosen by argsort of noise.

  Returns (keep_idx [B, n_keep], mask [B, N] with 1 = masked, ids_restore [B, N]).
  """
  n_keep = int(num_patches * (1 - mask_ratio))
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = jnp.concatenate([jnp.zeros((batch, n_keep)), jnp.ones((batch, num_patches - n_keep))], 1)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_shuffle[:, :n_keep], mask, ids_restore


def query_attention_bias(num_head_tokens: int, num_patches: int):
  """[1, 1, T, T] bias for [queries, CLS, patches] (SPEC 2).

  Head tokens (queries and CLS) see themselves and all patches, not each other;
  patches see only patches.
  """
  total = num_head_tokens + num_patches
  allowed = np.zeros((total, total), bool)
  allowed[:, num_head_tokens:] = True
  allowed[np.arange(num_head_tokens), np.arange(num_head_tokens)] = True
  return jnp.asarray(np.where(allowed, 0.0, layers.NEG_INF), jnp.float32)[None, None]


def position_table(model_config, part: str) -> str:
  """The fixed position formula of `part` ('image_encoder' or 'image_decoder'),
  config.model.position_tables; configs saved before that field used MAE's."""
  return model_config.get("position_tables", {}).get(part, "mae")


def param_vector(module, name, width, param_dtype, stddev=0.02):
  return module.param(
      name, nn.with_logical_partitioning(nn.initializers.normal(stddev), ("embed",)),
      (width,), param_dtype)


class ImageEncoder(nn.Module):
  """ViT with fixed 2-D sin-cos positions (CLS position zero; `position_table`, a
  layers.POSITION_FORMULAS name), pre-norm blocks."""
  image_size: int = 224
  patch: int = 16
  channels: int = 3
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  eps: float = 1e-6
  remat: bool = False
  scan_layers: bool = False
  position_table: str = "mae"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def grid(self) -> int:
    return self.image_size // self.patch

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @nn.compact
  def __call__(self, images, *, mask_ratio: float = 0.0, queries=None, rng=None,
               return_attention: bool = False):
    """images [B, H, W, C]; queries None, [M, D] or [B, M, D].

    Returns a dict: tokens [B, M + 1 + n_keep, D] (queries, CLS, kept patches; after the
    final norm), mask [B, N] (1 = masked), ids_restore [B, N], attention (last block,
    head tokens' rows, [B, heads, M + 1, M + 1 + n_keep]) or None.
    """
    b = images.shape[0]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = patchify(images.astype(self.dtype), self.patch)
    x = layers.dense(self.width, ("patch", "embed"), name="patch_embed", **kw)(x)
    pos = layers.sincos_2d(self.width, self.grid, self.position_table)
    x = x + jnp.asarray(pos, self.dtype)[None]
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    if mask_ratio > 0:
      keep, mask, ids_restore = random_masking(rng, b, self.num_patches, mask_ratio)
      x = jnp.take_along_axis(x, keep[..., None], axis=1)
    else:
      mask = jnp.zeros((b, self.num_patches))
      ids_restore = jnp.broadcast_to(jnp.arange(self.num_patches), (b, self.num_patches))
    cls = param_vector(self, "cls", self.width, self.param_dtype)
    head = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.width))
    bias = None
    if queries is not None:
      queries = jnp.broadcast_to(queries.astype(self.dtype), (b, *queries.shape[-2:]))
      head = jnp.concatenate([queries, head], axis=1)
      bias = query_attention_bias(head.shape[1], x.shape[1])
    x = jnp.concatenate([head, x], axis=1)
    x, _, weights = layers.BlockStack(
        self.depth, self.num_heads, self.mlp_dim, self.eps, remat=self.remat,
        scan=self.scan_layers, name="blocks",
        **kw)(x, bias, return_weights=return_attention)
    x = layers.layer_norm(self.eps, name="norm", **kw)(x)
    attention = None if weights is None else weights[:, :, :head.shape[1]]
    return dict(tokens=x, mask=mask, ids_restore=ids_restore, attention=attention)


class ImageDecoder(nn.Module):
  """MAE decoder; also the token-0 pixel predictor of the anatomy reconstruction (L_ar)."""
  num_patches: int = 196
  patch: int = 16
  channels: int = 3
  width: int = 768
  depth: int = 4
  num_heads: int = 6
  mlp_dim: int = 3072
  eps: float = 1e-6
  remat: bool = False
  scan_layers: bool = False
  position_table: str = "mae"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = layers.dense(self.width, ("embed", "mlp"), **kw)
    self.mask_token = param_vector(self, "mask_token", self.width, self.param_dtype)
    self.blocks = layers.BlockStack(self.depth, self.num_heads, self.mlp_dim, self.eps,
                                    remat=self.remat, scan=self.scan_layers, **kw)
    self.norm = layers.layer_norm(self.eps, **kw)
    self.head = layers.dense(self.patch * self.patch * self.channels, ("mlp", "patch"), **kw)

  def __call__(self, tokens, ids_restore):
    """tokens [B, 1 + n_keep, D_enc] (CLS first), ids_restore [B, N] -> pixels [B, N, p*p*C]."""
    x = self.embed(tokens)
    b, n_keep = x.shape[0], x.shape[1] - 1
    fill = jnp.broadcast_to(self.mask_token.astype(x.dtype),
                            (b, self.num_patches - n_keep, self.width))
    patches = jnp.concatenate([x[:, 1:], fill], axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)
    grid = int(round(self.num_patches ** 0.5))
    pos = jnp.asarray(layers.sincos_2d(self.width, grid, self.position_table), x.dtype)
    x = jnp.concatenate([x[:, :1], patches + pos[None]], axis=1)
    x, _, _ = self.blocks(x)
    return self.head(self.norm(x))[:, 1:]

  def predict_token0(self, seqs, key_valid=None):
    """seqs [..., S, D_enc] (no positions) -> pixels of token 0 [..., p*p*C].

    key_valid [..., S] or [S] hides padding keys, so padded and unpadded sequences give
    the same token 0.
    """
    lead = seqs.shape[:-2]
    x = self.embed(seqs.reshape(-1, *seqs.shape[-2:]))
    bias = None
    if key_valid is not None:
      key_valid = jnp.broadcast_to(key_valid, (*lead, seqs.shape[-2])).reshape(-1, seqs.shape[-2])
      bias = layers.key_mask_bias(key_valid)
    x, _, _ = self.blocks(x, bias)
    return self.head(self.norm(x[:, 0])).reshape(*lead, -1)
