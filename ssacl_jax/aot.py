"""Ahead-of-time compilation of the training (and generation) step for a named target.

Compiles the real sharded step, exactly as `train.train_and_evaluate` jits it (state and
batch shardings, donation), for the devices of a target that need not be attached:

  JAX_PLATFORMS=cpu python -m ssacl_jax.aot --config configs/tpu_v5e_256.py \
      --topology v5e:16x16 --what both --json bench/results/aot_tpu_v5e_256.json

and reports per-chip memory (`compiled.memory_analysis()`: arguments, outputs, temps,
generated code, aliased donation), FLOPs (`compiled.cost_analysis()`) and the collectives
in the compiled program. `--collectives` lists them by what they move (the parameter or
jax op, pass, dtype, shape: ssacl_jax/collectives.py) with totals per chip and per step;
`--roofline` predicts the train step's time per chip from its FLOPs, HBM bytes and
collective bytes and the chip's published figures (ssacl_jax/roofline.py, hardware.py). Exit status 3, with the numbers, when a step would not fit in a
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

from ssacl_jax import (anatomy, collectives, config_lib, flops, generate, hardware, roofline,
                       sharding, train, state as state_lib)
from ssacl_jax.models import ssacl

EXIT_DOES_NOT_FIT = 3
GIB = 1024 ** 3
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


# ----------------------------------------------------------------------------- analysis
_SIZE = re.compile(r"([\d.]+)\s*([KMGTP]?)i?B?", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}


def parse_size(text: str) -> int:
  """XLA's human-readable sizes ('17.92G', '530.00M', '0B') -> bytes."""
  found = _SIZE.fullmatch(text.strip())
  if not found:
    raise ValueError(f"not a size: {text!r}")
  return int(round(float(found.group(1)) * _UNITS[found.group(2).upper()]))


def parse_resource_exhausted(message: str) -> dict:
  """The figures of an XLA out-of-memory compile error (whatever of them it holds)."""
  out = {}
  patterns = {
      # "Used 20.52G of 15.75G hbm. Exceeded hbm capacity by 4.77G." (program too large)
      # "the total memory required for HLO temporaries (118.39G) exceeds available HBM
      #  (15.75G)." (temporaries alone too large)
      "used_bytes": r"(?:Used\s+(\S+)\s+of\s+\S+\s+hbm|required for [^(]*\((\S+?)\))",
      "capacity_bytes": r"(?:Used\s+\S+\s+of\s+(\S+)\s+hbm|exceeds available HBM \((\S+?)\))",
      "exceeded_by_bytes": r"Exceeded hbm capacity by\s+(\S+?)\.?(?:\s|$)",
      "total_usage_bytes": r"Total hbm usage >=\s*(\S+?):",
      "program_bytes": r"\n\s*program\s+(\S+)",
      "arguments_bytes": r"\n\s*arguments\s+(\S+)",
      "reserved_bytes": r"\n\s*reserved\s+(\S+)",
  }
  for key, pattern in patterns.items():
    found = re.search(pattern, message)
    text = next((g for g in found.groups() if g), None) if found else None
    if text:
      try:
        out[key] = parse_size(text.rstrip("."))
      except ValueError:
        pass
  if "used_bytes" in out and "capacity_bytes" in out:
    out.setdefault("exceeded_by_bytes", out["used_bytes"] - out["capacity_bytes"])
  return out


def is_out_of_memory(message: str) -> bool:
  return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message


def memory_figures(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes", "alias_size_in_bytes",
            "host_argument_size_in_bytes", "host_output_size_in_bytes",
            "host_temp_size_in_bytes", "host_generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(m, f, 0) or 0) for f in fields}
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        + out["generated_code_bytes"] - out["alias_bytes"])
  return out


def cost_figures(compiled, num_devices: int) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:   # XLA:GPU compiled without a GPU gives none
    return {"flops_per_device": None, "flops_note": "no cost analysis from this compiler"}
  flops = float(cost.get("flops", 0.0))
  return {"flops_per_device": flops, "flops_total": flops * num_devices,
          "transcendentals_per_device": float(cost.get("transcendentals", 0.0)),
          "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0))}


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
  """(lowered train step, StateSetup): jitted exactly as train.train_and_evaluate does."""
  model = model or ssacl.build_model(config.model)
  batch, ids, mask, key = abstract_inputs(config, mesh)
  # Outside the mesh context: eager ops there would run on the (compile-only) devices.
  setup = state_lib.setup_state(config, model, mesh, ssacl.dummy_anatomy_tokens(config), ssacl.dummy_batch(config, 1))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, sharding.batch_spec(config))
  step = jax.jit(train.make_train_step(config, setup),
                 in_shardings=(setup.shardings, batch_sharding, replicated, replicated,
                               replicated),
                 out_shardings=(setup.shardings, replicated), donate_argnums=(0,))
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
    return generate._generate_reports_jit.lower(model, decode_settings(config),
                                                {"params": params}, images, ids, mask,
                                                leaf_mask, None, None, None)


def compiler_options(target: Target) -> dict:
  """XLA options a compile without the device needs: GPU Triton GEMMs need autotuning on a
  real GPU ("Couldn't find output tile sizes"), so GPU targets compile cuBLAS GEMMs."""
  return {"xla_gpu_enable_triton_gemm": False} if target.platform == "cuda" else {}


def collective_figures(hlo_text: str, num_devices: int, groups: bool = False) -> dict:
  """Static per-op counts and bytes (as always reported), totals per call per chip and over
  all chips, ring wire bytes per chip (the roofline's input) and, with `groups`, every
  collective grouped by what it moves (ssacl_jax.collectives)."""
  ops = collectives.collective_ops(hlo_text, num_devices)
  out = {"collectives": collectives.static_stats(ops),
         "collective_totals": collectives.collective_totals(ops, num_devices),
         "wire_bytes_per_device": roofline.wire_bytes(ops)}
  if groups:
    out["collective_groups"] = collectives.group_collectives(ops)
  return out


def compile_report(lowered, num_devices: int, memory_limit: int | None,
                   options: dict | None = None, groups: bool = False) -> dict:
  """Compile; memory, FLOPs and collectives, or the out-of-memory figures."""
  start = time.time()
  try:
    compiled = lowered.compile(compiler_options=options or None)
  except Exception as e:  # XLA raises JaxRuntimeError / XlaRuntimeError
    message = str(e)
    if not is_out_of_memory(message):
      raise
    return {"fits": False, "error": message.strip().splitlines()[0][:500],
            "message": message.strip()[:4000],
            "out_of_memory": parse_resource_exhausted(message),
            "compile_seconds": round(time.time() - start, 1)}
  report = {"fits": True, "compile_seconds": round(time.time() - start, 1),
            "memory": memory_figures(compiled), **cost_figures(compiled, num_devices),
            **collective_figures(compiled.as_text() or "", num_devices, groups)}
  total = report["memory"].get("total_bytes")
  if memory_limit and total is not None and total > memory_limit:
    report["fits"] = False
    report["error"] = (f"does not fit: {total / GIB:.2f} GiB per device needed, "
                       f"{memory_limit / GIB:.2f} GiB available")
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
  hbm = step.get("bytes_accessed_per_device") or 0.0
  wire = step["wire_bytes_per_device"]
  prediction = roofline.predict(
      flops=step_flops, model_flops=hand, hbm_bytes=hbm, wire=wire,
      peak_flops=chip["peak_flops"], hbm_bytes_per_s=chip["hbm_bytes_per_s"],
      interconnect_bytes_per_s=chip.get("interconnect_bytes_per_s"))
  steps = roofline.steps_to_train(PAPER_EPOCHS, PAPER_TRAIN_IMAGES,
                                  config.train.global_batch_size)
  return {**prediction, "chip": chip, "flops_per_device": step_flops, "xla_flops_per_device": xla,
          "hand_flops_per_device": hand, "hbm_bytes_per_device": hbm,
          "wire_bytes_per_device": wire, "paper_epochs": PAPER_EPOCHS,
          "paper_train_images": PAPER_TRAIN_IMAGES, "paper_steps": steps,
          "paper_hours": steps * prediction["step_s"] / 3600}


# ----------------------------------------------------------------------------- report
def run_aot(config, target: Target, what: str = "train", memory_limit: int | None = None,
            gen_batch: int = 0, devices=None, groups: bool = False,
            chip: dict | None = None) -> dict:
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
    report["steps"]["train"] = compile_report(lowered, len(devices), memory_limit,
                                              compiler_options(target), groups)
    if chip and report["steps"]["train"]["fits"]:
      report["roofline"] = roofline_report(config, report["steps"]["train"], len(devices),
                                           chip)
  del lowered
  if what in ("generate", "both"):
    size = generation_batch_size(config, mesh, gen_batch)
    gen = compile_report(lower_generate(config, mesh, state["params"], size), len(devices),
                         memory_limit, compiler_options(target), groups)
    report["steps"]["generate"] = dict(gen, batch=size,
                                       decode=dataclasses.asdict(decode_settings(config)))
  report["fits"] = all(s["fits"] for s in report["steps"].values())
  return report


def _gib(n) -> str:
  return "-" if n is None else f"{n / GIB:8.3f} GiB"


def summary_lines(report: dict, top: int = 10) -> list[str]:
  lines = [f"target {report['target']} ({report['device_kind']} x {report['num_devices']}), "
           f"mesh {report['mesh']}, global batch {report['global_batch']}, "
           f"{report['num_params']:,} params",
           f"  params/device {_gib(report['param_bytes_per_device'])}, "
           f"opt state/device {_gib(report['opt_state_bytes_per_device'])}, "
           f"memory limit {_gib(report['memory_limit_bytes'])}"]
  for name, step in report["steps"].items():
    if not step["fits"]:
      lines.append(f"  {name}: DOES NOT FIT: {step['error']}")
      for key, value in step.get("out_of_memory", {}).items():
        lines.append(f"    {key:20s} {_gib(value)}")
      continue
    mem = step["memory"]
    flops = step.get("flops_per_device")
    lines.append(f"  {name}: compiled in {step['compile_seconds']} s; per device: "
                 f"total {_gib(mem.get('total_bytes'))} = args {_gib(mem.get('argument_bytes'))}"
                 f" + out {_gib(mem.get('output_bytes'))} + temp {_gib(mem.get('temp_bytes'))}"
                 f" + code {_gib(mem.get('generated_code_bytes'))}"
                 f" - alias {_gib(mem.get('alias_bytes'))}")
    coll = step["collectives"]
    lines.append(f"    flops/device {flops if flops is None else f'{flops:.4g}'}; collectives: "
                 + ", ".join(f"{op} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                             for op, v in coll.items() if v["count"] and op != "total"))
    if "collective_groups" in step:
      lines.extend(collective_lines(step, report["num_devices"], top))
  if "roofline" in report:
    lines.extend(roofline_lines(report["roofline"]))
  lines.append("fits" if report["fits"] else "DOES NOT FIT")
  return lines


def collective_lines(step: dict, num_devices: int, top: int) -> list[str]:
  """Totals per call (per chip and all chips) and the `top` groups by bytes."""
  lines = []
  for part, by_op in step["collective_totals"].items():
    t = by_op["total"]
    if not t["count"]:
      continue
    lines.append(f"    collectives {part.replace('_', ' ')}: {t['count']} ops, "
                 f"{t['bytes_per_device'] / 1e9:.3f} GB per chip, "
                 f"{t['bytes_all_devices'] / 1e9:.1f} GB on {num_devices} chips; "
                 + ", ".join(f"{op} {v['count']} ({v['bytes_per_device'] / 1e9:.3f} GB)"
                             for op, v in by_op.items() if op != "total"))
  groups = step["collective_groups"]
  lines.append(f"    top {min(top, len(groups))} of {len(groups)} collective groups by bytes "
               "per chip (count: executions per call; loop: per decoding-loop iteration):")
  lines.append(f"      {'op':14s} {'pass':4s} {'dtype':5s} {'shape':>18s} {'group':>5s} "
               f"{'count':>5s} {'MB':>9s}  source")
  for g in groups[:top]:
    shape = "x".join(map(str, g["shape"])) or "scalar"
    lines.append(f"      {g['op']:14s} {g['pass']:4s} {g['dtype']:5s} {shape:>18s} "
                 f"{g['group_size']:5d} {g['count']:5d} {g['bytes'] / 1e6:9.2f}  "
                 f"{g['source']}{' (loop)' if g['in_loop'] else ''}")
  return lines


def roofline_lines(r: dict) -> list[str]:
  return [f"  roofline per chip ({r['chip']['source'].split(':')[0]}): compute "
          f"{r['compute_s'] * 1e3:.2f} ms ({r['flops_per_device']:.3g} FLOPs), "
          f"memory {r['memory_s'] * 1e3:.2f} ms ({r['hbm_bytes_per_device'] / 1e9:.2f} GB), "
          f"interconnect {r['interconnect_s'] * 1e3:.2f} ms "
          f"({r['wire_bytes_per_device'] / 1e9:.3f} GB on the wire)",
          f"    predicted step {r['step_s'] * 1e3:.2f} ms (serial {r['serial_s'] * 1e3:.2f} ms), "
          f"bound by {r['binding']}; MFU upper bound {r['mfu_upper_bound']:.1%}; "
          f"paper recipe ({r['paper_epochs']} epochs, {r['paper_steps']} steps) "
          f"{r['paper_hours']:.2f} h"]


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
                   groups=f.collectives, chip=chip)
  report["config"] = _config_arg()
  for line in summary_lines(report, f.top):
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
