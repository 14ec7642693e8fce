"""Orbax checkpoints: the train state and the data iterator state, saved together.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous and
atomic (Orbax writes to a temporary directory and renames it when complete, so an
interrupted save is never restored). The last `max_to_keep` steps are kept, plus the
best by the validation metric.

A step whose files cannot be read (truncated, deleted, corrupted) fails as
`DamagedCheckpointError`, naming the step and the other steps; nothing falls back to
another step silently. Incomplete saves (Orbax's temporary directories, left by a killed
run) are deleted when training resumes, and listed in `Checkpointer.discarded`.

Restoring goes through an abstract target that carries the shardings of the current mesh,
so a checkpoint written on one mesh restores onto another. The checkpoint's tree is
compared to the model first: missing, extra or mis-shaped parameters are listed in the
error, or, with `config.checkpoint.partial_restore`, the matching ones are restored and
the rest keep their fresh initialisation.

Which saved step is scored (`select_step`): the best on validation by default, read from
the validation records training writes to WORKDIR/metrics.jsonl; never chosen on test.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from ssacl_jax import anatomy, cli, sharding


class CheckpointMismatchError(ValueError):
  pass


class DamagedCheckpointError(RuntimeError, cli.UserFixableError):
  pass


_INCOMPLETE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def incomplete_steps(directory) -> list[int]:
  """Steps whose save never finished: Orbax's temporary directories under `directory`."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _INCOMPLETE.match(p.name)))


@dataclasses.dataclass
class TreeDiff:
  missing: list[str]        # in the model, not in the checkpoint
  unexpected: list[str]     # in the checkpoint, not in the model
  mis_shaped: list[str]     # in both, different shapes

  def empty(self) -> bool:
    return not (self.missing or self.unexpected or self.mis_shaped)

  def describe(self, limit: int = 20) -> str:
    lines = []
    for title, items in (("missing from the checkpoint", self.missing),
                         ("in the checkpoint but not in the model", self.unexpected),
                         ("with different shapes", self.mis_shaped)):
      if items:
        lines.append(f"{len(items)} parameter(s) {title}:")
        lines += [f"  {x}" for x in items[:limit]]
        if len(items) > limit:
          lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _shapes(tree) -> dict[str, tuple]:
  return {"/".join(k): tuple(getattr(v, "shape", ())) for k, v in sharding.flatten_by_path(tree).items()}


def diff_trees(model_tree, checkpoint_tree) -> TreeDiff:
  want, have = _shapes(model_tree), _shapes(checkpoint_tree)
  return TreeDiff(
      missing=sorted(set(want) - set(have)),
      unexpected=sorted(set(have) - set(want)),
      mis_shaped=sorted(f"{k}: model {want[k]} vs checkpoint {have[k]}"
                        for k in set(want) & set(have) if want[k] != have[k]))


def finished_steps(workdir) -> list[int]:
  """The steps saved under WORKDIR/checkpoints, without opening a manager (orbax writes a
  step into a temporary name and renames it when complete)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []


class Checkpointer:
  """CheckpointManager for (state, data iterator, metadata) under WORKDIR/checkpoints."""

  def __init__(self, workdir, config, *, read_only: bool = False):
    ck = config.checkpoint
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.discarded = [] if read_only else incomplete_steps(self.directory)  # deleted below
    policies = [cm.LatestN(ck.max_to_keep)]
    if ck.best_metric:
      policies.append(cm.BestN(get_metric_fn=lambda m: m[ck.best_metric],
                               reverse=ck.best_mode == "min", n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=not read_only, read_only=read_only, enable_async_checkpointing=ck.async_save,
        preservation_policy=cm.AnyPreservationPolicy(policies),
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.partial_restore = bool(ck.partial_restore)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return self.manager.all_steps()

  def save(self, step: int, state, data_iterator=None, metrics=None, meta=None, force=False):
    items = dict(state=ocp.args.PyTreeSave(state),
                 meta=ocp.args.JsonSave(dict(step=int(step), anatomy_nodes=list(anatomy.NODES), anatomy_leaves=list(anatomy.LEAVES),
                                             graph_version=anatomy.GRAPH_VERSION, **(meta or {}))))
    if data_iterator is not None:
      items["data"] = _data_save(data_iterator)
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             metrics=metrics, force=force)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def checkpoint_tree(self, step: int):
    """The stored state's tree of array metadata (shapes, dtypes; nothing loaded)."""
    path = self.directory / str(step) / "state"
    if not path.is_dir():
      raise FileNotFoundError(f"{path} is missing: not an ssacl_jax checkpoint step directory")
    return ocp.StandardCheckpointer().metadata(path).item_metadata

  def restore(self, step: int, abstract_state, data_iterator=None, *, params_only=False):
    """`_restore` (below), a failure to read the step's files reported as damage."""
    try:
      return self._restore(step, abstract_state, data_iterator, params_only=params_only)
    except CheckpointMismatchError:
      raise
    except Exception as e:
      raise self._damaged(step, e) from e

  def _damaged(self, step: int, cause: Exception) -> DamagedCheckpointError:
    others = [s for s in self.all_steps() if s != step and self._readable(s)]
    # The first line of the cause, without TensorStore's pages of spec.
    reason = (str(cause).splitlines() or [type(cause).__name__])[0].split(" See full")[0][:160]
    return DamagedCheckpointError(
        f"checkpoint step {step} in {self.directory} is damaged ({reason}). Other steps: "
        f"{', '.join(map(str, others)) or 'none'}. Pick one with "
        "--config.eval.checkpoint_step=N (eval; predict: --step N), or move "
        f"{self.directory / str(step)} away to resume training from the one before.")

  def _readable(self, step: int) -> bool:
    try:
      self.checkpoint_tree(step)
      return True
    except Exception:  # any failure to read the metadata: not offered as intact
      return False

  def _restore(self, step: int, abstract_state, data_iterator=None, *, params_only=False):
    """Restore `step` into the shardings of `abstract_state` (ShapeDtypeStructs with shardings).

    Returns the restored state; with params_only, {"params": ...} only. When the stored
    parameters differ from the model and partial restore is allowed, only the matching
    parameters come back ({"params": subset}, flagged by `partial=True` in the log) and
    the caller keeps its fresh values for the rest, optimizer state included.
    data_iterator, when given and the restore is complete, continues from the checkpoint.
    """
    stored = self.checkpoint_tree(step)
    target = {"params": abstract_state["params"]} if params_only else abstract_state
    diff = diff_trees({"params": abstract_state["params"]}, {"params": _get(stored, "params")})
    if not diff.empty():
      if not self.partial_restore:
        raise CheckpointMismatchError(
            f"checkpoint {self.directory / str(step)} does not match the model:\n"
            f"{diff.describe()}\nFix the config so the model matches, or pass "
            "--config.checkpoint.partial_restore=True to restore only the parameters that "
            "match (the rest keep their initialisation).")
      logging.warning("partial restore from step %d:\n%s", step, diff.describe())
      skip = set(diff.missing) | {m.split(":")[0] for m in diff.mis_shaped}
      target = {"params": _prune(abstract_state["params"], skip, prefix="params")}
      data_iterator = None
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
        target)
    items = dict(state=ocp.args.PyTreeRestore(target, restore_args=restore_args,
                                              partial_restore=True))
    if data_iterator is not None and not params_only:
      if (self.directory / str(step) / "data").is_dir():
        items["data"] = _data_restore(data_iterator)
      else:  # e.g. a converted checkpoint: the data stream starts from the beginning
        logging.warning("checkpoint step %d has no data iterator state", step)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _prune(tree: dict, skip: set[str], prefix: str) -> dict:
  """Nested dict without the leaves whose 'a/b/c' path is in skip."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}"
    if isinstance(v, dict):
      sub = _prune(v, skip, path)
      if sub:
        out[k] = sub
    elif path not in skip:
      out[k] = v
  return out


def merge_params(fresh: dict, restored: dict) -> dict:
  """fresh params with every leaf present in `restored` replaced."""
  out = dict(fresh)
  for k, v in restored.items():
    out[k] = merge_params(fresh[k], v) if isinstance(v, dict) else v
  return out


def _get(tree, key):
  return tree[key] if isinstance(tree, dict) or hasattr(tree, "__getitem__") else getattr(tree, key)


def _data_save(iterator):
  import grain
  return grain.checkpoint.CheckpointSave(iterator)


def _data_restore(iterator):
  import grain
  return grain.checkpoint.CheckpointRestore(iterator)


# ----------------------------------------------------------------------------- which step
def validation_record(workdir, metric: str) -> dict[int, float]:
  """{step: value} of `metric` in the validation records of WORKDIR/metrics.jsonl."""
  path, values = pathlib.Path(workdir) / "metrics.jsonl", {}
  if metric and path.is_file():
    for record in map(json.loads, path.read_text().splitlines()):
      value = record.get(metric)
      if isinstance(value, (int, float)) and math.isfinite(value):
        values[int(record["step"])] = float(value)
  return values


def select_step(config, workdir, steps, request=None) -> tuple[int, str]:
  """(step, the rule that chose it) among the saved `steps`.

  request (default config.eval.step): "best", the saved step with the best
  checkpoint.best_metric (checkpoint.best_mode) on validation, the earlier step on ties;
  the latest, saying so, when no saved step has a validation record; "latest"; or a step.
  """
  request = str(config.eval.step if request is None else request).strip()
  steps = sorted(int(s) for s in steps)
  if request == "latest":
    return steps[-1], "latest (eval.step=latest)"
  if request != "best":
    if not request.lstrip("-").isdigit():
      raise ValueError(f"eval.step {request!r}: expected 'best', 'latest' or a step number")
    if int(request) < 0:
      return steps[-1], "latest (eval.step<0)"
    if int(request) not in steps:
      raise FileNotFoundError(f"no checkpoint for eval.step {request}; available: {steps}")
    return int(request), f"eval.step={request}"
  metric, mode = config.checkpoint.best_metric, config.checkpoint.best_mode
  values = validation_record(workdir, metric)
  candidates = [s for s in steps if s in values]
  if not candidates:
    logging.warning("no validation %s recorded for the saved steps %s: scoring the latest",
                    metric, steps)
    return steps[-1], f"latest (best unknown: no validation {metric} for a saved step)"
  sign = 1 if mode == "max" else -1
  best = max(candidates, key=lambda s: (sign * values[s], -s))
  return best, f"best validation {metric} ({mode}: {values[best]:.6g})"
