"""One training step of SS-ACL: compile time, step time, throughput, memory, FLOPs, MFU.

  python bench/train_step.py --config configs/demo.py --batch 8 --steps 5
  python bench/train_step.py --config configs/ssacl_vitb16.py --batch 4 --json OUT.json
  python bench/train_step.py --config configs/ssacl_vitb16.py:bf16 --batch 32   # on a GPU

The state comes from state.setup_state on a mesh of --devices devices (default 1:
config.mesh.shape = (1, 1, 1); N > 1: (N, 1, 1) data parallel, on CPU through
--xla_force_host_platform_device_count=N). The batch has the shapes of ssacl.dummy_batch
with random images and token ids. The step is the trainer's (steps.jit_train_step: state
donated), lowered and compiled ahead of the timed calls.

Reported: lower/compile seconds; the median step time over --steps timed steps after
--warmup (like the PyTorch peer, a step during which other processes used >= 0.2 cores is
repeated, up to 3x --steps attempts, and the clean-only median is given too); examples/s;
process peak RSS (getrusage) and the compiled program's memory_analysis() (arguments,
temps, outputs); FLOPs per step from compiled.cost_analysis() and from `hand_flops` (matmul
FLOPs counted from the shapes, x3 for forward + backward) and their ratio; MFU of both
against the device peak: on CPU a jitted 2048^3 float32 matmul measured in this run, on
GPU/TPU the datasheet dense bf16 figure. During the timed steps a sampler records this
process's CPU use (cores) and each core's busy fraction (does a core sit idle?).

JAX_PLATFORMS defaults to cpu (set it to cuda/tpu to time an accelerator). Prints one JSON
document; --json also writes it.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/demo.py",
                 help="config file, optionally with variants (configs/ssacl_vitb16.py:bf16)")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  p.add_argument("--steps", type=int, default=5, help="timed steps (>= 5 recommended)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--devices", type=int, default=1,
                 help="devices in the (data) mesh; on CPU forces this many host devices")
  p.add_argument("--mesh", default="", help="explicit mesh shape 'd,f,t' (overrides --devices')")
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, e.g. --set model.remat=True (repeatable)")
  p.add_argument("--quiet_wait", type=float, default=60.0,
                 help="before each timed step wait up to this many s for other processes to "
                      "use < 0.3 cores (0: off)")
  p.add_argument("--max_attempts_factor", type=int, default=2,
                 help="repeat steps disturbed by other processes (>= 0.2 cores), at most this "
                      "factor x --steps attempts")
  p.add_argument("--wait_load", type=float, default=0.0,
                 help="before anything, wait until the 1-min load average is below this (0: off)")
  p.add_argument("--wait_load_max_s", type=float, default=1200.0)
  p.add_argument("--peak", default="auto",
                 help="peak FLOP/s for MFU: 'auto' (CPU: measured matmul, else datasheet), "
                      "'measure', or a number")
  p.add_argument("--profile_dir", default="",
                 help="trace one extra step with jax.profiler into this folder")
  p.add_argument("--dump_hlo", default="",
                 help="write the compiled step's optimized HLO text to this file")
  p.add_argument("--compile_only", action="store_true",
                 help="lower and compile from the abstract state (nothing allocated); report "
                      "compile time, memory_analysis and FLOPs only")
  p.add_argument("--trainer_compiler_options", type=int, default=1,
                 help="1: compile with state_lib.compiler_options() as the trainer does (if the "
                      "imported package has it); 0: XLA defaults (plus --xla_flags)")
  p.add_argument("--release_host_memory", type=int, default=1,
                 help="1: as the trainer does, hand the compiler's freed heap back to the OS "
                      "before the first step (train.release_freed_host_memory); 0: don't")
  p.add_argument("--src", default="",
                 help="import ssacl_jax from this folder instead of the checkout (before/after "
                      "comparisons against a copy of the package)")
  p.add_argument("--cache_workdir", default="",
                 help="use the trainer's persistent compilation cache as a run in this workdir "
                      "would (config train.compilation_cache_dir; 'auto': beside it)")
  p.add_argument("--json", default="")
  return p.parse_args(argv)


ARGS = parse_args()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if os.environ["JAX_PLATFORMS"].startswith("cpu") and ARGS.devices > 1:
  _flags += f" --xla_force_host_platform_device_count={ARGS.devices}"
if ARGS.xla_flags:
  _flags += " " + ARGS.xla_flags
if _flags.strip():
  os.environ["XLA_FLAGS"] = _flags.strip()

from bench import benchlib  # noqa: E402

if ARGS.src:
  sys.path.insert(0, str(pathlib.Path(ARGS.src).resolve()))

if ARGS.wait_load > 0:
  LOAD_WAIT = benchlib.wait_for_load(ARGS.wait_load, ARGS.wait_load_max_s)
else:
  LOAD_WAIT = {"load1": round(os.getloadavg()[0], 2), "waited_s": 0.0, "quiet": None}

import ast  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from ssacl_jax import (anatomy, flops, hardware, perf, sharding, state as state_lib, steps,  # noqa: E402
                       train)
from ssacl_jax.models import ssacl  # noqa: E402


# ----------------------------------------------------------------------------- peak
def measured_matmul_peak(n: int = 2048, reps: int = 10) -> dict:
  """FLOP/s of a jitted n^3 float32 matmul on the default device (median of reps), and
  FLOPs per CPU-second of this process (robust to other processes' load: x cores gives
  the quiet-machine peak)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  s0 = benchlib.cpu_snapshot()
  w0 = time.perf_counter()
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  wall = time.perf_counter() - w0
  s1 = benchlib.cpu_snapshot()
  med = statistics.median(times)
  matmul_flops = 2 * n ** 3
  return {"flops_per_s": matmul_flops / med, "source": f"measured {n}^3 f32 matmul, median of {reps}",
          "best_flops_per_s": matmul_flops / min(times),
          "flops_per_cpu_s": matmul_flops * reps / max(s1[1] - s0[1], 1e-9),
          "cpu_util": round((s1[1] - s0[1]) / wall, 3),
          "other_cores": round(benchlib.other_cores(s0, s1, wall), 3)}


def device_peak(spec: str) -> dict:
  kind = jax.devices()[0].device_kind
  platform = jax.default_backend()
  if spec not in ("auto", "measure"):
    return {"flops_per_s": float(spec), "source": "--peak"}
  chip = hardware.chip_for_device_kind(kind)
  if spec == "auto" and platform != "cpu" and chip is not None:
    return {"flops_per_s": chip.peak_bf16_flops, "source": f"datasheet dense bf16 ({kind}): "
            f"{chip.source}"}
  return measured_matmul_peak()


# ----------------------------------------------------------------------------- inputs
def random_inputs(config, batch: int, seed: int = 0):
  """(batch dict, anatomy ids, anatomy mask): dummy_batch shapes, random values."""
  rng = np.random.default_rng(seed)
  m, d = config.model, config.data
  out = {k: np.array(v) for k, v in ssacl.dummy_batch(config, batch).items()}
  out["image"] = rng.standard_normal(out["image"].shape).astype(np.float32)

  def tokens(n, length, vocab, lo, hi):
    ids = rng.integers(5, vocab, (n, length)).astype(np.int32)
    lens = rng.integers(min(lo, length), min(hi, length) + 1, n)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    return ids * mask, mask

  out["text_ids"], out["text_mask"] = tokens(batch, d.text_len, m.text.vocab_size, 30, 70)
  out["dec_ids"], out["dec_mask"] = tokens(batch, d.decoder_len, m.report.vocab_size,
                                           d.decoder_len - 15, d.decoder_len)
  out["dec_mask"][0] = 1                             # the longest report sets the padding
  out["dec_loss_mask"] = out["dec_mask"].astype(np.float32)
  out["leaf_mask"] = (rng.random((batch, anatomy.NUM_LEAVES)) < 0.5).astype(np.int32)
  ids, mask = tokens(anatomy.NUM_LEAVES, d.anatomy_len, m.text.vocab_size, 3, 7)
  return out, ids, mask


def apply_overrides(config, items):
  for item in items:
    field, _, raw = item.partition("=")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, last = field.split(".")
    for name in parents:
      node = node[name]
    node[last] = value


def memory_figures(compiled) -> dict:
  ma = compiled.memory_analysis()
  if ma is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(ma, f, 0) or 0) for f in fields}
  out["temp_plus_argument_bytes"] = out["temp_bytes"] + out["argument_bytes"]
  out["temp_plus_argument_gib"] = round(out["temp_plus_argument_bytes"] / benchlib.GIB, 3)
  return out


def cost_figures(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return {}
  return {"flops": float(cost.get("flops", 0.0)),
          "transcendentals": float(cost.get("transcendentals", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


# ----------------------------------------------------------------------------- main
def trainer_options(a) -> dict | None:
  """The compiler options train.train_and_evaluate jits the step with (None: defaults)."""
  if not a.trainer_compiler_options or not hasattr(state_lib, "compiler_options"):
    return None
  return state_lib.compiler_options()


def jit_step(config, setup, mesh):
  """The trainer's step (steps.jit_train_step) without its non-finite record; the
  compiler options come with the compile (trainer_options)."""
  return steps.jit_train_step(config, setup, mesh, 2, ssacl.LOSS_NAMES, nonfinite_record=False)


def compile_only(a, config, model, mesh, batch_np, ids_np, mask_np, machine, cache_dir=None):
  """Compile from ShapeDtypeStructs; report compile time, memory and FLOPs."""
  setup = state_lib.setup_state(config, model, mesh, (ids_np, mask_np),
                                ssacl.dummy_batch(config, 1))
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  replicated = NamedSharding(mesh, P())
  sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  batch = {k: sds(v, batch_sharding) for k, v in batch_np.items()}
  key = jax.eval_shape(lambda: jax.random.key(0))
  step = jit_step(config, setup, mesh)
  options = trainer_options(a)
  t0 = time.perf_counter()
  lowered = step.lower(setup.abstract_state, batch, sds(ids_np, replicated),
                       sds(mask_np, replicated), jax.ShapeDtypeStruct(key.shape, key.dtype))
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=options)
  t2 = time.perf_counter()
  if a.dump_hlo:
    pathlib.Path(a.dump_hlo).write_text(compiled.as_text())
  cost = cost_figures(compiled)
  hand = flops.hand_flops(config, config.train.global_batch_size)
  report = {
      "bench": "train_step_compile_only", "config": a.config, "overrides": a.set,
      "batch": config.train.global_batch_size, "dtype": config.model.dtype,
      "remat": config.model.remat, "backend": jax.default_backend(),
      "devices": mesh.size, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compiler_options": trainer_options(a), "machine": machine,
      "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
      "compilation_cache_dir": cache_dir,
      "compiled_memory": memory_figures(compiled),
      "xla_flops_per_step": cost.get("flops"), "hand_flops_per_step": hand["step"],
      "xla_over_hand": round(cost["flops"] / hand["step"], 4) if cost.get("flops") else None,
      "peak_rss_gib": round(benchlib.peak_rss_bytes() / benchlib.GIB, 3),
  }
  print(benchlib.write_json(a.json, report))


def main():
  a = ARGS
  machine = benchlib.machine()
  config = benchlib.load_config(a.config)
  config.train.grad_accum_steps = 1  # the figures are one forward-backward of the whole batch
  apply_overrides(config, a.set)
  if a.batch:
    config.train.global_batch_size = a.batch
  batch_size = config.train.global_batch_size
  cache_dir = perf.compilation_cache_dir(config, a.cache_workdir) if a.cache_workdir else None
  perf.use_compilation_cache(cache_dir)
  n_dev = a.devices
  config.mesh.shape = (tuple(int(x) for x in a.mesh.split(",")) if a.mesh
                       else (n_dev, 1, 1))
  devices = jax.devices()[:int(np.prod(config.mesh.shape))]
  mesh = sharding.make_mesh(config, devices)
  jax.set_mesh(mesh)

  model = ssacl.build_model(config.model)
  batch_np, ids_np, mask_np = random_inputs(config, batch_size)
  if a.compile_only:
    return compile_only(a, config, model, mesh, batch_np, ids_np, mask_np, machine, cache_dir)
  t0 = time.perf_counter()
  setup = state_lib.setup_state(config, model, mesh, (ids_np, mask_np), ssacl.dummy_batch(config, 1))
  state = setup.init_fn(jax.random.key(config.train.seed))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))

  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  replicated = NamedSharding(mesh, P())
  batch = jax.device_put(batch_np, batch_sharding)
  ids, mask = jax.device_put((ids_np, mask_np), replicated)
  key = jax.device_put(jax.random.key(config.train.seed), replicated)
  step = jit_step(config, setup, mesh)
  rss_before_compile = benchlib.current_rss_bytes()
  options = trainer_options(a)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, ids, mask, key)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=options)
  t2 = time.perf_counter()
  lower_s, compile_s = t1 - t0, t2 - t1
  peak_after_compile = benchlib.peak_rss_bytes()
  memory = memory_figures(compiled)
  cost = cost_figures(compiled)
  if a.dump_hlo:
    pathlib.Path(a.dump_hlo).write_text(compiled.as_text())
  del lowered
  if a.release_host_memory and hasattr(train, "release_freed_host_memory"):
    train.release_freed_host_memory()
  rss_after_trim = benchlib.current_rss_bytes()

  def run_step(s):
    s, metrics = compiled(s, batch, ids, mask, key)
    jax.block_until_ready((s, metrics))
    return s, metrics

  # Warm-up, then (quiet machine) the peak and the profiled step, then timed steps until
  # `steps` ran undisturbed (or the attempts ran out).
  recs = []
  sampler = benchlib.CpuSampler(0.2)
  peak = profile = None
  it = 0
  while (it < a.warmup
         or (sum(r["other_cores"] < 0.2 for r in recs if not r["warmup"]) < a.steps
             and it < a.warmup + max(1, a.max_attempts_factor) * a.steps)):
    warm = it < a.warmup
    if not warm and peak is None:
      if a.quiet_wait > 0:
        benchlib.wait_quiet(a.quiet_wait)
      peak = device_peak(a.peak)
      if a.profile_dir:
        if a.quiet_wait > 0:
          benchlib.wait_quiet(a.quiet_wait)
        jax.profiler.start_trace(a.profile_dir, create_perfetto_trace=True)
        state, metrics = run_step(state)
        jax.profiler.stop_trace()
        profile = a.profile_dir
      sampler.__enter__()
    pre = benchlib.wait_quiet(a.quiet_wait) if not warm and a.quiet_wait > 0 else None
    sampler.active = not warm
    s0, t0 = benchlib.cpu_snapshot(), time.perf_counter()
    state, metrics = run_step(state)
    dt = time.perf_counter() - t0
    s1 = benchlib.cpu_snapshot()
    sampler.active = False
    rec = {"step": it, "warmup": warm, "total_s": round(dt, 4),
           "cpu_util": round((s1[1] - s0[1]) / dt, 3), "cpu_s": round(s1[1] - s0[1], 3),
           "other_cores": round(benchlib.other_cores(s0, s1, dt), 3),
           "other_cores_before": None if pre is None else round(pre, 3),
           "per_core_busy": [round((b - c) / dt, 3) for c, b in zip(s0[2], s1[2])],
           "loss": round(float(metrics["loss"]), 4), "load1": round(os.getloadavg()[0], 2)}
    recs.append(rec)
    print(rec, file=sys.stderr, flush=True)
    it += 1
  if sampler._thread is not None:
    sampler.__exit__(None, None, None)
  if not np.isfinite(recs[-1]["loss"]):
    raise FloatingPointError(f"non-finite loss: {recs[-1]}")

  device_peak_gib = None
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      device_peak_gib = round(stats["peak_bytes_in_use"] / benchlib.GIB, 3)

  timed = [r for r in recs if not r["warmup"]]
  clean = [r["total_s"] for r in timed if r["other_cores"] < 0.2]
  med = statistics.median(r["total_s"] for r in timed)
  med_clean = statistics.median(clean) if clean else None
  step_s = med_clean or med
  hand = flops.hand_flops(config, batch_size)
  xla_flops = cost.get("flops") if cost else None
  if xla_flops is not None and len(devices) > 1:
    xla_flops *= len(devices)   # cost_analysis is per device (SPMD program)
  peak_total = peak["flops_per_s"] * (len(devices) if jax.default_backend() != "cpu" else 1)

  report = {
      "bench": "train_step", "config": a.config, "overrides": a.set, "batch": batch_size,
      "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
      "remat": config.model.remat, "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "devices": len(devices),
      "mesh": dict(mesh.shape), "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "compiler_options": options,
      "params": n_params,
      "src": str(pathlib.Path(ssacl.__file__).resolve().parents[2]),
      "machine": machine, "load_wait": LOAD_WAIT,
      "init_s": round(init_s, 2), "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
      "steps": a.steps, "warmup": a.warmup,
      "median_step_s": round(med, 4),
      "median_step_s_clean": None if med_clean is None else round(med_clean, 4),
      "n_clean": len(clean), "step_s_all": [r["total_s"] for r in timed],
      # CPU-seconds this process spent per step: robust to other processes' load
      "median_cpu_s_per_step": round(statistics.median(r["cpu_s"] for r in timed), 3),
      "examples_per_s": round(batch_size / step_s, 4),
      "peak_rss_gib": round(benchlib.peak_rss_bytes() / benchlib.GIB, 3),
      "peak_rss_gib_after_compile": round(peak_after_compile / benchlib.GIB, 3),
      "rss_gib_before_compile": round(rss_before_compile / benchlib.GIB, 3),
      "release_host_memory": bool(a.release_host_memory),
      "rss_gib_after_compile_and_release": round(rss_after_trim / benchlib.GIB, 3),
      "rss_gib_end": round(benchlib.current_rss_bytes() / benchlib.GIB, 3),
      "device_peak_gib": device_peak_gib,
      "compiled_memory": memory,
      "xla_flops_per_step": xla_flops,
      "xla_transcendentals": cost.get("transcendentals"),
      "hand_flops_per_step": hand["step"],
      "hand_flops_breakdown_fwd": {k: v for k, v in hand.items() if k.endswith("_fwd")},
      "release_hand_flops_per_step": flops.hand_flops(config, batch_size, release=True)["step"],
      "xla_over_hand": None if not xla_flops else round(xla_flops / hand["step"], 4),
      "peak": {**peak, "flops_per_s_all_devices": peak_total},
      "mfu_hand": round(hand["step"] / step_s / peak_total, 4),
      # contention-robust: model FLOPs per CPU-second of the step over the matmul's
      "mfu_hand_cpu_time": (round(hand["step"] / statistics.median(r["cpu_s"] for r in timed)
                                  / peak["flops_per_cpu_s"], 4)
                            if "flops_per_cpu_s" in peak else None),
      "mfu_xla": None if not xla_flops else round(xla_flops / step_s / peak_total, 4),
      "achieved_tflops_hand": round(hand["step"] / step_s / 1e12, 4),
      "cpu_sampler": sampler.summary(),
      "mean_cpu_util": round(statistics.mean(r["cpu_util"] for r in timed), 3),
      "profile_dir": profile,
      "records": recs,
  }
  print(benchlib.write_json(a.json, report))


if __name__ == "__main__":
  main()
