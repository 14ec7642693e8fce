"""The collectives report (ssacl_jax.collectives) on hand-written HLO, and the roofline
arithmetic (ssacl_jax.roofline) on hand numbers."""
from __future__ import annotations

import pytest

from ssacl_jax import collectives, hardware, roofline

HLO = r"""
HloModule jit_train_step, entry_computation_layout={()->()}

%body (p: (s32[], bf16[64,32])) -> (s32[], bf16[64,32]) {
  %p = (s32[], bf16[64,32]{1,0}) parameter(0)
  %w = bf16[16,32]{1,0} get-tuple-element(%p), index=1
  %ag.loop = bf16[64,32]{1,0} all-gather(%w), replica_groups=[2,4]<=[8], dimensions={0}, metadata={op_name="jit(step)/while/body/decoder/fc/dot_general"}
  ROOT %t = (s32[], bf16[64,32]{1,0}) tuple(%i, %ag.loop)
}

%cond (p: (s32[], bf16[64,32])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

%async_collective_fusion (x: bf16[16,32]) -> bf16[64,32] {
  %x = bf16[16,32]{1,0} parameter(0)
  ROOT %ag.clone = bf16[64,32]{1,0} all-gather(%x), channel_id=7, replica_groups=[2,4]<=[8], dimensions={0}, metadata={op_name="jit(step)/jvp(Model)/encoder/fc/dot_general"}
}

%scan_body (q: (s32[], f32[8])) -> (s32[], f32[8]) {
  %q = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%q), index=1
  %ar.scan = f32[8]{0} all-reduce(%x), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add, metadata={op_name="jit(step)/scan/add"}
  ROOT %u = (s32[], f32[8]{0}) tuple(%j, %ar.scan)
}

ENTRY %main (param.1: f32[16,32], param.2: f32[4]) -> f32[] {
  %param.1 = f32[16,32]{1,0} parameter(0), sharding={devices=[4,1,2]<=[8]}, metadata={op_name="state[\'params\'][\'encoder\'][\'fc\'][\'kernel\']"}
  %param.2 = f32[4]{0} parameter(1), metadata={op_name="state[\'params\'][\'encoder\'][\'fc\'][\'bias\']"}
  %convert.1 = bf16[16,32]{1,0} convert(%param.1), metadata={op_name="jit(step)/convert_element_type"}
  %ag.1 = bf16[64,32]{1,0} all-gather(%convert.1), channel_id=7, replica_groups=[2,4]<=[8], dimensions={0}, metadata={op_name="jit(step)/jvp(Model)/encoder/fc/dot_general"}
  %ags = (bf16[16,32]{1,0}, bf16[64,32]{1,0}) all-gather-start(%convert.1), replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_1'}, dimensions={0}, metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/fc/dot_general"}
  %agd = bf16[64,32]{1,0} all-gather-done(%ags)
  %f = bf16[64,32]{1,0} fusion(%convert.1), kind=kOutput, calls=%async_collective_fusion
  %ag.2 = f32[8]{0} all-gather(%param.2), replica_groups=[4,2]<=[8], dimensions={0}, metadata={op_name="jit(step)/jvp(Model)/encoder/fc/add"}
  %rs = f32[4,32]{1,0} reduce-scatter(%g), replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/fc/dot_general"}
  %ar.c = (f32[4]{0}, f32[2]{0}) all-reduce(%a, %b), replica_groups={}, to_apply=%add, metadata={op_name="(reduce_sum:jit(step)/transpose(jvp(Model))/encoder/fc/reduce_sum:jit(step)/transpose(jvp(Model))/head/reduce_sum)"}
  %w = (s32[], bf16[64,32]{1,0}) while(%init), condition=%cond, body=%body
  %s = (s32[], f32[8]{0}) while(%init2), condition=%cond, body=%scan_body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[] constant(0)
}
"""


def by(ops, **want):
  return [c for c in ops if all(getattr(c, k) == v for k, v in want.items())]


def test_collective_ops_name_their_parameter_pass_group_and_runs():
  ops = collectives.collective_ops(HLO, num_devices=8)
  assert len(ops) == 7   # the fusion's clone of %ag.1 (same channel id) counts once
  assert len(collectives.collective_ops(HLO, num_devices=8, dedupe=False)) == 8
  fwd, bwd = by(ops, source="params/encoder/fc/kernel")
  assert (fwd.op, fwd.dtype, fwd.shape, fwd.bytes, fwd.group_size) == (
      "all-gather", "bf16", (64, 32), 64 * 32 * 2, 4)
  assert not fwd.backward and bwd.backward and bwd.bytes == 64 * 32 * 2   # async: result only
  assert bwd.group_size == 4                                   # mesh-style replica groups
  bias, = by(ops, source="params/encoder/fc/bias")
  assert bias.group_size == 2 and bias.runs == 1
  rs, = by(ops, op="reduce-scatter")
  assert (rs.bytes, rs.group_size, rs.source) == (4 * 32 * 4, 4, "encoder/fc/dot_general")
  combined, = by(ops, op="all-reduce", runs=1)
  assert combined.source == "encoder/fc/reduce_sum (+1 combined)"
  assert combined.bytes == 24 and combined.group_size == 8     # replica_groups={}: all
  loop, = by(ops, runs=None)                                   # unknown trip count
  assert loop.source == "while/body/decoder/fc/dot_general"
  scanned, = by(ops, runs=3)
  assert scanned.group_size == 2


def test_grouped_collectives_and_totals():
  ops = collectives.collective_ops(HLO, num_devices=8)
  groups = collectives.group_collectives(ops)
  assert groups[0]["bytes"] == 64 * 32 * 2 and groups[0]["op"] == "all-gather"
  scanned = [g for g in groups if g["op"] == "all-reduce" and g["group_size"] == 2][0]
  assert (scanned["count"], scanned["bytes"]) == (3, 3 * 32)
  totals = collectives.collective_totals(ops, 8)
  call, loop = totals["per_call"], totals["per_loop_iteration"]
  assert call["all-gather"] == {"count": 3, "bytes_per_device": 2 * 4096 + 32,
                                "bytes_all_devices": 8 * (2 * 4096 + 32)}
  assert call["total"]["count"] == 3 + 1 + 1 + 3
  assert loop["total"] == {"count": 1, "bytes_per_device": 4096, "bytes_all_devices": 8 * 4096}
  stats = collectives.collective_stats(HLO)                    # static counts, as before
  assert stats["all-gather"]["count"] == 5 and stats["all-reduce"]["count"] == 2


def test_ring_wire_bytes():
  assert roofline.ring_wire_bytes("all-gather", 400, 4) == 300
  assert roofline.ring_wire_bytes("all-to-all", 400, 4) == 300
  assert roofline.ring_wire_bytes("reduce-scatter", 100, 4) == 300
  assert roofline.ring_wire_bytes("all-reduce", 400, 4) == 600
  assert roofline.ring_wire_bytes("collective-permute", 400, 2) == 400
  assert roofline.ring_wire_bytes("all-reduce", 400, 1) == 0
  ops = collectives.collective_ops(HLO, num_devices=8)
  want = (2 * 4096 * 3 / 4 + 32 / 2 + 512 * 3 + 2 * 24 * 7 / 8     # per call
          + 4096 * 3 / 4 + 3 * 2 * 32 / 2)                      # loop once, scan 3x
  assert roofline.wire_bytes(ops) == pytest.approx(want)


def test_roofline_prediction_on_hand_numbers():
  got = roofline.predict(flops=2e12, model_flops=1e12, hbm_bytes=4e9, wire=3e9,
                         peak_flops=1e12, hbm_bytes_per_s=1e10,
                         interconnect_bytes_per_s=2e9)
  # compute 2 s, memory 0.4 s, interconnect 3e9 / (2e9 / 2) = 3 s
  assert got["compute_s"] == 2 and got["memory_s"] == pytest.approx(0.4)
  assert got["interconnect_s"] == 3 and got["step_s"] == 3
  assert got["binding"] == "interconnect" and got["serial_s"] == pytest.approx(5.4)
  assert got["mfu_upper_bound"] == pytest.approx(1e12 / 1e12 / 3)
  assert got["mfu_if_serial"] == pytest.approx(1e12 / 1e12 / 5.4)
  no_wire = roofline.predict(flops=2e12, model_flops=1e12, hbm_bytes=0, wire=0,
                             peak_flops=1e12, hbm_bytes_per_s=1e10,
                             interconnect_bytes_per_s=None)
  assert no_wire["binding"] == "compute" and no_wire["mfu_upper_bound"] == 0.5


def test_chip_figures_come_from_the_hardware_table():
  v5e = roofline.chip_figures("v5e")
  assert v5e["peak_flops"] == hardware.chip("v5e").peak_bf16_flops == 197e12
  assert v5e["interconnect_bytes_per_s"] == hardware.chip("v5e").interconnect_bytes_per_s
  assert roofline.chip_figures("v5e", peak_flops=1.0)["peak_flops"] == 1.0
  with pytest.raises(ValueError, match="--peak_flops"):
    roofline.chip_figures("cpu")
  cpu = roofline.chip_figures("cpu", peak_flops=1e11, hbm_bytes_per_s=2e10)
  assert cpu["interconnect_bytes_per_s"] is None
  assert roofline.steps_to_train(51, 270_000, 256) == 53_790
