"""Study-level bootstrap intervals, paired comparison of runs, and checkpoint selection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ssacl_jax import checkpointing, compare
from ssacl_jax.evaluation import bootstrap, classification, clinical, language
from helpers import tiny_config

GEN = ["The heart is normal. No effusion.", "Small left effusion.", "",
       "Heart normal heart normal. Lungs clear.", "Lungs clear. No pneumothorax.",
       "Mild edema. Small effusions."]
REF = ["The heart size is normal. No pleural effusion.", "Small left pleural effusion.",
       "No acute process.", "Heart normal. Lungs clear.", "Lungs are clear. No pneumothorax.",
       "Moderate pulmonary edema with small bilateral effusions."]


def _groups(generated, seed=0):
  """Groups of every kind over len(GEN) studies, and the point metrics they stand for."""
  n = len(generated)
  rng = np.random.default_rng(seed)
  corpus, per_study = language.language_scores(generated, REF, with_meteor=False)
  ref_labels = rng.choice([1, 0, -1, -2], size=(n, 14))
  gen_labels = np.where(rng.random((n, 14)) < 0.7, ref_labels, rng.choice([1, 0, -1], (n, 14)))
  scores, targets = rng.random((n, 3)), np.array([[1, 0, 1], [0, 1, 0]] * (n // 2))
  pairs = {"example": np.array([0, 0, 2, 5]), "miou": np.array([0.2, 0.4, 0.0, 1.0]),
           "cnr": np.array([1.0, np.nan, -1.0, 2.0])}
  groups = (bootstrap.language_groups("language/", generated, REF, per_study, corpus, False) +
            bootstrap.clinical_groups("clinical/", gen_labels, ref_labels) +
            [bootstrap.classifier_group("head/", scores, targets, ["a", "b", "c"], [0.5] * 3),
             bootstrap.pair_group("grounding/", pairs, n)])
  point = {f"language/{k}": v for k, v in corpus.items()}
  point.update({f"clinical/{k}": v for k, v in clinical.clinical_efficacy(gen_labels, ref_labels).items()})
  point.update({f"head/auroc/{c}": a for c, a in zip("abc", classification.auroc(scores, targets))})
  point["head/auroc_mean"] = classification.mean_auroc(scores, targets)
  point["head/micro_f1"] = classification.f1_at_thresholds(scores, targets, [0.5] * 3)["micro_f1"]
  point["grounding/miou"], point["grounding/cnr"] = 0.4, 2 / 3
  return groups, point


def test_identity_resample_reproduces_every_metric():
  groups, point = _groups(GEN)
  got = bootstrap.draws(groups, bootstrap.identity(len(GEN)))
  assert set(point) <= set(got)
  for k, v in point.items():
    assert got[k][0] == pytest.approx(v, rel=1e-12, abs=1e-12), k


def test_resample_equals_recomputing_on_the_resampled_studies():
  groups, _ = _groups(GEN)
  r = bootstrap.resamples(len(GEN), num=3, seed=5)
  got = bootstrap.draws(groups, r)
  for b, idx in enumerate(r.indices):
    want = language.language_metrics([GEN[i] for i in idx], [REF[i] for i in idx],
                                      with_meteor=False)
    for k in ("BLEU_1", "BLEU_4", "CIDEr", "ROUGE_L"):
      assert got[f"language/{k}"][b] == pytest.approx(want[k], rel=1e-12), (k, b)
    counts = groups[3].arrays["counts"][idx].sum(0)  # clinical, release mapping
    tp, fp = counts[:, 0].sum(), counts[:, 1].sum()
    assert got["clinical/micro14/precision"][b] == pytest.approx(tp / (tp + fp))
    scores, targets = groups[5].arrays["scores"][idx], groups[5].arrays["targets"][idx]
    np.testing.assert_allclose([got[f"head/auroc/{c}"][b] for c in "abc"],
                               classification.auroc(scores, targets))


def test_intervals_are_seeded_percentiles_around_the_estimate():
  groups, point = _groups(GEN)
  ci = bootstrap.confidence_intervals(groups, len(GEN), num=200)
  assert ci == bootstrap.confidence_intervals(groups, len(GEN), num=200)  # fixed seed
  for k in ("language/BLEU_4", "language/CIDEr", "clinical/micro14/f1", "head/auroc_mean"):
    low, high = ci[k]
    assert low <= point[k] <= high and low < high, k
  values = {"x": np.append(np.arange(1.0, 101.0), np.nan)}
  assert bootstrap.intervals(values)["x"] == [pytest.approx(3.475), pytest.approx(97.525)]
  assert np.isnan(bootstrap.intervals({"y": np.full(3, np.nan)})["y"]).all()


def test_meteor_interval_is_the_per_study_mean_shifted_to_the_corpus_score():
  per_study = {"METEOR": np.array([0.1, 0.3, 0.5]), "ROUGE_L": np.array([0.2, 0.4, 0.6])}
  group = bootstrap.ratio_group("language/", per_study, {"METEOR": 0.35 - 0.3})
  r = bootstrap.Resamples(np.array([[0, 0, 1]]), np.array([[2.0, 1.0, 0.0]]))
  got = bootstrap.draws([group], r)
  assert got["language/METEOR"][0] == pytest.approx((0.1 * 2 + 0.3) / 3 + 0.05)
  assert got["language/ROUGE_L"][0] == pytest.approx((0.2 * 2 + 0.4) / 3)


def _write_run(tmp_path, name, generated, study_ids=None):
  out = tmp_path / name
  out.mkdir()
  groups, point = _groups(generated)
  ids = study_ids or [f"s{i}" for i in range(len(generated))]
  bootstrap.save(out / bootstrap.FILENAME, ids, groups)
  (out / "metrics.json").write_text(json.dumps(point))
  return out


def test_compare_paired_bootstrap(tmp_path, capsys):
  a = _write_run(tmp_path, "a", GEN)
  same = compare.compare(a, a, num=200)
  assert same["language/BLEU_4"]["difference"] == 0 and same["language/BLEU_4"]["p_value"] == 1
  better = _write_run(tmp_path, "b", REF)  # the references themselves: every text metric is 1
  rows = compare.compare(better, a, num=200)
  bleu = rows["language/BLEU_4"]
  assert bleu["a"] == pytest.approx(1.0) and bleu["b"] < 0.5
  assert bleu["difference"] == pytest.approx(bleu["a"] - bleu["b"])
  assert 0 < bleu["ci95"][0] <= bleu["difference"] <= bleu["ci95"][1]
  assert bleu["p_value"] == pytest.approx(2 / 201)  # no resample at or below 0
  assert rows["clinical/micro14/f1"]["difference"] == 0  # same (seeded) labels in both
  # The same studies in another order give the same comparison.
  order = [3, 0, 5, 1, 4, 2]
  shuffled = tmp_path / "shuffled"
  shuffled.mkdir()
  ids, groups = bootstrap.load(better / bootstrap.FILENAME)
  bootstrap.save(shuffled / bootstrap.FILENAME, ids[order],
                 [bootstrap.reorder(g, np.array(order)) for g in groups])
  again = compare.compare(shuffled, a, num=200)
  for k in ("language/BLEU_4", "language/CIDEr", "head/auroc_mean", "grounding/miou"):
    assert again[k]["difference"] == pytest.approx(rows[k]["difference"], abs=1e-12), k
  assert compare.main([str(better), str(a), "--resamples", "50"]) == 0
  assert "language/BLEU_4" in capsys.readouterr().out


def test_compare_refuses_different_studies(tmp_path, capsys):
  a = _write_run(tmp_path, "a", GEN)
  b = _write_run(tmp_path, "b", GEN, [f"t{i}" for i in range(len(GEN))])
  with pytest.raises(compare.StudyMismatchError, match="different studies"):
    compare.compare(a, b)
  assert compare.main([str(a), str(b)]) == 2
  assert "different studies" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="per_study.npz"):
    compare.compare(a, tmp_path)


def test_select_step_best_latest_and_fallback(tmp_path):
  config = tiny_config()
  config.checkpoint.best_metric, config.checkpoint.best_mode = "val_language/BLEU_4", "max"
  steps = [2, 4, 6]
  assert checkpointing.select_step(config, tmp_path, steps) == (
      6, "latest (best unknown: no validation val_language/BLEU_4 for a saved step)")
  records = [{"step": 1, "loss": 3.0}, {"step": 2, "val_language/BLEU_4": 0.2},
             {"step": 4, "val_language/BLEU_4": 0.3}, {"step": 5, "val_language/BLEU_4": 0.9},
             {"step": 6, "val_language/BLEU_4": 0.3}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  step, rule = checkpointing.select_step(config, tmp_path, steps)
  assert step == 4 and rule.startswith("best validation val_language/BLEU_4")  # 5 not saved; tie -> earlier
  config.checkpoint.best_mode = "min"
  assert checkpointing.select_step(config, tmp_path, steps)[0] == 2
  assert checkpointing.select_step(config, tmp_path, steps, "latest")[0] == 6
  assert checkpointing.select_step(config, tmp_path, steps, "4") == (4, "eval.step=4")
  with pytest.raises(FileNotFoundError, match="available"):
    checkpointing.select_step(config, tmp_path, steps, 3)
  with pytest.raises(ValueError, match="best"):
    checkpointing.select_step(config, tmp_path, steps, "newest")
