"""Transformer building blocks with logical axis names on every parameter and activation.

Parameter axes: 'embed', 'mlp', 'heads' (flattened heads * head_dim), 'vocab', 'norm',
'patch' (flattened patch pixels), 'positions', 'scalar', and 'layers' (the stacked axis of
a scanned BlockStack).
Activation axes: 'batch', 'length', 'act_embed', 'act_heads', 'act_kv', 'act_mlp',
'act_vocab'. A config's `sharding_rules` maps both onto mesh axes.

Kernels are 2-D (`nn.Dense`) and reshaped to heads afterwards: 3-D logical names on
DenseGeneral kernels break under a mesh (flax issue 3676).

Dropout (a module's `dropout` rate: attention probabilities and each residual branch) is on
exactly when the caller passes a 'dropout' RNG, which only the train step does
(`dropout_active`): evaluation, generation and grounding are deterministic.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
NEG_INF = -1e9  # large finite: rows that mask everything stay finite (uniform), never NaN


def constrain(x, names):
  return nn.with_logical_constraint(x, names)


DROPOUT = "dropout"  # the RNG stream of dropout


def dropout_active(module, rate: float) -> bool:
  return rate > 0.0 and module.has_rng(DROPOUT)


def drop(key, x, rate: float):
  """Inverted dropout: each element zeroed with probability `rate`, the rest scaled up."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def dropout(module, x, rate: float):
  """drop(x) with the module's next 'dropout' key in training, else x."""
  return drop(module.make_rng(DROPOUT), x, rate) if dropout_active(module, rate) else x


def dense(features, names, *, dtype, param_dtype, use_bias=True, name=None,
          kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros):
  """2-D Dense with logical kernel names (in, out) and bias names (out,)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(bias_init, (names[1],)))


def layer_norm(eps, *, dtype, param_dtype, name=None):
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


POSITION_FORMULAS = ("mae", "release")


def sincos_2d(dim: int, grid: int, formula: str = "mae") -> np.ndarray:
  """Fixed 2-D sine-cosine positions [grid*grid, dim] (MAE layout: half x, half y).

  Each half encodes one coordinate p as [sin(p w_k), cos(p w_k)], k < dim/4, with
  w_k = 10000^(-k / (dim/4)) (formula 'mae': MAE's get_2d_sincos_pos_embed) or
  w_k = 10000^(-k / (dim/4)^2) ('release': the SS-ACL release's copy divides the exponent
  by embed_dim/2 once more, so its tables differ from MAE's by up to 2).
  """
  if formula not in POSITION_FORMULAS:
    raise ValueError(f"position table formula {formula!r}: use one of {POSITION_FORMULAS}")
  quarter = dim // 4
  exponent = np.arange(quarter, dtype=np.float64) / quarter
  if formula == "release":
    exponent /= quarter
  omega = 1.0 / 10000 ** exponent
  ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                       indexing="ij")

  def encode(pos):
    angles = pos.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([encode(xs), encode(ys)], axis=1).astype(np.float32)


def key_mask_bias(key_valid):
  """[B, S] bool/int (1 = attend) -> additive bias [B, 1, 1, S]."""
  return jnp.where(key_valid[:, None, None, :].astype(bool), 0.0, NEG_INF).astype(jnp.float32)


def causal_bias(length: int):
  """[1, 1, L, L] additive causal bias."""
  allowed = np.tril(np.ones((length, length), bool))
  return jnp.asarray(np.where(allowed, 0.0, NEG_INF), jnp.float32)[None, None]


def attention_core(q, k, v, bias, dropout_key=None, *, dtype, heads_major_kv: bool = False,
                   dropout_rate: float = 0.0):
  """softmax(q k^T / sqrt(Dh) + bias) v -> (out [B, Lq, H, Dh], weights [B, H, Lq, Lk]).

  q [B, Lq, H, Dh]; k/v [B, Lk, H, Dh], or [B, H, Lk, Dh] with heads_major_kv (the KV
  cache's layout); scores and softmax in float32. Given dropout_key, the probabilities
  that weight v are dropped at dropout_rate (the returned weights are not).
  """
  head_dim = q.shape[-1]
  kv = "bhkd" if heads_major_kv else "bkhd"
  logits = jnp.einsum(f"bqhd,{kv}->bhqk", q, k.astype(q.dtype)) / np.sqrt(head_dim).astype(q.dtype)
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1)
  probs = weights if dropout_key is None else drop(dropout_key, weights, dropout_rate)
  out = jnp.einsum(f"bhqk,{kv}->bqhd", probs.astype(dtype), v.astype(dtype))
  return out, weights


class MultiHeadAttention(nn.Module):
  """Attention with separate q/k/v projections, an additive bias and an optional KV cache.

  `cache` is (keys, values) [B, H, S_max, Dh] plus `cache_index` (scalar int32): the new
  keys/values are written at cache_index and attention runs over the whole cache (the
  bias must hide unwritten slots). Returns (out, new_cache, weights or None). The cache is
  heads-major so that each decoding step's two attention matmuls read it in place: with
  [B, S_max, H, Dh] XLA:CPU transposed every layer's whole cache at every step (a third of
  greedy decoding's time at the paper's sizes, bench/RESULTS.md).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  dropout: float = 0.0  # on the attention probabilities, in training

  @nn.compact
  def __call__(self, x, bias=None, *, cache=None, cache_index=None, return_weights=False):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias)

    def heads(name):
      y = dense(width, ("embed", "heads"), name=name, **kw)(x)
      y = y.reshape(*x.shape[:-1], self.num_heads, head_dim)
      return constrain(y, ("batch", "length", "act_heads", "act_kv"))

    q, k, v = heads("query"), heads("key"), heads("value")
    new_cache = None
    if cache is not None:
      cache_k, cache_v = cache
      # [B, L, H, Dh] -> [B, H, L, Dh], written at slots cache_index.. of the cache.
      write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          c, jnp.swapaxes(new, 1, 2).astype(c.dtype), cache_index, axis=2)
      k, v = write(cache_k, k), write(cache_v, v)
      new_cache = (k, v)
    attend = functools.partial(attention_core, dtype=self.dtype,
                               heads_major_kv=cache is not None, dropout_rate=self.dropout)
    key = self.make_rng(DROPOUT) if dropout_active(self, self.dropout) else None
    if return_weights:
      out, weights = attend(q, k, v, bias, key)
    elif cache is not None:
      out, weights = attend(q, k, v, bias, key)[0], None
    else:
      # Under differentiation keep only q, k, v (and the shared bias) for the backward and
      # recompute the [B, H, Lq, Lk] scores there: the same ops (and dropout key), so the
      # same values, while the step no longer holds two score-sized arrays per block.
      out, weights = jax.checkpoint(lambda *a: attend(*a)[0])(q, k, v, bias, key), None
    out = constrain(out, ("batch", "length", "act_heads", "act_kv"))
    out = out.reshape(*x.shape[:-1], width)
    out = dense(width, ("heads", "embed"), name="out", **kw)(out)
    return out, new_cache, (weights if return_weights else None)


class Mlp(nn.Module):
  hidden: int
  activation: str = "gelu"  # 'gelu' exact erf (ViT/BERT) or 'gelu_tanh' (GPT-2)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    h = constrain(h, ("batch", "length", "act_mlp"))
    # Checkpointed: the backward recomputes GELU's derivative terms from h instead of
    # keeping them (two hidden-sized arrays per block) from the forward; same values.
    h = jax.checkpoint(functools.partial(nn.gelu, approximate=(self.activation == "gelu_tanh")))(h)
    return dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h)


class Block(nn.Module):
  """Transformer block; pre-norm (ViT, GPT-2) or post-norm (BERT).

  dropout: on the attention probabilities and on both branches before their residual add
  (HF BERT's and GPT-2's hidden / attention / residual dropout), in training.
  """
  num_heads: int
  mlp_dim: int
  eps: float = 1e-6
  pre_norm: bool = True
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, bias=None, *, cache=None, cache_index=None, return_weights=False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = MultiHeadAttention(self.num_heads, name="attn", dropout=self.dropout, **kw)
    mlp = Mlp(self.mlp_dim, self.activation, name="mlp", **kw)
    branch = lambda y: dropout(self, y, self.dropout)  # noqa: E731
    norm1 = layer_norm(self.eps, name="norm1", **kw)
    norm2 = layer_norm(self.eps, name="norm2", **kw)
    attn_kw = dict(cache=cache, cache_index=cache_index, return_weights=return_weights)
    if self.pre_norm:
      y, new_cache, weights = attn(norm1(x), bias, **attn_kw)
      x = x + branch(y)
      x = x + branch(mlp(norm2(x)))
    else:
      y, new_cache, weights = attn(x, bias, **attn_kw)
      x = norm1(x + branch(y))
      x = norm2(x + branch(mlp(x)))
    x = constrain(x, ("batch", "length", "act_embed"))
    return x, new_cache, weights


SCANNED = "layers"       # BlockStack(scan=True): params at <stack>/layers/block/..., [depth, ...]
SCANNED_BLOCK = "block"


class _ScannedBlock(nn.Module):
  """One Block as a `nn.scan` body: carry x, broadcast bias, per-layer weights out."""
  num_heads: int
  mlp_dim: int
  eps: float
  pre_norm: bool
  activation: str
  return_weights: bool
  dtype: Dtype
  param_dtype: Dtype
  dropout: float

  @nn.compact
  def __call__(self, x, bias):
    x, _, weights = Block(self.num_heads, self.mlp_dim, self.eps, self.pre_norm, self.activation,
                          dtype=self.dtype, param_dtype=self.param_dtype, dropout=self.dropout,
                          name=SCANNED_BLOCK)(x, bias, return_weights=self.return_weights)
    return x, weights


class BlockStack(nn.Module):
  """`depth` blocks applied in order; the last block's attention weights on request.

  scan=False: parameters block0 .. block{depth-1}, one Python-level call each.
  scan=True: one `nn.scan` over stacked parameters ([depth, ...] under `layers/block`, the
  leading axis named 'layers'). With remat this is the form whose activations XLA:CPU
  really drops: unrolled `nn.remat` blocks keep most of them (bench/RESULTS.md). A scanned
  stack has no KV-cache path: decoding runs the unrolled layout (`unstack_layers`).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  eps: float = 1e-6
  pre_norm: bool = True
  activation: str = "gelu"
  remat: bool = False
  scan: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, bias=None, *, caches=None, cache_index=None, return_weights=False):
    if self.scan:
      if caches is not None:
        raise ValueError("a scanned BlockStack has no KV-cache path; decode with the unrolled "
                         "parameter layout (layers.unstack_layers)")
      return self._scanned(x, bias, return_weights)
    # Rematerialisation applies to plain training calls only (no cache, no weights out).
    use_remat = self.remat and caches is None and not return_weights
    block_cls = nn.remat(Block) if use_remat else Block
    new_caches, weights = [], None
    for i in range(self.depth):
      block = block_cls(self.num_heads, self.mlp_dim, self.eps, self.pre_norm, self.activation,
                        dtype=self.dtype, param_dtype=self.param_dtype, dropout=self.dropout,
                        name=f"block{i}")
      if use_remat:
        x, cache, w = block(x, bias)
      else:
        last = i == self.depth - 1
        x, cache, w = block(x, bias, cache=None if caches is None else caches[i],
                            cache_index=cache_index, return_weights=return_weights and last)
      new_caches.append(cache)
      weights = w if w is not None else weights
    return x, (new_caches if caches is not None else None), weights

  def _scanned(self, x, bias, return_weights):
    body = _ScannedBlock
    if self.remat and not return_weights:
      body = nn.remat(body, prevent_cse=False)  # scan already keeps XLA from merging layers
    scanned = nn.scan(body, variable_axes={"params": 0},
                      split_rngs={"params": True, DROPOUT: True},
                      in_axes=(nn.broadcast,), length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, weights = scanned(self.num_heads, self.mlp_dim, self.eps, self.pre_norm, self.activation,
                         return_weights, self.dtype, self.param_dtype, self.dropout,
                         name=SCANNED)(x, bias)
    return x, None, (weights[-1] if return_weights else None)


# ----------------------------------------------------------------------------- layouts
_UNROLLED = re.compile(r"block(\d+)$")


def _is_scanned(node) -> bool:
  return (isinstance(node, Mapping) and set(node) == {SCANNED}
          and isinstance(node[SCANNED], Mapping) and set(node[SCANNED]) == {SCANNED_BLOCK})


def _unrolled_depth(node) -> int:
  """depth if `node` is exactly block0 .. block{depth-1}, else 0."""
  if not isinstance(node, Mapping) or not node:
    return 0
  found = [_UNROLLED.match(k) for k in node]
  if not all(found):
    return 0
  ids = sorted(int(m.group(1)) for m in found)
  return len(ids) if ids == list(range(len(ids))) else 0


def unstack_layers(tree, index=None):
  """Scanned stacks (<stack>/layers/block, [depth, ...]) -> block0 .. block{depth-1}.

  `index(leaf, i)` takes layer i of a stacked leaf (default leaf[i]). Other nodes are
  returned as they are: a tree without scanned stacks comes back equal.
  """
  index = index or (lambda a, i: a[i])
  if _is_scanned(tree):
    stacked = tree[SCANNED][SCANNED_BLOCK]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    return {f"block{i}": jax.tree.map(lambda a: index(a, i), stacked) for i in range(depth)}
  if isinstance(tree, Mapping):
    return {k: unstack_layers(v, index) for k, v in tree.items()}
  return tree


def stack_layers(tree, stack=None, is_leaf=None):
  """block0 .. block{depth-1} -> <stack>/layers/block with a leading [depth] axis (the layout
  of `BlockStack(scan=True)`); `stack(list of leaves)` defaults to np.stack."""
  stack = stack or (lambda leaves: np.stack([np.asarray(a) for a in leaves]))
  depth = _unrolled_depth(tree)
  if depth:
    blocks = [tree[f"block{i}"] for i in range(depth)]
    return {SCANNED: {SCANNED_BLOCK: jax.tree.map(lambda *leaves: stack(list(leaves)), *blocks,
                                                  is_leaf=is_leaf)}}
  if isinstance(tree, Mapping):
    return {k: stack_layers(v, stack, is_leaf) for k, v in tree.items()}
  return tree


def relayout_shapes(tree, scanned: bool):
  """A tree of shape/dtype leaves in the scanned (True) or unrolled layout."""
  if scanned:
    return stack_layers(tree, stack=lambda leaves: jax.ShapeDtypeStruct(
        (len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype))
  return unstack_layers(tree, index=lambda a, i: jax.ShapeDtypeStruct(tuple(a.shape[1:]), a.dtype))


def has_scanned_layers(tree) -> bool:
  if _is_scanned(tree):
    return True
  return isinstance(tree, Mapping) and any(has_scanned_layers(v) for v in tree.values())


# Parameters every module casts to its compute dtype before use (nn.Dense, nn.Embed).
MATMUL_WEIGHTS = ("kernel", "embedding")


def cast_matmul_weights(params, dtype):
  """Kernels and embedding tables cast to the compute dtype, the rest as it is.

  The modules cast these weights themselves, so the values are the same; casting them
  first lets XLA all-gather fsdp-sharded weights in the compute dtype (bf16: half the
  bytes of float32 parameters). Norms, biases and scales keep their dtype.
  """
  dtype = jnp.dtype(dtype)

  def cast(path, leaf):
    name = getattr(path[-1], "key", None)
    if name in MATMUL_WEIGHTS and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(cast, params)
