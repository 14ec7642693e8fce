"""The persistent compilation cache: compile time of a first and a second start.

  python bench/compile_cache.py --json bench/results/compile_cache_vitb16.json

Runs `bench/train_step.py --compile_only` twice, each in a fresh process, as two starts of
a run in the same workdir: train.compilation_cache_dir's default ('auto') puts the cache
beside the workdir, so the first start compiles and writes it and the second reads it.
Default: the paper config (configs/ssacl_vitb16.py) at batch 4 on one CPU device, the
step the trainer jits (state donated, the trainer's compiler options). Prints one JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchlib  # noqa: E402


def compile_once(config: str, batch: int, workdir: pathlib.Path) -> dict:
  out = subprocess.run(
      [sys.executable, str(ROOT / "bench" / "train_step.py"), "--config", config, "--batch",
       str(batch), "--compile_only", "--cache_workdir", str(workdir)],
      cwd=ROOT, capture_output=True, text=True, check=True)
  report = json.loads(out.stdout[out.stdout.index("{"):])
  return {k: report[k] for k in ("lower_s", "compile_s", "compilation_cache_dir")}


def cache_bytes(folder: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/ssacl_vitb16.py")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--json", default="")
  a = p.parse_args()
  with tempfile.TemporaryDirectory() as parent:
    workdir = pathlib.Path(parent) / "run"
    first = compile_once(a.config, a.batch, workdir)
    written = cache_bytes(pathlib.Path(first["compilation_cache_dir"]))
    second = compile_once(a.config, a.batch, workdir)
  report = {"bench": "compile_cache", "config": a.config, "batch": a.batch,
            "machine": benchlib.machine(), "first_start": first, "second_start": second,
            "cache_mib": round(written / 2**20, 1),
            "second_over_first": round(second["compile_s"] / first["compile_s"], 4)}
  print(benchlib.write_json(a.json, report))


if __name__ == "__main__":
  main()
