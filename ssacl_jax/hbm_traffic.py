"""Device-memory (HBM) traffic of a compiled XLA program, counted from its HLO text.

XLA's own "bytes accessed" (`compiled.cost_analysis()`) was the roofline's first memory
term. On XLA:TPU it also counts what stays on chip: values passed between the ops inside
one fused kernel and buffers that memory-space assignment keeps in VMEM. On small programs
whose minimum traffic is known it gives 4x that minimum for a row softmax and 7.8x for an
MLP's weight gradients (bench/traffic_probe.py, bench/RESULTS.md); XLA:GPU gives no figure
at all without a GPU. This module counts what the compiled program moves between kernels
and device memory, one top-level instruction (a kernel) at a time:

- the instructions counted are those of the entry computation and of the computations it
  runs through control flow (loop bodies and conditions times their known trip counts,
  conditional branches, calls); fusion bodies and reducers are inside one kernel and not
  walked;
- a kernel reads its operands and writes its result: the bytes of every array of those
  types that lives in device memory (memory space 0; on TPU, S(1) is on-chip VMEM);
- a fusion (or an async computation, such as an async slice into VMEM) that uses an
  operand only through slices reads only the slices;
- a slice reads what it keeps; a dynamic-update-slice, or a fusion whose root is one,
  updates its buffer in place: it reads and writes only the update, not the whole buffer
  (a KV cache, a scanned stack);
- instructions that move nothing are free: parameters, constants, tuples and their
  elements, bitcasts, control flow, async -done halves;
- a prefetch or eviction (copy-start) moves its array once, on the HBM side.

What it does not model: re-reads of an operand inside one kernel (a tiled matmul may
stream an operand more than once) and caches. So it is a lower bound for big matmuls and
exact for elementwise kernels. `ssacl_jax.aot --roofline` uses it as the memory term and
reports XLA's figure, and the step that figure would give, beside it.
"""
from __future__ import annotations

import dataclasses

from ssacl_jax import hlo_text

# Move no device memory by themselves (their data is counted where it is produced or used).
# Async "-done" halves are free too (kernels() skips every opcode ending in "-done").
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
        "conditional", "call", "after-all", "partition-id", "replica-id", "opt-barrier",
        "optimization-barrier", "add-dependency", "domain"}
_SLICES = {"slice", "dynamic-slice"}
# Calls that run their callee as separate kernels (its instructions are counted there).
_CONTROL_FLOW = {"while", "conditional", "call"}


@dataclasses.dataclass(frozen=True)
class Kernel:
  name: str
  opcode: str
  source: str          # the jax op path of its metadata
  backward: bool
  read_bytes: int      # per execution
  written_bytes: int
  runs: int | None     # executions per call; None: in a loop of unknown trip count


def _hbm_bytes(type_text: str) -> int:
  return sum(a.bytes for a in hlo_text.arrays(type_text) if a.memory_space == 0)


@dataclasses.dataclass(frozen=True)
class _Access:
  sliced: dict            # parameter index -> bytes read, for parameters only sliced
  update: int | None      # bytes of an in-place dynamic-update-slice root, else None
  passed_through: set     # parameter indices the root only returns (aliased, unread)
  outputs: tuple          # per root tuple element: 'param', ('channel', id) or None


def _fusion_access(body: list[hlo_text.Instruction]) -> _Access:
  """How a fusion body touches its parameters and what its root returns.

  XLA:TPU's async collective fusion threads one collective through many fusions: each
  returns the collective's buffers as tuple elements, either a parameter passed through
  (no traffic) or a clone of the collective (one channel id: its result is written once,
  wherever it first appears)."""
  by_name = {ins.name: ins for ins in body}
  users: dict[str, list[hlo_text.Instruction]] = {}
  for ins in body:
    for operand in ins.operands:
      users.setdefault(operand, []).append(ins)
  root = body[-1] if body else None
  sliced, passed = {}, set()
  for ins in body:
    if ins.opcode != "parameter":
      continue
    index = int(ins.rest.split(")", 1)[0])
    uses = users.get(ins.name, [])
    if uses and all(u.opcode in _SLICES and u.operands[0] == ins.name for u in uses):
      sliced[index] = sum(a.bytes for u in uses for a in hlo_text.arrays(u.result))
    elif uses and all(u is root and root.opcode == "tuple" for u in uses):
      passed.add(index)
  update, outputs = None, ()
  if root is not None and root.opcode == "dynamic-update-slice":
    buffer = by_name.get(root.operands[0])
    if buffer is not None and buffer.opcode == "parameter":
      update_ins = by_name.get(root.operands[1])
      if update_ins is not None:
        update = sum(a.bytes for a in hlo_text.arrays(update_ins.result))
  elif root is not None and root.opcode == "tuple":
    def output(name):
      ins = by_name.get(name)
      if ins is None:
        return None
      if ins.opcode == "parameter":
        return "param"
      channel = hlo_text.CHANNEL.search(ins.rest)
      if ins.opcode.removesuffix("-start") in hlo_text.COLLECTIVES and channel:
        return ("channel", ins.opcode.removesuffix("-start"), channel.group(1))
      return None
    outputs = tuple(output(name) for name in root.operands)
  return _Access(sliced, update, passed, outputs)


def _body(comps: dict, ins: hlo_text.Instruction) -> list[hlo_text.Instruction]:
  return next((comps[c] for c in hlo_text.callees(ins) if c in comps), [])


def _tuple_written(arrays: list, outputs: tuple, seen: set, default: int) -> int:
  """Bytes a fusion with a tuple root writes to device memory: not its passed-through
  parameters, and a cloned collective's result only the first time its channel appears."""
  if len(arrays) != len(outputs):   # nested tuples: count every array
    return default
  written = 0
  for array, source in zip(arrays, outputs):
    if array.memory_space != 0 or source == "param":
      continue
    if source is not None:
      if source in seen:
        continue
      seen.add(source)
    written += array.bytes
  return written


def kernels(hlo: str) -> list[Kernel]:
  """Every kernel of a compiled HLO module with the device-memory bytes it reads and
  writes per execution (module docstring)."""
  comps, entry = hlo_text.computations(hlo)
  runs = hlo_text.runs_per_call(comps, entry, follow=lambda i: i.opcode in _CONTROL_FLOW)
  out, seen = [], set()   # seen: collectives (by channel) whose result is counted
  for comp, instructions in comps.items():
    if comp not in runs:
      continue
    types = {ins.name: ins.result for ins in instructions}
    for ins in instructions:
      if ins.opcode in FREE or ins.opcode.endswith("-done"):
        continue
      read = [_hbm_bytes(types.get(o, "")) for o in ins.operands]
      written = _hbm_bytes(ins.result)
      if ins.opcode == "copy-start":
        # (destination, source, context): a prefetch reads HBM, an eviction writes it.
        destination, source = hlo_text.arrays(ins.result)[:2]
        read = [source.bytes] if source.memory_space == 0 else []
        written = destination.bytes if destination.memory_space == 0 else 0
      elif ins.opcode == "dynamic-update-slice":
        # In place: only the update crosses (its indices are scalars).
        update = _hbm_bytes(types.get(ins.operands[1], ""))
        read, written = [update], update
      elif ins.opcode in _SLICES:
        read = [written]
      elif ins.opcode.endswith("-start") and ins.result.startswith("("):
        # (operands, results, context): the operands are read, the results written. An
        # async slice into VMEM ('slice-start', or 'async-start' calling a slice) reads
        # only what it keeps.
        results = hlo_text.arrays(ins.result)[sum(len(hlo_text.arrays(types.get(o, "")))
                                                  for o in ins.operands):]
        results = [a for a in results if a.memory_space <= 1]   # not the sync context
        written = sum(a.bytes for a in results if a.memory_space == 0)
        if ins.opcode.removesuffix("-start") in _SLICES:
          read = [min(sum(read), sum(a.bytes for a in results))]
        else:
          sliced = _fusion_access(_body(comps, ins)).sliced
          read = [min(r, sliced.get(i, r)) for i, r in enumerate(read)]
      elif ins.opcode == "fusion":
        access = _fusion_access(_body(comps, ins))
        read = [0 if i in access.passed_through else min(r, access.sliced.get(i, r))
                for i, r in enumerate(read)]
        if access.update is not None and read:   # the update is an operand: read there
          read[0], written = 0, min(written, access.update)
        elif access.outputs:
          written = _tuple_written(hlo_text.arrays(ins.result), access.outputs, seen, written)
      source, backward = hlo_text.op_source(ins.rest)
      out.append(Kernel(ins.name, ins.opcode, source, backward, sum(read), written,
                        runs[comp]))
  return out


def total_bytes(ks: list[Kernel]) -> float:
  """Device-memory bytes per call (kernels in loops of unknown trip count counted once)."""
  return float(sum((k.read_bytes + k.written_bytes) * (k.runs or 1) for k in ks))


def launches(ks: list[Kernel]) -> int:
  """Kernels run per call (loops of unknown trip count counted once): on a GPU each is a
  launch; bench/RESULTS.md sets their number beside the measured H200 step."""
  return sum(k.runs or 1 for k in ks)


def group_kernels(ks: list[Kernel], depth: int = 3) -> list[dict]:
  """Bytes per call summed by the first `depth` parts of the source path and the pass,
  the largest first: where the traffic goes."""
  rows: dict[tuple, dict] = {}
  for k in ks:
    where = "/".join(k.source.split("/")[:depth])
    row = rows.setdefault((where, k.backward), {"source": where,
                                                "pass": "bwd" if k.backward else "fwd",
                                                "kernels": 0, "bytes": 0})
    row["kernels"] += k.runs or 1
    row["bytes"] += (k.read_bytes + k.written_bytes) * (k.runs or 1)
  return sorted(rows.values(), key=lambda r: -r["bytes"])
