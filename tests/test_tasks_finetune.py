"""Fine-tuning: losses against NumPy, Dice conventions, linear probing, checkpoint checks,
and the whole path on the synthetic set (pretrain -> fine-tune -> test metrics.json)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssacl_jax import (checkpointing, config_lib, demo, evaluators, sharding, state as state_lib,
                       optim, steps, tasks, train)
from ssacl_jax.evaluators import downstream
from ssacl_jax.models import finetune as models
from ssacl_jax.tasks import finetune as finetune_task
from helpers import ROOT, env, main_command, tiny_config, tiny_finetune_config


# ----------------------------------------------------------------------------- losses

def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def finetune_then_score(config, workdir):
  """What --mode finetune runs: train, then the --mode eval evaluators."""
  train.train_and_evaluate(config, workdir)
  return evaluators.evaluate_workdir(config, workdir)


def test_multilabel_bce_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (5, 14)).astype(np.float32)
  labels = rng.integers(0, 2, (5, 14)).astype(np.int8)
  p = np_sigmoid(logits.astype(np.float64))
  want = np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
  np.testing.assert_allclose(float(models.multilabel_bce(logits, labels)), want, rtol=1e-5)
  # large logits stay finite and exact
  big = jnp.array([[40.0, -40.0]])
  np.testing.assert_allclose(float(models.multilabel_bce(big, jnp.array([[0, 1]]))), 40.0,
                             rtol=1e-6)


def test_segmentation_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 2, (3, 6, 6)).astype(np.float32)
  masks = (rng.random((3, 6, 6)) < 0.3).astype(np.float32)
  masks[2] = 0.0  # an empty target
  p = np_sigmoid(logits.astype(np.float64))
  bce = np.mean(-(masks * np.log(p) + (1 - masks) * np.log(1 - p)))
  inter = (p * masks).reshape(3, -1).sum(1)
  dice = (2 * inter + 1) / (p.reshape(3, -1).sum(1) + masks.reshape(3, -1).sum(1) + 1)
  total, got_bce, got_dice = models.segmentation_loss(logits, masks, dice_weight=0.5)
  np.testing.assert_allclose(float(got_bce), bce, rtol=1e-5)
  np.testing.assert_allclose(float(got_dice), 1 - dice.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(total), bce + 0.5 * (1 - dice.mean()), rtol=1e-5)


def test_dice_scores_and_empty_baseline():
  target = np.zeros((3, 4, 4), bool)
  target[0, :2, :2] = True             # 4 pixels
  target[1, 0, 0] = True               # 1 pixel; image 2 is empty
  pred = np.zeros_like(target)
  pred[0, :2, :1] = True               # 2 of the 4: dice 2*2/(2+4)
  np.testing.assert_allclose(downstream.dice_per_image(pred, target), [4 / 6, 0.0, 1.0])
  s = downstream.segmentation_scores(pred.astype(np.float32), target)
  np.testing.assert_allclose(s["dice"], (4 / 6 + 0 + 1) / 3)
  np.testing.assert_allclose(s["dice_empty_baseline"], 1 / 3)   # only the empty image
  np.testing.assert_allclose(s["dice_on_positive_images"], (4 / 6) / 2)
  assert s["positive_images"] == 2


def test_classification_scores_name_every_class():
  probs = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
  labels = np.array([[1, 0], [0, 0], [1, 0]])
  s = downstream.classification_scores(probs, labels, ("a", "b"))
  assert s["auroc"] == {"a": 1.0, "b": None} and s["auroc_mean"] == 1.0


# ----------------------------------------------------------------------------- steps

def _setup(config, kind):
  mesh = sharding.make_mesh(config)
  model = models.build_model(config, 14,
                             frozen_encoder="image_encoder" in optim.frozen_groups(config))
  setup = state_lib.setup_state(config, model, mesh, (), models.dummy_batch(config, 14, 1))
  batch = models.dummy_batch(config, 14, 8)
  rng = np.random.default_rng(0)
  batch["image"] = rng.normal(size=batch["image"].shape).astype(np.float32)
  batch["labels"] = rng.integers(0, 2, batch["labels"].shape).astype(np.int8)
  batch["mask"] = (rng.random(batch["mask"].shape) < 0.2).astype(np.float32)
  step = jax.jit(steps.make_train_step(config, setup, models.loss_terms(kind)))
  return setup, batch, step


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_linear_probe_freezes_the_encoder_and_trains_the_head(kind):
  config = tiny_finetune_config(kind, "linear_probe")
  setup, batch, step = _setup(config, kind)
  state = setup.init_fn(jax.random.key(0))
  before = jax.device_get(state["params"])
  new, metrics = step(state, batch, jax.random.key(1))
  after = jax.device_get(new["params"])
  jax.tree.map(np.testing.assert_array_equal, before["image_encoder"], after["image_encoder"])
  top = "head" if kind == "classification" else "decoder"
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), before[top], after[top]))
  assert max(moved) > 0 and bool(metrics["finite"])
  assert set(metrics) >= {"loss", "loss_bce"} | ({"loss_dice"} if kind == "segmentation" else set())


def test_full_finetuning_moves_the_encoder():
  config = tiny_finetune_config("classification")
  setup, batch, step = _setup(config, "classification")
  state = setup.init_fn(jax.random.key(0))
  before = jax.device_get(state["params"]["image_encoder"]["patch_embed"]["kernel"])
  new, _ = step(state, batch, jax.random.key(1))
  assert np.abs(jax.device_get(new["params"]["image_encoder"]["patch_embed"]["kernel"])
                - before).max() > 0


def test_unknown_frozen_group_is_named():
  config = tiny_finetune_config("classification")
  config.optim.freeze = "text_encoder"
  with pytest.raises(ValueError, match="optim.freeze names text_encoder"):
    _setup(config, "classification")


def test_config_checks_name_the_fields():
  config = tiny_finetune_config("classification")
  config.finetune.label_fraction = 0.05
  config.data.dataset = "synthetic_cxr"
  with pytest.raises(config_lib.ConfigError, match="label_fraction.*\n.*synthetic_cxr"):
    tasks.validate(config)


def test_synthetic_finetune_config_takes_the_demo_encoder_and_its_variants():
  from configs import demo, finetune_synthetic
  c = finetune_synthetic.get_config("label_fraction=0.01,init=runs/demo,linear_probe,seed=3")
  config_lib.validate(c)
  d = demo.get_config()
  assert (c.model.encoder, c.model.image_size, c.model.patch) == (
      d.model.encoder, d.model.image_size, d.model.patch)
  assert c.data.builder.image_size == d.model.image_size and c.data.dataset == "synthetic_finetune"
  assert (c.init.checkpoint, c.init.parts, c.optim.freeze) == ("runs/demo", "image_encoder",
                                                              "image_encoder")
  assert (c.optim.learning_rate, c.train.seed, c.finetune.label_fraction) == (1e-2, 3, 0.01)
  c = finetune_synthetic.get_config()
  assert (c.init.checkpoint, c.optim.freeze, c.optim.learning_rate) == ("", "", 1e-3)


# ----------------------------------------------------------------------------- whole path

PRETRAIN_STEPS = 40  # a checkpoint to start from; the path, not the pretraining, is tested


@pytest.fixture(scope="module")
def ft_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("ft_data"))


@pytest.fixture(scope="module")
def pretrained(ft_data_dir, tmp_path_factory):
  """The fine-tuning tests' tiny SS-ACL pretrained on 400 synthetic radiographs (workdir)."""
  c = tiny_config()
  c.model.image_size, c.model.patch = 64, 16
  c.data.data_dir = ft_data_dir
  c.data.builder = dict(train_size=400, validation_size=8, test_size=8, image_size=64, seed=0)
  c.train.num_steps, c.train.global_batch_size = PRETRAIN_STEPS, 16
  c.train.log_every_steps, c.train.eval_every_steps = 100, 0
  c.train.checkpoint_every_steps = PRETRAIN_STEPS
  c.optim.warmup_steps = 10
  c.checkpoint.async_save = False
  workdir = tmp_path_factory.mktemp("pretrained")
  train.train_and_evaluate(c, str(workdir))
  return str(workdir)


def finetuned(kind, arg, data_dir, workdir, init=""):
  config = tiny_finetune_config(kind, arg)
  config.data.data_dir = data_dir
  config.init.checkpoint = init
  config.train.eval_every_steps = config.train.checkpoint_every_steps = config.train.num_steps // 4
  return finetune_then_score(config, str(workdir))


@pytest.fixture(scope="module")
def at_1pct(pretrained, ft_data_dir, tmp_path_factory):
  """Test metrics of the same head fine-tuned with 1% of the labels from the SS-ACL
  checkpoint and from random initialisation, and the first run's workdir."""
  arg = "steps=60,batch=16,label_fraction=0.01,lr=3e-3"
  workdir = tmp_path_factory.mktemp("ft_ssacl")
  ours = finetuned("classification", arg, ft_data_dir, workdir, pretrained)
  scratch = finetuned("classification", arg, ft_data_dir, tmp_path_factory.mktemp("ft_random"))
  print("1% labels: test AUROC from SS-ACL", ours["auroc_mean"], "random", scratch["auroc_mean"])
  return ours, scratch, workdir


@pytest.mark.slow
def test_finetuning_writes_per_class_test_auroc(at_1pct, pretrained):
  ours, scratch, workdir = at_1pct
  assert ours["train_split"] == "train_1pct" and ours["init"] == pretrained
  assert scratch["init"] == "random"
  written = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert set(written["auroc"]) == set(finetune_task.class_names(tiny_finetune_config()))
  assert written["auroc_mean"] == ours["auroc_mean"] and written["num_examples"] == 128
  assert written["selected_by"].startswith("best validation val_auroc_mean")
  assert 0.4 < ours["auroc_mean"] < 1 and 0.4 < scratch["auroc_mean"] < 1


@pytest.mark.slow
def test_segmentation_learns_the_finding_boxes(pretrained, ft_data_dir, tmp_path):
  m = finetuned("segmentation", "steps=150,batch=16,label_fraction=1.0,lr=3e-3", ft_data_dir,
                tmp_path, pretrained)
  print("segmentation: test Dice", m["dice"], "empty-mask baseline", m["dice_empty_baseline"])
  assert m["dice"] > m["dice_empty_baseline"] + 0.02
  assert (tmp_path / "eval" / "test" / "metrics.json").is_file()


@pytest.mark.transfer
def test_ssacl_encoder_beats_random_init_with_1pct_labels(tmp_path_factory):
  """The transfer claim at demo scale: about 15 minutes on 2 cores, so opt-in (-m transfer).

  Pretrains the demo (configs/demo.py: warm start, then SS-ACL), or takes the checkpoint
  of an earlier `python -m ssacl_jax.demo --workdir DIR` from $SSACL_DEMO_WORKDIR, then
  fine-tunes configs/finetune_synthetic.py on its 16 labelled images (1%) from it and from
  random initialisation with seeds 0-2. At test scale no pretraining leaves chance for
  L_cl within CI's budget (README "Downstream tasks"), which is why CI does not run this.
  """
  import os
  from configs import demo, finetune_synthetic
  pretrained_dir = os.environ.get("SSACL_DEMO_WORKDIR", "")
  if not pretrained_dir:
    config = demo.get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("demo_data"))
    config.checkpoint.async_save = False
    pretrained_dir = str(tmp_path_factory.mktemp("demo"))
    for stage_config, stage_dir in demo.warm_start_configs(config, pretrained_dir):
      train.train_and_evaluate(stage_config, stage_dir)
  data_dir = str(tmp_path_factory.mktemp("ft_data"))

  def auroc(arg):
    config = finetune_synthetic.get_config(f"label_fraction=0.01,{arg}")
    config.data.data_dir = data_dir
    config.checkpoint.async_save = False
    return finetune_then_score(config, str(tmp_path_factory.mktemp("ft")))["auroc_mean"]

  for mode in ("linear_probe", "lr=1e-3"):
    ours = auroc(f"{mode},init={pretrained_dir}")
    scratch = [auroc(f"{mode},seed={seed}") for seed in range(3)]
    print(f"1% labels, {mode}: test AUROC from SS-ACL {ours:.3f}, random init {scratch}")
    assert ours > np.mean(scratch) + 0.01, (mode, ours, scratch)
    if mode == "linear_probe":
      assert ours > max(scratch), (ours, scratch)


def test_encoder_checkpoint_that_does_not_match_is_named(uninterrupted, tiny_data_dir,
                                                         tmp_path):
  from ssacl_jax import pretrained as pretrained_lib
  config = tiny_finetune_config("classification", "steps=1,batch=16")
  config.data.data_dir = tiny_data_dir
  config.data.builder = dict(train_size=100, validation_size=8, test_size=8, image_size=40)
  config.init.checkpoint = str(uninterrupted)
  config.model.encoder = dict(width=48, depth=2, num_heads=4, mlp_dim=64)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"image_encoder/.* model \(.*48.*\) vs checkpoint \(.*32"):
    train.train_and_evaluate(config, str(tmp_path))
  config.init.parts = "text_encoder"
  with pytest.raises(pretrained_lib.InitError, match="this model does not have"):
    train.train_and_evaluate(config, str(tmp_path / "b"))


def test_mode_finetune_needs_a_finetune_config(tmp_path):
  import subprocess
  out = subprocess.run(main_command(tmp_path, "--mode", "finetune"), env=env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode != 0 and "--mode finetune does not fit config.task='ssacl'" in out.stderr
