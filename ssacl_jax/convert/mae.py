"""An MAE `.pth` ('model' holds the state dict; timm ViT names): the encoder ->
image_encoder, its decoder, when present -> image_decoder.

The release's image encoder and decoder have the same names (ssacl_release.py uses these
mappings too).
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import layers
from ssacl_jax.convert import readers
from ssacl_jax.convert.tensors import Leaf, Report, Tensors, linear, norm, split_fused, stack, vector

UNKNOWN_TABLE = "unknown"


def vit_block(t: Tensors, prefix: str) -> dict:
  """A timm ViT block (pre-norm; fused attn.qkv [3D, D]) -> our Block."""
  qkv = linear(t, f"{prefix}.attn.qkv")
  q, k, v = split_fused(qkv["kernel"], qkv["bias"], axis=1)
  return {"norm1": norm(t, f"{prefix}.norm1"), "norm2": norm(t, f"{prefix}.norm2"),
          "attn": {"query": q, "key": k, "value": v, "out": linear(t, f"{prefix}.attn.proj")},
          "mlp": {"fc1": linear(t, f"{prefix}.mlp.fc1"), "fc2": linear(t, f"{prefix}.mlp.fc2")}}


def patch_kernel(t: Tensors, name: str) -> Leaf:
  """Conv2d weight [D, C, p, p] -> our patch_embed kernel [p*p*C, D] ((row, col, channel))."""
  w = t.get(name)
  d = w.shape[0]
  return Leaf(np.transpose(w, (2, 3, 1, 0)).reshape(-1, d), (name,),
              "conv [D,C,p,p] -> [p,p,C,D] -> [p*p*C,D]")


def identify_fixed_positions(t: Tensors, name: str, part: str, report: Report) -> None:
  """Which formula made the fixed sin-cos table `name` -> report.position_tables[part].

  The table itself is skipped: the model recomputes it from the formula
  (config.model.position_tables), which `run` sets and config.init checks. A table that
  matches no formula is UNKNOWN_TABLE, and the conversion fails naming both differences.
  """
  if name not in t:
    return
  table = t.arrays[name]
  table = table.reshape(-1, table.shape[-1])
  grid = int(round((table.shape[0] - 1) ** 0.5))
  diffs = {}
  if grid * grid + 1 == table.shape[0] and table.shape[-1] % 4 == 0:
    for formula in layers.POSITION_FORMULAS:
      ours = np.concatenate([np.zeros((1, table.shape[-1]), np.float32),
                             layers.sincos_2d(table.shape[-1], grid, formula)])
      diffs[formula] = float(np.max(np.abs(ours - table)))
  found = min(diffs, key=diffs.get) if diffs and min(diffs.values()) <= 1e-4 else UNKNOWN_TABLE
  report.position_tables[part] = found
  against = ", ".join(f"{f} {d:.2g}" for f, d in diffs.items()) or "wrong shape"
  t.skip(name, f"fixed sin-cos table, formula {found} (max |diff|: {against}); recomputed "
               f"from config.model.position_tables.{part}")


def image_encoder(t: Tensors, report: Report) -> dict:
  identify_fixed_positions(t, "pos_embed", "image_encoder", report)
  return {"patch_embed": {"kernel": patch_kernel(t, "patch_embed.proj.weight"),
                          "bias": Leaf(t.get("patch_embed.proj.bias"), ("patch_embed.proj.bias",))},
          "cls": vector(t, "cls_token"),
          "blocks": stack(t, "blocks", vit_block),
          "norm": norm(t, "norm")}


def image_decoder(t: Tensors, report: Report, model_cfg) -> dict:
  """The MAE decoder. A super-resolution head ((2p)^2*C outputs) cannot be ours: skipped."""
  identify_fixed_positions(t, "decoder_pos_embed", "image_decoder", report)
  tree = {"embed": linear(t, "decoder_embed"), "mask_token": vector(t, "mask_token"),
          "blocks": stack(t, "decoder_blocks", vit_block), "norm": norm(t, "decoder_norm")}
  out_features = t.arrays["decoder_pred.weight"].shape[0] if "decoder_pred.weight" in t else None
  p, c = model_cfg.patch, model_cfg.channels
  if out_features is not None and out_features == (2 * p) ** 2 * c != p * p * c:
    reason = (f"super-resolution pixel head ({out_features} = (2*{p})^2*{c} outputs, the "
              f"release's SR=1 target); our image decoder predicts {p}*{p}*{c} = {p * p * c}")
    for suffix in ("weight", "bias"):
      t.skip(f"decoder_pred.{suffix}", reason)
    report.missing += [("image_decoder/head/kernel", (), "kept at fresh initialisation: " + reason),
                       ("image_decoder/head/bias", (), "kept at fresh initialisation: " + reason)]
  else:
    tree["head"] = linear(t, "decoder_pred")
  return tree


def read(src, config, report: Report) -> dict[str, np.ndarray]:
  del config, report  # a state dict says nothing about the model it fits
  return readers.read_torch_file(src)


def to_parts(t: Tensors, model_cfg, report: Report) -> dict:
  t.skip_matching(r"head\..*", "classification head of a fine-tuned ViT (not part of SS-ACL)")
  t.skip_matching(r"fc_norm\..*", "fine-tuned ViT's pooled-feature norm (not part of SS-ACL)")
  tree = {"image_encoder": image_encoder(t, report)}
  if "decoder_embed.weight" in t:
    tree["image_decoder"] = image_decoder(t, report, model_cfg)
  return tree
