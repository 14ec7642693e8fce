"""Source tensors -> the model's parameter tree, checked against the model.

Each kind of source is a module here with `read(src, config, report)` (its tensors) and
`to_parts(tensors, model_cfg, report)` ({part: tree of Leaf}); SOURCES names them.
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import layers, state as state_lib
from ssacl_jax.convert import gpt2, mae, ssacl_release
from ssacl_jax.convert.tensors import ConversionError, Leaf, Report, Tensors, flatten, values
from ssacl_jax.models import ssacl

SOURCES = {"gpt2": gpt2, "mae": mae, "ssacl_release": ssacl_release}
KINDS = tuple(SOURCES)


def _source(kind: str):
  if kind not in SOURCES:
    raise ConversionError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
  return SOURCES[kind]


def convert_tensors(kind: str, t: Tensors, model_cfg, report: Report) -> dict:
  """Source tensors -> {part: tree of Leaf} for every part this kind provides."""
  return _source(kind).to_parts(t, model_cfg, report)


def abstract_params(config) -> dict:
  """The SS-ACL model's parameter tree as ShapeDtypeStructs (nothing materialised)."""
  return state_lib.abstract_params(ssacl.build_model(config.model), ssacl.dummy_batch(config, 1),
                                   ssacl.dummy_anatomy_tokens(config))


# ----------------------------------------------------------------------------- against the model
def _num_blocks(stack: dict) -> int:
  """Blocks in a stack's subtree: block0.. (unrolled) or the leading axis of layers/block."""
  if set(stack) != {layers.SCANNED}:
    return len(stack)
  leaf = next(iter(flatten(stack).values()))
  return (leaf.value if isinstance(leaf, Leaf) else leaf).shape[0]


def _stack_leaves(leaves: list[Leaf]) -> Leaf:
  return Leaf(np.stack([leaf.value for leaf in leaves]),
              tuple(s for leaf in leaves for s in leaf.src), leaves[0].how)


def match_layout(tree: dict, abstract: dict) -> dict:
  """Converted parts (block0.. per stack) stacked where the model scans its layers."""
  if not layers.has_scanned_layers(abstract):
    return tree
  return layers.stack_layers(tree, stack=_stack_leaves, is_leaf=lambda x: isinstance(x, Leaf))


def _shape_hints(tree: dict, abstract: dict) -> list[str]:
  hints = []
  for part, section in ssacl.CONFIG_SECTION.items():
    if part not in tree or not isinstance(tree[part].get("blocks"), dict):
      continue
    n_src, n_ours = _num_blocks(tree[part]["blocks"]), _num_blocks(abstract[part]["blocks"])
    if n_src != n_ours:
      hints.append(f"{part}: the source has {n_src} blocks, the model {n_ours} "
                   f"(config.model.{section}.depth)")
  return hints


def _leaves(sub) -> dict:
  """A part's {path: leaf}; a part that is one parameter has the path ''."""
  return flatten(sub) if isinstance(sub, dict) else {"": sub}


def check_against_model(tree: dict, abstract: dict) -> tuple[list[str], list]:
  """(mismatch messages, missing [(path, shape)]) of converted parts vs the model's params."""
  problems, missing = [], []
  for part, sub in tree.items():
    have, want = _leaves(sub), _leaves(abstract[part])
    name = lambda p: f"{part}/{p}" if p else part
    for p in sorted(set(have) - set(want)):
      problems.append(f"{name(p)}: from {', '.join(have[p].src)} {list(have[p].value.shape)}, "
                      "but the model has no such parameter")
    for p in sorted(set(have) & set(want)):
      if tuple(have[p].value.shape) != tuple(want[p].shape):
        problems.append(f"{name(p)}: source {', '.join(have[p].src)} gives "
                        f"{list(have[p].value.shape)}, the model has {list(want[p].shape)}")
    missing += [(name(p), tuple(want[p].shape)) for p in sorted(set(want) - set(have))]
  if problems:
    problems += _shape_hints(tree, abstract)
  return problems, missing


# ----------------------------------------------------------------------------- conversion
def _keep_parts(tree: dict, t: Tensors, parts, src, kind: str) -> None:
  """Drop the parts not asked for; their source tensors become skipped ones."""
  absent = [p for p in parts if p not in tree]
  if absent:
    raise ConversionError(f"{src} ({kind}) provides {', '.join(tree)}; not {', '.join(absent)}")
  for part in [p for p in tree if p not in parts]:
    leaves = _leaves(tree.pop(part))
    t.release({s for leaf in leaves.values() for s in leaf.src},
              f"part {part} not requested (parts={','.join(parts)})")


def _account(report: Report, tree: dict, t: Tensors) -> None:
  """report.mapped / skipped / unmapped: every source tensor and converted parameter."""
  for part, sub in tree.items():
    for p, leaf in _leaves(sub).items():
      src_shapes = [tuple(t.arrays[s].shape) for s in leaf.src]
      report.mapped.append((", ".join(leaf.src), src_shapes[0], f"{part}/{p}" if p else part,
                            tuple(leaf.value.shape), leaf.how))
  report.skipped = [(k, tuple(t.arrays[k].shape), why) for k, why in sorted(t.skipped.items())]
  report.unmapped = [(k, tuple(t.arrays[k].shape)) for k in t.unaccounted()]


def _errors(report: Report, problems: list[str], missing: list, allow_missing: bool,
            allow_unmapped: bool) -> list[str]:
  errors = list(problems)
  unknown = [p for p, f in report.position_tables.items() if f == mae.UNKNOWN_TABLE]
  if unknown:
    errors.append(f"the fixed position table of {', '.join(unknown)} matches no formula this "
                  f"model can compute (see 'skipped' below); its pixels would differ")
  if missing and not allow_missing:
    errors.append(f"{len(missing)} model parameter(s) of the converted parts are not in the "
                  "source: " + ", ".join(m[0] for m in missing[:10])
                  + (" ..." if len(missing) > 10 else "") + " (--allow_missing keeps them fresh)")
  if report.unmapped and not allow_unmapped:
    errors.append(f"{len(report.unmapped)} source tensor(s) map to nothing: "
                  + ", ".join(u[0] for u in report.unmapped[:10])
                  + (" ..." if len(report.unmapped) > 10 else "")
                  + " (--allow_unmapped ignores them)")
  return errors


def convert(kind: str, src, config, *, parts=None, allow_missing: bool = False,
            allow_unmapped: bool = False, abstract: dict | None = None) -> tuple[dict, Report]:
  """Read `src` and convert it for `config`: ({part: numpy tree}, Report).

  parts: None (everything the source provides) or a tuple of ssacl.PARTS. Raises
  ConversionError naming the tensors / parameters / shapes when something does not fit.
  """
  report = Report(kind, str(src))
  t = Tensors(_source(kind).read(src, config, report))
  tree = convert_tensors(kind, t, config.model, report)
  if parts is not None:
    _keep_parts(tree, t, parts, src, kind)
  report.parts = tuple(tree)
  report.position_tables = {p: f for p, f in report.position_tables.items() if p in tree}
  abstract = abstract if abstract is not None else abstract_params(config)
  tree = match_layout(tree, abstract)
  problems, missing = check_against_model(tree, abstract)
  known = {m[0] for m in report.missing}
  missing = [m for m in missing if m[0] not in known]
  report.missing += [(path, shape, "not in the source") for path, shape in missing]
  _account(report, tree, t)
  errors = _errors(report, problems, missing, allow_missing, allow_unmapped)
  if errors:
    raise ConversionError(f"cannot convert {src} ({kind}) for this config:\n  "
                          + "\n  ".join(errors) + "\n\n" + report.text())
  return {part: values(sub) if isinstance(sub, dict) else sub.value for part, sub in tree.items()}, report


def set_position_tables(config, report: Report) -> None:
  """config.model.position_tables takes the formulas the source's tables have."""
  for part, formula in report.position_tables.items():
    config.model.position_tables[part] = formula
