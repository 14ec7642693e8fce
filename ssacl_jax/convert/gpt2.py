"""A local Hugging Face GPT-2 folder (config.json and model.safetensors, flax_model.msgpack
or pytorch_model.bin; any size) -> report_decoder.

The release's report decoder is a GPT2LMHeadModel too (ssacl_release.py uses these
mappings under its prefix).
"""
from __future__ import annotations

import numpy as np

from ssacl_jax.convert import readers
from ssacl_jax.convert.tensors import ConversionError, Report, Tensors, conv1d, embedding, norm, split_fused, stack


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


def config_problems(hf: dict, report_cfg) -> list[str]:
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


def read(src, config, report: Report) -> dict[str, np.ndarray]:
  """The folder's tensors, once its config.json fits config.model.report."""
  hf, arrays, used = readers.read_gpt2_folder(src)
  report.notes.append(f"weights read from {used}"
                      + (" (Flax names/layout normalised to PyTorch's)" if used.endswith("msgpack") else ""))
  problems = config_problems(hf, config.model.report)
  if problems:
    raise ConversionError(f"{src}: the GPT-2 does not match config.model.report:\n  "
                          + "\n  ".join(problems))
  return arrays


def to_parts(t: Tensors, model_cfg, report: Report) -> dict:
  del model_cfg  # config.json was checked against it when reading
  skip_tied_head(t, "lm_head.weight", "wte.weight", report)
  return {"report_decoder": report_decoder(t, "")}
