"""Helpers shared by the timing benchmarks (train_step.py, vs_torch.py): load waits, CPU
accounting from /proc, peak memory, machine description, config loading.

Import after putting the repository root first on sys.path:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from bench import benchlib
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
MIB = 1024 ** 2


def load_config(spec: str):
  """'configs/x.py[:variant args]' -> the file's get_config(args) (paths from the repo root)."""
  path, _, arg = spec.partition(":")
  path = pathlib.Path(path)
  if not path.is_absolute() and not path.exists():
    path = ROOT / path
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# ----------------------------------------------------------------------------- load
def mem_available_gib() -> float:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) / 1024 ** 2
  return float("inf")


def wait_for_load(threshold: float = 0.8, max_wait_s: float = 1200.0, poll_s: float = 30.0,
                  min_avail_gib: float = 0.0, log=None) -> dict:
  """Poll the 1-minute load average until it is below threshold (and, with min_avail_gib,
  MemAvailable is at least that), or max_wait_s passed.

  Returns {'load1': the load when we stopped waiting, 'mem_available_gib', 'waited_s',
  'quiet': bool}.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  start = time.time()
  while True:
    load1, avail = os.getloadavg()[0], mem_available_gib()
    waited = time.time() - start
    ok = load1 < threshold and avail >= min_avail_gib
    if ok or waited >= max_wait_s:
      if not ok:
        log(f"load {load1:.2f} (threshold {threshold}), {avail:.1f} GiB available "
            f"(want {min_avail_gib}) after {waited:.0f} s; going on")
      return {"load1": round(load1, 2), "mem_available_gib": round(avail, 1),
              "waited_s": round(waited, 1), "quiet": ok}
    log(f"load1 {load1:.2f} (< {threshold} wanted), {avail:.1f} GiB available; "
        f"waiting ({waited:.0f} s so far)")
    time.sleep(poll_s)


# ----------------------------------------------------------------------------- cpu
def _proc_stat():
  """{'cpu': (busy_s, total_s), 'cpu0': ..., ...} from /proc/stat."""
  tick = os.sysconf("SC_CLK_TCK")
  out = {}
  with open("/proc/stat") as f:
    for line in f:
      if not line.startswith("cpu"):
        break
      name, *vals = line.split()
      v = [int(x) for x in vals]
      total = sum(v[:8])
      idle = v[3] + v[4]
      out[name] = ((total - idle) / tick, total / tick)
  return out


def own_cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def cpu_snapshot():
  """(system-wide busy CPU-seconds, own CPU-seconds, per-core busy seconds)."""
  stat = _proc_stat()
  cores = [stat[k][0] for k in sorted(stat) if k != "cpu"]
  return stat["cpu"][0], own_cpu_s(), cores


def other_cores(s0, s1, wall: float) -> float:
  """Cores that other processes used between two snapshots."""
  return max(0.0, ((s1[0] - s0[0]) - (s1[1] - s0[1])) / wall)


def wait_quiet(max_wait_s: float, thresh: float = 0.3) -> float:
  """Wait (up to max_wait_s) until other processes use < thresh cores over a 1 s probe."""
  deadline = time.time() + max_wait_s
  while True:
    s0 = cpu_snapshot()
    time.sleep(1.0)
    s1 = cpu_snapshot()
    o = other_cores(s0, s1, 1.0)
    if o < thresh or time.time() > deadline:
      return o


class CpuSampler:
  """Background thread: every `interval` s, this process's CPU use (in cores) and each
  core's busy fraction. Summaries show whether a core sat idle while we computed.
  """

  def __init__(self, interval: float = 0.2):
    self.interval = interval
    self.samples = []   # (own cores, [busy fraction per core], others' cores)
    self.active = False  # sample only while set (e.g. during timed steps)
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self):
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def _run(self):
    prev_t, prev, prev_active = time.perf_counter(), cpu_snapshot(), self.active
    while not self._stop.wait(self.interval):
      now_t, now, active = time.perf_counter(), cpu_snapshot(), self.active
      dt = now_t - prev_t
      if dt > 0 and active and prev_active:
        own = (now[1] - prev[1]) / dt
        per_core = [min(1.0, (b - a) / dt) for a, b in zip(prev[2], now[2])]
        self.samples.append((own, per_core, other_cores(prev, now, dt)))
      prev_t, prev, prev_active = now_t, now, active

  def summary(self) -> dict:
    if not self.samples:
      return {}
    n = len(self.samples)
    own = [s[0] for s in self.samples]
    cores = len(self.samples[0][1])
    return {
        "samples": n, "interval_s": self.interval,
        "own_cores_mean": round(sum(own) / n, 3),
        # time fractions at each level of parallelism of this process
        "frac_own_below_1.2_cores": round(sum(o < 1.2 for o in own) / n, 3),
        "frac_own_above_1.8_cores": round(sum(o > 1.8 for o in own) / n, 3),
        "per_core_busy_mean": [round(sum(s[1][c] for s in self.samples) / n, 3)
                               for c in range(cores)],
        "others_cores_mean": round(sum(s[2] for s in self.samples) / n, 3),
    }


# ----------------------------------------------------------------------------- memory
def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


# ----------------------------------------------------------------------------- machine
def machine() -> dict:
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "nproc": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
          "python": sys.version.split()[0]}
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    keep = ("Architecture", "CPU(s)", "Model name", "CPU family", "Model:", "Thread(s) per core",
            "Core(s) per socket", "L2 cache", "L3 cache")
    info["lscpu"] = {}
    for line in lscpu.splitlines():
      if any(line.startswith(p) for p in keep):
        name, _, value = line.partition(":")
        info["lscpu"][name.strip()] = value.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    with open("/proc/meminfo") as f:
      info["mem_total_gib"] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
  except OSError:
    pass
  return info


def write_json(path: str | None, obj) -> None:
  text = json.dumps(obj, indent=1)
  if path:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")
  return text
