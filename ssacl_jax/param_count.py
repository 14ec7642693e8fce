"""Print a config's parameter counts per component (no weights are materialised).

  python -m ssacl_jax.param_count --config configs/ssacl_vitb16.py
"""
from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ssacl_jax import convert
from ssacl_jax.models import ssacl

COMPONENTS = tuple(ssacl.CONFIG_SECTION)  # the networks; the other parts are projections and scalars


def count_by_component(config) -> dict[str, int]:
  params = convert.abstract_params(config)
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  counts = {c: size(params[c]) for c in COMPONENTS}
  counts["projections_and_scales"] = size({k: v for k, v in params.items() if k not in COMPONENTS})
  counts["total"] = size(params)
  return counts


def main(argv):
  del argv
  counts = count_by_component(flags.FLAGS.config)
  if flags.FLAGS.json:
    print(json.dumps(counts))
    return
  for name, n in counts.items():
    print(f"{name:24s} {n:>13,d}  ({n / 1e6:.1f}M)")


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module is safe.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
