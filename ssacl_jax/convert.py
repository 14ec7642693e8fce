"""Import pretrained PyTorch / Hugging Face weights into our parameter tree.

  python -m ssacl_jax.convert --kind gpt2 --src hf/gpt2 --config configs/ssacl_vitb16.py --out ckpt/gpt2
  python -m ssacl_jax.convert --kind mae --src mae_pretrain_vit_base.pth --config ... --out ckpt/mae
  python -m ssacl_jax.convert --kind ssacl_release --src ssacl-best.pth --config ... --out ckpt/release

Kinds:
  gpt2           a local Hugging Face GPT-2 folder (config.json and model.safetensors,
                 flax_model.msgpack or pytorch_model.bin; any size) -> report_decoder.
  mae            an MAE `.pth` ('model' holds the state dict): the ViT encoder ->
                 image_encoder, and its decoder, when present -> image_decoder.
  ssacl_release  the authors' released `.pth` -> every component (see RELEASE_NAMES).

Output: OUT/checkpoints/0/ is a full train state at step 0 written by
ssacl_jax.checkpointing.Checkpointer (parameters the source does not provide keep the
config's fresh initialisation; the meta records which top-level parts were converted),
plus OUT/config.json (with config.model.position_tables set to the formulas of the
source's fixed position tables) and OUT/conversion_report.txt. So `--workdir OUT --mode eval` and
`inference.restore(config, OUT)` read it as they read a training workdir, and training
starts from it with `--config.init.checkpoint=OUT` (ssacl_jax/pretrained.py takes the
converted parts only, unless --config.init.parts says otherwise).

The mapping report lists every source tensor as mapped (to which parameter, how),
skipped (with the reason) or unmapped (an error unless --allow_unmapped), and every
model parameter of the converted parts that the source does not provide (an error
unless --allow_missing, except the documented cases kept at their fresh value).

torch and safetensors (the `convert` extra) are imported only by the readers that need
them; the mapping itself is numpy.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib
import re

import numpy as np

PARTS = ("image_encoder", "image_decoder", "text_encoder", "report_decoder", "image_to_text",
         "text_to_query", "to_decoder", "visible_w", "visible_b", "logit_scale")
KINDS = ("gpt2", "mae", "ssacl_release")

# Our top-level projections/scalars -> the release's module names (model_ssacl.py of the
# authors' repository): `img_mlp = nn.Linear(embed_dim, 384)` projects image tokens for the
# global contrast, `bert_proj = nn.Linear(384, embed_dim)` turns pooled leaf text into
# queries, `opt_proj` feeds GPT-2, `pos_weight_img = nn.Linear(num_patches, 1)` gives the
# visible-patch scale, `Tpar` is the learned logit scale (`logit_scale` there is unused).
# Each entry lists accepted names, first match wins: extend a tuple to accept a variant.
RELEASE_NAMES = {
    "image_to_text": ("img_mlp",),
    "text_to_query": ("bert_proj",),
    "to_decoder": ("opt_proj",),
    "visible": ("pos_weight_img",),
    "logit_scale": ("Tpar",),
}
RELEASE_BERT = "bert_encoder.model.bert."
RELEASE_GPT2 = "opt_model.transformer."

# Model-config section of each component (for hints when sizes differ).
CONFIG_SECTION = {"image_encoder": "encoder", "image_decoder": "image_decoder",
                  "text_encoder": "text", "report_decoder": "report"}


class ConversionError(ValueError):
  pass


# ----------------------------------------------------------------------------- bookkeeping
@dataclasses.dataclass
class Leaf:
  """One converted parameter: its value and where it came from."""
  value: np.ndarray
  src: tuple[str, ...]
  how: str = "copy"


class Tensors:
  """Named source tensors that remember which were used and which were skipped (why)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = dict(arrays)
    self.used: set[str] = set()
    self.skipped: dict[str, str] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def get(self, name: str) -> np.ndarray:
    if name not in self.arrays:
      close = difflib.get_close_matches(name, list(self.arrays), n=3, cutoff=0.6)
      hint = f"; similar names in the source: {', '.join(close)}" if close else ""
      raise ConversionError(f"source tensor {name!r} is missing{hint}")
    self.used.add(name)
    return self.arrays[name]

  def first(self, names: tuple[str, ...], suffix: str) -> str:
    """The first of `names` whose `name + suffix` exists (alias tables)."""
    for name in names:
      if name + suffix in self.arrays:
        return name
    raise ConversionError(f"none of {', '.join(n + suffix for n in names)} is in the source")

  def skip(self, name: str, reason: str) -> None:
    if name in self.arrays and name not in self.used:
      self.skipped[name] = reason

  def skip_matching(self, pattern: str, reason: str) -> None:
    for name in self.arrays:
      if re.fullmatch(pattern, name):
        self.skip(name, reason)

  def indices(self, prefix: str) -> list[int]:
    """Sorted N of the names 'prefix.N.*' (the blocks of a stack)."""
    found = {int(m.group(1)) for n in self.arrays
             if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", n))}
    return sorted(found)

  def release(self, names, reason: str) -> None:
    """Turn used names back into skipped ones (a part that was not requested)."""
    for name in names:
      self.used.discard(name)
      self.skipped[name] = reason

  def unaccounted(self) -> list[str]:
    return sorted(set(self.arrays) - self.used - set(self.skipped))


def flatten(tree, prefix: str = "") -> dict[str, object]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: dict[str, object]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *heads, last = path.split("/")
    for h in heads:
      node = node.setdefault(h, {})
    node[last] = v
  return out


def values(tree) -> dict:
  """Tree of Leaf -> tree of numpy arrays."""
  return {k: values(v) if isinstance(v, dict) else v.value for k, v in tree.items()}


@dataclasses.dataclass
class Report:
  """What happened to every tensor; `text()` is the printed mapping report."""
  kind: str
  src: str
  parts: tuple[str, ...] = ()
  mapped: list[tuple[str, tuple, str, tuple, str]] = dataclasses.field(default_factory=list)
  skipped: list[tuple[str, tuple, str]] = dataclasses.field(default_factory=list)
  unmapped: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)
  missing: list[tuple[str, tuple, str]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  # Part -> the formula of its fixed position table in the source (layers.POSITION_FORMULAS,
  # or UNKNOWN_TABLE); parts whose source has no table are absent.
  position_tables: dict[str, str] = dataclasses.field(default_factory=dict)

  def text(self) -> str:
    lines = [f"conversion report: kind={self.kind} src={self.src}",
             f"converted parts: {', '.join(self.parts) or '(none)'}"]
    if self.position_tables:
      lines.append("position tables: " + ", ".join(
          f"{part}={formula}" for part, formula in self.position_tables.items())
          + " (config.model.position_tables)")
    lines += [f"note: {n}" for n in self.notes]
    lines.append(f"mapped ({len(self.mapped)} parameters):")
    lines += [f"  {s} {list(ss)} -> {d} {list(ds)}  [{how}]" for s, ss, d, ds, how in self.mapped]
    lines.append(f"skipped ({len(self.skipped)} source tensors):")
    lines += [f"  {s} {list(ss)}: {why}" for s, ss, why in self.skipped]
    lines.append(f"missing ({len(self.missing)} model parameters the source does not provide):")
    lines += [f"  {d} {list(ds)}: {why}" for d, ds, why in self.missing]
    lines.append(f"unmapped ({len(self.unmapped)} source tensors nothing reads):")
    lines += [f"  {s} {list(ss)}" for s, ss in self.unmapped]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- layer helpers
def linear(t: Tensors, name: str) -> dict:
  """torch nn.Linear (weight [out, in]) -> Dense {kernel [in, out], bias}."""
  w = t.get(f"{name}.weight")
  tree = {"kernel": Leaf(w.T, (f"{name}.weight",), "transpose [out,in]->[in,out]")}
  if f"{name}.bias" in t:
    tree["bias"] = Leaf(t.get(f"{name}.bias"), (f"{name}.bias",))
  return tree


def conv1d(t: Tensors, name: str) -> dict:
  """Hugging Face Conv1D (weight [in, out] already) -> Dense."""
  return {"kernel": Leaf(t.get(f"{name}.weight"), (f"{name}.weight",), "HF Conv1D [in,out]"),
          "bias": Leaf(t.get(f"{name}.bias"), (f"{name}.bias",))}


def norm(t: Tensors, name: str, weight: str = "weight", bias: str = "bias") -> dict:
  return {"scale": Leaf(t.get(f"{name}.{weight}"), (f"{name}.{weight}",)),
          "bias": Leaf(t.get(f"{name}.{bias}"), (f"{name}.{bias}",))}


def embedding(t: Tensors, name: str) -> dict:
  return {"embedding": Leaf(t.get(f"{name}.weight"), (f"{name}.weight",))}


def vector(t: Tensors, name: str) -> Leaf:
  """[1, 1, D] / [1, D] / [D] -> [D]."""
  v = t.get(name)
  return Leaf(v.reshape(-1), (name,), f"reshape {list(v.shape)}->[{v.size}]")


def split_fused(weight: Leaf, bias: Leaf, axis: int) -> list[dict]:
  """A fused q/k/v projection -> three Dense trees (query, key, value)."""
  ws = np.split(weight.value, 3, axis=axis)
  bs = np.split(bias.value, 3)
  names = ("q", "k", "v")
  return [{"kernel": Leaf(w, weight.src, f"{weight.how}; {n} third"),
           "bias": Leaf(b, bias.src, f"{n} third")} for w, b, n in zip(ws, bs, names)]


# ----------------------------------------------------------------------------- components
def vit_block(t: Tensors, prefix: str) -> dict:
  """A timm ViT block (pre-norm; fused attn.qkv [3D, D]) -> our Block."""
  qkv = linear(t, f"{prefix}.attn.qkv")
  q, k, v = split_fused(qkv["kernel"], qkv["bias"], axis=1)
  return {"norm1": norm(t, f"{prefix}.norm1"), "norm2": norm(t, f"{prefix}.norm2"),
          "attn": {"query": q, "key": k, "value": v, "out": linear(t, f"{prefix}.attn.proj")},
          "mlp": {"fc1": linear(t, f"{prefix}.mlp.fc1"), "fc2": linear(t, f"{prefix}.mlp.fc2")}}


def stack(t: Tensors, prefix: str, block_fn) -> dict:
  return {f"block{i}": block_fn(t, f"{prefix}.{i}") for i in t.indices(prefix)}


def patch_kernel(t: Tensors, name: str) -> Leaf:
  """Conv2d weight [D, C, p, p] -> our patch_embed kernel [p*p*C, D] ((row, col, channel))."""
  w = t.get(name)
  d = w.shape[0]
  return Leaf(np.transpose(w, (2, 3, 1, 0)).reshape(-1, d), (name,),
              "conv [D,C,p,p] -> [p,p,C,D] -> [p*p*C,D]")


UNKNOWN_TABLE = "unknown"


def identify_fixed_positions(t: Tensors, name: str, part: str, report: Report) -> None:
  """Which formula made the fixed sin-cos table `name` -> report.position_tables[part].

  The table itself is skipped: the model recomputes it from the formula
  (config.model.position_tables), which `run` sets and config.init checks. A table that
  matches no formula is UNKNOWN_TABLE, and the conversion fails naming both differences.
  """
  if name not in t:
    return
  from ssacl_jax import layers
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


def bert_block(t: Tensors, prefix: str) -> dict:
  """A Hugging Face BertLayer (post-norm) -> our Block with pre_norm=False."""
  a = f"{prefix}.attention"
  return {"attn": {"query": linear(t, f"{a}.self.query"), "key": linear(t, f"{a}.self.key"),
                   "value": linear(t, f"{a}.self.value"), "out": linear(t, f"{a}.output.dense")},
          "norm1": norm(t, f"{a}.output.LayerNorm"),
          "mlp": {"fc1": linear(t, f"{prefix}.intermediate.dense"),
                  "fc2": linear(t, f"{prefix}.output.dense")},
          "norm2": norm(t, f"{prefix}.output.LayerNorm")}


def text_encoder(t: Tensors, prefix: str) -> dict:
  e = f"{prefix}embeddings"
  for buf in ("position_ids", "token_type_ids"):
    t.skip(f"{e}.{buf}", "index buffer, not a parameter")
  return {"word_embed": embedding(t, f"{e}.word_embeddings"),
          "pos_embed": embedding(t, f"{e}.position_embeddings"),
          "type_embed": embedding(t, f"{e}.token_type_embeddings"),
          "embed_norm": norm(t, f"{e}.LayerNorm"),
          "blocks": stack(t, f"{prefix}encoder.layer", bert_block),
          "pooler": linear(t, f"{prefix}pooler.dense")}


def gpt2_block(t: Tensors, prefix: str) -> dict:
  """A Hugging Face GPT2Block (Conv1D layout, fused c_attn [D, 3D]) -> our Block."""
  fused = conv1d(t, f"{prefix}.attn.c_attn")
  q, k, v = split_fused(fused["kernel"], fused["bias"], axis=1)
  for buf in ("bias", "masked_bias"):
    t.skip(f"{prefix}.attn.{buf}", "causal-mask buffer, not a parameter")
  return {"norm1": norm(t, f"{prefix}.ln_1"), "norm2": norm(t, f"{prefix}.ln_2"),
          "attn": {"query": q, "key": k, "value": v, "out": conv1d(t, f"{prefix}.attn.c_proj")},
          "mlp": {"fc1": conv1d(t, f"{prefix}.mlp.c_fc"), "fc2": conv1d(t, f"{prefix}.mlp.c_proj")}}


def report_decoder(t: Tensors, prefix: str) -> dict:
  return {"wte": embedding(t, f"{prefix}wte"), "wpe": embedding(t, f"{prefix}wpe"),
          "blocks": stack(t, f"{prefix}h", gpt2_block), "norm": norm(t, f"{prefix}ln_f")}


def release_heads(t: Tensors) -> dict:
  """The release's projections and scalars -> our top-level parameters (RELEASE_NAMES)."""
  pick = lambda key: t.first(RELEASE_NAMES[key], ".weight" if key != "logit_scale" else "")
  vis = pick("visible")
  w, b = t.get(f"{vis}.weight"), t.get(f"{vis}.bias")
  scale_name = pick("logit_scale")
  scale = t.get(scale_name)
  if "logit_scale" in t and scale_name != "logit_scale":
    t.skip("logit_scale", f"unused by the release's losses (the learned scale is {scale_name})")
  return {"image_to_text": linear(t, pick("image_to_text")),
          "text_to_query": linear(t, pick("text_to_query")),
          "to_decoder": linear(t, pick("to_decoder")),
          "visible_w": Leaf(w.reshape(-1), (f"{vis}.weight",), f"reshape {list(w.shape)}->[{w.size}]"),
          "visible_b": Leaf(b.reshape(()), (f"{vis}.bias",), "reshape [1]->[]"),
          "logit_scale": Leaf(scale.reshape(()), (scale_name,), "reshape ->[]")}


# ----------------------------------------------------------------------------- readers
def read_torch_file(path) -> dict[str, np.ndarray]:
  """A `.pth`/`.bin` state dict (under 'model' or 'state_dict' when present) as float32 numpy.

  Loaded with weights_only=True; an argparse.Namespace of saved training arguments (the
  release's `args`) is allowed, nothing else.
  """
  try:
    import torch
  except ImportError as e:
    raise ConversionError(f"reading {path} needs torch: pip install 'ssacl_jax[convert]'") from e
  import argparse as _argparse
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  with torch.serialization.safe_globals([_argparse.Namespace]):
    obj = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("model", "state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise ConversionError(f"{path} does not hold a state dict (got {type(obj).__name__})")

  def to_numpy(x):
    return x.detach().to(torch.float32).numpy() if x.is_floating_point() else x.numpy()

  return {k: to_numpy(v) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _flax_to_torch_names(params: dict) -> dict[str, np.ndarray]:
  """HF Flax GPT-2 params -> the PyTorch names and layout (Conv1D kernels [in, out])."""
  flat = flatten(params)
  out = {}
  for path, v in flat.items():
    *mod, leaf = path.split("/")
    v = np.asarray(v, np.float32)
    if leaf == "kernel":
      v = v.T  # FlaxConv1D stores [out, in]
    name = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    out[".".join(mod + [name])] = v
  return out


def read_gpt2_folder(folder) -> tuple[dict, dict[str, np.ndarray], str]:
  """(config.json, tensors under PyTorch names without 'transformer.', weights file used)."""
  folder = pathlib.Path(folder)
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face GPT-2 folder)")
  hf = json.loads((folder / "config.json").read_text())
  if hf.get("model_type", "gpt2") != "gpt2":
    raise ConversionError(f"{folder}/config.json has model_type {hf.get('model_type')!r}, not 'gpt2'")
  if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ConversionError("reading model.safetensors needs safetensors: "
                            "pip install 'ssacl_jax[convert]'") from e
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else ["model.safetensors"])
    tensors = {}
    for f in files:
      tensors.update(load_file(str(folder / f)))
    used = ", ".join(files)
  elif (folder / "flax_model.msgpack").is_file():
    from flax import serialization
    params = serialization.msgpack_restore((folder / "flax_model.msgpack").read_bytes())
    tensors, used = _flax_to_torch_names(params), "flax_model.msgpack"
  elif (folder / "pytorch_model.bin").is_file():
    tensors, used = read_torch_file(folder / "pytorch_model.bin"), "pytorch_model.bin"
  else:
    raise FileNotFoundError(f"{folder}: no model.safetensors, flax_model.msgpack or "
                            "pytorch_model.bin")
  tensors = {k.removeprefix("transformer."): np.asarray(v, np.float32) for k, v in tensors.items()}
  return hf, tensors, used


def gpt2_config_problems(hf: dict, report_cfg) -> list[str]:
  """Differences between a HF GPT-2 config.json and config.model.report, with the fix."""
  want = {"width": hf.get("n_embd", 768), "depth": hf.get("n_layer", 12),
          "num_heads": hf.get("n_head", 12), "mlp_dim": hf.get("n_inner") or 4 * hf.get("n_embd", 768),
          "vocab_size": hf.get("vocab_size", 50257), "max_positions": hf.get("n_positions", 1024)}
  problems = [f"config.model.report.{k}={report_cfg[k]} but the GPT-2 config has {v}"
              for k, v in want.items() if report_cfg[k] != v]
  if problems:
    problems.append("set: " + " ".join(f"--config.model.report.{k}={v}" for k, v in want.items()))
  act = hf.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    problems.append(f"activation_function {act!r}: our decoder uses the tanh GELU (gelu_new)")
  if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
    problems.append(f"layer_norm_epsilon {hf['layer_norm_epsilon']}: our decoder uses 1e-5")
  if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
    problems.append("attention scaling differs from 1/sqrt(head_dim) "
                    "(scale_attn_by_inverse_layer_idx / scale_attn_weights)")
  return problems


# ----------------------------------------------------------------------------- conversion
def skip_tied_head(t: Tensors, head: str, wte: str, report: Report) -> None:
  """GPT-2's lm_head is tied to wte; say so loudly if this file's is not."""
  if head not in t:
    return
  reason = "tied to wte (our decoder's output embedding is wte)"
  if wte in t and not np.array_equal(t.arrays[head], t.arrays[wte]):
    diff = float(np.max(np.abs(t.arrays[head] - t.arrays[wte])))
    report.notes.append(f"{head} differs from {wte} (max |diff| {diff:.3g}); our decoder ties "
                        "its output to wte, so this head is NOT imported")
    reason += f" (DIFFERS from wte: max |diff| {diff:.3g})"
  t.skip(head, reason)


def convert_tensors(kind: str, t: Tensors, model_cfg, report: Report) -> dict:
  """Source tensors -> {part: tree of Leaf} for every part this kind provides."""
  if kind == "gpt2":
    skip_tied_head(t, "lm_head.weight", "wte.weight", report)
    return {"report_decoder": report_decoder(t, "")}
  if kind == "mae":
    t.skip_matching(r"head\..*", "classification head of a fine-tuned ViT (not part of SS-ACL)")
    t.skip_matching(r"fc_norm\..*", "fine-tuned ViT's pooled-feature norm (not part of SS-ACL)")
    tree = {"image_encoder": image_encoder(t, report)}
    if "decoder_embed.weight" in t:
      tree["image_decoder"] = image_decoder(t, report, model_cfg)
    return tree
  if kind == "ssacl_release":
    skip_tied_head(t, "opt_model.lm_head.weight", RELEASE_GPT2 + "wte.weight", report)
    t.skip_matching(r"bert_encoder\.model\.cls\..*",
                    "the masked-LM head the release evaluates but never uses in a loss")
    return {"image_encoder": image_encoder(t, report),
            "image_decoder": image_decoder(t, report, model_cfg),
            "text_encoder": text_encoder(t, RELEASE_BERT),
            "report_decoder": report_decoder(t, RELEASE_GPT2),
            **release_heads(t)}
  raise ConversionError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def _num_blocks(stack: dict) -> int:
  """Blocks in a stack's subtree: block0.. (unrolled) or the leading axis of layers/block."""
  from ssacl_jax import layers
  if set(stack) != {layers.SCANNED}:
    return len(stack)
  leaf = next(iter(flatten(stack).values()))
  return (leaf.value if isinstance(leaf, Leaf) else leaf).shape[0]


def _stack_leaves(leaves: list[Leaf]) -> Leaf:
  return Leaf(np.stack([leaf.value for leaf in leaves]),
              tuple(s for leaf in leaves for s in leaf.src), leaves[0].how)


def match_layout(tree: dict, abstract: dict) -> dict:
  """Converted parts (block0.. per stack) stacked where the model scans its layers."""
  from ssacl_jax import layers
  if not layers.has_scanned_layers(abstract):
    return tree
  return layers.stack_layers(tree, stack=_stack_leaves, is_leaf=lambda x: isinstance(x, Leaf))


def _shape_hints(tree: dict, abstract: dict) -> list[str]:
  hints = []
  for part, section in CONFIG_SECTION.items():
    if part not in tree or not isinstance(tree[part].get("blocks"), dict):
      continue
    n_src, n_ours = _num_blocks(tree[part]["blocks"]), _num_blocks(abstract[part]["blocks"])
    if n_src != n_ours:
      hints.append(f"{part}: the source has {n_src} blocks, the model {n_ours} "
                   f"(config.model.{section}.depth)")
  return hints


def check_against_model(tree: dict, abstract: dict) -> tuple[list[str], list]:
  """(mismatch messages, missing [(path, shape)]) of converted parts vs the model's params."""
  problems, missing = [], []
  for part, sub in tree.items():
    ours = abstract[part]
    have = flatten(sub) if isinstance(sub, dict) else {"": sub}
    want = flatten(ours) if isinstance(ours, dict) else {"": ours}
    name = lambda p: f"{part}/{p}" if p else part
    for p in sorted(set(have) - set(want)):
      problems.append(f"{name(p)}: from {', '.join(have[p].src)} {list(have[p].value.shape)}, "
                      "but the model has no such parameter")
    for p in sorted(set(have) & set(want)):
      if tuple(have[p].value.shape) != tuple(want[p].shape):
        problems.append(f"{name(p)}: source {', '.join(have[p].src)} gives "
                        f"{list(have[p].value.shape)}, the model has {list(want[p].shape)}")
    missing += [(name(p), tuple(want[p].shape)) for p in sorted(set(want) - set(have))]
  if problems:
    problems += _shape_hints(tree, abstract)
  return problems, missing


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
    raise ConversionError(f"unknown part(s) {', '.join(bad)}; valid: all, auto, {', '.join(PARTS)}")
  return names


def abstract_params(config) -> dict:
  """The SS-ACL model's parameter tree as ShapeDtypeStructs (nothing materialised)."""
  from ssacl_jax import state as state_lib
  from ssacl_jax.models import ssacl
  return state_lib.abstract_params(ssacl.build_model(config.model), ssacl.dummy_batch(config, 1),
                                   ssacl.dummy_anatomy_tokens(config))


def convert(kind: str, src, config, *, parts=None, allow_missing: bool = False,
            allow_unmapped: bool = False, abstract: dict | None = None) -> tuple[dict, Report]:
  """Read `src` and convert it for `config`: ({part: numpy tree}, Report).

  parts: None (everything the source provides) or a tuple of PARTS. Raises
  ConversionError naming the tensors / parameters / shapes when something does not fit.
  """
  report = Report(kind, str(src))
  if kind == "gpt2":
    hf, arrays, used = read_gpt2_folder(src)
    report.notes.append(f"weights read from {used}"
                        + (" (Flax names/layout normalised to PyTorch's)" if used.endswith("msgpack") else ""))
    problems = gpt2_config_problems(hf, config.model.report)
    if problems:
      raise ConversionError(f"{src}: the GPT-2 does not match config.model.report:\n  "
                            + "\n  ".join(problems))
  elif kind in ("mae", "ssacl_release"):
    arrays = read_torch_file(src)
  else:
    raise ConversionError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
  t = Tensors(arrays)
  tree = convert_tensors(kind, t, config.model, report)
  if parts is not None:
    absent = [p for p in parts if p not in tree]
    if absent:
      raise ConversionError(f"{src} ({kind}) provides {', '.join(tree)}; not {', '.join(absent)}")
    for part in [p for p in tree if p not in parts]:
      leaves = flatten(tree.pop(part)) if isinstance(tree[part], dict) else {"": tree.pop(part)}
      t.release({s for leaf in leaves.values() for s in leaf.src},
                f"part {part} not requested (parts={','.join(parts)})")
  report.parts = tuple(tree)
  report.position_tables = {p: f for p, f in report.position_tables.items() if p in tree}
  abstract = abstract if abstract is not None else abstract_params(config)
  tree = match_layout(tree, abstract)
  problems, missing = check_against_model(tree, abstract)
  known = {m[0] for m in report.missing}
  missing = [m for m in missing if m[0] not in known]
  report.missing += [(path, shape, "not in the source") for path, shape in missing]
  for part, sub in tree.items():
    leaves = flatten(sub) if isinstance(sub, dict) else {"": sub}
    for p, leaf in leaves.items():
      shape = tuple(leaf.value.shape)
      src_shapes = [tuple(arrays[s].shape) for s in leaf.src]
      report.mapped.append((", ".join(leaf.src), src_shapes[0], f"{part}/{p}" if p else part,
                            shape, leaf.how))
  report.skipped = [(k, tuple(arrays[k].shape), why) for k, why in sorted(t.skipped.items())]
  report.unmapped = [(k, tuple(arrays[k].shape)) for k in t.unaccounted()]
  errors = list(problems)
  unknown = [p for p, f in report.position_tables.items() if f == UNKNOWN_TABLE]
  if unknown:
    errors.append(f"the fixed position table of {', '.join(unknown)} matches no formula this "
                  f"model can compute (see 'skipped' below); its pixels would differ")
  if missing and not allow_missing:
    errors.append(f"{len(missing)} model parameter(s) of the converted parts are not in the "
                  "source: " + ", ".join(m[0] for m in missing[:10])
                  + (" ..." if len(missing) > 10 else "") + " (--allow_missing keeps them fresh)")
  if report.unmapped and not allow_unmapped:
    errors.append(f"{len(report.unmapped)} source tensor(s) map to nothing: "
                  + ", ".join(u[0] for u in report.unmapped[:10])
                  + (" ..." if len(report.unmapped) > 10 else "")
                  + " (--allow_unmapped ignores them)")
  if errors:
    raise ConversionError(f"cannot convert {src} ({kind}) for this config:\n  "
                          + "\n  ".join(errors) + "\n\n" + report.text())
  return {part: values(sub) if isinstance(sub, dict) else sub.value for part, sub in tree.items()}, report


def set_position_tables(config, report: Report) -> None:
  """config.model.position_tables takes the formulas the source's tables have."""
  for part, formula in report.position_tables.items():
    config.model.position_tables[part] = formula


def position_table_problems(config, found: dict, source: str) -> list[str]:
  """How `found` ({part: formula} of a source) disagrees with the config, with the fix."""
  from ssacl_jax.models.image import position_table
  return [f"{source} has the {formula!r} position table for {part}, but "
          f"config.model.position_tables.{part} is {position_table(config.model, part)!r}: "
          f"set --config.model.position_tables.{part}={formula}"
          for part, formula in found.items() if formula != position_table(config.model, part)]


# ----------------------------------------------------------------------------- writing
def merge_into(fresh: dict, converted: dict) -> dict:
  """fresh params (jax Arrays or ShapeDtypeStructs with shardings) with the converted numpy
  parts placed on the same shardings and dtypes."""
  import jax

  def place(f, v):
    v = np.asarray(v).astype(f.dtype)
    return jax.make_array_from_callback(f.shape, f.sharding, lambda idx: v[idx])

  out = dict(fresh)
  for part, sub in converted.items():
    out[part] = jax.tree.map(place, fresh[part], sub)
  return out


def write_checkpoint(config, converted: dict, out_dir, report: Report) -> pathlib.Path:
  """OUT/checkpoints/0 (full train state, step 0), OUT/config.json, OUT/conversion_report.txt."""
  import jax
  from ssacl_jax import checkpointing, config_lib, sharding, state as state_lib
  from ssacl_jax.models import ssacl
  out = pathlib.Path(out_dir)
  ckpt = checkpointing.Checkpointer(out, config)
  if ckpt.latest_step() is not None:
    raise FileExistsError(f"{ckpt.directory} already holds checkpoints; choose an empty --out")
  mesh = sharding.make_mesh(config)
  with jax.set_mesh(mesh):
    model = ssacl.build_model(config.model)
    setup = state_lib.setup_state(config, model, mesh, ssacl.dummy_anatomy_tokens(config), ssacl.dummy_batch(config, 1))
    abstract = setup.abstract_state["params"]
    if set(flatten(abstract)) <= set(flatten(converted)):  # all converted: skip the model's init
      params = merge_into(abstract, converted)
      state = {"step": jax.device_put(np.zeros((), np.int32), setup.shardings["step"]),
               "params": params,
               "opt_state": jax.jit(setup.tx.init, out_shardings=setup.shardings["opt_state"])(params)}
    else:
      state = setup.init_fn(jax.random.key(config.train.seed))
      state = dict(state, params=merge_into(state["params"], converted))
    meta = {"converted": {"kind": report.kind, "src": report.src, "parts": list(report.parts)}}
    ckpt.save(0, state, meta=meta, force=True)
    ckpt.close()
  config_lib.save_workdir_config(config, out)
  (out / "conversion_report.txt").write_text(report.text() + "\n")
  return ckpt.directory / "0"


# ----------------------------------------------------------------------------- CLI
def run(kind: str, src, config, out, *, parts: str = "", allow_missing: bool = False,
        allow_unmapped: bool = False, dry_run: bool = False) -> Report:
  """Convert, print the mapping report and (unless dry_run) write OUT."""
  if kind == "gpt2":  # OUT/config.json: the decoder's vocabulary follows its weights
    config = config.copy_and_resolve_references()
    config.init.gpt2 = str(pathlib.Path(src).absolute())
  converted, report = convert(kind, src, config, parts=parse_parts(parts),
                              allow_missing=allow_missing, allow_unmapped=allow_unmapped)
  set_position_tables(config, report)
  print(report.text())
  if not dry_run:
    if not out:
      raise ConversionError("--out is required unless --dry_run")
    path = write_checkpoint(config, converted, out, report)
    print(f"wrote {path} (full train state at step 0; converted parts: "
          f"{', '.join(report.parts)}); report in {pathlib.Path(out) / 'conversion_report.txt'}")
  return report


def _cli() -> None:
  """Flags are defined here, not at import, so importing this module defines none."""
  import sys
  from absl import flags
  from ml_collections import config_flags
  from ssacl_jax import cli
  config_flag = config_flags.DEFINE_config_file("config", None, "configs/X.py[:variants]; "
                                                "fields overridden with --config.a.b=v")
  kind = flags.DEFINE_enum("kind", None, KINDS, "What --src holds.")
  src = flags.DEFINE_string("src", None, "HF GPT-2 folder (gpt2) or .pth file (mae, ssacl_release).")
  out = flags.DEFINE_string("out", None, "Output directory (a new converted workdir).")
  parts = flags.DEFINE_string("parts", "", "Comma list of parts to convert (default: all the "
                              f"source provides): {', '.join(PARTS)}.")
  allow_missing = flags.DEFINE_bool("allow_missing", False, "Keep model parameters the source "
                                    "lacks at their fresh initialisation.")
  allow_unmapped = flags.DEFINE_bool("allow_unmapped", False,
                                     "Ignore source tensors that map to nothing.")
  dry_run = flags.DEFINE_bool("dry_run", False, "Print the report, write nothing.")
  flags.mark_flags_as_required(["config", "kind", "src"])

  def main(argv):
    del argv
    try:
      run(kind.value, src.value, config_flag.value, out.value, parts=parts.value,
          allow_missing=allow_missing.value, allow_unmapped=allow_unmapped.value,
          dry_run=dry_run.value)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(1)

  cli.run_app(main)


if __name__ == "__main__":
  _cli()
