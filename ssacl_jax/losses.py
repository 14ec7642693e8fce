"""The SS-ACL training losses (SPEC section 3), as pure jnp functions.

Every loss casts its inputs to float32 and computes in float32, whatever the activation
dtype, and returns a float32 scalar. Symbols: B batch (the global batch for the two
batch-contrastive losses), N patches, D width, K anatomy leaves, P anatomy parents,
G graph nodes, T tokens, V vocabulary.

  L_ir  masked_reconstruction_loss   (SPEC 3.2)   with `patchify` for the targets
  L_cl  global_contrastive_loss      (SPEC 3.3)   components: global_contrastive_terms
  L_ar  anatomy_reconstruction_inputs + anatomy_reconstruction_loss   (SPEC 3.4)
  L_ac  anatomical_consistency_loss  (SPEC 3.5)
  L_lm  report_lm_loss               (SPEC 3.6)

The batch-similarity matmuls default to `precision=HIGHEST`: they are tiny next to the
encoder, and the default TPU precision (bf16 passes) would put errors of ~1e-2 into
logits multiplied by a scale of ~33.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssacl_jax import anatomy

HIGHEST = jax.lax.Precision.HIGHEST


def _f32(x):
  """Any array-like -> float32 jnp array."""
  return jnp.asarray(x).astype(jnp.float32)


def _safe_ratio(num, den):
  """num / den, or 0 where den == 0 (an empty mask gives a zero loss, not NaN)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(||x||_2, eps) over the last axis, like torch.nn.functional.normalize.

  x: [..., D] -> [..., D] float32. The norm is sqrt(max(sum x^2, eps^2)), which equals
  max(||x||, eps) and keeps the gradient finite at x = 0. A NumPy array (embeddings
  being scored) is normalised in float64 on the host instead.
  """
  if isinstance(x, np.ndarray):
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
  x = _f32(x)
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


# ----------------------------------------------------------------------------- L_ir

def patchify(images, patch: int):
  """NHWC images [B, H, W, C] -> patches [B, N, patch*patch*C], N = (H/p)(W/p).

  Patch order is row-major over the (H/p, W/p) grid, the order of the ViT's patch tokens.
  Inside a patch the flat order is (row, col, channel): element [dy, dx, c] sits at
  (dy * p + dx) * C + c. This is how a patch-embedding `nn.Conv` (kernel [p, p, C, D],
  stride p, HWIO) flattens a patch: conv(images) equals
  patchify(images) @ kernel.reshape(p * p * C, D), and it is the order of the reference's
  target `img.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)` for NCHW images.
  Keeps the input dtype.
  """
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
  gh, gw = h // patch, w // patch
  x = images.reshape(b, gh, patch, gw, patch, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(b, gh * gw, patch * patch * c)


def masked_reconstruction_loss(pred, target, mask, norm_pix: bool = False):
  """MAE pixel loss (SPEC 3.2) -> scalar float32.

  pred, target: [B, N, P] (P = p*p*C pixels, `patchify` order); mask: [B, N], 1 = masked.
  Per patch: mean over P of (pred - target)^2; averaged over masked patches only,
  sum(l * mask) / sum(mask) (0 when nothing is masked). With norm_pix the target is
  normalised per patch: (t - mean) / sqrt(var + 1e-6), var the unbiased variance.
  """
  pred, target, mask = _f32(pred), _f32(target), _f32(mask)
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)            # [B, N]
  return _safe_ratio(jnp.sum(per_patch * mask), jnp.sum(mask))


# ----------------------------------------------------------------------------- L_cl

def _row_cross_entropy(logits):
  """Logits [B, B] with targets arange(B) -> per-row cross-entropy [B]."""
  return jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)


def global_contrastive_terms(image_emb, text_emb, scale, visible, pos_w, pos_b,
                             precision=HIGHEST) -> dict:
  """The four cross-entropies of L_cl and the per-sample scale (SPEC 3.3).

  image_emb, text_emb: [B, D] (not normalised); scale: scalar learned logit scale (raw,
  multiplied, initialised to 1/0.03); visible: [B, N] in {0, 1}, 1 = patch kept visible;
  pos_w: [N], pos_b: scalar. Returns a dict of float32:
    "it_scaled", "ti_scaled", "it_weighted", "ti_weighted": scalars;
    "sample_scale": [B], s_b = softplus(visible_b . pos_w + pos_b).
  As in the reference, row b of BOTH logit matrices is multiplied by s_b (for the
  text->image logits row b is text b), and the weighted terms use w = stop_gradient(s):
  sum_b w_b CE_b / sum_b w_b.
  """
  a, t = l2_normalize(image_emb), l2_normalize(text_emb)
  scale = _f32(scale)
  logits_it = scale * jnp.matmul(a, t.T, precision=precision)           # [B, B]
  logits_ti = logits_it.T
  s = jax.nn.softplus(jnp.matmul(_f32(visible), _f32(pos_w), precision=precision)
                      + _f32(pos_b))                                     # [B]
  w = jax.lax.stop_gradient(s)
  ce_it, ce_ti = _row_cross_entropy(logits_it), _row_cross_entropy(logits_ti)
  return {
      "it_scaled": jnp.mean(_row_cross_entropy(logits_it * s[:, None])),
      "ti_scaled": jnp.mean(_row_cross_entropy(logits_ti * s[:, None])),
      "it_weighted": jnp.sum(w * ce_it) / jnp.sum(w),
      "ti_weighted": jnp.sum(w * ce_ti) / jnp.sum(w),
      "sample_scale": s,
  }


def global_contrastive_loss(image_emb, text_emb, scale, visible, pos_w, pos_b,
                            precision=HIGHEST):
  """L_cl (SPEC 3.3) -> scalar float32: the mean of the four cross-entropies.

  Shapes as in `global_contrastive_terms`: image_emb, text_emb [B, D]; scale scalar;
  visible [B, N]; pos_w [N]; pos_b scalar. B is the whole (global) batch.
  """
  terms = global_contrastive_terms(image_emb, text_emb, scale, visible, pos_w, pos_b,
                                   precision=precision)
  return (terms["it_scaled"] + terms["ti_scaled"] + terms["it_weighted"]
          + terms["ti_weighted"]) / 4.0


# ----------------------------------------------------------------------------- L_ar

def anatomy_reconstruction_inputs(node_tokens, parent_node_tokens=None):
  """Decoder inputs of L_ar for all parents at once (SPEC 3.4).

  node_tokens: [B, G, D] graph-query tokens in anatomy.NODES order (the masked pass V).
  parent_node_tokens: [B, G, D] tokens to take the parents from (the unmasked pass U);
  defaults to node_tokens.
  Returns
    children_seqs  [B, P, 1 + MAX_CHILDREN, D]: for parent p (anatomy.PARENTS order)
                   [mean of its children, child_1, ..., child_k, zero padding];
                   the mean is over its valid children only;
    children_valid [P, 1 + MAX_CHILDREN] bool: real slots (slot 0, the mean, always);
    parent_tokens  [B, P, 1, D].
  The caller runs the image decoder (no positions) on children_seqs with children_valid
  as the key-padding mask and on parent_tokens, and takes token 0 of each. Outputs keep
  the input dtype; the mean is taken in float32.
  """
  if parent_node_tokens is None:
    parent_node_tokens = node_tokens
  parents, kids, valid = anatomy.parent_children_table()
  kids_tokens = jnp.take(_f32(node_tokens), jnp.asarray(kids), axis=1)  # [B, P, C, D]
  vmask = jnp.asarray(valid)[None, :, :, None]
  kids_tokens = jnp.where(vmask, kids_tokens, 0.0)
  count = jnp.asarray(valid.sum(-1), jnp.float32)[None, :, None]       # [1, P, 1]
  mean = jnp.sum(kids_tokens, axis=2) / count                          # [B, P, D]
  seqs = jnp.concatenate([mean[:, :, None], kids_tokens], axis=2)
  seq_valid = np.concatenate([np.ones((len(parents), 1), bool), valid], axis=1)
  parent_tokens = jnp.take(parent_node_tokens, jnp.asarray(parents), axis=1)[:, :, None]
  return seqs.astype(node_tokens.dtype), jnp.asarray(seq_valid), parent_tokens


def anatomy_reconstruction_loss(children_pred, parent_pred):
  """L_ar (SPEC 3.4) -> scalar float32.

  children_pred, parent_pred: [B, P, X] decoder pixel predictions (token 0) from the
  children sequences and from the parent token. MSE against stop_gradient(parent_pred),
  mean over everything, which is the average over the P parents of per-parent MSE.
  """
  target = jax.lax.stop_gradient(_f32(parent_pred))
  return jnp.mean(jnp.square(_f32(children_pred) - target))


# ----------------------------------------------------------------------------- L_ac

def _consistency_block(a_blk, p_blk, a_all, scale, lam, precision):
  """Per-sample L_ac sums for a block of rows b.

  a_blk: [c, K, D] normalised live rows; p_blk: [c, B] soft text affinity (constant);
  a_all: [B, K, D] normalised, stop-gradient; scale: scalar. Returns [c]:
  -sum_{b', i} sum_j Y[b, b', i, j] log_softmax_j(S[b, b', i, :]) without forming Y,
  using sum_j Y log_sm = (1 - lam) log_sm[i, i] + lam P[b, b'] sum_j log_sm[i, j].
  """
  k = a_blk.shape[1]
  sim = scale * jnp.einsum("ckd,ejd->cekj", a_blk, a_all, precision=precision)
  lse = jax.nn.logsumexp(sim, axis=-1)                                  # [c, B, K]
  diag = jnp.diagonal(sim, axis1=-2, axis2=-1)                          # [c, B, K]
  row_sum = jnp.sum(sim, axis=-1)                                       # [c, B, K]
  term = (1.0 - lam) * (diag - lse) + lam * p_blk[:, :, None] * (row_sum - k * lse)
  return -jnp.sum(term, axis=(1, 2))


def anatomical_consistency_loss(anat_emb, text_emb, scale, lam: float = 0.1, *,
                                chunk_size: int | None = None, precision=HIGHEST):
  """L_ac (SPEC 3.5) -> scalar float32.

  anat_emb: [B, K, D] leaf-query tokens; text_emb: [B, Dt] report vectors (neither
  normalised); scale: scalar learned logit scale. With A = l2norm(anat_emb),
  t = l2norm(text_emb):
    S[b, b', i, j] = scale * <A[b, i], sg(A[b', j])>
    P[b, b'] = sg(softmax_b'(scale * <t_b, t_b'>))   (no gradient reaches text_emb)
    Y = (1 - lam) [i == j] + lam P[b, b']
    loss = mean_{b, b', i} -sum_j log_softmax_j(S[b, b', i, :]) Y[b, b', i, j].
  Y is never formed. chunk_size=None computes S [B, B, K, K] at once; an int c computes
  rows b in blocks of c with jax.lax.map under jax.checkpoint, so forward and backward
  hold c * B * K * K similarities at a time (B is zero-padded to a multiple of c and the
  padding dropped). The value is the same either way.
  """
  a = l2_normalize(anat_emb)                                            # [B, K, D]
  t = l2_normalize(text_emb)
  scale = _f32(scale)
  b, k, _ = a.shape
  t_const = jax.lax.stop_gradient(t)
  affinity = jax.nn.softmax(
      jax.lax.stop_gradient(scale) * jnp.matmul(t_const, t_const.T, precision=precision),
      axis=-1)
  affinity = jax.lax.stop_gradient(affinity)                            # [B, B]
  a_all = jax.lax.stop_gradient(a)
  block = lambda a_blk, p_blk: _consistency_block(a_blk, p_blk, a_all, scale, lam,
                                                  precision)
  if chunk_size is None or chunk_size >= b:
    per_sample = block(a, affinity)                                     # [B]
  else:
    n_chunks = -(-b // chunk_size)
    pad = n_chunks * chunk_size - b
    a_pad = jnp.pad(a, ((0, pad), (0, 0), (0, 0)))
    p_pad = jnp.pad(affinity, ((0, pad), (0, 0)))
    step = jax.checkpoint(lambda xs: block(*xs))
    per_sample = jax.lax.map(step, (a_pad.reshape(n_chunks, chunk_size, k, -1),
                                    p_pad.reshape(n_chunks, chunk_size, b)))
    per_sample = per_sample.reshape(-1)[:b]
  return jnp.sum(per_sample) / float(b * b * k)  # a Python int overflows int32 for b > 9268


# ----------------------------------------------------------------------------- L_lm

def report_lm_loss(logits, targets, weights):
  """L_lm (SPEC 3.6) -> scalar float32: weighted mean token cross-entropy.

  logits: [B, T, V]; targets: [B, T] int (already shifted by the caller: targets[:, t]
  is the token predicted at position t); weights: [B, T], 1 on report tokens, 0 elsewhere.
  Returns sum(w * CE) / sum(w), 0 when every weight is 0. Positions of weight 0 are
  dropped with `where`, so their logits never affect the value.
  """
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.asarray(targets)[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]                          # [B, T]
  w = _f32(weights)
  nll = jnp.where(w != 0, nll, 0.0)
  return _safe_ratio(jnp.sum(w * nll), jnp.sum(w))
