"""Source files -> {name: float32 numpy array} under PyTorch's names.

torch and safetensors (the `convert` extra) are imported only by the reader that needs
them.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from flax import serialization

from ssacl_jax.convert.tensors import ConversionError, flatten


def read_torch_file(path) -> dict[str, np.ndarray]:
  """A `.pth`/`.bin` state dict (under 'model' or 'state_dict' when present) as float32 numpy.

  Loaded with weights_only=True; an argparse.Namespace of saved training arguments (the
  release's `args`) is allowed, nothing else.
  """
  try:
    import torch
  except ImportError as e:
    raise ConversionError(f"reading {path} needs torch: pip install 'ssacl_jax[convert]'") from e
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  with torch.serialization.safe_globals([argparse.Namespace]):
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


def _read_safetensors(folder: pathlib.Path) -> tuple[dict, str]:
  """(tensors, files used) of model.safetensors or its shards."""
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
  return tensors, ", ".join(files)


def read_gpt2_folder(folder) -> tuple[dict, dict[str, np.ndarray], str]:
  """(config.json, tensors under PyTorch names without 'transformer.', weights file used)."""
  folder = pathlib.Path(folder)
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face GPT-2 folder)")
  hf = json.loads((folder / "config.json").read_text())
  if hf.get("model_type", "gpt2") != "gpt2":
    raise ConversionError(f"{folder}/config.json has model_type {hf.get('model_type')!r}, not 'gpt2'")
  if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
    tensors, used = _read_safetensors(folder)
  elif (folder / "flax_model.msgpack").is_file():
    params = serialization.msgpack_restore((folder / "flax_model.msgpack").read_bytes())
    tensors, used = _flax_to_torch_names(params), "flax_model.msgpack"
  elif (folder / "pytorch_model.bin").is_file():
    tensors, used = read_torch_file(folder / "pytorch_model.bin"), "pytorch_model.bin"
  else:
    raise FileNotFoundError(f"{folder}: no model.safetensors, flax_model.msgpack or "
                            "pytorch_model.bin")
  tensors = {k.removeprefix("transformer."): np.asarray(v, np.float32) for k, v in tensors.items()}
  return hf, tensors, used
