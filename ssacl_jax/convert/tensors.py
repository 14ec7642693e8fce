"""Bookkeeping of a conversion: source tensors, converted leaves, the mapping report, and
the per-layer rules (torch / Hugging Face layouts -> our Dense, LayerNorm, Embed trees).

All numpy: nothing here needs torch or jax.
"""
from __future__ import annotations

import dataclasses
import difflib
import re

import numpy as np


class ConversionError(ValueError):
  pass


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
  # or mae.UNKNOWN_TABLE); parts whose source has no table are absent.
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


# ----------------------------------------------------------------------------- layer rules
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


def norm(t: Tensors, name: str) -> dict:
  return {"scale": Leaf(t.get(f"{name}.weight"), (f"{name}.weight",)),
          "bias": Leaf(t.get(f"{name}.bias"), (f"{name}.bias",))}


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


def stack(t: Tensors, prefix: str, block_fn) -> dict:
  return {f"block{i}": block_fn(t, f"{prefix}.{i}") for i in t.indices(prefix)}
