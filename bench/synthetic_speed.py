"""Throughput of the synthetic radiograph generator on one CPU core.

  python bench/synthetic_speed.py              # 256 px, 300 examples
  python bench/synthetic_speed.py --size 224 --n 1000

Prints one JSON line. `images_per_second` counts CPU time of this (single-threaded)
process, so it measures one core even on a busy machine; `wall_images_per_second` is
the elapsed-time rate.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from input_pipeline import synthetic  # noqa: E402


def measure(n: int, size: int, seed: int = 0, split: str = "train") -> dict:
  synthetic.generate_example(seed, split, 0, size)  # warm caches
  cpu0, wall0 = time.process_time(), time.perf_counter()
  for index in range(1, n + 1):
    synthetic.generate_example(seed, split, index, size)
  cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
  return {"images_per_second": round(n / cpu, 1), "image_size": size,
          "wall_images_per_second": round(n / wall, 1), "n": n}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=300)
  parser.add_argument("--size", type=int, default=256)
  args = parser.parse_args(argv)
  print(json.dumps(measure(args.n, args.size)))


if __name__ == "__main__":
  main()
