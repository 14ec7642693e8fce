"""Pod-scale plumbing without a pod: goodput accounting, interval throughput and MFU, the
peak table lookup, the compilation-cache folder, the device prefetcher's checkpointed
position, and the multi-slice mesh over fake devices."""
import json
import threading

import ml_collections
import numpy as np
import pytest

from ssacl_jax import data as data_lib, perf, sharding


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_goodput_parts_add_up_and_productive_fraction():
  clock = FakeClock()
  g = perf.Goodput(clock)
  for part, seconds in (("initialization", 3.0), ("compilation", 5.0), ("train_steps", 8.0),
                        ("data_wait", 1.0), ("checkpointing", 2.0)):
    with g.timing(part):
      clock.now += seconds
  clock.now += 1.0   # untimed
  s = g.summary()
  assert s["goodput/total_s"] == 20.0 and s["goodput/other_s"] == 1.0
  assert s["goodput/train_steps_s"] == 8.0 and s["goodput/evaluation_s"] == 0.0
  assert s["goodput/productive_fraction"] == 0.4


def test_interval_meter_step_time_examples_and_mfu():
  clock = FakeClock()
  g = perf.Goodput(clock)
  meter = perf.IntervalMeter(g, examples_per_step=64, num_devices=8, peak_per_device=1e12,
                             start_step=10)
  meter.flops_per_step = 4e12
  with g.timing("train_steps"):
    clock.now += 4.0
  with g.timing("data_wait"):
    clock.now += 1.0
  with g.timing("evaluation"):   # not part of the steps' time
    clock.now += 50.0
  got = meter.measure(15)
  assert got["perf/step_time_s"] == pytest.approx(1.0)          # (4 + 1) s / 5 steps
  assert got["data_wait_s"] == pytest.approx(1.0)
  assert got["perf/examples_per_s"] == pytest.approx(64.0)
  assert got["perf/mfu"] == pytest.approx(4e12 / (1.0 * 8 * 1e12))
  with g.timing("train_steps"):
    clock.now += 2.0
  assert meter.measure(17)["perf/step_time_s"] == pytest.approx(1.0)   # only the new interval
  no_peak = perf.IntervalMeter(g, 64, 8, None, 17)
  no_peak.flops_per_step = 4e12
  with g.timing("train_steps"):
    clock.now += 1.0
  assert "perf/mfu" not in no_peak.measure(18)


def test_peak_from_the_table_or_the_config():
  c = ml_collections.ConfigDict({"train": {"peak_flops_per_device": 0.0}})
  assert perf.peak_flops_per_device(c, "TPU v5 lite") == 197e12
  assert perf.peak_flops_per_device(c, "NVIDIA H200") == 989e12
  assert perf.peak_flops_per_device(c, "cpu") is None
  c.train.peak_flops_per_device = 5e11
  assert perf.peak_flops_per_device(c, "cpu") == 5e11


@pytest.mark.parametrize("setting,workdir,want", [
    ("auto", "/runs/exp1", "/runs/compilation_cache"),
    ("auto", "/runs/exp1/", "/runs/compilation_cache"),
    ("auto", "gs://bucket/runs/exp1", "gs://bucket/runs/compilation_cache"),
    ("", "/runs/exp1", None),
    ("/cache", "/runs/exp1", "/cache")])
def test_compilation_cache_sits_beside_the_workdir(setting, workdir, want):
  c = ml_collections.ConfigDict({"train": {"compilation_cache_dir": setting}})
  assert perf.compilation_cache_dir(c, workdir) == want


def test_profiler_is_off_unless_asked():
  assert not perf.StepProfiler("/w", (0, 0)).enabled
  assert not perf.StepProfiler("/w", (5, 3)).enabled
  p = perf.StepProfiler("/w", (3, 5))
  assert p.enabled and p.directory == "/w/profile"


# ----------------------------------------------------------------------------- prefetch
class CountingData:
  """next_train_batch() -> 0, 1, 2, ...; the iterator's state counts the batches taken."""

  def __init__(self, fail_at=None):
    self.train_iterator = self
    self.taken, self.fail_at = 0, fail_at

  def get_state(self):
    return {"taken": self.taken}

  def next_train_batch(self):
    if self.taken == self.fail_at:
      raise ValueError(f"bad record {self.taken}")
    self.taken += 1
    return self.taken - 1


def test_prefetcher_runs_ahead_but_checkpoints_the_consumed_position():
  data = CountingData()
  batches = data_lib.DevicePrefetcher(data, depth=2)
  try:
    assert json.loads(batches.position().get_state()) == {"taken": 0}
    assert [batches.next() for _ in range(3)] == [0, 1, 2]
    for _ in range(200):   # the producer fills the queue: 2 waiting + 1 being put
      if data.taken >= 5:
        break
      threading.Event().wait(0.01)
    assert data.taken >= 5
    assert json.loads(batches.position().get_state()) == {"taken": 3}
  finally:
    batches.close()
  taken = data.taken
  threading.Event().wait(0.05)
  assert data.taken == taken   # closed: nothing more is produced


def test_prefetcher_hands_producer_errors_to_the_loop():
  batches = data_lib.DevicePrefetcher(CountingData(fail_at=2), depth=1)
  try:
    assert [batches.next(), batches.next()] == [0, 1]
    with pytest.raises(ValueError, match="bad record 2"):
      batches.next()
  finally:
    batches.close()


# ----------------------------------------------------------------------------- multi-slice
class FakeDevice:
  def __init__(self, i, slice_index):
    self.id, self.slice_index = i, slice_index
    self.platform = self.device_kind = "cpu"
    self.process_index = i // 4

  def __repr__(self):
    return f"d{self.id}"


def mesh_config(shape, dcn_shape):
  return ml_collections.ConfigDict({"mesh": {"axes": ("data", "fsdp", "tensor"),
                                             "shape": shape, "dcn_shape": dcn_shape}})


def test_hybrid_mesh_puts_the_slices_on_the_data_axis(monkeypatch):
  devices = [FakeDevice(i, i // 8) for i in range(16)]   # 2 slices of 8
  built = {}
  monkeypatch.setattr(sharding, "Mesh", lambda grid, axes, axis_types: built.update(
      grid=grid, axes=axes) or "mesh")
  assert sharding.make_mesh(mesh_config((-1, 2, 1), (2, 1, 1)), devices) == "mesh"
  grid = built["grid"]
  assert grid.shape == (8, 2, 1) and built["axes"] == ("data", "fsdp", "tensor")
  slice_of = np.vectorize(lambda d: d.slice_index)(grid)
  # data rows 0-3 in slice 0, 4-7 in slice 1; fsdp (and tensor) inside one slice.
  np.testing.assert_array_equal(slice_of[:, :, 0], np.repeat([[0], [1]], [4, 4], axis=0)
                                .repeat(2, axis=1))
  assert sorted(d.id for d in grid.ravel()) == list(range(16))


def test_hybrid_mesh_refuses_a_slice_count_the_devices_lack():
  devices = [FakeDevice(i, 0) for i in range(8)]
  with pytest.raises(ValueError, match=r"asks for 2 slices; the 8 devices are on 1"):
    sharding.make_mesh(mesh_config((-1, 1, 1), (2, 1, 1)), devices)
  with pytest.raises(ValueError, match="differ in length"):
    sharding.make_mesh(mesh_config((-1, 1, 1), (2, 1)), devices)


def test_prefetcher_without_a_thread_reads_no_batch_ahead():
  data = CountingData()
  batches = data_lib.DevicePrefetcher(data, depth=2, threaded=False)
  assert [batches.next() for _ in range(3)] == [0, 1, 2] and data.taken == 3
  assert json.loads(batches.position().get_state()) == {"taken": 3}
  batches.close()
