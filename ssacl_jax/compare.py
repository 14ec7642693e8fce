"""Compare two evaluations of the same studies: `python -m ssacl_jax.compare RUN_A RUN_B`.

RUN_A and RUN_B are eval directories (WORKDIR/eval/<split>, holding metrics.json and
per_study.npz) over the same studies. For every metric both hold, prints A, B, the
difference A - B, its 95% interval from a paired study-level bootstrap (the same
resampled studies for both runs: evaluation/bootstrap.py) and the two-sided bootstrap
p-value of "no difference". Runs over different study sets are refused.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from ssacl_jax.evaluation import bootstrap


class StudyMismatchError(ValueError):
  pass


def _eval_dir(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if (path / bootstrap.FILENAME).is_file():
    return path
  found = sorted(p.parent for p in path.glob(f"eval/*/{bootstrap.FILENAME}"))
  if len(found) == 1:  # a training workdir with one evaluated split
    return found[0]
  raise FileNotFoundError(f"{path} holds no {bootstrap.FILENAME}: pass an eval directory "
                          "(WORKDIR/eval/<split>) written by python -m ssacl_jax.main --mode eval")


def _aligned(ids_a, ids_b, groups_b):
  """groups_b reordered to the study order of A; refused unless the study sets match."""
  a, b = [str(s) for s in ids_a], [str(s) for s in ids_b]
  if len(set(a)) != len(a) or len(set(b)) != len(b):
    raise StudyMismatchError("a run lists a study twice: cannot pair studies")
  if set(a) != set(b):
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    raise StudyMismatchError(
        f"the runs score different studies ({len(a)} vs {len(b)}; only in A: "
        f"{only_a[:5]}{'...' if len(only_a) > 5 else ''}, only in B: "
        f"{only_b[:5]}{'...' if len(only_b) > 5 else ''}): a paired comparison needs the "
        "same split and eval.max_examples in both")
  if a == b:
    return groups_b
  order = np.array([b.index(s) for s in a])
  return [bootstrap.reorder(g, order) for g in groups_b]


def compare(run_a, run_b, num: int = bootstrap.NUM_RESAMPLES,
            seed: int = bootstrap.SEED) -> dict[str, dict]:
  """{metric: {"a", "b", "difference", "ci95", "p_value"}} for the metrics both runs hold."""
  dir_a, dir_b = _eval_dir(run_a), _eval_dir(run_b)
  ids_a, groups_a = bootstrap.load(dir_a / bootstrap.FILENAME)
  ids_b, groups_b = bootstrap.load(dir_b / bootstrap.FILENAME)
  groups_b = _aligned(ids_a, ids_b, groups_b)
  diffs = bootstrap.paired_differences(groups_a, groups_b, len(ids_a), num, seed)
  point_a = bootstrap.draws(groups_a, bootstrap.identity(len(ids_a)))
  point_b = bootstrap.draws(groups_b, bootstrap.identity(len(ids_a)))
  return {k: {"a": float(point_a[k][0]), "b": float(point_b[k][0]), **v} for k, v in diffs.items()}


def format_table(rows: dict[str, dict]) -> str:
  lines = [f"{'metric':48s} {'A':>9s} {'B':>9s} {'A - B':>9s}  {'95% interval':>21s} {'p':>6s}"]
  for k, v in rows.items():
    low, high = v["ci95"]
    lines.append(f"{k:48s} {v['a']:9.4f} {v['b']:9.4f} {v['difference']:+9.4f}  "
                 f"[{low:+9.4f}, {high:+9.4f}] {v['p_value']:6.3f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ssacl_jax.compare", description=__doc__.split("\n")[0])
  parser.add_argument("run_a")
  parser.add_argument("run_b")
  parser.add_argument("--resamples", type=int, default=bootstrap.NUM_RESAMPLES)
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  args = parser.parse_args(argv)
  try:
    rows = compare(args.run_a, args.run_b, args.resamples)
  except (StudyMismatchError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(rows, indent=1) if args.json else format_table(rows))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
