"""Read a compiled XLA module's HLO text: its computations, instructions, array types and
how often each computation runs per call.

Shared by `ssacl_jax.collectives` (what the collectives move) and `ssacl_jax.hbm_traffic`
(what the program reads and writes in device memory). Only the text is needed, so the
same code reads a live `compiled.as_text()` and a dump written by
`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text` (`*.after_optimizations.txt`).
"""
from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "s4": 1, "u4": 1}

_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
# dtype[dims] and, when present, its layout {minor_to_major:tiling S(memory space)}.
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\](\{[^{}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
CALLEES = re.compile(r"\b(?:calls|to_apply|body|condition|branch_computations)="
                     r"(\{[^}]*\}|%[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
OP_NAME = re.compile(r'op_name="([^"]*)"')
CHANNEL = re.compile(r"\bchannel_id=(\d+)")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  result: str                  # the result type text
  opcode: str
  operands: tuple[str, ...]
  rest: str                    # everything after the opening parenthesis


@dataclasses.dataclass(frozen=True)
class Array:
  dtype: str
  shape: tuple[int, ...]
  bytes: int
  memory_space: int            # 0: device memory (HBM); TPU: 1 VMEM, 2+ sync flags, ...


def arrays(type_text: str) -> list[Array]:
  """Each array of an HLO type string ('(bf16[8,768]{1,0:T(8,128)(2,1)}, u32[]{:S(2)})')."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(type_text):
    width = DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
    if width is None:
      continue
    shape = tuple(int(d) for d in dims.split(",") if d)
    space = _MEMORY_SPACE.search(layout or "")
    out.append(Array(dtype, shape, width * math.prod(shape), int(space.group(1)) if space else 0))
  return out


def computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str | None]:
  """{computation name: its instructions} and the entry computation's name."""
  # Instructions before any computation header (an HLO excerpt) form one computation, "".
  comps: dict[str, list[Instruction]] = {"": []}
  entry, current = None, ""
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    found = _INSTRUCTION.match(line)
    if found:
      name, result, opcode, rest = found.groups()
      operand_text = rest.split("), ", 1)[0]
      operands = tuple(re.findall(r"%([\w.\-]+)", operand_text))
      comps[current].append(Instruction(name, result, opcode, operands, rest))
  return comps, entry


def callees(ins: Instruction) -> list[str]:
  """The computations an instruction calls (fusion bodies, loop bodies, reducers, ...)."""
  return [c for text in CALLEES.findall(ins.rest) for c in re.findall(r"%([\w.\-]+)", text)]


def trip_count(ins: Instruction) -> int | None:
  """A while loop's known trip count (XLA's backend config), else None."""
  found = _TRIP_COUNT.search(ins.rest)
  return int(found.group(1)) if found else None


def runs_per_call(comps: dict[str, list[Instruction]], entry: str | None,
                  follow=lambda ins: True) -> dict:
  """How many times each computation runs per call of the entry (None: in a loop of
  unknown trip count), following the calls of instructions `follow` accepts; computations
  not reached are left out."""
  runs: dict[str, int | None] = {}
  stack = [(entry, 1)] if entry else [(name, 1) for name in comps]
  while stack:
    name, n = stack.pop()
    if name in runs or name not in comps:
      continue
    runs[name] = n
    for ins in comps[name]:
      if not follow(ins):
        continue
      inner = n
      if ins.opcode == "while":
        trips = trip_count(ins)
        inner = None if n is None or trips is None else n * trips
      stack.extend((callee, inner) for callee in callees(ins))
  return runs


def clean_op_name(name: str) -> str:
  """'jit(train_step)/transpose(jvp(SSACL))/image_encoder/x/dot_general' ->
  'image_encoder/x/dot_general'."""
  parts = [p for p in name.split("/") if not re.fullmatch(r"(jit|jvp|transpose)\(.*\)", p)]
  return "/".join(parts) or name


def op_source(rest: str) -> tuple[str, bool]:
  """The jax op path of an instruction's metadata and whether it is in the backward pass.

  XLA's combiners name a combined op '(type:name:type:name...)': the first name is kept,
  with the number of ops combined into it."""
  found = OP_NAME.search(rest)
  name = found.group(1) if found else "?"
  backward = "transpose(" in name
  if name.startswith("(") and ":" in name:
    names = [clean_op_name(p) for p in name.strip("()").split(":") if "/" in p]
    if len(names) > 1:
      return f"{names[0]} (+{len(names) - 1} combined)", backward
    name = names[0] if names else name
  return clean_op_name(name), backward
