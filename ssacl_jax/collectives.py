"""The collectives of a compiled XLA program, read from its HLO text: what each one moves.

`collective_ops(hlo)` lists every collective instruction (an async pair once, at its
-start) with its bytes per device (all-gather: the gathered array; reduce-scatter: the
scattered piece; all-reduce: the array), dtype, shape, replica-group size, how often it
runs per call (the trip counts of the loops around it; None inside a loop of unknown trip
count, such as the decoding loop) and its source: the entry parameter it moves
('params/image_encoder/patch_embed/kernel') when its operand traces back to one through
converts, copies, bitcasts and fusions, else the jax op of its metadata
('image_encoder/blocks/block0/mlp/fc2/dot_general'), with 'bwd' for the backward pass.

XLA:TPU's async collective fusion clones one collective into several fusion computations,
each clone keeping the collective's channel_id: `collective_ops` keeps one instruction per
(op, channel_id) (channel id 1, which XLA:TPU gives to many unrelated late all-reduces and
permutes, is not merged). `collective_stats` still counts every instruction (the static
counts `ssacl_jax.aot` has always reported); `group_collectives` sums the deduplicated
collectives by (op, source, pass, dtype, shape).
"""
from __future__ import annotations

import dataclasses
import math
import re

from ssacl_jax import hlo_text

COLLECTIVES = hlo_text.COLLECTIVES
# Ops a parameter passes through on its way to a collective (a cast, a layout change).
_PASS_THROUGH = {"convert", "bitcast", "copy", "reshape", "transpose", "get-tuple-element",
                 "fusion", "copy-start", "copy-done", "bitcast-convert", "slice",
                 "dynamic-slice", "optimization-barrier", "tuple"}
_TRACE_DEPTH = 8

_PARAM_PATH = re.compile(r"\[\\?'([^'\\]*)\\?'\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str                   # all-gather, all-reduce, ...
  dtype: str
  shape: tuple[int, ...]
  bytes: int                # per device, per execution
  group_size: int           # devices in each replica group
  source: str               # 'params/...' or the jax op path
  backward: bool            # under transpose(...): the backward pass
  runs: int | None          # executions per call (loop trip counts); None: unknown loop


def replica_group_size(rest: str, num_devices: int) -> int:
  """Devices per replica group, from any of XLA's spellings of replica_groups."""
  found = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)
  if found:
    return int(found.group(2))
  # mesh['axis_0'=1,'axis_1'=16] {'axis_1'}, maybe with device_ids=(...) before the axes.
  found = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", rest)
  if found:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", found.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", found.group(2)))
  found = re.search(r"replica_groups=\{\{([\d,]+)\}", rest)
  if found:
    return len(found.group(1).split(","))
  found = re.search(r"source_target_pairs=", rest)
  return 2 if found else num_devices


def _parameter_path(op_name: str) -> str | None:
  """"state['params']['a']['kernel']" -> 'params/a/kernel' (None for other inputs)."""
  keys = _PARAM_PATH.findall(op_name)
  return "/".join(keys) if keys else None


def _callers(comps: dict[str, list[hlo_text.Instruction]]) -> dict[str, list[tuple[str, hlo_text.Instruction]]]:
  """{computation: [(calling computation, fusion/call instruction)]}."""
  out: dict[str, list[tuple[str, hlo_text.Instruction]]] = {}
  for comp, instructions in comps.items():
    for ins in instructions:
      if ins.opcode in ("fusion", "call"):
        for callee in re.findall(r"calls=%([\w.\-]+)", ins.rest):
          out.setdefault(callee, []).append((comp, ins))
  return out


def _traced_parameter(comp: str, ins: hlo_text.Instruction, tables: dict, callers: dict) -> str | None:
  """The one entry parameter the instruction's operand comes from, if there is exactly one:
  followed through pass-through ops and out of fusions into their callers."""
  found, frontier = set(), [(comp, name) for name in ins.operands[:1]]
  for _ in range(_TRACE_DEPTH):
    nxt = []
    for where, name in frontier:
      src = tables[where].get(name)
      if src is None:
        continue
      if src.opcode == "parameter":
        op_name = hlo_text.OP_NAME.search(src.rest)
        path = _parameter_path(op_name.group(1)) if op_name else None
        index = int(re.match(r"\d+", src.rest).group())
        if path:
          found.add(path)
        for caller_comp, call in callers.get(where, []):
          if index < len(call.operands):
            nxt.append((caller_comp, call.operands[index]))
      elif src.opcode in _PASS_THROUGH:
        nxt.extend((where, o) for o in src.operands)
    frontier = nxt
  return found.pop() if len(found) == 1 else None


def collective_ops(hlo: str, num_devices: int = 1, dedupe: bool = True) -> list[Collective]:
  """The collectives of a compiled HLO module (async pairs once, at their -start; with
  `dedupe`, clones sharing a channel id once)."""
  comps, entry = hlo_text.computations(hlo)
  runs = hlo_text.runs_per_call(comps, entry)
  tables = {comp: {ins.name: ins for ins in instructions} for comp, instructions in comps.items()}
  callers = _callers(comps)
  out, seen = [], set()
  for comp, instructions in comps.items():
    if comp not in runs:
      continue
    for ins in instructions:
      op = ins.opcode.removesuffix("-start")
      if op not in COLLECTIVES or ins.opcode.endswith("-done"):
        continue
      arrays = [(a.dtype, a.shape, a.bytes) for a in hlo_text.arrays(ins.result)]
      if ins.opcode.endswith("-start") and op in ("all-gather", "collective-permute",
                                                  "all-to-all"):
        # (operands..., results..., sync flags): keep the results.
        arrays = [a for a in arrays if a[2] > 4] or arrays
        arrays = arrays[len(arrays) // 2:] if len(arrays) > 1 else arrays
      if not arrays:
        continue
      channel = hlo_text.CHANNEL.search(ins.rest)
      if dedupe and channel and channel.group(1) != "1":
        if (op, channel.group(1)) in seen:
          continue
        seen.add((op, channel.group(1)))
      source, backward = hlo_text.op_source(ins.rest)
      param = _traced_parameter(comp, ins, tables, callers) if op == "all-gather" else None
      biggest = max(arrays, key=lambda a: a[2])
      out.append(Collective(op, biggest[0], biggest[1], sum(a[2] for a in arrays),
                            replica_group_size(ins.rest, num_devices), param or source,
                            backward, runs[comp]))
  return out


def collective_stats(hlo: str) -> dict:
  """Collective ops in a compiled HLO module: {op: {'count', 'bytes'}} (+ 'total').

  Static counts (an op inside a loop counts once); bytes are each op's result per device
  (all-gather: the gathered array, reduce-scatter: the scattered piece); async pairs count
  once, at their -start, whose operand half of the result tuple is left out.
  """
  return static_stats(collective_ops(hlo, dedupe=False))


def static_stats(ops: list[Collective]) -> dict:
  """collective_stats of already parsed ops."""
  stats = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  for c in ops:
    stats[c.op]["count"] += 1
    stats[c.op]["bytes"] += c.bytes
  stats["total"] = {"count": sum(v["count"] for v in stats.values()),
                    "bytes": sum(v["bytes"] for v in stats.values())}
  return stats


def group_collectives(ops: list[Collective]) -> list[dict]:
  """Collectives summed by what they move, the largest first.

  A row: op, source, pass (fwd/bwd), dtype, shape, group size, count (executions per call;
  for an op in a loop of unknown trip count, per iteration, with `in_loop` set), bytes per
  device per call (per iteration for in_loop rows).
  """
  rows: dict[tuple, dict] = {}
  for c in ops:
    in_loop = c.runs is None
    key = (c.op, c.source, c.backward, c.dtype, c.shape, c.group_size, in_loop)
    row = rows.setdefault(key, {"op": c.op, "source": c.source,
                                "pass": "bwd" if c.backward else "fwd", "dtype": c.dtype,
                                "shape": list(c.shape), "group_size": c.group_size,
                                "in_loop": in_loop, "count": 0, "bytes": 0})
    row["count"] += c.runs or 1
    row["bytes"] += c.bytes * (c.runs or 1)
  return sorted(rows.values(), key=lambda r: (-r["bytes"], r["source"]))


def collective_totals(ops: list[Collective], num_devices: int) -> dict:
  """Per op: count and bytes per device per call, and over all devices; loop-of-unknown-
  trip-count ops apart (per iteration)."""
  out = {}
  for part, chosen in (("per_call", [c for c in ops if c.runs is not None]),
                       ("per_loop_iteration", [c for c in ops if c.runs is None])):
    by_op = {}
    for c in chosen:
      t = by_op.setdefault(c.op, {"count": 0, "bytes_per_device": 0})
      t["count"] += c.runs or 1
      t["bytes_per_device"] += c.bytes * (c.runs or 1)
    for t in by_op.values():
      t["bytes_all_devices"] = t["bytes_per_device"] * num_devices
    by_op["total"] = {k: sum(t[k] for t in by_op.values())
                      for k in ("count", "bytes_per_device", "bytes_all_devices")} if by_op \
        else {"count": 0, "bytes_per_device": 0, "bytes_all_devices": 0}
    out[part] = by_op
  return out
