"""Downstream models on the SS-ACL image encoder: a classification head or a light
segmentation decoder, with their losses.

The encoder is SSACL's `image_encoder` (same module, same parameter names), so a
pretraining checkpoint's `image_encoder` part restores into it (config.init.parts).
`__call__(batch)` returns (loss, metrics) like SSACL's training forward, so the one
trainer trains both; `predict(images)` gives class probabilities [B, C] or mask
probabilities [B, S, S].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssacl_jax import layers
from ssacl_jax.models.image import ImageEncoder, position_table
from ssacl_jax.models.ssacl import dtype_from_name

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"


# ----------------------------------------------------------------------------- losses
def multilabel_bce(logits, labels):
  """Mean over examples and classes of the binary cross-entropy of sigmoid(logits)."""
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  return jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def soft_dice_loss(logits, masks, eps: float = 1.0):
  """1 - mean over images of (2 sum(p m) + eps) / (sum(p) + sum(m) + eps), p = sigmoid.

  eps keeps images with an empty target and an empty prediction at a loss of 0.
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(logits.shape[0], -1)
  m = masks.astype(jnp.float32).reshape(masks.shape[0], -1)
  dice = (2 * jnp.sum(p * m, -1) + eps) / (jnp.sum(p, -1) + jnp.sum(m, -1) + eps)
  return 1.0 - jnp.mean(dice)


def segmentation_loss(logits, masks, dice_weight: float):
  """Pixel BCE + dice_weight * soft Dice loss: (total, bce, dice)."""
  bce = multilabel_bce(logits, masks)
  dice = soft_dice_loss(logits, masks)
  return bce + dice_weight * dice, bce, dice


# ----------------------------------------------------------------------------- modules
def _conv(features, kernel, name, **kw):
  return nn.Conv(features, (kernel, kernel), padding="SAME", name=name,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.kaiming_normal(), (None, None, None, None)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)), **kw)


class SegmentationDecoder(nn.Module):
  """Patch tokens [B, N, D] -> mask logits [B, S, S].

  A 1x1 projection, then log2(patch) stages of (2x bilinear upsampling, 3x3 conv, GELU),
  halving the width each stage (not below 16), then a 1x1 conv to one logit.
  """
  width: int = 64
  patch: int = 16
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, patch_tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, _ = patch_tokens.shape
    grid = int(round(n ** 0.5))
    x = patch_tokens.reshape(b, grid, grid, -1)
    width = self.width
    x = _conv(width, 1, "proj", **kw)(x)
    stages = int(round(np.log2(self.patch)))
    if 2 ** stages != self.patch:
      raise ValueError(f"the segmentation decoder needs a power-of-two patch, got {self.patch}")
    for i in range(stages):
      x = jax.image.resize(x, (b, x.shape[1] * 2, x.shape[2] * 2, x.shape[3]), "bilinear")
      width = max(16, width // 2)
      x = nn.gelu(_conv(width, 3, f"up{i}", **kw)(x))
    return _conv(1, 1, "logits", **kw)(x)[..., 0]


class Finetuner(nn.Module):
  """image_encoder (SS-ACL's) + `head` (classification) or `decoder` (segmentation).

  config: the whole config (model.* for the encoder, finetune.* for the task);
  frozen_encoder: gradients stop at the encoder (linear probing: optim.freeze names it).
  """
  config: ml_collections.FrozenConfigDict
  num_classes: int
  frozen_encoder: bool = False

  def setup(self):
    m, f = self.config.model, self.config.finetune
    kw = dict(dtype=dtype_from_name(m.dtype), param_dtype=dtype_from_name(m.param_dtype))
    e = m.encoder
    self.image_encoder = ImageEncoder(m.image_size, m.patch, m.channels, e.width, e.depth,
                                      e.num_heads, e.mlp_dim, remat=m.remat,
                                      scan_layers=m.scan_layers,
                                      position_table=position_table(m, "image_encoder"), **kw)
    if f.kind == CLASSIFICATION:
      self.head = layers.dense(self.num_classes, ("embed", None), **kw,
                               kernel_init=nn.initializers.zeros)
    elif f.kind == SEGMENTATION:
      self.decoder = SegmentationDecoder(f.decoder_width, m.patch, **kw)
    else:
      raise ValueError(f"finetune.kind {f.kind!r}: expected {CLASSIFICATION!r} or "
                       f"{SEGMENTATION!r}")

  def logits(self, images):
    """[B, C] class logits or [B, S, S] mask logits, float32."""
    tokens = self.image_encoder(images)["tokens"]
    if self.frozen_encoder:
      tokens = jax.lax.stop_gradient(tokens)
    if self.config.finetune.kind == CLASSIFICATION:
      features = jnp.concatenate([tokens[:, 0], jnp.mean(tokens[:, 1:], axis=1)], axis=-1)
      return self.head(features).astype(jnp.float32)
    return self.decoder(tokens[:, 1:]).astype(jnp.float32)

  def predict(self, images):
    return jax.nn.sigmoid(self.logits(images))

  def __call__(self, batch):
    logits = self.logits(batch["image"])
    if self.config.finetune.kind == CLASSIFICATION:
      loss = multilabel_bce(logits, batch["labels"])
      return loss, {"loss": loss, "loss_bce": loss}
    loss, bce, dice = segmentation_loss(logits, batch["mask"], self.config.finetune.dice_weight)
    return loss, {"loss": loss, "loss_bce": bce, "loss_dice": dice}


def loss_terms(kind: str) -> tuple[str, ...]:
  return ("bce",) if kind == CLASSIFICATION else ("bce", "dice")


def build_model(config, num_classes: int, frozen_encoder: bool = False) -> Finetuner:
  return Finetuner(ml_collections.FrozenConfigDict(config), num_classes, frozen_encoder)


def dummy_batch(config, num_classes: int, batch_size: int) -> dict:
  s = config.model.image_size
  return {"image": np.zeros((batch_size, s, s, config.model.channels), np.float32),
          "labels": np.zeros((batch_size, num_classes), np.int8),
          "mask": np.zeros((batch_size, s, s), np.float32)}
