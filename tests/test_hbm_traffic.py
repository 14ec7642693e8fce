"""Device-memory traffic counted from HLO (ssacl_jax.hbm_traffic): a hand-written TPU-style
module whose bytes are worked out by hand, and real CPU compiles against XLA's own count
where that count is exact (one elementwise kernel)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssacl_jax import hbm_traffic

HLO = r"""
HloModule jit_step, entry_computation_layout={()->()}

%fused_scale (p0: f32[64,128], p1: f32[64,128]) -> f32[64,128] {
  %p0 = f32[64,128]{1,0} parameter(0)
  %p1 = f32[64,128]{1,0} parameter(1)
  ROOT %m = f32[64,128]{1,0} multiply(%p0, %p1)
}

%fused_rows (q0: f32[64,128], i: s32[]) -> f32[8,128] {
  %q0 = f32[64,128]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[8,128]{1,0} dynamic-slice(%q0, %i, %z), dynamic_slice_sizes={8,128}
}

%fused_update (b: bf16[16,1024], u: bf16[1,1024], j: s32[]) -> bf16[16,1024] {
  %b = bf16[16,1024]{1,0} parameter(0)
  %u = bf16[1,1024]{1,0} parameter(1)
  %j = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = bf16[16,1024]{1,0} dynamic-update-slice(%b, %u, %j, %z)
}

%async_slice (a0: f32[64,128]) -> f32[8,128] {
  %a0 = f32[64,128]{1,0} parameter(0)
  ROOT %sl = f32[8,128]{1,0:S(1)} slice(%a0), slice={[0:8], [0:128]}
}

%carry (c0: f32[8,128], c1: f32[32,128], c2: f32[64,128]) -> (f32[32,128], f32[32,128], f32[64,128]) {
  %c0 = f32[8,128]{1,0:S(1)} parameter(0)
  %c1 = f32[32,128]{1,0} parameter(1)
  %c2 = f32[64,128]{1,0} parameter(2)
  %agc = f32[32,128]{1,0} all-gather(%c0), channel_id=9, replica_groups=[2,4]<=[8], dimensions={0}
  %neg = f32[64,128]{1,0} negate(%c2)
  ROOT %tc = (f32[32,128]{1,0}, f32[32,128]{1,0}, f32[64,128]{1,0}) tuple(%agc, %c1, %neg)
}

%body (t: (s32[], bf16[16,1024], bf16[1,1024])) -> (s32[], bf16[16,1024], bf16[1,1024]) {
  %t = (s32[], bf16[16,1024]{1,0}, bf16[1,1024]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%t), index=0
  %buf = bf16[16,1024]{1,0} get-tuple-element(%t), index=1
  %row = bf16[1,1024]{1,0} get-tuple-element(%t), index=2
  %new = bf16[16,1024]{1,0} fusion(%buf, %row, %k), kind=kLoop, calls=%fused_update, metadata={op_name="jit(step)/while/body/dynamic_update_slice"}
  ROOT %out = (s32[], bf16[16,1024]{1,0}, bf16[1,1024]{1,0}) tuple(%k, %new, %row)
}

%cond (t: (s32[], bf16[16,1024], bf16[1,1024])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[64,128], w: f32[64,128], i: s32[], init: (s32[], bf16[16,1024], bf16[1,1024])) -> f32[64,128] {
  %x = f32[64,128]{1,0:T(8,128)} parameter(0), metadata={op_name="x"}
  %w = f32[64,128]{1,0:T(8,128)} parameter(1)
  %i = s32[] parameter(2)
  %init = (s32[], bf16[16,1024]{1,0}, bf16[1,1024]{1,0}) parameter(3)
  %cs = (f32[64,128]{1,0:T(8,128)S(1)}, f32[64,128]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%w)
  %cd = f32[64,128]{1,0:T(8,128)S(1)} copy-done(%cs)
  %scaled = f32[64,128]{1,0:T(8,128)} fusion(%x, %cd), kind=kLoop, calls=%fused_scale, metadata={op_name="jit(step)/jvp(Model)/encoder/mul"}
  %rows = f32[8,128]{1,0:T(8,128)} fusion(%scaled, %i), kind=kLoop, calls=%fused_rows, metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/dynamic_slice"}
  %ags = (f32[8,128]{1,0}, f32[32,128]{1,0}) all-gather-start(%rows), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}
  %agd = f32[32,128]{1,0} all-gather-done(%ags)
  %ss = ((f32[64,128]{1,0}), f32[8,128]{1,0:S(1)}, s32[]{:S(2)}) async-start(%x), calls=%async_slice
  %sd = f32[8,128]{1,0:S(1)} async-done(%ss)
  %ss2 = ((f32[64,128]{1,0}), f32[8,128]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%x), slice={[8:16], [0:128]}
  %sd2 = f32[8,128]{1,0:S(1)} slice-done(%ss2)
  %shard = f32[8,128]{1,0:S(1)} parameter(4)
  %prev = f32[32,128]{1,0} parameter(5)
  %k1 = (f32[32,128]{1,0}, f32[32,128]{1,0}, f32[64,128]{1,0}) fusion(%shard, %prev, %x), kind=kCustom, calls=%carry
  %k2 = (f32[32,128]{1,0}, f32[32,128]{1,0}, f32[64,128]{1,0}) fusion(%shard, %prev, %x), kind=kCustom, calls=%carry
  %loop = (s32[], bf16[16,1024]{1,0}, bf16[1,1024]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %bc = f32[64,128]{1,0} bitcast(%scaled)
}
"""
MATRIX = 64 * 128 * 4   # one f32[64,128]
ROWS = 8 * 128 * 4


def test_kernels_count_each_kernels_device_memory_reads_and_writes():
  kernels = {k.name: k for k in hbm_traffic.kernels(HLO)}
  # Free instructions are no kernels: parameters, copy-done, bitcast, the loop itself.
  assert set(kernels) == {"cs", "scaled", "rows", "ags", "ss", "ss2", "k1", "k2", "new"}
  # The prefetch reads w from HBM once; the fusion then reads it from VMEM (S(1)).
  assert (kernels["cs"].read_bytes, kernels["cs"].written_bytes) == (MATRIX, 0)
  assert (kernels["scaled"].read_bytes, kernels["scaled"].written_bytes) == (MATRIX, MATRIX)
  assert kernels["scaled"].source == "encoder/mul" and not kernels["scaled"].backward
  # Used only through a dynamic slice, the operand is read 8 rows at a time (+ the index).
  assert (kernels["rows"].read_bytes, kernels["rows"].written_bytes) == (ROWS + 4, ROWS)
  assert kernels["rows"].backward
  # An async all-gather reads its shard and writes the gathered array (not the shard again).
  assert (kernels["ags"].read_bytes, kernels["ags"].written_bytes) == (ROWS, 4 * ROWS)
  # An async slice into VMEM reads its 8 rows from HBM and writes nothing there.
  assert (kernels["ss"].read_bytes, kernels["ss"].written_bytes) == (ROWS, 0)
  # The same, as compiled.as_text() prints it (slice-start / slice-done).
  assert (kernels["ss2"].read_bytes, kernels["ss2"].written_bytes) == (ROWS, 0)
  # Async collective fusion threads one all-gather (channel 9) through two fusions: its
  # result is written once, the passed-through parameter neither read nor written; each
  # reads x and writes its negation.
  assert (kernels["k1"].read_bytes, kernels["k1"].written_bytes) == (MATRIX, 4 * ROWS + MATRIX)
  assert (kernels["k2"].read_bytes, kernels["k2"].written_bytes) == (MATRIX, MATRIX)
  # The in-place update reads the row (and its index) and writes it, not the buffer, five
  # times (the loop's known trip count).
  row = 1024 * 2
  assert (kernels["new"].read_bytes, kernels["new"].written_bytes, kernels["new"].runs) == (
      row + 4, row, 5)
  assert hbm_traffic.launches(list(kernels.values())) == 8 + 5   # eight once, one 5 times
  assert hbm_traffic.total_bytes(list(kernels.values())) == (
      MATRIX + 2 * MATRIX + 2 * ROWS + 4 + 5 * ROWS + 2 * ROWS + 5 * (2 * row + 4)
      + 4 * MATRIX + 4 * ROWS)


def test_group_kernels_sums_by_source_and_pass():
  groups = hbm_traffic.group_kernels(hbm_traffic.kernels(HLO), depth=1)
  by = {(g["source"], g["pass"]): g for g in groups}
  assert by[("encoder", "fwd")]["bytes"] == 2 * MATRIX
  assert by[("encoder", "bwd")]["bytes"] == 2 * ROWS + 4
  assert by[("while", "fwd")] == {"source": "while", "pass": "fwd", "kernels": 5,
                                  "bytes": 5 * (2 * 1024 * 2 + 4)}
  assert [g["bytes"] for g in groups] == sorted((g["bytes"] for g in groups), reverse=True)


def _compiled(f, *args):
  return jax.jit(f).lower(*args).compile()


def test_one_elementwise_kernel_matches_xlas_count_on_cpu():
  """x * 2 + 1 is one fused kernel: it reads x and writes the result, which is also what
  XLA:CPU's cost analysis counts."""
  x = jnp.zeros((256, 384), jnp.float32)
  compiled = _compiled(lambda x: x * 2 + 1, x)
  total = hbm_traffic.total_bytes(hbm_traffic.kernels(compiled.as_text()))
  assert total == 2 * x.nbytes
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert total == pytest.approx(cost["bytes accessed"])


def test_a_loop_updating_one_row_counts_the_row_per_iteration_on_cpu():
  """fori_loop writing row k of a [32, 4096] buffer: each of its 32 iterations moves one
  row in and out, not the whole 512 KiB buffer."""
  buffer = jnp.zeros((32, 4096), jnp.float32)

  def fill(buf):
    def body(k, b):
      return jax.lax.dynamic_update_slice(b, jnp.full((1, 4096), k, b.dtype), (k, 0))
    return jax.lax.fori_loop(0, 32, body, buf)

  kernels = hbm_traffic.kernels(_compiled(fill, buffer).as_text())
  in_loop = [k for k in kernels if k.runs == 32]
  assert in_loop, [(k.name, k.opcode, k.runs) for k in kernels]
  row = 4096 * 4
  per_iteration = sum(k.read_bytes + k.written_bytes for k in in_loop)
  assert row <= per_iteration <= 3 * row + 64     # the row written, maybe built and read
  assert hbm_traffic.total_bytes(kernels) < 32 * 3 * row + 2 * buffer.nbytes
  np.testing.assert_array_equal(jax.jit(fill)(buffer)[:, 0], np.arange(32, dtype=np.float32))
