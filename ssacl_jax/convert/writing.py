"""Converted parts -> a workdir: OUT/checkpoints/0 (a full train state at step 0),
OUT/config.json and OUT/conversion_report.txt."""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from ssacl_jax import checkpointing, config_lib, sharding, state as state_lib
from ssacl_jax.convert.conversion import convert, set_position_tables
from ssacl_jax.convert.tensors import ConversionError, Report, flatten
from ssacl_jax.models import ssacl


def merge_into(fresh: dict, converted: dict) -> dict:
  """fresh params (jax Arrays or ShapeDtypeStructs with shardings) with the converted numpy
  parts placed on the same shardings and dtypes."""

  def place(f, v):
    v = np.asarray(v).astype(f.dtype)
    return jax.make_array_from_callback(f.shape, f.sharding, lambda idx: v[idx])

  out = dict(fresh)
  for part, sub in converted.items():
    out[part] = jax.tree.map(place, fresh[part], sub)
  return out


def write_checkpoint(config, converted: dict, out_dir, report: Report) -> pathlib.Path:
  """OUT/checkpoints/0 (full train state, step 0), OUT/config.json, OUT/conversion_report.txt."""
  out = pathlib.Path(out_dir)
  ckpt = checkpointing.Checkpointer(out, config)
  if ckpt.latest_step() is not None:
    raise FileExistsError(f"{ckpt.directory} already holds checkpoints; choose an empty --out")
  mesh = sharding.make_mesh(config)
  with jax.set_mesh(mesh):
    model = ssacl.build_model(config.model)
    setup = state_lib.setup_state(config, model, mesh, ssacl.dummy_anatomy_tokens(config), ssacl.dummy_batch(config, 1))
    abstract = setup.abstract_state["params"]
    if set(flatten(abstract)) <= set(flatten(converted)):  # all converted: skip the model's init
      params = merge_into(abstract, converted)
      state = {"step": jax.device_put(np.zeros((), np.int32), setup.shardings["step"]),
               "params": params,
               "opt_state": jax.jit(setup.tx.init, out_shardings=setup.shardings["opt_state"])(params)}
    else:
      state = setup.init_fn(jax.random.key(config.train.seed))
      state = dict(state, params=merge_into(state["params"], converted))
    meta = {"converted": {"kind": report.kind, "src": report.src, "parts": list(report.parts)}}
    ckpt.save(0, state, meta=meta, force=True)
    ckpt.close()
  config_lib.save_workdir_config(config, out)
  (out / "conversion_report.txt").write_text(report.text() + "\n")
  return ckpt.directory / "0"


def run(kind: str, src, config, out, *, parts: str = "", allow_missing: bool = False,
        allow_unmapped: bool = False, dry_run: bool = False) -> Report:
  """Convert, print the mapping report and (unless dry_run) write OUT."""
  if kind == "gpt2":  # OUT/config.json: the decoder's vocabulary follows its weights
    config = config.copy_and_resolve_references()
    config.init.gpt2 = str(pathlib.Path(src).absolute())
  try:
    wanted = ssacl.parse_parts(parts)
  except ValueError as e:
    raise ConversionError(str(e)) from e
  converted, report = convert(kind, src, config, parts=wanted,
                              allow_missing=allow_missing, allow_unmapped=allow_unmapped)
  set_position_tables(config, report)
  print(report.text())
  if not dry_run:
    if not out:
      raise ConversionError("--out is required unless --dry_run")
    path = write_checkpoint(config, converted, out, report)
    print(f"wrote {path} (full train state at step 0; converted parts: "
          f"{', '.join(report.parts)}); report in {pathlib.Path(out) / 'conversion_report.txt'}")
  return report
