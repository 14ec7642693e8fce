"""One roofline table from compiled steps: a row per `python -m ssacl_jax.aot ... --roofline
--json R.json` report, each a compile of its own slice and mesh (nothing scaled).

  python bench/roofline_table.py bench/results/aot/*.json --json bench/results/roofline_pods.json

Per row: chips, mesh, examples per chip, the three roofline terms (ssacl_jax/roofline.py;
memory from the kernels' device-memory traffic, ssacl_jax/hbm_traffic.py), the predicted
step with full overlap (their maximum) and with none (their sum), the MFU at both, the
paper recipe's 51 epochs at both, and the step XLA's own bytes-accessed count would give.
Prints the Markdown table, then the rows as one line of JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib


def row(path: pathlib.Path) -> dict:
  report = json.loads(path.read_text())
  r = report.get("roofline")
  if not r:
    raise SystemExit(f"{path}: no roofline (run ssacl_jax.aot with --roofline)")
  chips = report["num_devices"]
  xla = r.get("with_xla_bytes_accessed") or {}
  return {
      "report": path.name, "config": report["config"], "target": report["target"],
      "chip": report["target"].split(":")[0], "chips": chips, "mesh": report["mesh"],
      "global_batch": report["global_batch"],
      "batch_per_chip": report["global_batch"] / chips,
      "compute_ms": r["compute_s"] * 1e3, "memory_ms": r["memory_s"] * 1e3,
      "interconnect_ms": r["interconnect_s"] * 1e3, "step_ms": r["step_s"] * 1e3,
      "serial_ms": r["serial_s"] * 1e3, "binding": r["binding"],
      "mfu_upper_bound": r["mfu_upper_bound"], "mfu_if_serial": r["mfu_if_serial"],
      "hbm_traffic_gb": r["hbm_bytes_per_device"] / 1e9,
      "xla_bytes_accessed_gb": (r.get("xla_bytes_accessed_per_device") or 0) / 1e9,
      "step_ms_with_xla_bytes": xla.get("step_s", 0) * 1e3,
      "paper_hours": r["paper_hours"], "paper_hours_if_serial": r["paper_hours_if_serial"],
      "compile_seconds": report["steps"]["train"]["compile_seconds"],
      "memory_gib_per_chip": report["steps"]["train"]["memory"]["total_bytes"] / 2 ** 30,
  }


def markdown(rows: list[dict]) -> str:
  head = ("| config | chips | mesh (data, fsdp, tensor) | batch/chip | compute ms | "
          "memory ms | interconnect ms | step ms (overlap .. serial) | binding | "
          "MFU (serial .. overlap) | 51 epochs h | step ms with XLA's bytes |")
  lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
  for r in rows:
    mesh = ", ".join(str(v) for v in r["mesh"].values())
    lines.append(
        f"| `{r['config']}` | {r['chip']} x {r['chips']} | ({mesh}) | {r['batch_per_chip']:g} "
        f"| {r['compute_ms']:.1f} | {r['memory_ms']:.1f} | {r['interconnect_ms']:.1f} "
        f"| {r['step_ms']:.1f} .. {r['serial_ms']:.1f} | {r['binding']} "
        f"| {r['mfu_if_serial']:.0%} .. {r['mfu_upper_bound']:.0%} "
        f"| {r['paper_hours']:.2f} .. {r['paper_hours_if_serial']:.2f} "
        + (f"| {r['step_ms_with_xla_bytes']:.1f} |" if r["step_ms_with_xla_bytes"] else "| n/a |"))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("reports", nargs="+")
  parser.add_argument("--json")
  args = parser.parse_args()
  rows = [row(pathlib.Path(p)) for p in args.reports]
  print(markdown(rows))
  text = json.dumps({"bench": "roofline_table", "rows": rows}, sort_keys=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(json.loads(text), indent=1) + "\n")
  print(text)


if __name__ == "__main__":
  main()
