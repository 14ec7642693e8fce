import numpy as np
import pytest

from ssacl_jax import anatomy


def test_graph_sizes_and_order():
  assert (anatomy.NUM_NODES, anatomy.NUM_LEAVES, anatomy.NUM_PARENTS) == (32, 25, 7)
  assert anatomy.NODES[:7] == ("chest", "lungs", "mediastinum", "skeletal structures",
                               "abdomen", "right lung", "left lung")
  assert set(anatomy.PARENTS) == {"chest", "lungs", "right lung", "left lung", "mediastinum",
                                  "cardiac silhouette", "skeletal structures"}
  assert "abdomen" in anatomy.LEAVES and "cardiac silhouette" not in anatomy.LEAVES


def test_region_leaf_counts():
  counts = dict(zip(anatomy.REGIONS, anatomy.region_leaf_matrix().sum(1)))
  assert counts == {"lungs": 14, "mediastinum": 7, "skeletal structures": 3, "abdomen": 1}


def test_pathology_to_leaf_mask():
  labels = np.full(14, -2)
  labels[anatomy.PATHOLOGY_INDEX["Fracture"]] = 1
  labels[anatomy.PATHOLOGY_INDEX["Edema"]] = 0  # negative: no regions
  mask = anatomy.leaf_mask_from_labels(labels)
  expected = {"spine", "right clavicle", "left clavicle", "abdomen"}
  assert {anatomy.LEAVES[i] for i in np.flatnonzero(mask)} == expected
  assert anatomy.prompt_text(labels) == "fracture"
  assert not anatomy.leaf_mask_from_labels(np.full(14, 0)).any()


def test_unknown_names_fail_clearly():
  with pytest.raises(KeyError, match="unknown anatomy region"):
    anatomy.region_vector(["liver"])
  with pytest.raises(KeyError, match="unknown pathology"):
    anatomy.regions_for_pathologies(["Flu"])


def _restore_by_recursion(leaf_q):
  feats = {n: leaf_q[i] for i, n in enumerate(anatomy.LEAVES)}

  def node(n):
    if n not in feats:
      feats[n] = np.mean([node(c) for c in anatomy.CHILDREN[n]], axis=0)
    return feats[n]

  return np.stack([node(n) for n in anatomy.NODES])


def test_restore_graph_queries_matches_bottom_up_recursion():
  leaf_q = np.random.default_rng(0).normal(size=(25, 16)).astype(np.float32)
  got = np.asarray(anatomy.restore_graph_queries(leaf_q))
  want = _restore_by_recursion(leaf_q.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # chest is the mean of its four children, not of all 25 leaves.
  assert not np.allclose(got[0], leaf_q.mean(0), atol=1e-3)
  np.testing.assert_array_equal(got[anatomy.leaf_node_indices()], leaf_q)
