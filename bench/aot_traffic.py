"""Add the kernels' device-memory traffic, and the roofline that uses it, to an aot report
from the compile's HLO dump (for reports written before `ssacl_jax.aot` counted traffic).

  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text" \
      python -m ssacl_jax.aot --config C --topology T --collectives --roofline --json R.json
  python bench/aot_traffic.py --report R.json \
      --hlo DIR/module_*.jit_train_step.*.after_optimizations.txt --json OUT.json

The dump must be the report's program: its collectives (static counts) must equal the
report's, or the script stops. Prints the updated report as one line of JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchlib  # noqa: E402
from ssacl_jax import aot, hlo_report, roofline  # noqa: E402


def add_traffic(report: dict, hlo: str) -> dict:
  step = report["steps"]["train"]
  dumped = hlo_report.collective_figures(hlo, report["num_devices"])["collectives"]
  if dumped != step["collectives"]:
    raise SystemExit(f"the HLO dump is not this report's program: collectives {dumped} "
                     f"against {step['collectives']}")
  step.update(hlo_report.traffic_figures(hlo, groups=True))
  config = benchlib.load_config(report["config"])
  if config.train.global_batch_size != report["global_batch"]:
    raise SystemExit(f"{report['config']} gives global batch {config.train.global_batch_size}, "
                     f"the report {report['global_batch']}: it was compiled with --config.* "
                     "overrides this script cannot see; recompile with --hlo_dir instead")
  kind = report["target"].split(":")[0]
  chip = (report.get("roofline") or {}).get("chip") or roofline.chip_figures(kind)
  report["roofline"] = aot.roofline_report(config, step, report["num_devices"], chip)
  report["traffic_from"] = "bench/aot_traffic.py (HLO dump of the same compile)"
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--report", required=True)
  parser.add_argument("--hlo", required=True)
  parser.add_argument("--json", help="write the updated report here (default: in place)")
  args = parser.parse_args()
  report = add_traffic(json.loads(pathlib.Path(args.report).read_text()),
                       pathlib.Path(args.hlo).read_text())
  out = pathlib.Path(args.json or args.report)
  out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  for line in hlo_report.roofline_lines(report["roofline"]):
    print(line)
  print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
  main()
