"""Scaling report: per-device state bytes and per-step collectives under three shardings.

  python bench/scaling.py                    # writes bench/results/scaling.json, prints tables

Strategies over the (data, fsdp, tensor) mesh of N devices:
  replicated    (N, 1, 1), rules with embed -> None: plain data parallelism
  fsdp          (1, N, 1), the default rules: parameters and moments sharded N ways
  fsdp+tensor   (1, N/2, 2): fsdp, plus mlp/heads/vocab over a tensor axis of 2

1. Paper config (configs/ssacl_vitb16.py:bf16): bytes one device holds of the parameters and
   of the AdamW state, from jax.eval_shape over an AbstractMesh (nothing is materialised),
   for N = 1, 2, 4, 8 and the pod sizes (32, 64, 256). Shards of a dimension the axis does
   not divide are counted padded, as XLA lays them out.
2. A small config (tests/tiny_config.py; --compile_config configs/demo.py for the demo
   model) on N = 1, 2, 4, 8 fake CPU devices, each N in its own
   process (XLA_FLAGS=--xla_force_host_platform_device_count=N): the compiled train step's
   per-device memory and its collectives (ssacl_jax.collectives.collective_stats: static
   counts of all-reduce / all-gather / reduce-scatter / collective-permute / all-to-all and the bytes
   of their results).
3. The AOT pod targets: the figures of bench/results/aot_*.json (python -m ssacl_jax.aot).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
STRATEGIES = ("replicated", "fsdp", "fsdp+tensor")
MIB = 2 ** 20


# ----------------------------------------------------------------------------- configs
def load_config(spec: str):
  """'path/to/config.py[:variants]' -> ConfigDict, as --config reads it."""
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("scaling_config", ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def strategy_mesh(strategy: str, n: int) -> tuple[int, int, int] | None:
  """The (data, fsdp, tensor) shape of a strategy on n devices; None if it does not apply."""
  if strategy == "replicated":
    return (n, 1, 1)
  if strategy == "fsdp":
    return (1, n, 1)
  return (1, n // 2, 2) if n >= 2 and n % 2 == 0 else None


def with_strategy(config, strategy: str, n: int):
  """A copy of config with the strategy's mesh and rules (None if it does not apply)."""
  shape = strategy_mesh(strategy, n)
  if shape is None:
    return None
  c = config.copy_and_resolve_references()
  c.mesh.shape = shape
  if strategy == "replicated":
    c.sharding_rules = tuple((name, None if name == "embed" else axes)
                             for name, axes in c.sharding_rules)
  return c


# ----------------------------------------------------------------------------- state bytes
def padded_shard_bytes(leaf) -> int:
  """Bytes of one device's shard; a dimension an axis does not divide is padded up."""
  import numpy as np
  spec, mesh = leaf.sharding.spec, leaf.sharding.mesh
  shape = list(leaf.shape)
  for i, axes in enumerate(tuple(spec)[:len(shape)]):
    if axes is None:
      continue
    ways = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
    shape[i] = -(-shape[i] // ways)
  return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def state_bytes(config, n: int) -> dict:
  """Per-device parameter and optimizer-state bytes on an abstract mesh of n devices."""
  import jax
  from jax.sharding import AbstractMesh, AxisType
  from ssacl_jax import state as state_lib
  from ssacl_jax.models import ssacl
  axes = tuple(config.mesh.axes)
  mesh = AbstractMesh(tuple(config.mesh.shape), axes, axis_types=(AxisType.Auto,) * len(axes))
  setup = state_lib.setup_state(config, ssacl.build_model(config.model), mesh,
                            ssacl.dummy_anatomy_tokens(config), ssacl.dummy_batch(config, 1))
  total = lambda tree: sum(padded_shard_bytes(x) for x in jax.tree.leaves(tree))
  params, opt = total(setup.abstract_state["params"]), total(setup.abstract_state["opt_state"])
  return {"params_bytes": params, "opt_state_bytes": opt, "state_bytes": params + opt}


def paper_state_table(config, sizes) -> list[dict]:
  rows = []
  for n in sizes:
    for strategy in STRATEGIES:
      c = with_strategy(config, strategy, n)
      if c is not None:
        rows.append({"devices": n, "strategy": strategy, "mesh": list(c.mesh.shape),
                     **state_bytes(c, n)})
  return rows


# ----------------------------------------------------------------------------- compiles
def compile_stats(config, n: int) -> dict:
  """Compile the train step on the first n CPU devices: memory, FLOPs, collectives."""
  import jax
  from ssacl_jax import aot, collectives, hlo_report
  mesh = aot.make_mesh(config, jax.devices("cpu")[:n])
  start = time.time()
  lowered, _ = aot.lower_train_step(config, mesh)
  compiled = lowered.compile()
  return {"compile_seconds": round(time.time() - start, 1),
          "memory": hlo_report.memory_figures(compiled), **hlo_report.cost_figures(compiled, n),
          "collectives": collectives.collective_stats(compiled.as_text() or "")}


def worker(n: int, compile_config: str) -> list[dict]:
  """In a process with n CPU devices: every strategy's compiled train step."""
  config = load_config(compile_config)
  rows = []
  for strategy in STRATEGIES:
    c = with_strategy(config, strategy, n)
    if c is not None:
      rows.append({"devices": n, "strategy": strategy, "mesh": list(c.mesh.shape),
                   **state_bytes(c, n), **compile_stats(c, n)})
  return rows


def run_worker(n: int, compile_config: str) -> list[dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--compile_config",
                         compile_config], cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"worker for {n} devices failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def aot_targets(directory: pathlib.Path) -> list[dict]:
  """The train-step figures of the saved AOT reports (python -m ssacl_jax.aot --json)."""
  rows = []
  for path in sorted(directory.glob("aot_*.json")):
    r = json.loads(path.read_text())
    train = r.get("steps", {}).get("train")
    if not train:
      continue
    rows.append({"file": path.name, "config": r.get("config", ""), "target": r["target"],
                 "device_kind": r["device_kind"], "devices": r["num_devices"],
                 "mesh": r["mesh"], "global_batch": r["global_batch"],
                 "params_bytes": r["param_bytes_per_device"],
                 "opt_state_bytes": r["opt_state_bytes_per_device"], "fits": train["fits"],
                 "total_bytes": train.get("memory", {}).get("total_bytes"),
                 "memory_limit_bytes": r.get("memory_limit_bytes"),
                 "flops_per_device": train.get("flops_per_device"),
                 "collectives": train.get("collectives"),
                 "out_of_memory": train.get("out_of_memory")})
  return rows


# ----------------------------------------------------------------------------- tables
def _mib(n) -> str:
  return "-" if n is None else f"{n / MIB:,.1f}"


def _coll(c: dict | None) -> str:
  if not c:
    return "-"
  short = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS",
           "collective-permute": "CP", "all-to-all": "A2A"}
  return ", ".join(f"{short[k]} {c[k]['count']} ({_mib(c[k]['bytes'])})" for k in short
                   if c.get(k, {}).get("count")) or "none"


def markdown(result: dict) -> str:
  out = [f"Per-device parameters + AdamW state, paper config ({result['paper_config']}), MiB "
         "(params / optimizer / total):", "",
         "| devices | " + " | ".join(STRATEGIES) + " |",
         "|---:|" + "---:|" * len(STRATEGIES)]
  by = {(r["devices"], r["strategy"]): r for r in result["paper_state"]}
  for n in sorted({r["devices"] for r in result["paper_state"]}):
    cells = []
    for s in STRATEGIES:
      r = by.get((n, s))
      cells.append("-" if r is None else
                   f"{_mib(r['params_bytes'])} / {_mib(r['opt_state_bytes'])} / "
                   f"{_mib(r['state_bytes'])}")
    out.append(f"| {n} | " + " | ".join(cells) + " |")
  if result["cpu_compiles"]:
    out += ["", f"Compiled train step, {result['compile_config']} on N fake CPU devices "
            "(per device; collectives: static count (MiB of results)):", "",
            "| devices | strategy | mesh | state MiB | step memory MiB | GFLOP/device | collectives |",
            "|---:|---|---|---:|---:|---:|---|"]
    for r in result["cpu_compiles"]:
      flops = r.get("flops_per_device")
      out.append(f"| {r['devices']} | {r['strategy']} | {tuple(r['mesh'])} | "
                 f"{_mib(r['state_bytes'])} | {_mib(r['memory'].get('total_bytes'))} | "
                 f"{'-' if flops is None else f'{flops / 1e9:.2f}'} | {_coll(r['collectives'])} |")
  if result["aot_targets"]:
    out += ["", "Paper config at its pod targets (AOT, train step, per chip):", "",
            "| target | config | mesh (data, fsdp, tensor) | batch | state MiB | step memory MiB / HBM | TFLOP/chip | collectives |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["aot_targets"]:
      mesh = tuple(r["mesh"].values())
      flops = r.get("flops_per_device")
      used = r["total_bytes"] if r["fits"] else (r.get("out_of_memory") or {}).get("used_bytes")
      fit = "" if r["fits"] else " **does not fit**"
      out.append(f"| {r['target']} ({r['devices']} x {r['device_kind']}) | {r['config']} | "
                 f"{mesh} | {r['global_batch']} | "
                 f"{_mib(r['params_bytes'] + r['opt_state_bytes'])} | "
                 f"{_mib(used)} / {_mib(r['memory_limit_bytes'])}{fit} | "
                 f"{'-' if flops is None else f'{flops / 1e12:.2f}'} | "
                 f"{_coll(r['collectives'])} |")
  return "\n".join(out)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", default="1,2,4,8", help="fake CPU device counts to compile on")
  p.add_argument("--pod_sizes", default="32,64,256", help="more device counts, bytes only")
  p.add_argument("--paper_config", default="configs/ssacl_vitb16.py:bf16")
  p.add_argument("--compile_config", default="tests/tiny_config.py",
                 help="config compiled on the fake CPU devices (configs/demo.py: slower)")
  p.add_argument("--aot_results", default="bench/results")
  p.add_argument("--out", default="bench/results/scaling.json")
  p.add_argument("--no_compile", action="store_true", help="skip the CPU compiles")
  p.add_argument("--reuse", action="store_true", help="take the paper-state and CPU-compile "
                 "figures from --out when it holds them for the same configs (re-reads only "
                 "the AOT reports)")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.compile_config)))
    return 0
  devices = [int(n) for n in args.devices.split(",") if n]
  sizes = sorted(set(devices) | {int(n) for n in args.pod_sizes.split(",") if n})
  out = ROOT / args.out
  old = json.loads(out.read_text()) if args.reuse and out.exists() else {}
  if (old.get("paper_config"), old.get("compile_config")) != (args.paper_config,
                                                               args.compile_config):
    old = {}
  result = {
      "date": old.get("date", time.strftime("%Y-%m-%d")),
      "machine": old.get("machine", f"{os.cpu_count()} CPU cores, {sys.platform}"),
      "paper_config": args.paper_config, "compile_config": args.compile_config,
      "paper_state": old.get("paper_state") or paper_state_table(load_config(args.paper_config),
                                                                 sizes),
      "cpu_compiles": old.get("cpu_compiles") or ([] if args.no_compile else [
          row for n in devices for row in run_worker(n, args.compile_config)]),
      "aot_targets": aot_targets(ROOT / args.aot_results),
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(markdown(result))
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  sys.exit(main())
