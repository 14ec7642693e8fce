"""Where a compiled train step's device-memory traffic goes (ssacl_jax.hbm_traffic), by model
part and by kind of layer, from an HLO dump.

  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text" \
      python -m ssacl_jax.aot --config configs/tpu_v5p_32.py --topology v5p:2x2x4 --roofline
  python bench/traffic_breakdown.py DIR/module_*.jit_train_step.*.after_optimizations.txt \
      --json bench/results/roofline/traffic_v5p_32.json

Parts are the first element of each kernel's jax source path ('SSACL.report_logits' is the
report decoder's forward, '?' kernels without metadata: on TPU the VMEM prefetches and
evictions); kinds split attention ('/attn/' in the path: scores, softmax, dropout,
projections), MLP ('/mlp/'), the optimizer update (the non-finite guard's `select_n`, into
which XLA fuses AdamW), VMEM prefetch/eviction (copy-start) and the rest. Prints a table,
then one line of JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssacl_jax import hbm_traffic  # noqa: E402


def kind(k: hbm_traffic.Kernel) -> str:
  if k.opcode == "copy-start":
    return "VMEM prefetch / eviction"
  if "/attn/" in k.source:
    return "attention"
  if "/mlp/" in k.source:
    return "MLP"
  if k.source.startswith("select_n"):
    return "optimizer update"
  return "other"


def breakdown(hlo: str) -> dict:
  ks = hbm_traffic.kernels(hlo)
  total = hbm_traffic.total_bytes(ks)
  by_kind, by_part = collections.Counter(), collections.Counter()
  for k in ks:
    moved = (k.read_bytes + k.written_bytes) * (k.runs or 1)
    by_kind[kind(k)] += moved
    by_part[(k.source.split("/")[0], "bwd" if k.backward else "fwd")] += moved
  return {"total_bytes": total, "kernels": len(ks), "launches": hbm_traffic.launches(ks),
          "by_kind": [{"kind": n, "bytes": b} for n, b in by_kind.most_common()],
          "by_part": [{"part": p, "pass": s, "bytes": b}
                      for (p, s), b in by_part.most_common(15)]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("hlo")
  parser.add_argument("--json")
  args = parser.parse_args()
  out = {"bench": "traffic_breakdown", "hlo": pathlib.Path(args.hlo).name,
         **breakdown(pathlib.Path(args.hlo).read_text())}
  total = out["total_bytes"]
  print(f"{total / 1e9:.2f} GB in {out['kernels']} kernels ({out['launches']} launches)")
  for row in out["by_kind"]:
    print(f"  {row['kind']:26s} {row['bytes'] / 1e9:8.2f} GB {row['bytes'] / total:6.1%}")
  for row in out["by_part"]:
    print(f"  {row['pass']} {row['part']:40s} {row['bytes'] / 1e9:8.2f} GB")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
