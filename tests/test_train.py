"""Training loop: metrics, checkpoints, exact resume, preemption, non-finite steps."""
import json
import pathlib

import jax
import numpy as np
import pytest

from ssacl_jax import train
from tiny_config import tiny_config


def config_for(data_dir, **train_fields):
  c = tiny_config()
  c.data.data_dir = data_dir
  c.train.num_steps = 6
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_steps = 0
  c.checkpoint.async_save = False
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def read_metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_metrics_and_checkpoints_are_written(uninterrupted):
  metrics = read_metrics(uninterrupted)
  assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
  for r in metrics.values():
    for k in ("loss", "loss_ir", "loss_cl", "loss_lm", "loss_ar", "loss_ac", "grad_norm",
              "learning_rate", "logit_scale"):
      assert np.isfinite(r[k]), k
  steps = sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, 4, 6]
  assert any((uninterrupted / "tensorboard").iterdir())


def test_resume_continues_identically(uninterrupted, tiny_data_dir, tmp_path, capfd):
  train.train_and_evaluate(config_for(tiny_data_dir, stop_at_step=3), str(tmp_path))
  assert sorted(read_metrics(tmp_path)) == [1, 2, 3]
  incomplete = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1"  # a killed save
  incomplete.mkdir()
  capfd.readouterr()
  train.train_and_evaluate(config_for(tiny_data_dir), str(tmp_path))  # resumes from step 3
  printed = capfd.readouterr().out.splitlines()  # one line per event, nothing twice
  assert printed[0] == (f"resuming from step 3 in {tmp_path / 'checkpoints'} "
                        "(discarded incomplete checkpoint 4)")
  assert [l.split(" ")[:2] for l in printed[1:]] == [["step", "4/6"], ["step", "5/6"], ["step", "6/6"]]
  assert not incomplete.exists()
  want, got = read_metrics(uninterrupted), read_metrics(tmp_path)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  for step in (4, 5, 6):
    for k in ("loss", "loss_ir", "loss_cl", "loss_lm", "loss_ar", "loss_ac", "grad_norm"):
      np.testing.assert_allclose(got[step][k], want[step][k], rtol=1e-6, err_msg=f"{k}@{step}")


def test_non_finite_step_is_refused_and_named(tiny_data_dir):
  from ssacl_jax import sharding
  from ssacl_jax.models import ssacl
  from test_model import random_batch
  config = config_for(tiny_data_dir)
  mesh = sharding.make_mesh(config)
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 8)
  setup = train.setup_state(config, model, mesh, tokens)
  state = setup.init_fn(jax.random.key(0))
  before = jax.device_get(state["params"])
  batch["image"][0, 0, 0, 0] = np.nan
  step = jax.jit(train.make_train_step(config, setup))
  new_state, metrics = step(state, batch, *tokens, jax.random.key(1))
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite ir.* at step 7"):
    train.check_finite(7, jax.device_get(metrics))
  after = jax.device_get(new_state["params"])
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_gradient_accumulation_averages_microbatch_losses(tiny_data_dir):
  from ssacl_jax import sharding
  from ssacl_jax.models import ssacl
  from test_model import random_batch
  config = config_for(tiny_data_dir)
  config.train.grad_accum_steps = 2
  mesh = sharding.make_mesh(config)
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 16)
  setup = train.setup_state(config, model, mesh, tokens)
  state = setup.init_fn(jax.random.key(0))
  params = jax.device_get(state["params"])
  base_key = jax.random.key(1)
  # One row of each microbatch per device: L_cl and L_ac still contrast the whole
  # microbatch of 8, as the release gathers each micro-step's batch over its GPUs.
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(mesh, sharding.batch_spec(config)))
  assert len(sharded["image"].sharding.device_set) == 8
  new_state, metrics = jax.jit(train.make_train_step(config, setup))(state, sharded, *tokens,
                                                                     base_key)
  # Microbatch i holds rows i, i + 2, ...; its masking key is fold_in(fold_in(key, step), i).
  step_key = jax.random.fold_in(base_key, 0)
  micro_metrics = []
  for i in range(2):
    micro = {k: v[i::2] for k, v in batch.items()}
    _, m = model.apply({"params": params}, micro, *tokens,
                       rngs={"mask": jax.random.fold_in(step_key, i)})
    micro_metrics.append(m)
  for k in ("loss", "loss_cl", "loss_ac"):
    np.testing.assert_allclose(float(metrics[k]), np.mean([float(m[k]) for m in micro_metrics]),
                               rtol=1e-5, err_msg=k)
  assert int(new_state["step"]) == 1 and bool(metrics["finite"])
  moved = jax.device_get(new_state["params"])["report_decoder"]["wte"]["embedding"]
  assert not np.allclose(moved, params["report_decoder"]["wte"]["embedding"])


def release_learning_rate(epoch, o, epochs):
  """util/lr_sched.adjust_learning_rate of the release, `epoch` fractional."""
  if epoch < o.warmup_epochs:
    return min(o.learning_rate, o.init_learning_rate
               + (o.learning_rate - o.init_learning_rate) * epoch / o.warmup_epochs)
  return o.end_learning_rate + (o.learning_rate - o.end_learning_rate) * 0.5 * (
      1.0 + np.cos(np.pi * (epoch - o.warmup_epochs) / (epochs - o.warmup_epochs)))


def test_epochs_give_the_step_counts_and_the_release_learning_rate(caplog):
  from configs import ssacl_vitb16
  from ssacl_jax import optim
  config = ssacl_vitb16.get_config("batch=32")
  assert (config.train.num_epochs, config.optim.warmup_epochs) == (51, 2)
  # 1000 examples, global batch 32: 31 full batches an epoch (the last, partial one dropped).
  with caplog.at_level("INFO"):
    resolved = optim.with_schedule(config, 1000)
  assert (resolved.train.num_steps, resolved.optim.warmup_steps) == (51 * 31, 2 * 31)
  assert "1581 optimizer steps, 62 of warm-up (1000 examples" in caplog.text
  assert (config.train.num_steps, config.optim.warmup_steps) == (0, 0)  # a copy
  schedule = optim.learning_rate_schedule(resolved)
  steps = np.arange(resolved.train.num_steps)
  want = [release_learning_rate(s / 31, resolved.optim, 51) for s in steps]
  np.testing.assert_allclose(np.asarray(schedule(steps)), want, rtol=1e-5, atol=1e-9)
  # Step counts set by hand win.
  config.train.num_steps, config.optim.warmup_steps = 10, 3
  assert optim.schedule_steps(config, 1000) == (10, 3, 31)
  with pytest.raises(ValueError, match="1000 examples give no full global batch of 2048"):
    optim.schedule_steps(ssacl_vitb16.get_config("batch=2048"), 1000)
