"""Ahead-of-time compilation of the training (and generation) step for a named target.

Compiles the real sharded step, as `train.train_and_evaluate` jits it (steps.jit_train_step:
state and batch shardings, donation), for the devices of a target that need not be attached:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_256.py \
      --topology v5e:16x16 --what both --json bench/results/aot_tpu_v5e_256.json

and reports per-chip memory (`compiled.memory_analysis()`: arguments, outputs, temps,
generated code, aliased donation), FLOPs (`compiled.cost_analysis()`), the collectives and
the device-memory bytes its kernels read and write (ssacl_jax/hbm_traffic.py), all read
from the compiled program (ssacl_jax/hlo_report.py). `--collectives` lists the
collectives by what they move (the parameter or jax op, pass, dtype, shape:
ssacl_jax/collectives.py) with totals per chip and per step; `--roofline` predicts the
train step's time per chip from its FLOPs, device-memory traffic and collective bytes and
the chip's published figures (ssacl_jax/roofline.py, hardware.py), and lists where the
traffic goes. Exit status 3, with the numbers, when a step would not fit in a
chip's memory (TPU: XLA's RESOURCE_EXHAUSTED at compile time; CPU/CUDA, or any platform
with --hbm_bytes: the compiled footprint against the limit). The generation step is the
SS-ACL beam search of ssacl_jax.generate (prefix, prefill, decoder loop with the KV cache).

Targets (--topology):
  v5e:16x16, v5p:4x4x4, v4:2x4x4, v6e:8x8   TPU slices (needs libtpu: the `tpu` extra); v4
                                            and v5p use megacore chips
  h200:1x1x8 (cuda)                         slices x hosts x GPUs; needs jax-cuda12-plugin and
                                            jax-cuda12-pjrt (installed --no-deps) and the
                                            target config configs/gpu_targets/h200.txtpb
  cpu:4                                     N host CPU devices (sets
                                            --xla_force_host_platform_device_count itself)

The last line printed is the report as one line of JSON (also written to --json).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import time

import flax.linen as nn
import jax
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from ssacl_jax import (anatomy, config_lib, flops, generate, hardware, hlo_report, roofline,
                       sharding, state as state_lib, steps)
from ssacl_jax.models import ssacl

EXIT_DOES_NOT_FIT = 3
GPU_TARGETS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "gpu_targets"

MEGACORE = ("v4", "v5p")
# The paper recipe (SPEC 6): 51 epochs over MIMIC-CXR's ~270k training images.
PAPER_EPOCHS, PAPER_TRAIN_IMAGES = 51, 270_000


# ----------------------------------------------------------------------------- targets
@dataclasses.dataclass(frozen=True)
class Target:
  platform: str        # tpu | cuda | cpu
  kind: str            # v5e, v5p, v4, h200, cpu, ...
  shape: str           # 16x16, 1x1x8, 4
  name: str            # what the user wrote

  @property
  def num_devices(self) -> int:
    return math.prod(int(s) for s in self.shape.split("x"))


def parse_topology(text: str, platform: str | None = None) -> Target:
  """'v5e:16x16' | 'h200:1x1x8' | 'cpu:4' -> Target; the platform follows from the kind."""
  kind, sep, shape = text.partition(":")
  if not sep or not re.fullmatch(r"\d+(x\d+)*", shape):
    raise ValueError(f"--topology {text!r}: expected KIND:SHAPE such as v5e:16x16, "
                     "v5p:4x4x4, h200:1x1x8 or cpu:4")
  inferred = "cpu" if kind == "cpu" else "tpu" if re.fullmatch(r"v\d+\w*", kind) else "cuda"
  if platform and platform != inferred:
    raise ValueError(f"--topology {text!r} is a {inferred} target, not {platform}")
  return Target(inferred, kind, shape, text)


def gpu_target_config(kind: str, directory: pathlib.Path = GPU_TARGETS) -> str:
  path = directory / f"{kind}.txtpb"
  if not path.exists():
    known = sorted(p.stem for p in directory.glob("*.txtpb"))
    raise ValueError(f"no GPU target config {path}; known: {', '.join(known) or 'none'}")
  return path.read_text()


def device_memory_bytes(target: Target, gpu_config: str | None = None) -> int | None:
  """A chip's memory: hardware.py for TPUs (XLA reserves a little of it, so compiles fail
  a bit below), the target config for GPUs, none for CPU."""
  if target.platform == "tpu":
    try:
      return int(hardware.chip(target.kind).hbm_bytes)
    except KeyError:
      return None
  if target.platform == "cuda" and gpu_config:
    found = re.search(r"device_memory_size:\s*(\d+)", gpu_config)
    return int(found.group(1)) if found else None
  return None


def set_host_device_count(n: int) -> None:
  """Ask XLA for n host CPU devices (only effective before the CPU backend starts)."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  flags_now = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags_now)
  os.environ["XLA_FLAGS"] = f"{flags_now} --xla_force_host_platform_device_count={n}".strip()


def quiet_libtpu(target: Target) -> None:
  """Environment that keeps libtpu from looking for a TPU VM's metadata, and lets several
  compiling processes load it at once (no TPU is opened)."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{target.kind}-{target.num_devices}")


def target_devices(target: Target, num_slices: int = 1) -> list:
  """The target's devices: compile-only TPU/GPU devices, or real host CPU devices.
  num_slices > 1: that many copies of a TPU slice, joined over DCN (multi-slice)."""
  if target.platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < target.num_devices:
      raise RuntimeError(f"{target.name} needs {target.num_devices} CPU devices, {len(devices)} "
                         "exist: set XLA_FLAGS=--xla_force_host_platform_device_count="
                         f"{target.num_devices} before JAX starts")
    return devices[:target.num_devices]
  from jax.experimental import topologies
  if target.platform == "tpu":
    if importlib.util.find_spec("libtpu") is None:
      raise RuntimeError("TPU targets need libtpu: pip install 'jax[tpu]==0.10.2' "
                         "(the project's `tpu` extra)")
    kwargs = {"chip_config_name": "megacore"} if target.kind in MEGACORE else {}
    if num_slices > 1:
      kwargs["num_slices"] = num_slices
    return list(topologies.get_topology_desc(topology_name=f"{target.kind}:{target.shape}",
                                             platform="tpu", **kwargs).devices)
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology=target.shape,
                                            target_config=gpu_target_config(target.kind))
  except NotImplementedError as e:
    raise RuntimeError(f"{e}: GPU targets need pip install --no-deps "
                       "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2") from e
  return list(topology.devices)


def make_mesh(config, devices):
  """config.mesh over `devices` (topology-aware order, Auto axes like sharding.make_mesh);
  with config.mesh.dcn_shape, the multi-slice mesh of sharding.hybrid_mesh."""
  if tuple(config.mesh.get("dcn_shape", ()) or ()):
    return sharding.hybrid_mesh(config, devices)
  shape = sharding.resolve_mesh_shape(config.mesh.shape, len(devices))
  axes = tuple(config.mesh.axes)
  return jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
                       devices=devices)


# ----------------------------------------------------------------------------- steps
def _shape_struct(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def abstract_inputs(config, mesh):
  """(batch, anatomy ids, anatomy mask, key) as sharded ShapeDtypeStructs."""
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  replicated = NamedSharding(mesh, P())
  one = ssacl.dummy_batch(config, 1)
  batch = {k: _shape_struct((config.train.global_batch_size, *v.shape[1:]), v.dtype,
                            batch_sharding) for k, v in one.items()}
  ids, mask = ssacl.dummy_anatomy_tokens(config)
  key = jax.eval_shape(lambda: jax.random.key(0))
  return (batch, _shape_struct(ids.shape, ids.dtype, replicated),
          _shape_struct(mask.shape, mask.dtype, replicated),
          _shape_struct(key.shape, key.dtype, replicated))


def lower_train_step(config, mesh, model=None):
  """(lowered train step, StateSetup): the trainer's step (steps.jit_train_step) without
  the non-finite record; compiler options come with the compile."""
  model = model or ssacl.build_model(config.model)
  batch, ids, mask, key = abstract_inputs(config, mesh)
  # Outside the mesh context: eager ops there would run on the (compile-only) devices.
  setup = state_lib.setup_state(config, model, mesh, ssacl.dummy_anatomy_tokens(config),
                                ssacl.dummy_batch(config, 1))
  step = steps.jit_train_step(config, setup, mesh, 2, ssacl.LOSS_NAMES,
                              nonfinite_record=False)
  with jax.set_mesh(mesh):
    lowered = step.lower(setup.abstract_state, batch, ids, mask, key)
  return lowered, setup


def decode_settings(config):
  """Decoding settings (config.eval.decode, else SPEC 5's), ids clipped to the vocab
  and the new tokens to the decoder positions the image prefix leaves (small configs)."""
  cfg = generate.decode_config(config.eval.get("decode"))
  m = config.model
  vocab = m.report.vocab_size
  prefix = anatomy.NUM_LEAVES + 1 + (m.image_size // m.patch) ** 2
  new_tokens = max(1, min(cfg.max_new_tokens, m.report.max_positions - prefix))
  return dataclasses.replace(cfg, eos_id=min(cfg.eos_id, vocab - 1),
                             pad_id=min(cfg.pad_id, vocab - 1), max_new_tokens=new_tokens,
                             min_new_tokens=min(cfg.min_new_tokens, new_tokens))


def generation_batch_size(config, mesh, requested: int = 0) -> int:
  """requested, else config.eval.batch_size; rounded up to a multiple of the batch shards."""
  spec = sharding.batch_spec(config)[0]
  axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
  shards = math.prod(mesh.shape[a] for a in axes)
  size = requested or config.eval.batch_size
  return -(-size // shards) * shards


def lower_generate(config, mesh, params, batch_size: int, model=None):
  """The lowered SS-ACL beam search (ssacl_jax.generate) over a sharded image batch."""
  model = model or ssacl.build_model(config.model)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  replicated = NamedSharding(mesh, P())
  m = config.model
  images = _shape_struct((batch_size, m.image_size, m.image_size, m.channels), "float32",
                         batch_sharding)
  leaf_mask = _shape_struct((batch_size, anatomy.NUM_LEAVES), "int32", batch_sharding)
  ids, mask = ssacl.dummy_anatomy_tokens(config)
  ids = _shape_struct(ids.shape, ids.dtype, replicated)
  mask = _shape_struct(mask.shape, mask.dtype, replicated)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    return generate.lower_generate_reports(model, decode_settings(config),
                                           {"params": params}, images, ids, mask, leaf_mask)


def compiler_options(target: Target) -> dict:
  """XLA options a compile without the device needs: GPU Triton GEMMs need autotuning on a
  real GPU ("Couldn't find output tile sizes"), so GPU targets compile cuBLAS GEMMs."""
  return {"xla_gpu_enable_triton_gemm": False} if target.platform == "cuda" else {}


def compile_report(lowered, num_devices: int, memory_limit: int | None,
                   options: dict | None = None, groups: bool = False,
                   traffic_groups: bool = False, hlo_path: pathlib.Path | None = None) -> dict:
  """Compile; memory, FLOPs, collectives and device-memory traffic, or the out-of-memory
  figures. `groups`: list the collectives by what they move; `traffic_groups`: the top
  sources of traffic; `hlo_path`: also write the compiled program's HLO text there (the
  text every figure here is read from)."""
  start = time.time()
  try:
    compiled = lowered.compile(compiler_options=options or None)
  except Exception as e:  # XLA raises JaxRuntimeError / XlaRuntimeError
    message = str(e)
    if not hlo_report.is_out_of_memory(message):
      raise
    return {"fits": False, "error": message.strip().splitlines()[0][:500],
            "message": message.strip()[:4000],
            "out_of_memory": hlo_report.parse_resource_exhausted(message),
            "compile_seconds": round(time.time() - start, 1)}
  text = compiled.as_text() or ""
  if hlo_path is not None:
    hlo_path.parent.mkdir(parents=True, exist_ok=True)
    hlo_path.write_text(text)
  report = {"fits": True, "compile_seconds": round(time.time() - start, 1),
            "memory": hlo_report.memory_figures(compiled),
            **hlo_report.cost_figures(compiled, num_devices),
            **hlo_report.collective_figures(text, num_devices, groups),
            **hlo_report.traffic_figures(text, traffic_groups)}
  total = report["memory"].get("total_bytes")
  if memory_limit and total is not None and total > memory_limit:
    report["fits"] = False
    report["error"] = (f"does not fit: {total / hlo_report.GIB:.2f} GiB per device needed, "
                       f"{memory_limit / hlo_report.GIB:.2f} GiB available")
    report["out_of_memory"] = {"used_bytes": total, "capacity_bytes": memory_limit,
                               "exceeded_by_bytes": total - memory_limit}
  return report


# ----------------------------------------------------------------------------- roofline
def hand_flops_per_step(config) -> float:
  """Matmul FLOPs of one training step at the config's global batch, counted by hand."""
  return float(flops.hand_flops(config, config.train.global_batch_size)["step"])


def roofline_report(config, step: dict, num_devices: int, chip: dict) -> dict:
  """The roofline prediction (ssacl_jax.roofline) of a compiled train step on `chip`
  (roofline.chip_figures), and the paper recipe's predicted time to train."""
  hand = hand_flops_per_step(config) / num_devices
  xla = step.get("flops_per_device") or 0.0
  step_flops = max(xla, hand)
  hbm = step["hbm_traffic_bytes_per_device"]
  xla_bytes = step.get("bytes_accessed_per_device")
  wire = step["wire_bytes_per_device"]

  def predict(hbm_bytes):
    return roofline.predict(
        flops=step_flops, model_flops=hand, hbm_bytes=hbm_bytes, wire=wire,
        peak_flops=chip["peak_flops"], hbm_bytes_per_s=chip["hbm_bytes_per_s"],
        interconnect_bytes_per_s=chip.get("interconnect_bytes_per_s"))

  prediction = predict(hbm)
  steps = roofline.steps_to_train(PAPER_EPOCHS, PAPER_TRAIN_IMAGES,
                                  config.train.global_batch_size)
  return {**prediction, "chip": chip, "flops_per_device": step_flops, "xla_flops_per_device": xla,
          "hand_flops_per_device": hand, "hbm_bytes_per_device": hbm,
          "memory_counted_by": "kernels (ssacl_jax.hbm_traffic)",
          "xla_bytes_accessed_per_device": xla_bytes,
          "with_xla_bytes_accessed": predict(xla_bytes) if xla_bytes else None,
          "wire_bytes_per_device": wire, "paper_epochs": PAPER_EPOCHS,
          "paper_train_images": PAPER_TRAIN_IMAGES, "paper_steps": steps,
          "paper_hours": steps * prediction["step_s"] / 3600,
          "paper_hours_if_serial": steps * prediction["serial_s"] / 3600}


# ----------------------------------------------------------------------------- report
def _hlo_path(hlo_dir: str | None, step: str) -> pathlib.Path | None:
  return pathlib.Path(hlo_dir) / f"{step}.hlo.txt" if hlo_dir else None


def run_aot(config, target: Target, what: str = "train", memory_limit: int | None = None,
            gen_batch: int = 0, devices=None, groups: bool = False,
            chip: dict | None = None, hlo_dir: str | None = None) -> dict:
  """Lower and compile the chosen steps for the target; the report as a dict. `groups`:
  list the collectives by what they move; `chip` (roofline.chip_figures): add the roofline
  prediction of the train step."""
  devices = devices if devices is not None else target_devices(target)
  mesh = make_mesh(config, devices)
  if memory_limit is None:
    gpu_config = gpu_target_config(target.kind) if target.platform == "cuda" else None
    memory_limit = device_memory_bytes(target, gpu_config)
  report = {
      "target": target.name, "platform": target.platform,
      "device_kind": devices[0].device_kind, "num_devices": len(devices),
      "mesh": dict(mesh.shape), "global_batch": config.train.global_batch_size,
      "num_slices": len({getattr(d, "slice_index", 0) for d in devices}),
      "grad_accum_steps": config.train.grad_accum_steps,
      "compute_dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
      "remat": bool(config.model.remat), "memory_limit_bytes": memory_limit,
      "compiler_options": compiler_options(target), "steps": {},
  }
  lowered, setup = lower_train_step(config, mesh)
  state = setup.abstract_state
  report["num_params"] = int(sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])))
  report["param_bytes_per_device"] = sharding.per_device_bytes(state["params"])
  report["opt_state_bytes_per_device"] = sharding.per_device_bytes(state["opt_state"])
  if what in ("train", "both"):
    report["steps"]["train"] = compile_report(
        lowered, len(devices), memory_limit, compiler_options(target), groups,
        traffic_groups=chip is not None, hlo_path=_hlo_path(hlo_dir, "train"))
    if chip and report["steps"]["train"]["fits"]:
      report["roofline"] = roofline_report(config, report["steps"]["train"], len(devices),
                                           chip)
  del lowered
  if what in ("generate", "both"):
    size = generation_batch_size(config, mesh, gen_batch)
    gen = compile_report(lower_generate(config, mesh, state["params"], size), len(devices),
                         memory_limit, compiler_options(target), groups,
                         hlo_path=_hlo_path(hlo_dir, "generate"))
    report["steps"]["generate"] = dict(gen, batch=size,
                                       decode=dataclasses.asdict(decode_settings(config)))
  report["fits"] = all(s["fits"] for s in report["steps"].values())
  return report


# ----------------------------------------------------------------------------- CLI
def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this stays clean)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variants]).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "Target: v5e:16x16, v5p:4x4x4, v4:2x4x4, "
                      "h200:1x1x8, cpu:4, ...")
  flags.DEFINE_enum("platform", None, ["tpu", "cuda", "cpu"],
                    "Target platform (default: from --topology).")
  flags.DEFINE_enum("what", "train", ["train", "generate", "both"], "Steps to compile.")
  flags.DEFINE_string("json", None, "Also write the report here.")
  flags.DEFINE_string("hlo_dir", None, "Also write each compiled step's HLO text here "
                      "(train.hlo.txt, generate.hlo.txt): what the report's collectives "
                      "and traffic are read from.")
  flags.DEFINE_integer("hbm_bytes", 0, "Memory per device to check against (0: the "
                       "target's own; CPU: none).")
  flags.DEFINE_integer("gen_batch", 0, "Generation batch (0: config.eval.batch_size rounded "
                       "up to the batch shards).")
  flags.DEFINE_bool("collectives", False, "List the collectives grouped by what they move "
                    "(source, pass, dtype, shape) with per-chip and per-step totals.")
  flags.DEFINE_integer("top", 10, "Collective groups printed with --collectives (the JSON "
                       "holds all).")
  flags.DEFINE_bool("roofline", False, "Predict the train step's time per chip from its "
                    "FLOPs, HBM bytes and collective bytes (ssacl_jax/roofline.py).")
  flags.DEFINE_float("peak_flops", 0.0, "Roofline: peak FLOP/s per chip (0: hardware.py's; "
                     "needed for CPU).")
  flags.DEFINE_float("hbm_bytes_per_s", 0.0, "Roofline: memory bandwidth per chip (0: "
                     "hardware.py's; needed for CPU).")
  flags.DEFINE_float("interconnect_bytes_per_s", 0.0, "Roofline: bidirectional interconnect "
                     "bandwidth per chip (0: hardware.py's).")
  flags.DEFINE_integer("num_slices", 1, "TPU slices joined over DCN (multi-slice); the data "
                       "axis spans them unless --config.mesh.dcn_shape says otherwise.")
  flags.mark_flags_as_required(["config", "topology"])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    target = parse_topology(f.topology, f.platform)
  except ValueError as e:
    raise app.UsageError(str(e), exitcode=2)
  jax.config.update("jax_platforms", "cpu")   # the host; targets come from topologies
  if target.platform == "cpu":
    set_host_device_count(target.num_devices)
  if target.platform == "tpu":
    quiet_libtpu(target)
  config = f.config
  if f.num_slices > 1 and not tuple(config.mesh.dcn_shape):
    config.mesh.dcn_shape = (f.num_slices,) + (1,) * (len(config.mesh.axes) - 1)
  config_lib.validate(config)
  try:
    devices = target_devices(target, f.num_slices)
  except (RuntimeError, ValueError) as e:   # libtpu / GPU plugin / target config missing
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
  chip = None
  if f.roofline:
    try:
      chip = roofline.chip_figures(target.kind, peak_flops=f.peak_flops,
                                   hbm_bytes_per_s=f.hbm_bytes_per_s,
                                   interconnect_bytes_per_s=f.interconnect_bytes_per_s)
    except ValueError as e:
      raise app.UsageError(str(e), exitcode=2)
  report = run_aot(config, target, f.what, f.hbm_bytes or None, f.gen_batch, devices,
                   groups=f.collectives, chip=chip, hlo_dir=f.hlo_dir or None)
  report["config"] = _config_arg()
  for line in hlo_report.summary_lines(report, f.top):
    print(line)
  text = json.dumps(report, sort_keys=True)
  if f.json:
    path = pathlib.Path(f.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  print(text)
  sys.stdout.flush()
  if not report["fits"]:
    raise SystemExit(EXIT_DOES_NOT_FIT)


def _config_arg() -> str:
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return ""


if __name__ == "__main__":
  define_flags()
  app.run(main)
