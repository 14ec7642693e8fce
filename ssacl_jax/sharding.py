"""Mesh construction and logical-name sharding, all driven by the config.

config.mesh.axes / config.mesh.shape give the mesh (-1 takes the devices left);
config.sharding_rules maps the logical names of ssacl_jax.layers onto mesh axes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fill the one -1 entry so the product is num_devices; check the result divides."""
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape {tuple(shape)} has more than one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh.shape {tuple(shape)} cannot fill {num_devices} devices: "
                       f"{num_devices} is not a multiple of {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"{num_devices} are available")
  return tuple(shape)


def make_mesh(config, devices=None) -> Mesh:
  """The device mesh of config.mesh, with Auto axes (linen logical constraints need them).

  With config.mesh.dcn_shape, a multi-slice mesh (hybrid_mesh)."""
  devices = jax.devices() if devices is None else devices
  axes = tuple(config.mesh.axes)
  if tuple(config.mesh.get("dcn_shape", ()) or ()):
    return hybrid_mesh(config, devices)
  shape = resolve_mesh_shape(config.mesh.shape, len(devices))
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape {shape} and config.mesh.axes {axes} differ in length")
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  if devices is jax.devices() or list(devices) == list(jax.devices()):
    return jax.make_mesh(shape, axes, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=auto)


def hybrid_mesh(config, devices) -> Mesh:
  """A mesh over several slices: config.mesh.shape inside each slice (ICI) times
  config.mesh.dcn_shape across slices (DCN), axis by axis.

  With dcn_shape (S, 1, 1) the data axis spans both: data = S x the slice's data size, and
  a gradient's all-reduce over it runs over ICI inside each slice and over DCN between
  slices (XLA splits it hierarchically). Devices name their slice by `slice_index`.
  """
  from jax.experimental import mesh_utils
  axes = tuple(config.mesh.axes)
  dcn = tuple(int(s) for s in config.mesh.dcn_shape)
  if len(dcn) != len(axes):
    raise ValueError(f"config.mesh.dcn_shape {dcn} and config.mesh.axes {axes} differ in length")
  slices = sorted({getattr(d, "slice_index", 0) for d in devices})
  if len(slices) != math.prod(dcn):
    raise ValueError(f"config.mesh.dcn_shape {dcn} asks for {math.prod(dcn)} slices; the "
                     f"{len(devices)} devices are on {len(slices)} (their slice_index)")
  ici = resolve_mesh_shape(config.mesh.shape, len(devices) // len(slices))
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return Mesh(grid, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def rules(config) -> tuple[tuple[str, object], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.sharding_rules)


def batch_spec(config) -> P:
  """PartitionSpec of a batch's leading axis ('batch' logical axis)."""
  return nn.logical_to_mesh_axes(("batch",), rules(config))


def logical_shardings(boxed_tree, mesh: Mesh, config):
  """Shardings for a tree of flax LogicallyPartitioned boxes (from eval_shape of init).

  A dimension the rules would split over mesh axes whose size does not divide it (GPT-2's
  50257-token vocabulary over tensor=2) stays whole on those axes: jit's arguments must
  split evenly, and one replicated dimension costs less than padding the vocabulary.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules(config))
  return jax.tree.map(lambda s, x: evenly_divided(s, x.shape), shardings,
                      nn.unbox(boxed_tree))


def evenly_divided(sharding: NamedSharding, shape) -> NamedSharding:
  """`sharding` without the mesh axes of any dimension they do not divide evenly."""
  def fits(entry, size):
    axes = entry if isinstance(entry, tuple) else (entry,)
    parts = int(np.prod([sharding.mesh.shape[a] for a in axes if a is not None]))
    return entry if size % parts == 0 else None

  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  fixed = P(*(fits(e, n) for e, n in zip(spec, shape)))
  return sharding if fixed == P(*spec) else NamedSharding(sharding.mesh, fixed)


def _path_key(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def match_shardings_by_path(tree, reference: dict, shapes: dict, mesh: Mesh):
  """Sharding per leaf of `tree`: a reference param's sharding when a suffix of the leaf's
  path names that param and the shapes agree (optimizer moments), else replicated.
  """
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    key = _path_key(path)
    for start in range(len(key)):
      suffix = key[start:]
      if suffix in reference and shapes[suffix] == getattr(leaf, "shape", None):
        return reference[suffix]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, tree)


def flatten_by_path(tree) -> dict:
  return {_path_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def per_device_bytes(tree) -> int:
  """Bytes one device holds for a tree of sharded arrays or ShapeDtypeStructs."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = leaf.shape if sharding is None else sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def without_axis(shardings, axis: str):
  """The same shardings with mesh axis `axis` dropped from every spec (gathered over it)."""
  def drop(entry):
    if isinstance(entry, tuple):
      rest = tuple(a for a in entry if a != axis)
      return rest if len(rest) > 1 else (rest[0] if rest else None)
    return None if entry == axis else entry

  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(*(drop(e) for e in s.spec))),
                      shardings)
