"""The command line: config errors, and SIGTERM (preemption) saving a checkpoint."""
import json
import signal
import subprocess
import time

import pytest

from helpers import ROOT, config_for, env, main_command, read_metrics


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
  out = subprocess.run(main_command(tmp_path, "--config.train.num_stepz=3"), env=env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 2
  assert "unknown config key 'train.num_stepz'" in out.stderr
  assert "num_steps" in out.stderr and "global_batch_size" in out.stderr


def test_invalid_config_fails_early_naming_the_fields(tmp_path):
  out = subprocess.run(main_command(tmp_path, "--config.data.decoder_len=10"), env=env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode != 0
  assert "data.decoder_len 10 < prompt_len + report_len + 2" in out.stderr


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_cleanly(tiny_data_dir, tmp_path):
  proc = subprocess.Popen(
      main_command(tmp_path, f"--config.data.data_dir={tiny_data_dir}",
                   "--config.train.num_steps=10000", "--config.train.log_every_steps=1",
                   "--config.train.checkpoint_every_steps=100000", "--config.train.eval_every_steps=0"),
      env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 2):
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  last = json.loads(metrics.read_text().splitlines()[-1])["step"]
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [last]
  assert 2 <= last < 10000
  assert "stopping after step" in out


def test_demo_warm_start_trains_its_terms_only_then_initialises_its_parts_from_it(
    tiny_data_dir, tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ssacl_jax import convert, demo, pretrained, train
  config = config_for(tiny_data_dir, num_steps=2)
  config.warm_start.steps = 0
  assert demo.warm_start_configs(config, str(tmp_path)) == [(config, str(tmp_path))]
  config.warm_start.steps = 2
  (stage0, dir0), (stage1, dir1) = demo.warm_start_configs(config, str(tmp_path))
  assert (dir0, dir1) == (str(tmp_path / "warm_start"), str(tmp_path))
  assert dict(stage0.model.loss_weights) == dict(ir=1.0, cl=1.0, lm=0.0, ar=0.0, ac=0.0)
  assert dict(stage1.model.loss_weights) == dict(config.model.loss_weights)
  assert stage1.init.checkpoint == dir0 and stage1.init.parts == config.warm_start.parts
  assert stage0.train.num_steps == 2 and not stage0.init.checkpoint
  train.train_and_evaluate(stage0, dir0)
  last = read_metrics(dir0)[2]
  assert last["loss_ir"] > 0 and last["loss_cl"] > 0
  assert all(last[f"loss_{k}"] == 0.0 for k in ("lm", "ar", "ac"))  # not computed
  abstract = convert.abstract_params(stage1)
  fresh = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  loaded = pretrained.load_initial_params(stage1, abstract, fresh)
  taken = stage1.init.parts.split(",")
  assert {"image_encoder", "image_decoder", "text_encoder"} <= set(taken)
  for part in taken:
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(loaded[part])), part
  for part in ("report_decoder", "text_to_query", "to_decoder"):
    jax.tree.map(np.testing.assert_array_equal, loaded[part], fresh[part])
