"""What XLA:TPU's "bytes accessed" counts, against the kernels' traffic (ssacl_jax.hbm_traffic),
on small programs whose minimum traffic is known by hand. Compile-only (libtpu, no TPU).

  JAX_PLATFORMS=cpu python bench/traffic_probe.py --json bench/results/traffic_probe_v5e.json

Each case: the bytes a kernel-at-a-time program must at least read and write (inputs once,
outputs once), XLA's cost-analysis figure, and the kernels' count. Prints one line per case,
then the JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssacl_jax import aot, hbm_traffic  # noqa: E402

N = 4096
B, D, H = 8192, 768, 3072
MIB = 2 ** 20


def _mlp_grads(x, w1, w2):
  return jax.grad(lambda w1, w2: jnp.sum(jax.nn.gelu(x @ w1) @ w2), (0, 1))(w1, w2)


# name -> (function, input shapes/dtypes, minimum bytes: inputs + outputs once)
CASES = {
    "elementwise x * 2 + 1, f32[4096, 4096]":
        (lambda x: x * 2 + 1, [((N, N), jnp.float32)], 2 * N * N * 4),
    "matmul, bf16[4096, 4096] @ bf16[4096, 4096]":
        (lambda a, b: a @ b, [((N, N), jnp.bfloat16)] * 2, 3 * N * N * 2),
    "softmax over rows, f32[4096, 4096]":
        (lambda x: jax.nn.softmax(x, -1), [((N, N), jnp.float32)], 2 * N * N * 4),
    "MLP weight gradients, x bf16[8192, 768], 768 -> 3072 -> 768":
        (_mlp_grads, [((B, D), jnp.bfloat16), ((D, H), jnp.bfloat16), ((H, D), jnp.bfloat16)],
         (B * D + 2 * (2 * D * H)) * 2),
}


def measure(fn, shapes, sharding) -> tuple[float, float]:
  args = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in shapes]
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return (float(cost["bytes accessed"]),
          hbm_traffic.total_bytes(hbm_traffic.kernels(compiled.as_text())))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--json")
  args = parser.parse_args()
  target = aot.parse_topology(args.topology)
  aot.quiet_libtpu(target)
  device = aot.target_devices(target)[:1]
  mesh = jax.make_mesh((1,), ("x",), devices=device, axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = []
  for name, (fn, shapes, minimum) in CASES.items():
    xla, kernels = measure(fn, shapes, sharding)
    rows.append({"case": name, "minimum_bytes": minimum, "xla_bytes_accessed": xla,
                 "kernel_traffic_bytes": kernels})
    print(f"{name}: minimum {minimum / MIB:.1f} MiB, XLA {xla / MIB:.1f} MiB, "
          f"kernels {kernels / MIB:.1f} MiB")
  out = {"bench": "traffic_probe", "target": args.topology,
         "device_kind": device[0].device_kind, "jax": jax.__version__, "rows": rows}
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
