"""The optimizer of SPEC 6 with optax: AdamW (0.9, 0.95) with the release's weight-decay
rule; warm-up then half-cycle cosine; the report decoder at a fraction of the learning
rate; optional global-norm clipping; top-level parameter groups named in `optim.freeze`
never change (linear probing freezes `image_encoder`).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import optax

from ssacl_jax import layers

# The release decays every trainable tensor except the 1-D ones and the biases
# (`add_weight_decay` in its main_pretrain.py): LayerNorm scales and biases are exempt; the
# scalar logit scale, the class and mask tokens, the visible-patch weight and every
# embedding table decay. Our tensors below keep fewer axes than the release's ([1, 1, D]
# tokens, a [1, N] linear weight, a 0-D scale), so the rule names them; `visible_b` is the
# release's [1] bias of that linear layer.
DECAYED_VECTORS = ("cls", "mask_token", "visible_w", "logit_scale")
EXEMPT_NAMES = ("bias", "visible_b")
REPORT_DECODER = "report_decoder"


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params):
  """True where weight decay applies (the release's rule, above).

  A scanned stack's parameters carry a leading [depth] axis that does not count: the rule
  reads the per-layer shape.
  """
  def decays(path, leaf):
    names = _names(path)
    if names[-1] in EXEMPT_NAMES:
      return False
    if names[-1] in DECAYED_VECTORS:
      return True
    return leaf.ndim - (layers.SCANNED in names) >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


def frozen_groups(config) -> tuple[str, ...]:
  """config.optim.freeze ('image_encoder' or a comma list) as a tuple of group names."""
  return tuple(p.strip() for p in config.optim.get("freeze", "").split(",") if p.strip())


def lr_multipliers(params, report_decoder_mult: float, frozen: tuple[str, ...] = ()):
  """Per-parameter factor on the update: 0 in frozen top-level groups (no step, no decay)."""
  def mult(path, _):
    names = _names(path)
    if names[0] in frozen:
      return 0.0
    return report_decoder_mult if REPORT_DECODER in names else 1.0
  return jax.tree_util.tree_map_with_path(mult, params)


def schedule_steps(config, num_train_examples: int) -> tuple[int, int, int]:
  """(optimizer steps, warm-up steps, steps per epoch) of a run.

  An epoch is the train split's full global batches (the release's loader drops the last
  partial one). train.num_steps and optim.warmup_steps win when set (> 0); otherwise
  train.num_epochs and optim.warmup_epochs count epochs (the paper: 51 and 2).
  """
  t, o = config.train, config.optim
  per_epoch = num_train_examples // t.global_batch_size
  steps = t.num_steps or int(round(t.num_epochs * per_epoch))
  warmup = o.warmup_steps or int(round(o.warmup_epochs * per_epoch))
  if steps <= 0:
    raise ValueError(f"the train split's {num_train_examples} examples give no full global "
                     f"batch of {t.global_batch_size} (train.global_batch_size): set "
                     "train.num_steps or use a smaller batch")
  return steps, warmup, per_epoch


def with_schedule(config, num_train_examples: int):
  """A copy of config with train.num_steps and optim.warmup_steps resolved (logged)."""
  steps, warmup, per_epoch = schedule_steps(config, num_train_examples)
  logging.info("schedule: %d optimizer steps, %d of warm-up (%d examples in the train split, "
               "global batch %d: %d steps an epoch, %.2f epochs)", steps, warmup,
               num_train_examples, config.train.global_batch_size, per_epoch,
               steps / max(per_epoch, 1))
  resolved = config.copy_and_resolve_references()
  resolved.train.num_steps, resolved.optim.warmup_steps = steps, warmup
  return resolved


def learning_rate_schedule(config):
  """Linear warm-up from optim.init_learning_rate, then half-cycle cosine to the end value,
  evaluated at every optimizer step: the release's per-iteration `adjust_learning_rate`
  with epoch = step / steps per epoch (tests/test_train.py). Needs resolved step counts."""
  o, t = config.optim, config.train
  warmup = min(o.warmup_steps, max(t.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=o.init_learning_rate, peak_value=o.learning_rate, warmup_steps=warmup,
      decay_steps=max(t.num_steps, warmup + 1), end_value=o.end_learning_rate)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiply each update by a fixed per-parameter factor."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config, params) -> optax.GradientTransformation:
  """params: the (unboxed, possibly abstract) parameter tree, for masks and multipliers."""
  o = config.optim
  frozen = frozen_groups(config)
  unknown = [g for g in frozen if g not in params]
  if unknown:
    raise ValueError(f"optim.freeze names {', '.join(unknown)}, not a parameter group of the "
                     f"model ({', '.join(params)})")
  parts = []
  if o.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_grad_norm))
  parts += [
      optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=1e-8),
      optax.add_decayed_weights(o.weight_decay, mask=decay_mask(params)),
      optax.scale_by_learning_rate(learning_rate_schedule(config)),
      scale_by_tree(lr_multipliers(params, o.report_decoder_lr_mult, frozen)),
  ]
  return optax.chain(*parts)
