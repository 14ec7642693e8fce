"""Issue 20's ablations: the config variants, their switches, and the runner's table."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo as demo_configs
from ssacl_jax import ablate, anatomy, checkpointing, config_lib, demo, inference
from ssacl_jax.models import ssacl
from helpers import eval_config, tiny_config

# What each ablation must change, written from the issue (not read from configs/demo.py):
# {field: (the full model's value, the ablation's)}.
EXPECTED_CHANGES = {
    "full": {},
    "ac": {"model.loss_weights.ac": (1.0, 0.0)},
    "ar": {"model.loss_weights.ar": (1.0, 0.0)},
    "ar_ac": {"model.loss_weights.ar": (1.0, 0.0), "model.loss_weights.ac": (1.0, 0.0)},
    "cl": {"model.loss_weights.cl": (0.15, 0.0), "warm_start.loss_weights.cl": (1.0, 0.0)},
    "mask": {"model.lm_anatomy_mask": (True, False)},
    "prompt": {"data.prompt_prob": (0.5, 0.0), "eval.pathology_prompt": (True, False)},
}


def flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANGES))
def test_each_ablation_sets_exactly_its_fields(name):
  full = flat(demo_configs.get_config().to_dict())
  variant = flat(demo_configs.get_config(f"ablate={name}").to_dict())
  assert variant.keys() == full.keys()
  changed = {k: (full[k], variant[k]) for k in full if full[k] != variant[k]}
  assert changed == EXPECTED_CHANGES[name]


def test_without_l_cl_the_warm_start_is_l_ir_alone(tmp_path):
  config = demo_configs.get_config("ablate=cl")
  (stage0, _), (stage1, _) = demo.warm_start_configs(config, str(tmp_path))
  assert dict(stage0.model.loss_weights) == dict(ir=1.0, cl=0.0, lm=0.0, ar=0.0, ac=0.0)
  assert dict(stage1.model.loss_weights) == dict(ir=1.0, cl=0.0, lm=1.0, ar=1.0, ac=1.0)


def test_unknown_ablation_names_the_valid_ones():
  with pytest.raises(config_lib.ConfigError, match="unknown ablation 'lm'.*ar_ac"):
    demo_configs.get_config("ablate=lm")


@pytest.mark.parametrize("anatomy_mask", [True, False])
def test_decoder_prefix_hides_leaves_outside_the_regions_unless_ablated(anatomy_mask):
  config = tiny_config()
  config.model.lm_anatomy_mask = anatomy_mask
  model = ssacl.build_model(config.model)
  k, n, d = anatomy.NUM_LEAVES, 4, config.model.encoder.width
  leaves, cls, patches = jnp.ones((2, k, d)), jnp.ones((2, d)), jnp.ones((2, n, d))
  leaf_mask = (np.arange(2 * k).reshape(2, k) % 3 == 0).astype(np.int32)
  args = (leaves, cls, patches, leaf_mask)
  params = model.init(jax.random.key(0), *args, method=ssacl.SSACL.decoder_prefix)
  _, valid = model.apply(params, *args, method=ssacl.SSACL.decoder_prefix)
  want_leaves = leaf_mask if anatomy_mask else np.ones((2, k), np.int32)
  np.testing.assert_array_equal(valid, np.concatenate(
      [want_leaves, np.zeros((2, 1), np.int32), np.ones((2, n), np.int32)], axis=1))


def test_no_pathology_prompt_keeps_the_leaf_masks():
  labels = np.zeros((2, anatomy.NUM_PATHOLOGIES), np.int8)
  labels[0, anatomy.PATHOLOGY_INDEX["Cardiomegaly"]] = 1
  prompts, masks = inference.labels_to_prompt_and_mask(labels)
  no_prompts, same_masks = inference.labels_to_prompt_and_mask(labels, prompt=False)
  assert prompts == ["cardiomegaly", ""] and no_prompts == ["", ""]
  np.testing.assert_array_equal(masks, same_masks)
  assert masks[0].sum() > 0


def test_cell_shows_the_interval_when_metrics_have_one():
  assert ablate.format_cell(0.1764) == "0.176"
  assert ablate.format_cell(0.1764, [0.12, 0.2305]) == "0.176 [0.120, 0.231]"
  assert ablate.format_cell(None) == "n/a"


def test_runner_reruns_only_unfinished_variants_and_shows_intervals(tmp_path, monkeypatch):
  """The runner's bookkeeping, with the recipe replaced by one writing a metrics.json."""
  calls = []

  def fake_run(config, workdir, tag):
    calls.append(tag)
    if tag == "ablate:ac" and calls.count(tag) == 1:
      raise KeyboardInterrupt  # interrupted before its eval
    metrics = {k: config.model.loss_weights.ac + i / 100 for i, (_, k) in enumerate(ablate.COLUMNS)}
    metrics["ci95"] = {"language/BLEU_4": [0.5, 0.75]}
    demo.eval_dir(config, workdir).mkdir(parents=True)
    (demo.eval_dir(config, workdir) / "metrics.json").write_text(json.dumps(metrics))
    return {"total_s": 1.0}

  monkeypatch.setattr(demo, "run", fake_run)
  base = demo_configs.get_config()
  with pytest.raises(KeyboardInterrupt):
    ablate.run_ablations(base, tmp_path, ["full", "ac"])
  rows = ablate.run_ablations(base, tmp_path, ["full", "ac"])
  assert calls == ["ablate:full", "ablate:ac", "ablate:ac"]   # full reused, ac resumed
  table = (tmp_path / "ablation.md").read_text().splitlines()
  assert table[2].startswith("| full (full SS-ACL) | 1.000 [0.500, 0.750] | 1.010 | 1.020 |")
  assert table[3].startswith("| ac (without L_ac) | 0.000 [0.500, 0.750] | 0.010 | 0.020 |")
  assert [r["times_s"] for r in rows] == [{"total_s": 1.0}] * 2


@pytest.mark.ablate
def test_runner_tables_two_variants_and_reuses_them(tiny_data_dir, uninterrupted, tmp_path,
                                                    monkeypatch):
  """End to end on two tiny variants: about 1.5 min of CPU, so opt-in (-m ablate)."""
  base = eval_config(tiny_data_dir)
  base.train.num_steps = 6          # as the `uninterrupted` run
  base.warm_start.steps = 0
  base.head.steps = 5
  base.eval.decode.method, base.eval.decode.max_new_tokens = "greedy", 4
  base.eval.num_report_card = 1
  # `full` was interrupted after training (the session's 6-step run): it resumes there,
  # fitting the head and evaluating only; `ar_ac` runs from scratch.
  shutil.copytree(uninterrupted, tmp_path / "full")
  def step_records(name):   # the resumed run appends only its goodput summary
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]
  trained_steps = step_records("full")
  rows = ablate.run_ablations(base, tmp_path, ["full", "ar_ac"])
  assert step_records("full") == trained_steps   # no step redone

  table = (tmp_path / "ablation.md").read_text().splitlines()
  assert table[0] == "| variant | " + " | ".join(h for h, _ in ablate.COLUMNS) + " |"
  body = [line.split(" | ") for line in table[2:4]]
  assert [cells[0] for cells in body] == ["| full (full SS-ACL)", "| ar_ac (without L_ar and L_ac)"]
  evals = {name: tmp_path / name / "eval" / "test" for name in ("full", "ar_ac")}
  for name, cells in zip(evals, body):
    metrics = json.loads((evals[name] / "metrics.json").read_text())
    assert [c.strip(" |") for c in cells[1:]] == [
        ablate.format_cell(metrics[k], metrics.get("ci95", {}).get(k)) for _, k in ablate.COLUMNS]
  saved_text = (tmp_path / "ablation.json").read_text()
  saved = json.loads(saved_text)
  assert [r["variant"] for r in saved["rows"]] == ["full", "ar_ac"] == [r["variant"] for r in rows]
  try:
    from ssacl_jax import compare
  except ImportError:   # issue 11's module is not on this branch
    assert rows[1]["paired_with_full"] is None
  else:
    paired = compare.compare(evals["ar_ac"], evals["full"])
    assert rows[1]["paired_with_full"] == {k: paired[k] for _, k in ablate.COLUMNS if k in paired}

  # ar_ac really trained without L_ar and L_ac (not computed: 0); the full run with them.
  def last_losses(name):
    return step_records(name)[-1]
  assert last_losses("ar_ac")["loss_ar"] == last_losses("ar_ac")["loss_ac"] == 0.0
  assert last_losses("full")["loss_ar"] > 0 and last_losses("full")["loss_ac"] > 0

  # A second invocation reuses both finished variants: nothing trains or evaluates again.
  finished = [evals[name] / "metrics.json" for name in evals]
  mtimes = [p.stat().st_mtime_ns for p in finished]
  monkeypatch.setattr(demo, "run", lambda *a, **k: pytest.fail("a finished variant was rerun"))
  again = ablate.run_ablations(base, tmp_path, ["full", "ar_ac"])
  assert [p.stat().st_mtime_ns for p in finished] == mtimes
  assert (tmp_path / "ablation.json").read_text() == saved_text   # NaN-safe comparison
  assert json.dumps([r["values"] for r in again]) == json.dumps([r["values"] for r in rows])


def test_variants_with_the_full_models_warm_start_copy_it(tmp_path):
  configs = {n: demo_configs.get_config(f"ablate={n}") for n in ("full", "ar_ac", "cl")}
  full_dir = tmp_path / "full"
  last = configs["full"].warm_start.steps
  for step in (last - 100, last):
    (full_dir / "warm_start" / "checkpoints" / str(step)).mkdir(parents=True)
  copied = ablate.shared_warm_start(configs["ar_ac"], tmp_path / "ar_ac", configs["full"], full_dir)
  assert copied == tmp_path / "ar_ac" / "warm_start"
  assert checkpointing.finished_steps(copied) == [last - 100, last]
  # L_cl's ablation changes stage 0 (L_ir alone): it trains its own.
  assert ablate.shared_warm_start(configs["cl"], tmp_path / "cl", configs["full"], full_dir) is None
  assert not (tmp_path / "cl").exists()
  # An unfinished warm start of the full model is not shared.
  (full_dir / "warm_start" / "checkpoints" / str(last)).rmdir()
  assert ablate.shared_warm_start(configs["ar_ac"], tmp_path / "again", configs["full"], full_dir) is None
