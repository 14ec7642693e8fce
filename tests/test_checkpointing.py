"""Orbax restore across mesh shapes, and loud or partial restores of mismatched models."""
import jax
import numpy as np
import pytest

from ssacl_jax import checkpointing, sharding, state as state_lib
from ssacl_jax.models import ssacl
from helpers import random_batch, tiny_config


def state_on(config, mesh_shape, seed=0):
  config = config.copy_and_resolve_references()
  config.mesh.shape = mesh_shape
  config.checkpoint.async_save = False
  mesh = sharding.make_mesh(config)
  _, tokens = random_batch(config, 2)
  setup = state_lib.setup_state(config, ssacl.build_model(config.model), mesh, tokens, ssacl.dummy_batch(config, 1))
  return config, setup, setup.init_fn(jax.random.key(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ckpt")
  config, setup, state = state_on(tiny_config(), (4, 2, 1))
  ckpt = checkpointing.Checkpointer(workdir, config)
  ckpt.save(1, state)
  ckpt.close()
  return workdir, jax.device_get(state)


@pytest.mark.parametrize("mesh_shape", [(2, 4, 1), (8, 1, 1), (1, 4, 2)])
def test_restore_onto_a_different_mesh(saved, mesh_shape):
  workdir, want = saved
  config, setup, _ = state_on(tiny_config(), mesh_shape, seed=1)
  restored = checkpointing.Checkpointer(workdir, config).restore(1, setup.abstract_state)
  jax.tree.map(np.testing.assert_array_equal, want, jax.device_get(restored))
  kernel = restored["params"]["report_decoder"]["blocks"]["block0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding == setup.shardings["params"]["report_decoder"]["blocks"]["block0"]["mlp"]["fc1"]["kernel"]


def deeper_decoder():
  c = tiny_config()
  c.model.report.depth = 3
  c.model.image_decoder.mlp_dim = 96
  return c


def test_mismatched_checkpoint_lists_the_differences(saved):
  workdir, _ = saved
  config, setup, _ = state_on(deeper_decoder(), (8, 1, 1))
  with pytest.raises(checkpointing.CheckpointMismatchError) as err:
    checkpointing.Checkpointer(workdir, config).restore(1, setup.abstract_state)
  msg = str(err.value)
  assert "missing from the checkpoint" in msg and "report_decoder/blocks/block2" in msg
  assert "with different shapes" in msg and "image_decoder/blocks/block0/mlp/fc1/kernel" in msg
  assert "partial_restore" in msg


def test_partial_restore_keeps_fresh_values_for_the_rest(saved):
  workdir, want = saved
  config, setup, fresh = state_on(deeper_decoder(), (8, 1, 1), seed=2)
  config.checkpoint.partial_restore = True
  restored = checkpointing.Checkpointer(workdir, config).restore(1, setup.abstract_state)
  assert set(restored) == {"params"}
  merged = jax.device_get(checkpointing.merge_params(fresh["params"], restored["params"]))
  np.testing.assert_array_equal(merged["report_decoder"]["blocks"]["block1"]["attn"]["key"]["kernel"],
                                want["params"]["report_decoder"]["blocks"]["block1"]["attn"]["key"]["kernel"])
  np.testing.assert_array_equal(merged["report_decoder"]["blocks"]["block2"]["attn"]["key"]["kernel"],
                                jax.device_get(fresh["params"]["report_decoder"]["blocks"]["block2"]["attn"]["key"]["kernel"]))
  assert merged["image_decoder"]["blocks"]["block0"]["mlp"]["fc1"]["kernel"].shape == (32, 96)
