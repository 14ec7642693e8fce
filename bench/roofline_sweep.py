"""Roofline predictions for slices we did not compile, scaled from one compiled train step.

  python bench/roofline_sweep.py --report bench/results/aot_tpu_v5e_256_collectives_before.json \
      --report2 bench/results/aot_tpu_v5e_256_batch4096_nofsdp.json \
      --json bench/results/roofline_sweep.json

The report is `python -m ssacl_jax.aot ... --collectives --roofline --json` of the paper
config on some slice (per chip: batch b0, mesh (d0, f0, 1)). For a slice of C chips at
global batch B with mesh (d, f, 1), per-chip batch b = B / C, the per-chip figures are
scaled (ssacl_jax/roofline.py then predicts as for a compiled step):
  FLOPs        x b / b0 (the hand count is linear in the batch but for the global-batch
               loss terms, < 0.1% here);
  HBM bytes    x b / b0 (an upper bound: the weights' share does not grow with b), or,
               given a second aot report at another per-chip batch (--report2),
               the line W + A b through the two;
  collectives  all-gathers of parameters (source params/...) and their gradients'
               reduce-scatters keep their bytes, over the fsdp group: ring factor (f-1)/f;
               all-reduces keep their bytes over d x f chips; the rest keeps its wire bytes.
Three kinds of rows: the pod configs at their meshes; the recommended slice for the paper
recipe (global batch 256, every mesh (d, f) whose axes are products of the slice's torus
axes); weak scaling (fixed per-chip batch, fsdp over all chips).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssacl_jax import roofline  # noqa: E402

# name -> (chip, torus axes of chips); v5p slices are named by TensorCores (2 per chip).
SLICES = {"v5e-16": ("v5e", (4, 4)), "v5e-32": ("v5e", (4, 8)), "v5e-64": ("v5e", (8, 8)),
          "v5e-128": ("v5e", (8, 16)), "v5e-256": ("v5e", (16, 16)),
          "v5p-32": ("v5p", (2, 2, 4)), "v5p-64": ("v5p", (2, 4, 4))}

# The pod configs at their own meshes: name -> (chip, chips, global batch, data, fsdp).
POD_CONFIGS = {"configs/tpu_v4_64.py": ("v4", 32, 256, 4, 8),
               "configs/tpu_v5e_256.py": ("v5e", 256, 256, 16, 16),
               "configs/tpu_v5p_128.py": ("v5p", 64, 256, 4, 16),
               "configs/gpu_8xh200.py": ("h200", 8, 256, 1, 8)}


def fsdp_choices(axes: tuple[int, ...]) -> list[int]:
  """fsdp sizes that are products of whole torus axes (jax.make_mesh's constraint)."""
  out = {1}
  for mask in range(1, 2 ** len(axes)):
    out.add(math.prod(a for i, a in enumerate(axes) if mask >> i & 1))
  return sorted(out)


def scaled_wire(groups: list[dict], d: int, f: int) -> float:
  """Ring wire bytes per chip of the reference step's collectives on mesh (d, f, 1)."""
  total = 0.0
  for g in groups:
    params = g["source"].startswith("params/") or g["op"] == "reduce-scatter"
    if g["op"] in ("all-gather", "reduce-scatter") and params:
      n = f
    elif g["op"] == "all-reduce":
      n = d * f
    else:
      n = g["group_size"]
    total += roofline.ring_wire_bytes(g["op"], g["bytes"], n)
  return total


def per_chip_batch(report: dict) -> float:
  return report["global_batch"] / report["num_devices"]


def hbm_bytes(report: dict) -> float:
  """HBM bytes accessed per chip of an aot report (with or without --roofline)."""
  return report["steps"]["train"]["bytes_accessed_per_device"]


def hbm_line(ref: dict, other: dict | None) -> tuple[float, float]:
  """(W, A): HBM bytes per chip = W + A b, through two reports, else through the origin."""
  b0, h0 = per_chip_batch(ref), hbm_bytes(ref)
  if other is None:
    return 0.0, h0 / b0
  b1, h1 = per_chip_batch(other), hbm_bytes(other)
  slope = (h1 - h0) / (b1 - b0)
  return h0 - slope * b0, slope


def predict_slice(ref: dict, chip: str, chips: int, batch: int, d: int, f: int,
                  hbm: tuple[float, float]) -> dict:
  step, r = ref["steps"]["train"], ref["roofline"]
  b = batch / chips
  scale = b / per_chip_batch(ref)
  figures = roofline.chip_figures(chip)
  p = roofline.predict(flops=r["flops_per_device"] * scale,
                       model_flops=r["hand_flops_per_device"] * scale,
                       hbm_bytes=hbm[0] + hbm[1] * b,
                       wire=scaled_wire(step["collective_groups"], d, f),
                       peak_flops=figures["peak_flops"],
                       hbm_bytes_per_s=figures["hbm_bytes_per_s"],
                       interconnect_bytes_per_s=figures["interconnect_bytes_per_s"])
  steps = roofline.steps_to_train(r["paper_epochs"], r["paper_train_images"], batch)
  return {"chip": chip, "chips": chips, "batch": batch, "mesh": (d, f, 1),
          "per_chip_batch": batch / chips, **p, "paper_steps": steps,
          "paper_hours": steps * p["step_s"] / 3600}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--report", required=True, help="aot --collectives --roofline JSON")
  p.add_argument("--report2", default="", help="the same at another per-chip batch: fits "
                 "the HBM bytes' line")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--weak_per_chip_batch", type=int, default=8)
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  ref = json.loads(pathlib.Path(a.report).read_text())
  hbm = hbm_line(ref, json.loads(pathlib.Path(a.report2).read_text()) if a.report2 else None)
  slices = []
  for name, (chip, axes) in SLICES.items():
    chips = math.prod(axes)
    options = [predict_slice(ref, chip, chips, a.batch, chips // f, f, hbm)
               for f in fsdp_choices(axes) if chips % f == 0 and a.batch % chips == 0]
    best = min(options, key=lambda o: o["step_s"])
    slices.append({"slice": name, "best": best, "options": options})
    print(f"{name:8s} mesh {best['mesh']} batch/chip {best['per_chip_batch']:.0f}: step "
          f"{best['step_s'] * 1e3:7.2f} ms ({best['binding']}), MFU <= "
          f"{best['mfu_upper_bound']:.1%}, 51 epochs {best['paper_hours']:.2f} h")
  pods = []
  for name, (chip, chips, batch, d, f) in POD_CONFIGS.items():
    row = dict(predict_slice(ref, chip, chips, batch, d, f, hbm), config=name)
    pods.append(row)
    print(f"{name:24s} {chip} x{chips} mesh {row['mesh']}: step {row['step_s'] * 1e3:7.2f} ms "
          f"({row['binding']}), MFU <= {row['mfu_upper_bound']:.1%}, 51 epochs "
          f"{row['paper_hours']:.2f} h")
  weak = []
  for chips in (8, 16, 32, 64, 128, 256):
    row = predict_slice(ref, "v5e", chips, a.weak_per_chip_batch * chips, 1, chips, hbm)
    weak.append(row)
    print(f"weak v5e x{chips:3d} fsdp {chips}: step {row['step_s'] * 1e3:7.2f} ms "
          f"({row['binding']}), MFU <= {row['mfu_upper_bound']:.1%}")
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(
        {"report": a.report, "report2": a.report2, "hbm_line_bytes": hbm, "batch": a.batch,
         "pod_configs": pods, "slices": slices, "weak_scaling": weak},
        indent=1) + "\n")


if __name__ == "__main__":
  main()
