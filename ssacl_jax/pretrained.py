"""Start from pretrained weights: the `config.init` fields.

  --config.init.checkpoint=DIR  a directory with checkpoints/: written by
                                `python -m ssacl_jax.convert` or a training workdir
  --config.init.step=-1         its step (-1: the latest)
  --config.init.parts=auto      top-level parameter groups to take: 'auto' (a converted
                                checkpoint's converted parts, all of a workdir's, and what
                                init.gpt2 / init.mae provide), 'all', or a comma list of
                                ssacl_jax.models.ssacl.PARTS
  --config.init.gpt2=FOLDER     a Hugging Face GPT-2 folder, converted on the fly ->
                                report_decoder
  --config.init.mae=FILE.pth    an MAE checkpoint, converted on the fly -> image_encoder
                                (and image_decoder when the file has one)

Training applies them when it initialises a fresh state (the workdir has no checkpoint;
a resumed run ignores them). A part several sources provide comes from the last of:
checkpoint, mae, gpt2. Every part taken must match the model exactly: a wrong path, a
missing parameter or a shape mismatch fails naming the path, the parameter and both
shapes; parts not taken keep their fresh initialisation. The image encoder's and decoder's
fixed position tables are not parameters but formulas (config.model.position_tables): a
source whose tables were made by another formula than the run's config fails naming the
field to set.
"""
from __future__ import annotations

import logging
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssacl_jax import checkpointing, config_lib, convert, layers
from ssacl_jax.models import ssacl
from ssacl_jax.models.image import position_table

# What each on-the-fly source can provide.
KIND_PARTS = {"gpt2": ("report_decoder",), "mae": ("image_encoder", "image_decoder")}


class InitError(ValueError):
  pass


def requested(config) -> bool:
  """Whether config.init names any source."""
  init = config.get("init")
  return bool(init and (init.checkpoint or init.gpt2 or init.mae))


def load_initial_params(config, abstract_params, fresh_params) -> dict:
  """fresh_params with the parts config.init selects replaced by pretrained values.

  abstract_params: the model's parameter tree of ShapeDtypeStructs (shapes checked against);
  fresh_params: the freshly initialised parameters (jax Arrays: their shardings and dtypes
  are kept). Returns a new params dict; logs where every part came from.
  """
  init = config.init
  try:
    wanted = ssacl.parse_parts(init.parts)
  except ValueError as e:
    raise InitError(f"config.init.parts={init.parts!r}: {e}") from e
  params, origin, offered = dict(fresh_params), {}, {}
  if init.checkpoint:
    restored, available = _from_checkpoint(config, init.checkpoint, init.step, wanted,
                                           abstract_params, fresh_params)
    offered[f"init.checkpoint={init.checkpoint}"] = available
    for part, tree in restored.items():
      params[part], origin[part] = tree, f"init.checkpoint={init.checkpoint}"
  for kind in ("mae", "gpt2"):
    src = init[kind]
    if not src:
      continue
    converted = _from_converter(kind, src, config, wanted, abstract_params)
    offered[f"init.{kind}={src}"] = tuple(KIND_PARTS[kind])
    for part in converted:
      if part in origin:
        logging.info("init: %s from init.%s replaces the one from %s", part, kind, origin[part])
      origin[part] = f"init.{kind}={src}"
    params = convert.merge_into(params, converted)
  if wanted is not None:
    absent = [p for p in wanted if p not in origin]
    if absent:
      raise InitError(f"config.init.parts asks for {', '.join(absent)}, which no init source "
                      "provides (" + "; ".join(f"{k} gives {', '.join(v) or 'nothing'}"
                                               for k, v in offered.items()) + ")")
  for part in ssacl.PARTS:
    logging.info("init: %-15s %s", part, origin.get(part, "fresh initialisation"))
  return params


def _checkpoint_dir(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.name == "checkpoints":
    path = path.parent
  if not (path / "checkpoints").is_dir():
    raise FileNotFoundError(
        f"config.init.checkpoint={path}: no {path / 'checkpoints'} folder (expected the --out "
        "of python -m ssacl_jax.convert or a training workdir)")
  return path


def _from_checkpoint(config, path, step, wanted, abstract_params, fresh_params):
  """({part: restored params on fresh_params' shardings}, parts the checkpoint offers)."""
  path = _checkpoint_dir(path)
  ckpt = checkpointing.Checkpointer(path, config, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"config.init.checkpoint={path}: {ckpt.directory} holds no checkpoint")
  step = steps[-1] if step is None or step < 0 else step
  if step not in steps:
    raise FileNotFoundError(f"config.init.checkpoint={path}: no step {step}; "
                            f"available: {sorted(steps)}")
  stored = ckpt.checkpoint_tree(step)["params"]
  converted = ckpt.read_meta(step).get("converted")
  available = tuple(converted["parts"]) if converted else tuple(
      p for p in ssacl.PARTS if p in stored)
  if wanted is None:  # auto: what the checkpoint offers and the model has
    parts = tuple(p for p in available if p in abstract_params)
  else:
    parts = tuple(p for p in wanted if p in available)
    foreign = [p for p in parts if p not in abstract_params]
    if foreign:
      raise InitError(f"config.init.parts asks for {', '.join(foreign)}, which this model "
                      f"does not have (its parts: {', '.join(abstract_params)})")
  if converted and wanted is not None:
    fresh_there = [p for p in wanted if p not in available and p in stored]
    if fresh_there:
      logging.warning("init: %s in %s were not converted (%s); not taken from it",
                      ", ".join(fresh_there), path, converted["kind"])
  where = f"config.init.checkpoint={path} (step {step})"
  _check_position_tables(config, _saved_position_tables(path, parts), where)
  model_parts = {p: abstract_params[p] for p in parts}
  stored_parts = {p: stored[p] for p in parts if p in stored}
  # A checkpoint written with the other model.scan_layers layout is restored to host memory
  # and its block stacks stacked / unstacked to this model's layout.
  scanned = layers.has_scanned_layers(model_parts)
  relayout = scanned != layers.has_scanned_layers(stored_parts)
  diff = checkpointing.diff_trees(
      model_parts, layers.relayout_shapes(stored_parts, scanned) if relayout else stored_parts)
  if not diff.empty():
    raise checkpointing.CheckpointMismatchError(
        f"{where} does not match the model in the parts taken ({', '.join(parts)}):\n"
        f"{diff.describe()}\nFix the config so the model matches, or take fewer parts with "
        "--config.init.parts=...")
  if not parts:
    return {}, available
  if relayout:
    host = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored_parts)
    restored = _restore_params(ckpt, step, host,  # to host memory, in the stored layout
                               lambda _: ocp.RestoreArgs(restore_type=np.ndarray))
    restored = layers.stack_layers(restored) if scanned else layers.unstack_layers(restored)
    logging.info("init: restored %s from %s (block stacks %s)", ", ".join(parts), where,
                 "stacked" if scanned else "unstacked")
    return convert.merge_into({p: fresh_params[p] for p in parts}, restored), available
  like = {p: jax.tree.map(lambda f: jax.ShapeDtypeStruct(f.shape, f.dtype, sharding=f.sharding),
                         fresh_params[p]) for p in parts}
  restored = _restore_params(ckpt, step, like, lambda x: ocp.ArrayRestoreArgs(
      sharding=x.sharding, global_shape=x.shape, dtype=x.dtype))
  logging.info("init: restored %s from %s", ", ".join(parts), where)
  return restored, available


def _saved_position_tables(path, parts) -> dict:
  """{part: formula} a converted checkpoint or workdir was made with (its config.json)."""
  if not (pathlib.Path(path) / config_lib.CONFIG_FILE).is_file():
    return {}
  saved = config_lib.load_workdir_config(path).model
  return {p: position_table(saved, p) for p in parts if p in ("image_encoder", "image_decoder")}


def _check_position_tables(config, found: dict, source: str) -> None:
  """Fails, with the fix, where `found` ({part: formula} of a source) disagrees with the
  config."""
  problems = [f"{source} has the {formula!r} position table for {part}, but "
              f"config.model.position_tables.{part} is {position_table(config.model, part)!r}: "
              f"set --config.model.position_tables.{part}={formula}"
              for part, formula in found.items() if formula != position_table(config.model, part)]
  if problems:
    raise InitError("\n".join(problems))


def _restore_params(ckpt, step, like: dict, restore_arg) -> dict:
  """{part: params} of `step` shaped like `like` ({part: tree of ShapeDtypeStructs}), each
  leaf restored as `restore_arg(leaf)` says; closes the checkpointer."""
  target = {"params": like}
  restore_args = jax.tree.map(restore_arg, target)
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=restore_args, partial_restore=True)))["state"]["params"]
  ckpt.close()
  return dict(restored)


def _from_converter(kind, src, config, wanted, abstract_params) -> dict:
  """{part: numpy tree} converted from config.init.<kind> for the wanted parts."""
  parts = None if wanted is None else tuple(p for p in KIND_PARTS[kind] if p in wanted)
  if parts == ():
    return {}
  try:
    converted, report = convert.convert(kind, src, config, parts=parts, abstract=abstract_params)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.init.{kind}={src}: {e}") from e
  except convert.ConversionError as e:
    hint = ("\n(to take the MAE encoder only: --config.init.parts=image_encoder plus the "
            "parts other sources give)" if kind == "mae" and parts is None else "")
    raise InitError(f"config.init.{kind}={src}: {e}{hint}") from e
  # The release's image decoder keeps its own fixed table whatever MAE's is (SPEC 2): the
  # tables are formulas, never imported, so only the encoder's must agree with an MAE file.
  found = {part: table for part, table in report.position_tables.items()
           if kind != "mae" or part == "image_encoder"}
  _check_position_tables(config, found, f"config.init.{kind}={src}")
  logging.info("init: converted config.init.%s:\n%s", kind, report.text())
  return converted
