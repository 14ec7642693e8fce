"""The chest anatomy graph of SS-ACL (SPEC section 1), as data.

This module is the only place that names anatomy nodes, regions or CheXpert
observations, or fixes their order. Everything else asks it.

Node order: the reference pre-order walk that lists a node's children before
descending into them (chest, lungs, mediastinum, skeletal structures, abdomen,
right lung, left lung, ...). Leaf order: the release's depth-first walk. Checkpoints
record `GRAPH_VERSION` and `NODES`.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

GRAPH_VERSION = "ssacl-anatomy-v2"

_ZONES = ("upper lung zone", "mid lung zone", "lower lung zone", "hilar structures",
          "apical zone", "costophrenic angle", "hemidiaphragm")

# parent -> children, in the reference's order.
CHILDREN: dict[str, tuple[str, ...]] = {
    "chest": ("lungs", "mediastinum", "skeletal structures", "abdomen"),
    "lungs": ("right lung", "left lung"),
    "mediastinum": ("trachea", "upper mediastinum", "aortic arch", "superior vena cava",
                    "cardiac silhouette", "carina"),
    "skeletal structures": ("spine", "right clavicle", "left clavicle"),
    "right lung": tuple(f"right {z}" for z in _ZONES),
    "left lung": tuple(f"left {z}" for z in _ZONES),
    "cardiac silhouette": ("right atrium", "cavoatrial junction"),
}
ROOT = "chest"


def _breadth_first_preorder() -> tuple[str, ...]:
  """chest, then its children, then each child's children listed before descending."""
  order = [ROOT]

  def visit(node):
    kids = CHILDREN.get(node, ())
    order.extend(kids)
    for kid in kids:
      visit(kid)

  visit(ROOT)
  return tuple(order)


def _depth_first_leaves(node: str = ROOT) -> tuple[str, ...]:
  if node not in CHILDREN:
    return (node,)
  return tuple(leaf for kid in CHILDREN[node] for leaf in _depth_first_leaves(kid))


NODES: tuple[str, ...] = _breadth_first_preorder()
PARENTS: tuple[str, ...] = tuple(n for n in NODES if n in CHILDREN)
# Leaves in the release's depth-first order (right lung zones, left lung zones, mediastinum
# ..., abdomen last): it fixes each leaf query's place in the report decoder's prefix, so
# imported release weights see their leaves where they were trained.
LEAVES: tuple[str, ...] = _depth_first_leaves()
NODE_INDEX = {n: i for i, n in enumerate(NODES)}
LEAF_INDEX = {n: i for i, n in enumerate(LEAVES)}
PARENT_OF = {kid: parent for parent, kids in CHILDREN.items() for kid in kids}

# The four top-level regions used to condition the report decoder.
REGIONS: tuple[str, ...] = CHILDREN[ROOT]

# The 14 CheXpert observations, in the CheXpert labeler's column order.
PATHOLOGIES: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion",
    "Lung Opacity", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
PATHOLOGY_INDEX = {p: i for i, p in enumerate(PATHOLOGIES)}
# The five observations of the clinical-efficacy "5" average.
FIVE_PATHOLOGIES: tuple[str, ...] = (
    "Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")

PATHOLOGY_REGIONS: dict[str, tuple[str, ...]] = {
    "No Finding": (),
    "Enlarged Cardiomediastinum": ("mediastinum",),
    "Cardiomegaly": ("mediastinum",),
    "Edema": ("mediastinum", "lungs"),
    "Support Devices": ("mediastinum", "skeletal structures", "abdomen"),
    "Fracture": ("skeletal structures", "abdomen"),
    "Pneumothorax": ("lungs", "abdomen"),
    "Pleural Effusion": ("lungs", "abdomen"),
    "Lung Opacity": ("lungs",),
    "Lung Lesion": ("lungs",),
    "Consolidation": ("lungs",),
    "Pneumonia": ("lungs",),
    "Atelectasis": ("lungs",),
    "Pleural Other": ("lungs",),
}

NUM_NODES, NUM_LEAVES, NUM_PARENTS = len(NODES), len(LEAVES), len(PARENTS)
NUM_PATHOLOGIES, NUM_REGIONS = len(PATHOLOGIES), len(REGIONS)
MAX_CHILDREN = max(len(k) for k in CHILDREN.values())


def leaves_under(node: str) -> tuple[str, ...]:
  """The leaves below `node` (a leaf is under itself)."""
  if node not in NODE_INDEX:
    raise KeyError(f"unknown anatomy node {node!r}; known nodes: {', '.join(NODES)}")
  if node not in CHILDREN:
    return (node,)
  return tuple(leaf for kid in CHILDREN[node] for leaf in leaves_under(kid))


def regions_for_pathologies(positive: Iterable[str]) -> tuple[str, ...]:
  """Anatomy regions (in REGIONS order) implied by positive CheXpert observations."""
  wanted = set()
  for name in positive:
    if name not in PATHOLOGY_REGIONS:
      raise KeyError(f"unknown pathology {name!r}; known: {', '.join(PATHOLOGIES)}")
    wanted.update(PATHOLOGY_REGIONS[name])
  return tuple(r for r in REGIONS if r in wanted)


def positive_pathologies(labels: Sequence[float]) -> tuple[str, ...]:
  """Names of the observations labelled 1 in a 14-vector (CheXpert coding)."""
  if len(labels) != NUM_PATHOLOGIES:
    raise ValueError(f"expected {NUM_PATHOLOGIES} labels, got {len(labels)}")
  return tuple(p for p, v in zip(PATHOLOGIES, labels) if v == 1)


def no_finding_exclusive(labels) -> np.ndarray:
  """Predicted labels [..., 14] made consistent as CheXpert labels are: "No Finding" is
  positive exactly when no finding other than Support Devices is."""
  labels = np.array(labels, copy=True)
  findings = [i for i, p in enumerate(PATHOLOGIES) if p not in ("No Finding", "Support Devices")]
  labels[..., PATHOLOGY_INDEX["No Finding"]] = ~(labels[..., findings] == 1).any(-1)
  return labels


def prompt_text(labels: Sequence[float]) -> str:
  """The pathology prompt of SPEC 3.6: positive names, lower case, comma separated."""
  return ", ".join(p.lower() for p in positive_pathologies(labels) if p != "No Finding")


def region_vector(regions: Iterable[str]) -> np.ndarray:
  """Multi-hot [NUM_REGIONS] int8 over REGIONS."""
  out = np.zeros(NUM_REGIONS, np.int8)
  for r in regions:
    if r not in REGIONS:
      raise KeyError(f"unknown anatomy region {r!r}; regions are: {', '.join(REGIONS)}")
    out[REGIONS.index(r)] = 1
  return out


def leaf_mask_from_regions(regions: Iterable[str]) -> np.ndarray:
  """[NUM_LEAVES] bool: leaves under any of the named regions."""
  return region_leaf_matrix()[region_vector(regions).astype(bool)].any(axis=0)


def leaf_mask_from_labels(labels: Sequence[float]) -> np.ndarray:
  """[NUM_LEAVES] bool leaf mask for the report decoder from a 14-label vector."""
  return leaf_mask_from_regions(regions_for_pathologies(positive_pathologies(labels)))


@functools.cache
def region_leaf_matrix() -> np.ndarray:
  """[NUM_REGIONS, NUM_LEAVES] bool: region r contains leaf k.

  `region_multi_hot @ region_leaf_matrix() > 0` turns batched region vectors into
  leaf masks inside jitted code.
  """
  m = np.zeros((NUM_REGIONS, NUM_LEAVES), bool)
  for r, region in enumerate(REGIONS):
    for leaf in leaves_under(region):
      m[r, LEAF_INDEX[leaf]] = True
  m.setflags(write=False)
  return m


@functools.cache
def graph_restoration_matrix() -> np.ndarray:
  """[NUM_NODES, NUM_LEAVES] float64 R with node_queries = R @ leaf_queries.

  A leaf's row is one-hot. A parent's row is the mean of its children's rows, which
  is the bottom-up recursion of SPEC 3.1 (parents = mean of children) unrolled once.
  It is NOT the mean over all leaves below: chest averages its four children equally.
  """
  rows: dict[str, np.ndarray] = {}

  def row(node):
    if node not in rows:
      if node in CHILDREN:
        rows[node] = np.mean([row(k) for k in CHILDREN[node]], axis=0)
      else:
        rows[node] = np.eye(NUM_LEAVES)[LEAF_INDEX[node]]
    return rows[node]

  m = np.stack([row(n) for n in NODES])
  m.setflags(write=False)
  return m


@functools.cache
def leaf_node_indices() -> np.ndarray:
  """[NUM_LEAVES] int: position of each leaf (LEAVES order) in NODES."""
  out = np.array([NODE_INDEX[l] for l in LEAVES], np.int32)
  out.setflags(write=False)
  return out


@functools.cache
def parent_children_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Padded child table for batching all parents at once.

  Returns (parent_nodes [P], child_nodes [P, MAX_CHILDREN], child_valid [P, MAX_CHILDREN])
  with node indices into NODES; padded slots hold 0 and are marked invalid.
  """
  parents = np.array([NODE_INDEX[p] for p in PARENTS], np.int32)
  kids = np.zeros((NUM_PARENTS, MAX_CHILDREN), np.int32)
  valid = np.zeros((NUM_PARENTS, MAX_CHILDREN), bool)
  for i, p in enumerate(PARENTS):
    for j, kid in enumerate(CHILDREN[p]):
      kids[i, j], valid[i, j] = NODE_INDEX[kid], True
  for a in (parents, kids, valid):
    a.setflags(write=False)
  return parents, kids, valid


def restore_graph_queries(leaf_queries):
  """Leaf queries [K, D] -> node queries [G, D] (parents = mean of children).

  One matmul with the fixed restoration matrix; works on numpy and jax arrays alike.
  """
  import jax.numpy as jnp
  r = jnp.asarray(graph_restoration_matrix(), dtype=leaf_queries.dtype)
  return jnp.einsum("gk,...kd->...gd", r, leaf_queries,
                    precision="highest")


assert (NUM_NODES, NUM_LEAVES, NUM_PARENTS) == (32, 25, 7), (NUM_NODES, NUM_LEAVES)
