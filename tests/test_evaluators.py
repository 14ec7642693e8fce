"""Evaluators (`--mode eval`), pathology head and prediction on a tiny trained workdir."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssacl_jax import anatomy, checkpointing, evaluators, predict, train
from ssacl_jax import pathology_head
from ssacl_jax.evaluators import _studies
from ssacl_jax.evaluation import bootstrap
from helpers import ROOT, assert_links_resolve, eval_config


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  config = eval_config(tiny_data_dir)
  train.train_and_evaluate(config, str(workdir))
  head_metrics = pathology_head.fit(config, str(workdir))
  return config, workdir, head_metrics


def test_pathology_head_is_saved_with_thresholds(trained):
  _, workdir, head_metrics = trained
  head = pathology_head.load(workdir)
  assert head["w"].shape[1] == anatomy.NUM_PATHOLOGIES
  assert head["thresholds"].shape == (anatomy.NUM_PATHOLOGIES,)
  assert 0.0 <= head_metrics["val_micro_f1"] <= 1.0


def test_validation_generation_chooses_the_scored_checkpoint(trained):
  config, workdir, _ = trained
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  validation = {r["step"]: r for r in records if "val_language/BLEU_4" in r}
  assert sorted(validation) == [2, 4]
  for r in validation.values():
    assert 0 <= r["val_language/BLEU_4"] <= 1 and 0 <= r["val_clinical/micro14/f1"] <= 1
  best = max(sorted(validation), key=lambda s: validation[s]["val_language/BLEU_4"])
  step, rule = checkpointing.select_step(config, workdir, [2, 4])
  assert step == best and rule.startswith("best validation val_language/BLEU_4")
  info = json.loads((workdir / pathology_head.HEAD_DIR / "info.json").read_text())
  assert info["step"] == best and info["step_rule"] == rule


def test_eval_writes_reports_metrics_heatmaps_and_card(trained):
  config, workdir, _ = trained
  metrics = evaluators.evaluate_workdir(config, str(workdir))
  out = workdir / "eval" / "test"
  rows = [json.loads(l) for l in (out / "reports.jsonl").read_text().splitlines()]
  assert len(rows) == metrics["examples"] == 8
  assert {"generated", "reference", "predicted_pathologies", "predicted_regions",
          "labels_generated", "labels_reference", "scores"} <= set(rows[0])
  protocol = metrics["protocol"]
  assert protocol["checkpoint_step"] == metrics["step"] == checkpointing.select_step(
      config, workdir, [2, 4])[0]
  assert protocol["checkpoint_rule"].startswith("best validation val_language/BLEU_4")
  assert protocol["lowercase"] is False and protocol["synthetic"] is True
  # Every metric has a study-level interval (bookkeeping counts aside), and the stored
  # per-study statistics reproduce every value.
  scalars = {k for k, v in metrics.items() if isinstance(v, float)}
  assert scalars == set(metrics["ci95"]), scalars ^ set(metrics["ci95"])
  ids, groups = bootstrap.load(out / bootstrap.FILENAME)
  assert list(ids) == [r["study_id"] for r in rows]
  point = bootstrap.draws(groups, bootstrap.identity(len(ids)))
  for k in scalars:
    if not np.isnan(metrics[k]):
      assert point[k][0] == pytest.approx(metrics[k], rel=1e-9, abs=1e-12), k
      assert metrics["ci95"][k][0] <= metrics["ci95"][k][1], k
  # reports.jsonl keeps per-study scores whose mean is the corpus figure where it is one.
  rouge = [r["scores"]["language/ROUGE_L"] for r in rows]
  assert np.mean(rouge) == pytest.approx(metrics["language/ROUGE_L"])
  assert "uncertain_positive/micro14/f1" in "".join(metrics)
  assert all(len(r["labels_reference"]) == 14 for r in rows)
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["protocol"]["labeler"] == "rules"  # the default labeler, named
  for key in ("language/BLEU_4", "language/METEOR", "language/ROUGE_L", "language/CIDEr",
              "clinical/micro14/f1", "clinical/micro5/f1", "clinical/example/f1",
              "clinical/macro14/f1", "clinical/macro5/f1", "clinical/uncertain_positive/micro14/f1",
              "baseline_most_frequent/language/BLEU_4", "pathology_head/auroc_mean",
              "grounding/leaves/ours/miou", "grounding/leaves/random/miou",
              "grounding/leaves/cls_attention/pointing_game", "grounding/findings/ours/cnr",
              "zero_shot/auroc_mean", "retrieval/recall@1", "retrieval/mrr"):
    assert key in saved, key
  # the most frequent training report, scored against itself where it occurs, is a real baseline
  assert 0 <= saved["baseline_most_frequent/language/BLEU_1"] <= 1
  for region in anatomy.REGIONS:  # num_report_card = 3 of the 8 studies in the browser
    assert len(list((out / "heatmaps").glob(f"*_{region.replace(' ', '_')}.png"))) == 3
  card = (out / "report_card.html").read_text()
  assert "language/BLEU_4" in card and rows[0]["study_id"] in card
  assert card.count("class='study'") == 3 and f"checkpoint step</b>: {metrics['step']}" in card


def test_oracle_labels_option_uses_the_reference_labels(trained):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.pathology_source = _studies.ORACLE
  config.eval.max_examples = 4
  evaluators.evaluate_workdir(config, str(workdir))
  rows = [json.loads(l) for l in (workdir / "eval" / "test" / "reports.jsonl").read_text().splitlines()]
  assert len(rows) == 4
  for r in rows:
    assert r["predicted_pathologies"] == list(anatomy.positive_pathologies(r["labels_dataset"]))
  assert any(r["predicted_pathologies"] for r in rows)


def test_mode_eval_fits_the_missing_pathology_head(uninterrupted, tiny_data_dir, tmp_path):
  """--mode eval on a freshly trained workdir: the pathology_head evaluator fits and saves
  the head first, then every evaluator scores with it."""
  workdir = tmp_path / "fresh"
  shutil.copytree(uninterrupted, workdir)
  assert not (workdir / pathology_head.HEAD_DIR).exists()
  config = eval_config(tiny_data_dir)
  config.eval.max_examples, config.eval.bootstrap_resamples = 4, 10
  metrics = evaluators.evaluate_workdir(config, str(workdir))
  assert pathology_head.load(workdir)["thresholds"].shape == (anatomy.NUM_PATHOLOGIES,)
  assert metrics["examples"] == 4 and "pathology_head/auroc_mean" in metrics
  assert (workdir / "eval" / "test" / "report_card.html").is_file()


def test_evaluator_types_are_found_by_name():
  assert evaluators.get("zero_shot").run
  with pytest.raises(ValueError, match="type 'bleu': expected one of downstream, grounding, "
                                       "pathology_head, reports, validation_loss, zero_shot"):
    evaluators.get("bleu")


def test_predict_on_real_radiographs(trained, shared_data, tmp_path):
  """From another directory with a relative --out, unreadable files skipped, exit 2."""
  _, workdir, _ = trained
  images = sorted((shared_data / "real_cxr" / "cc_by").glob("*.jpg"))[:2]
  images += sorted((shared_data / "real_cxr" / "cc_by").glob("*.png"))[:1]
  images += sorted((shared_data / "real_cxr" / "nih").glob("*.png"))[:1]
  (tmp_path / "notes.png").write_text("not an image")
  bad = [tmp_path / "notes.png", tmp_path / "missing.png"]
  cmd = [sys.executable, "-m", "ssacl_jax.predict", "--workdir", str(workdir), "--out", "rel/out",
         "--phrase", "left pleural effusion"] + [f"--image={p}" for p in bad[:1] + images + bad[1:]]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
                            "PYTHONPATH": str(ROOT)})
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: skipping {bad[0]}: unreadable image (12 bytes): not a PNG, JPEG "
                    "or DICOM file", f"error: skipping {bad[1]} does not exist",
                    f"error: skipped 2 of {len(images) + 2} images (named above); pass PNG, "
                    "JPEG or DICOM files"]
  assert "Traceback" not in out.stderr
  assert out.stdout.count("report:") == len(images)
  assert out.stdout.splitlines()[:2] == ["model: trained on synthetic_cxr, checkpoint step 4",
                                         predict.DEMO_WARNING]
  moved = tmp_path / "moved"
  (tmp_path / "rel").rename(moved)
  for image in images:
    result = json.loads((moved / "out" / image.stem / "prediction.json").read_text())
    assert isinstance(result["report"], str) and result["pathology_head"]
    assert result["warning"] == predict.DEMO_WARNING and result["trained_on"] == "synthetic_cxr"
    assert "No Finding" not in result["pathologies"] or not set(result["pathologies"]) - {
        "No Finding", "Support Devices"}
    assert len(result["heatmaps"]) == len(anatomy.REGIONS) + 1
    page = moved / "out" / image.stem / "index.html"
    assert assert_links_resolve(page) == 2 * (len(anatomy.REGIONS) + 2) + 1
    assert predict.DEMO_WARNING.split(":")[0] in page.read_text().lower()


def test_predict_rejects_a_corrupt_image(trained, tmp_path):
  from ssacl_jax import predict
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
  with pytest.raises(ValueError, match="bad.png: unreadable image"):
    predict.load_image(bad)
  with pytest.raises(FileNotFoundError):
    predict.load_image(tmp_path / "missing.png")
