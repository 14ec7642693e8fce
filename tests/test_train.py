"""Training loop: metrics, checkpoints, exact resume, preemption, non-finite steps,
prefetching, goodput, throughput/MFU and profiles."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import PEAK, config_for, random_batch, read_metrics, read_records, tiny_config
from ssacl_jax import flops, sharding, state as state_lib, steps, train
from ssacl_jax.models import ssacl


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


def test_metrics_and_checkpoints_are_written(uninterrupted):
  metrics = read_metrics(uninterrupted)
  assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
  for r in metrics.values():
    for k in ("loss", "loss_ir", "loss_cl", "loss_lm", "loss_ar", "loss_ac", "grad_norm",
              "learning_rate", "logit_scale"):
      assert np.isfinite(r[k]), k
  assert checkpoint_steps(uninterrupted) == [2, 4, 6]
  assert any((uninterrupted / "tensorboard").iterdir())


def test_throughput_mfu_and_goodput_are_logged(uninterrupted, tiny_data_dir):
  """Each log interval: step time, examples/s, data wait, MFU from the hand-counted FLOPs
  over 8 devices x PEAK; at the end, a goodput record whose parts add up to the total."""
  step_flops = flops.hand_flops(config_for(tiny_data_dir), 8)["step"]
  for step, r in read_metrics(uninterrupted).items():
    assert r["perf/step_time_s"] > 0 and r["data_wait_s"] >= 0, step
    np.testing.assert_allclose(r["perf/examples_per_s"], 8 / r["perf/step_time_s"], rtol=1e-9)
    np.testing.assert_allclose(r["perf/mfu"], step_flops / (r["perf/step_time_s"] * 8 * PEAK),
                               rtol=1e-9)
  goodput = [r for r in read_records(uninterrupted) if "goodput/total_s" in r]
  assert len(goodput) == 1 and goodput[0]["step"] == 6
  g = goodput[0]
  parts = [k for k in g if k.startswith("goodput/") and k.endswith("_s") and k != "goodput/total_s"]
  assert {p.split("/")[1][:-2] for p in parts} >= {
      "initialization", "compilation", "data_wait", "train_steps", "evaluation",
      "checkpointing", "restore"}
  assert g["goodput/compilation_s"] > 0 and g["goodput/train_steps_s"] > 0
  np.testing.assert_allclose(sum(g[p] for p in parts), g["goodput/total_s"], atol=0.01)
  np.testing.assert_allclose(g["goodput/productive_fraction"],
                             g["goodput/train_steps_s"] / g["goodput/total_s"], atol=1e-4)


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


def test_non_finite_step_is_refused_and_recorded_on_the_device(tiny_data_dir):
  """The step leaves the state untouched and records its number and terms; a later finite
  step keeps the first record; the host check names the step and the term."""
  config = config_for(tiny_data_dir)
  mesh = sharding.make_mesh(config)
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 8)
  setup = state_lib.setup_state(config, model, mesh, tokens, ssacl.dummy_batch(config, 1))
  state = setup.init_fn(jax.random.key(0))
  before = jax.device_get(state["params"])
  good = dict(batch)
  batch["image"] = batch["image"].copy()
  batch["image"][0, 0, 0, 0] = np.nan
  step = jax.jit(steps.with_nonfinite_record(steps.make_train_step(config, setup,
                                                                   ssacl.LOSS_NAMES),
                                             ssacl.LOSS_NAMES))
  record = steps.no_nonfinite_step(len(ssacl.LOSS_NAMES))
  train.check_finite(jax.device_get(record), ssacl.LOSS_NAMES)   # none yet: no error
  state, metrics, record = step(state, batch, *tokens, jax.random.key(1), record)
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state["params"]))
  state, metrics, record = step(state, good, *tokens, jax.random.key(1), record)
  assert bool(metrics["finite"]) and int(state["step"]) == 1   # the finite step did update
  record = jax.device_get(record)
  assert int(record["step"]) == 1 and np.isnan(record["losses"][ssacl.LOSS_NAMES.index("ir")])
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite ir.* at step 1 "):
    train.check_finite(record, ssacl.LOSS_NAMES)


def test_nan_at_step_k_is_named_at_the_next_sync_and_nothing_newer_is_saved(
    uninterrupted, tiny_data_dir, tmp_path, monkeypatch):
  """NaN in step 3's batch, logging every 5 steps, checkpoints every 2: the checkpoint step
  4 is a sync point, so the run stops there naming step 3 and saves nothing after step 2,
  whose state equals the uninterrupted run's. Steps 1-2 are traced into WORKDIR/profile."""
  from ssacl_jax import checkpointing, data as data_lib, sharding
  produce, produced = data_lib.TrainingData.next_train_batch, []

  def poisoned(self):
    batch = produce(self)
    produced.append(1)
    if len(produced) == 3:
      image = batch["image"]
      batch["image"] = jax.device_put(image.at[0, 0, 0, 0].set(jnp.nan), image.sharding)
    return batch

  monkeypatch.setattr(data_lib.TrainingData, "next_train_batch", poisoned)
  config = config_for(tiny_data_dir, log_every_steps=5, profile_steps=(1, 2))
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite ir.* at step 3 "):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == [2]
  assert read_metrics(tmp_path) == {}   # the first log step (5) was never reached
  assert any("goodput/total_s" in r for r in read_records(tmp_path))
  traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0

  setup = state_lib.setup_state(config, ssacl.build_model(config.model), sharding.make_mesh(config),
                            ssacl.dummy_anatomy_tokens(config), ssacl.dummy_batch(config, 1))
  restore = lambda w: jax.device_get(checkpointing.Checkpointer(w, config, read_only=True)
                                     .restore(2, setup.abstract_state))
  jax.tree.map(np.testing.assert_array_equal, restore(uninterrupted), restore(tmp_path))


def test_gradient_accumulation_averages_microbatch_losses(tiny_data_dir):
  config = config_for(tiny_data_dir)
  config.train.grad_accum_steps = 2
  mesh = sharding.make_mesh(config)
  model = ssacl.build_model(config.model)
  batch, tokens = random_batch(config, 16)
  setup = state_lib.setup_state(config, model, mesh, tokens, ssacl.dummy_batch(config, 1))
  state = setup.init_fn(jax.random.key(0))
  params = jax.device_get(state["params"])
  base_key = jax.random.key(1)
  # One row of each microbatch per device: L_cl and L_ac still contrast the whole
  # microbatch of 8, as the release gathers each micro-step's batch over its GPUs.
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(mesh, sharding.batch_spec(config)))
  assert len(sharded["image"].sharding.device_set) == 8
  new_state, metrics = jax.jit(steps.make_train_step(config, setup, ssacl.LOSS_NAMES))(
      state, sharded, *tokens, base_key)
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


# ----------------------------------------------------------------------------- learning
# Pretraining learns: the trainer's own step, on one fixed batch, lowers the total loss and
# each of L_lm and L_ir by a stated margin. The tests' tiny model: at configs/demo.py's
# size the step alone takes 33 s to compile on one CPU core, the tiny one 12 s with LLVM's
# expensive passes off (only this test's jit; the trainer compiles as always).
LEARNING_STEPS = 30
# The least relative fall, first step to last (measured: total 0.34, L_lm 0.14, L_ir 0.23).
LEARNING_MARGINS = {"loss": 0.2, "loss_lm": 0.07, "loss_ir": 0.1}
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def test_pretraining_lowers_total_lm_and_ir_losses_on_one_fixed_batch():
  config = tiny_config()
  config.optim.learning_rate, config.optim.warmup_steps = 3e-3, 0
  config.train.num_steps = 1000   # so the cosine decay barely moves over the steps
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  losses = []
  # A context, not a global mesh: later tests in this worker build 8-device meshes.
  with jax.set_mesh(mesh):
    model = ssacl.build_model(config.model)
    batch, tokens = random_batch(config, 8)
    setup = state_lib.setup_state(config, model, mesh, tokens, ssacl.dummy_batch(config, 1))
    state = setup.init_fn(jax.random.key(0))
    step = jax.jit(steps.make_train_step(config, setup, ssacl.LOSS_NAMES),
                   compiler_options=FAST_COMPILE)
    for _ in range(LEARNING_STEPS + 1):   # each step's metrics are the losses before its update
      state, metrics = step(state, batch, *tokens, jax.random.key(1))
      losses.append({k: float(metrics[k]) for k in LEARNING_MARGINS})
  first, last = losses[0], losses[-1]
  for k, margin in LEARNING_MARGINS.items():
    assert last[k] < (1 - margin) * first[k], f"{k}: {first[k]:.4f} -> {last[k]:.4f}"
