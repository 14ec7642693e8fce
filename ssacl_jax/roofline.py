"""Predicted step time of a compiled step on a chip: the slowest of compute, memory and wire.

Per chip (ssacl_jax.aot measures the inputs from the compiled program):

  compute      = FLOPs / peak bf16 FLOP/s
  memory       = HBM bytes read and written by the program's kernels (ssacl_jax.hbm_traffic)
                 / HBM bandwidth
  interconnect = collective bytes on the wire / (bidirectional interconnect bandwidth / 2)

FLOPs are the larger of XLA's count and the hand count of the model's matmuls
(ssacl_jax.flops: XLA counts a scanned layer stack once). Collectives follow the ring
model: over a group of n chips, with B the op's result bytes per chip, an all-gather or
all-to-all puts B (n-1)/n on each chip's wire, a reduce-scatter B (n-1) (B is the
scattered piece), an all-reduce 2 B (n-1)/n (reduce-scatter then all-gather), a
collective-permute B; a chip receives at most half its bidirectional figure per second
(hardware.py: TPU ICI, NVLink). Hop latency is left out, so thousands of small collectives
cost more than predicted.

The predicted step time is the maximum of the three (each overlapped with the others: a
lower bound); `serial_s`, their sum, is the step with no overlap at all. MFU is the model
FLOPs (hand count) per chip over the peak and a step time: `mfu_upper_bound` at the
predicted step, `mfu_if_serial` at the serial one; `binding` names the largest term.
Neither counts what the three terms leave out: hop latency, kernel launch and pipeline
gaps, vector-unit work that is not a matmul FLOP (random bits for dropout, softmax), and
matmuls too small to fill the MXU.

The memory term used to be XLA's own "bytes accessed" (cost analysis). On XLA:TPU that
figure counts the operands of every instruction inside a fusion, VMEM-resident buffers
and cloned collectives included: for the paper step on v5p-32 it is 2.4x the kernels'
traffic (bench/RESULTS.md, "What XLA's bytes accessed counts"). `ssacl_jax.aot` still
reports it, and the prediction it would give, beside this one.
"""
from __future__ import annotations

import math

from ssacl_jax import hardware

TERMS = ("compute", "memory", "interconnect")


def ring_wire_bytes(op: str, result_bytes: float, group_size: int) -> float:
  """Bytes one chip sends (= receives) for a collective under the ring model."""
  n = max(group_size, 1)
  if n == 1:
    return 0.0
  if op in ("all-gather", "all-to-all"):
    return result_bytes * (n - 1) / n
  if op == "reduce-scatter":
    return result_bytes * (n - 1)
  if op == "all-reduce":
    return 2 * result_bytes * (n - 1) / n
  if op == "collective-permute":
    return float(result_bytes)
  raise ValueError(f"unknown collective {op!r}")


def wire_bytes(collectives) -> float:
  """Ring wire bytes per chip per call of a list of ssacl_jax.collectives.Collective (ops
  in loops of unknown trip count counted once)."""
  return sum(ring_wire_bytes(c.op, c.bytes, c.group_size) * (c.runs or 1)
             for c in collectives)


def predict(*, flops: float, model_flops: float, hbm_bytes: float, wire: float,
            peak_flops: float, hbm_bytes_per_s: float,
            interconnect_bytes_per_s: float | None) -> dict:
  """Per-chip figures -> {compute_s, memory_s, interconnect_s, step_s, serial_s, binding,
  mfu_upper_bound}."""
  times = {"compute": flops / peak_flops,
           "memory": hbm_bytes / hbm_bytes_per_s if hbm_bytes else 0.0,
           "interconnect": (wire / (interconnect_bytes_per_s / 2)
                            if wire and interconnect_bytes_per_s else 0.0)}
  step, serial = max(times.values()), sum(times.values())
  return {**{f"{k}_s": v for k, v in times.items()}, "step_s": step,
          "serial_s": serial, "binding": max(times, key=times.get),
          "mfu_upper_bound": model_flops / peak_flops / step if step else None,
          "mfu_if_serial": model_flops / peak_flops / serial if serial else None}


def chip_figures(kind: str, *, peak_flops: float = 0.0, hbm_bytes_per_s: float = 0.0,
                 interconnect_bytes_per_s: float = 0.0) -> dict:
  """The table's figures for a chip kind ('v5e', 'h200'), each replaceable (a CPU has no
  entry: give all three)."""
  try:
    c = hardware.chip(kind)
    table = {"peak_flops": c.peak_bf16_flops, "hbm_bytes_per_s": c.hbm_bytes_per_s,
             "interconnect_bytes_per_s": c.interconnect_bytes_per_s, "source": c.source}
  except KeyError:
    table = {"peak_flops": None, "hbm_bytes_per_s": None, "interconnect_bytes_per_s": None,
             "source": "given"}
  given = {"peak_flops": peak_flops, "hbm_bytes_per_s": hbm_bytes_per_s,
           "interconnect_bytes_per_s": interconnect_bytes_per_s}
  out = {**table, **{k: v for k, v in given.items() if v}}
  if out["peak_flops"] is None or out["hbm_bytes_per_s"] is None:
    raise ValueError(f"no published figures for {kind!r}: give the peak FLOP/s and the "
                     "memory bandwidth (--peak_flops, --hbm_bytes_per_s)")
  return out


def steps_to_train(epochs: float, examples: int, global_batch: int) -> int:
  return math.ceil(epochs * examples / global_batch)
