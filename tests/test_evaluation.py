"""Tests of the model-independent evaluation library (ssacl_jax/evaluation)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from helpers import label_precision_at_k
from ssacl_jax import anatomy
from ssacl_jax.evaluation import (classification, clinical, grounding, language,
                                  report_card, retrieval, zero_shot)

# ----------------------------------------------------------------------------- language


def test_preprocess_report_spaces_dots_and_collapses_keeping_case():
  text = "The heart is normal. No effusion.\n\n  Lines   OK. 1.5 cm.No"
  # Only a space *before* '.' (SPEC 5), so a decimal or a missing space keeps its tail;
  # no lower-casing unless asked for (the release scores the text as it is).
  assert (language.preprocess_report(text) ==
          "The heart is normal . No effusion . Lines OK . 1 .5 cm .No")
  assert (language.preprocess_report(text, lowercase=True) ==
          "the heart is normal . no effusion . lines ok . 1 .5 cm .no")
  assert language.preprocess_report("") == ""


def test_case_counts_unless_lowercased():
  m = language.language_metrics(["The heart is normal."], ["the heart is normal."],
                                with_meteor=False)
  assert m["BLEU_1"] == pytest.approx(4 / 5)  # "The" does not match "the"
  m = language.language_metrics(["The heart is normal."], ["the heart is normal."],
                                with_meteor=False, lowercase=True)
  assert m["BLEU_1"] == pytest.approx(1.0)


def test_per_study_statistics_reproduce_coco_on_a_resample_with_duplicates():
  gen = REPORTS[:2] + ["", "The heart size is normal. The heart size is normal."]
  ref = REPORTS[:2] + [REPORTS[2], "Heart size normal. Lungs clear."]
  stats = language.study_statistics(gen, ref)
  for idx in ([0, 1, 2, 3], [0, 0, 3, 3], [1, 2, 2, 2]):
    want = language.language_metrics([gen[i] for i in idx], [ref[i] for i in idx],
                                     with_meteor=False)
    w = np.bincount(idx, minlength=4).astype(float)
    bleu = language.bleu_from_stats(w @ stats["bleu"])
    np.testing.assert_allclose(bleu, [want[f"BLEU_{n}"] for n in range(1, 5)], rtol=1e-12)
    assert language.cider_from_statistics(stats, w[None])[0] == pytest.approx(want["CIDEr"], rel=1e-12)


def test_bleu1_hand_computed_brevity_penalty():
  # 5 candidate tokens all in the 6-token reference: precision 1, BP = exp(1 - 6/5).
  m = language.language_metrics(["the heart is normal."], ["the heart size is normal."],
                                with_meteor=False)
  assert "METEOR" not in m
  assert m["BLEU_1"] == pytest.approx(math.exp(1 - 6 / 5), rel=1e-6)


def test_bleu1_hand_computed_clipped_counts():
  # "the" counts once (clipped to the reference's one), 1/3; candidate longer: BP = 1.
  m = language.language_metrics(["the the the"], ["the cat"], with_meteor=False)
  assert m["BLEU_1"] == pytest.approx(1 / 3, rel=1e-6)


def _recording_meteor(monkeypatch):
  """Wraps pycocoevalcap's Meteor to see the java processes started; returns them."""
  from pycocoevalcap.meteor import meteor as meteor_module
  original = meteor_module.Meteor
  seen = []

  class Recording(original):
    def __init__(self):
      super().__init__()
      seen.append(self)

  monkeypatch.setattr(meteor_module, "Meteor", Recording)
  return seen


REPORTS = [
    "The heart size is normal. The lungs are clear without focal consolidation.",
    "Small left pleural effusion with adjacent atelectasis. No pneumothorax is seen.",
    "Endotracheal tube terminates five centimeters above the carina. Mild pulmonary edema.",
]


def test_identical_reports_score_perfectly_and_meteor_process_is_closed(monkeypatch):
  seen = _recording_meteor(monkeypatch)
  m = language.language_metrics(REPORTS, REPORTS)
  assert set(m) == set(language.METRIC_NAMES)
  for n in range(1, 5):
    assert m[f"BLEU_{n}"] == pytest.approx(1.0, abs=1e-6)
  assert m["METEOR"] > 0.95
  assert m["ROUGE_L"] == pytest.approx(1.0)
  assert m["CIDEr"] == pytest.approx(10.0)  # CIDEr-D is scaled by 10
  assert len(seen) == 1 and seen[0].meteor_p.poll() is not None


def test_empty_candidates_do_not_crash(monkeypatch):
  seen = _recording_meteor(monkeypatch)
  m = language.language_metrics(["", REPORTS[1]], REPORTS[:2])
  assert all(np.isfinite(v) for v in m.values())
  assert 0.0 < m["ROUGE_L"] < 1.0 and 0.0 < m["METEOR"] < 1.0
  assert seen[0].meteor_p.poll() is not None
  blank = language.language_metrics(["", " "], REPORTS[:2], with_meteor=False)
  assert blank["BLEU_1"] == pytest.approx(0.0, abs=1e-6)
  assert blank["ROUGE_L"] == 0.0 and blank["CIDEr"] == 0.0


def test_language_metrics_rejects_mismatched_lengths():
  with pytest.raises(ValueError):
    language.language_metrics(["a"], ["a", "b"], with_meteor=False)

# ----------------------------------------------------------------------------- clinical


def _labels(rows: list[dict[str, int]], fill: int) -> np.ndarray:
  out = np.full((len(rows), anatomy.NUM_PATHOLOGIES), fill, np.int8)
  for i, row in enumerate(rows):
    for name, v in row.items():
      out[i, anatomy.PATHOLOGY_INDEX[name]] = v
  return out


def test_clinical_efficacy_hand_computed():
  ref = _labels([
      {"Cardiomegaly": 1, "Pleural Effusion": 1},
      {"No Finding": 1},
      {"Edema": 1, "Support Devices": 1, "Atelectasis": -1},
      {},
  ], fill=-2)
  gen = _labels([
      {"Cardiomegaly": 1, "Edema": 1, "Pleural Effusion": 0},
      {"No Finding": 1},
      {"Edema": -1, "Support Devices": 1, "Atelectasis": 1, "Fracture": 1},
      {},
  ], fill=0)
  ce = clinical.clinical_efficacy(gen, ref)
  # tp: Cardiomegaly, No Finding, Support Devices; fp: Edema (ex 0), Atelectasis and
  # Fracture (ex 2, uncertain reference counts negative); fn: Effusion (ex 0),
  # Edema (ex 2, uncertain generated counts negative).
  p, r = 3 / 6, 3 / 5
  assert ce["micro14/precision"] == pytest.approx(p)
  assert ce["micro14/recall"] == pytest.approx(r)
  assert ce["micro14/f1"] == pytest.approx(2 * p * r / (p + r))
  # Among the five: tp Cardiomegaly; fp Edema, Atelectasis; fn Effusion, Edema.
  for m in ("precision", "recall", "f1"):
    assert ce[f"micro5/{m}"] == pytest.approx(1 / 3)
  # Per example (P, R, F1): (1/2, 1/2, 1/2), (1, 1, 1), (1/3, 1/2, 2/5), and both sets
  # empty scores (0, 0, 0), as in the release.
  assert ce["example/precision"] == pytest.approx((0.5 + 1 + 1 / 3 + 0) / 4)
  assert ce["example/recall"] == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)
  assert ce["example/f1"] == pytest.approx((0.5 + 1 + 0.4 + 0) / 4)
  # Macro (sklearn's multilabel macro): per observation (P, R, F1), averaged. Scored
  # observations: Cardiomegaly, No Finding, Support Devices (1, 1, 1); Edema (0, 0, 0);
  # Atelectasis, Fracture (0 P with a false positive, R 0/0 -> 0); Effusion (P 0/0, R 0);
  # the other 7 never predicted nor present: 0.
  assert ce["macro14/precision"] == pytest.approx(3 / 14)
  assert ce["macro14/recall"] == pytest.approx(3 / 14)
  assert ce["macro14/f1"] == pytest.approx(3 / 14)
  # The five: Cardiomegaly 1, Edema 0, Consolidation 0, Atelectasis 0, Effusion 0.
  for m in ("precision", "recall", "f1"):
    assert ce[f"macro5/{m}"] == pytest.approx(1 / 5)
  assert ce["Cardiomegaly/f1"] == 1.0 and ce["Support Devices/precision"] == 1.0
  assert ce["Edema/precision"] == 0.0 and ce["Edema/recall"] == 0.0
  assert ce["Atelectasis/precision"] == 0.0 and ce["Atelectasis/recall"] == 0.0
  assert ce["Pneumonia/f1"] == 0.0  # never predicted nor present: zero-denominator -> 0
  assert len(ce) == 2 * 3 * (5 + anatomy.NUM_PATHOLOGIES)
  # Uncertain = positive: the generated Edema (-1) and the reference Atelectasis (-1) are
  # positive now, so ex 2 has tp Edema, Atelectasis, Support Devices; fp Fracture.
  # tp 5 (+ Cardiomegaly, No Finding), fp 2 (Edema ex 0, Fracture), fn 1 (Effusion).
  u = "uncertain_positive/"
  assert ce[u + "micro14/precision"] == pytest.approx(5 / 7)
  assert ce[u + "micro14/recall"] == pytest.approx(5 / 6)
  # Among the five: tp Cardiomegaly, Edema, Atelectasis; fp Edema (ex 0); fn Effusion.
  assert ce[u + "micro5/precision"] == pytest.approx(3 / 4)
  assert ce[u + "micro5/recall"] == pytest.approx(3 / 4)
  assert ce[u + "Atelectasis/f1"] == 1.0 and ce[u + "Edema/precision"] == 0.5
  assert ce[u + "example/recall"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_example_based_empty_sets_score_zero():
  ce = clinical.clinical_efficacy(_labels([{}], fill=0), _labels([{}], fill=-2))
  assert (ce["example/precision"], ce["example/recall"], ce["example/f1"]) == (0, 0, 0)


def test_example_based_one_sided_empty_sets_score_zero():
  gen = _labels([{}], fill=0)
  ref = _labels([{"Pneumonia": 1}], fill=0)
  ce = clinical.clinical_efficacy(gen, ref)
  assert (ce["example/precision"], ce["example/recall"], ce["example/f1"]) == (0, 0, 0)


def test_clinical_efficacy_rejects_bad_shapes():
  with pytest.raises(ValueError):
    clinical.clinical_efficacy(np.zeros((2, 13)), np.zeros((2, 13)))
  with pytest.raises(ValueError):
    clinical.clinical_efficacy(np.zeros((2, 14)), np.zeros((3, 14)))

# ----------------------------------------------------------------------- classification


def _brute_force_auc(s: np.ndarray, y: np.ndarray) -> float:
  pos, neg = s[y == 1], s[y != 1]
  wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auroc_matches_pair_count_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, size=(60, 4)).astype(np.float64)  # many ties
  targets = rng.integers(0, 2, size=(60, 4))
  targets[:, 3] = 0  # one label only -> nan
  got = classification.auroc(scores, targets)
  for c in range(3):
    assert got[c] == pytest.approx(_brute_force_auc(scores[:, c], targets[:, c]))
  assert np.isnan(got[3])
  assert classification.mean_auroc(scores, targets) == pytest.approx(np.mean(got[:3]))


def test_auroc_perfect_inverted_and_uncertain_as_negative():
  s = np.array([[0.1], [0.4], [0.35], [0.8]])
  assert classification.auroc(s, [[0], [0], [1], [1]])[0] == pytest.approx(0.75)
  assert classification.auroc(s, [[0], [-1], [0], [1]])[0] == 1.0
  assert classification.auroc(-s, [[0], [-1], [0], [1]])[0] == 0.0
  assert np.isnan(classification.mean_auroc(s, np.zeros((4, 1))))


def test_weighted_auroc_equals_auroc_of_repeated_examples():
  rng = np.random.default_rng(7)
  scores = rng.integers(0, 4, size=(9, 2)).astype(float)  # many ties
  targets = rng.integers(0, 2, size=(9, 2))
  weights = np.array([[1, 0, 2, 3, 0, 1, 1, 0, 1], [1] * 9, [0, 1, 0, 0, 0, 0, 0, 0, 0]])
  got = classification.weighted_auroc(scores, targets, weights)
  for b in range(2):
    idx = np.repeat(np.arange(9), weights[b])
    np.testing.assert_allclose(got[b], [_brute_force_auc(scores[idx, c], targets[idx, c] == 1)
                                        for c in range(2)])
  assert np.isnan(got[2]).all()  # one example: one class only


def test_pick_thresholds_maximises_f1_and_handles_ties_and_no_positives():
  scores = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.1, 0.1], [0.2, 0.0, 0.0]])
  targets = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
  t = classification.pick_thresholds(scores, targets)
  # Column 0: F1 at 0.9, 0.8, 0.7, 0.2 is 2/3, 1/2, 4/5, 2/3. Column 1: the tied 0.5s go
  # together (F1 2/3). Column 2: no positives -> a threshold predicting nothing.
  assert t[0] == 0.7 and t[1] == 0.5 and t[2] > 0.3
  res = classification.f1_at_thresholds(scores, targets, t)
  np.testing.assert_allclose(res["f1"], [0.8, 2 / 3, 0.0])
  np.testing.assert_allclose(res["precision"], [2 / 3, 0.5, 0.0])
  np.testing.assert_allclose(res["recall"], [1.0, 1.0, 0.0])
  assert res["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 3)
  assert res["micro_f1"] == pytest.approx(2 * 3 / (5 + 3))


def test_pick_thresholds_is_optimal_on_random_data():
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 8, size=(40, 3)) / 8.0
  targets = rng.integers(0, 2, size=(40, 3))
  t = classification.pick_thresholds(scores, targets)
  best = classification.f1_at_thresholds(scores, targets, t)["f1"]
  for c in range(3):
    for cand in np.unique(scores[:, c]):
      th = t.copy()
      th[c] = cand
      assert classification.f1_at_thresholds(scores, targets, th)["f1"][c] <= best[c] + 1e-12

# ---------------------------------------------------------------------------- grounding


def test_gaussian_smooth_matches_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  a = np.random.default_rng(2).random((14, 11))
  np.testing.assert_allclose(grounding.gaussian_smooth(a, 1.5),
                             ndimage.gaussian_filter(a, 1.5, mode="reflect"), atol=1e-12)
  tiny = np.arange(4.0).reshape(2, 2)  # kernel radius 6 > size: repeated mirroring
  np.testing.assert_allclose(grounding.gaussian_smooth(tiny, 1.5),
                             ndimage.gaussian_filter(tiny, 1.5, mode="reflect"), atol=1e-12)


def test_resize_bilinear_matches_jax_upsampling():
  import jax
  a = np.random.default_rng(3).random((7, 5))
  want = np.asarray(jax.image.resize(a.astype(np.float32), (28, 15), "bilinear"))
  np.testing.assert_allclose(grounding.resize_bilinear(a, (28, 15)), want, atol=1e-5)


def test_smooth_and_resize_keeps_peak_and_constant():
  m = np.zeros((14, 14))
  m[3, 10] = 1.0
  out = grounding.smooth_and_resize(m, (224, 224))
  assert out.shape == (224, 224)
  y, x = np.unravel_index(np.argmax(out), out.shape)
  assert 3 * 16 <= y < 4 * 16 and 10 * 16 <= x < 11 * 16
  np.testing.assert_allclose(grounding.smooth_and_resize(np.full((4, 4), 2.0), (8, 6)), 2.0)


def test_box_to_mask():
  mask = grounding.box_to_mask((0.25, 0.5, 0.75, 1.0), (4, 4))
  want = np.zeros((4, 4), bool)
  want[1:3, 2:4] = True
  np.testing.assert_array_equal(mask, want)
  assert grounding.box_to_mask((0.1, 0.1, 0.7, 0.3), (10, 10)).sum() == 6 * 2  # no round-off row
  assert grounding.box_to_mask((0.12, 0.12, 0.13, 0.13), (10, 10)).sum() == 1  # partial pixel
  assert not grounding.box_to_mask((0, 0, 0, 0), (10, 10)).any()


def test_box_indicator_map_scores_perfectly():
  mask = grounding.box_to_mask((0.2, 0.3, 0.6, 0.7), (20, 20))
  heat = mask.astype(float) * 3.0 + 1.0
  assert grounding.miou(heat, mask) == 1.0
  for t in grounding.THRESHOLDS:
    assert grounding.miou(heat, mask, thresholds=(t,)) == 1.0
  assert grounding.pointing_game(heat, mask) == 1.0
  assert grounding.cnr(heat, mask) > 1e5


def test_map_peaked_outside_box():
  mask = grounding.box_to_mask((0.0, 0.0, 0.5, 0.5), (10, 10))
  heat = np.zeros((10, 10))
  heat[8, 8] = 1.0
  assert grounding.pointing_game(heat, mask) == 0.0
  assert grounding.cnr(heat, mask) < 0
  assert grounding.miou(heat, mask) == 0.0


def test_cnr_and_miou_hand_computed():
  mask = np.array([[False, False, True, True]])
  # normalised [0, .5, 1, 1]: inside mean 1 var 0, outside mean .25 var .0625.
  heat = np.array([[0.0, 2.0, 4.0, 4.0]])
  assert grounding.cnr(heat, mask) == pytest.approx(0.75 / 0.25, rel=1e-9)
  assert grounding.cnr(10 * heat - 3, mask) == pytest.approx(3.0, rel=1e-9)  # affine-invariant
  heat = np.array([[0.0, 0.15, 0.35, 1.0]])
  # On [-1, 1] (x * 2 - 1): [-1, -.7, -.3, 1]; above every threshold .1...5: the last
  # pixel only, IoU 1/2 each.
  assert grounding.miou(heat, mask) == pytest.approx(0.5)
  heat = np.array([[0.0, 0.56, 0.64, 1.0]])  # [-1, .12, .28, 1] on [-1, 1]
  # IoU at .1: 3 predicted vs box 2 -> 2/3; at .2: {.28, 1} = box -> 1; at .3 .4 .5: 1/2.
  assert grounding.miou(heat, mask) == pytest.approx((2 / 3 + 1 + 0.5 * 3) / 5)
  assert grounding.miou(heat, mask, thresholds=(0.1,)) == pytest.approx(2 / 3)
  assert np.isnan(grounding.cnr(heat, np.ones_like(mask)))
  assert np.isnan(grounding.miou(heat, np.zeros_like(mask)))
  assert grounding.cnr(np.ones((1, 4)), mask) == 0.0


def test_signed_normalise_and_nearest_resize():
  np.testing.assert_allclose(grounding.signed_normalise([[2.0, 3.0, 6.0]]), [[-1, -0.5, 1]])
  np.testing.assert_array_equal(grounding.signed_normalise(np.ones((2, 2))), -np.ones((2, 2)))
  a = np.array([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_array_equal(grounding.resize_nearest(a, (4, 6)),
                                [[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2)
  # Non-integer factor: output pixel i reads floor(i * 2 / 3).
  np.testing.assert_array_equal(grounding.resize_nearest(a, (3, 3)),
                                [[1, 1, 2], [1, 1, 2], [3, 3, 4]])
  np.testing.assert_array_equal(grounding.smooth_and_resize(a, (4, 4), 0, "nearest"),
                                np.kron(a, np.ones((2, 2))))
  with pytest.raises(ValueError, match="resize"):
    grounding.smooth_and_resize(a, (4, 4), resize="cubic")


def test_pointing_game_counts_any_tied_maximum():
  mask = np.array([[False, False, True]])
  assert grounding.pointing_game(np.array([[5.0, 1.0, 5.0]]), mask) == 1.0  # 2nd maximum inside
  assert grounding.pointing_game(np.array([[5.0, 1.0, 4.0]]), mask) == 0.0
  assert grounding.pointing_game(np.ones((1, 3)), mask) == 1.0  # a constant map: all tied
  assert grounding.pointing_game(np.ones((1, 3)), np.zeros_like(mask)) == 0.0


def test_grounding_scores_aggregates_valid_pairs():
  rng = np.random.default_rng(4)
  maps = np.stack([[grounding.random_map(rng, (7, 7)) for _ in range(3)] for _ in range(2)])
  assert maps.shape == (2, 3, 7, 7) and (0 <= maps).all() and (maps < 1).all()
  boxes = np.tile(np.array([0.1, 0.2, 0.6, 0.9]), (2, 3, 1))
  boxes[1, 2] = 0.0  # marked valid but has no area: skipped
  valid = np.array([[True, False, True], [True, True, True]])
  got = grounding.grounding_scores(maps, boxes, valid, (28, 28))
  pairs = [(0, 0), (0, 2), (1, 0), (1, 1)]
  mask = grounding.box_to_mask(boxes[0, 0], (28, 28))
  heats = [grounding.smooth_and_resize(maps[i, j], (28, 28), resize="nearest") for i, j in pairs]
  assert got["count"] == 4
  assert got["cnr"] == pytest.approx(np.mean([grounding.cnr(h, mask) for h in heats]))
  assert got["miou"] == pytest.approx(np.mean([grounding.miou(h, mask) for h in heats]))
  assert got["pointing_game"] == pytest.approx(
      np.mean([grounding.pointing_game(h, mask) for h in heats]))
  per_pair = grounding.grounding_pair_scores(maps, boxes, valid, (28, 28))
  np.testing.assert_array_equal(per_pair["example"], [0, 0, 1, 1])
  assert per_pair["miou"][3] == pytest.approx(grounding.miou(heats[3], mask))
  none = grounding.grounding_scores(maps, boxes, np.zeros((2, 3), bool), (28, 28))
  assert none["count"] == 0 and np.isnan(none["miou"])


def test_grounding_of_a_box_shaped_patch_map():
  patch = np.zeros((14, 14))
  patch[2:8, 4:10] = 1.0
  box = np.array([[[2 / 14, 4 / 14, 8 / 14, 10 / 14]]])
  got = grounding.grounding_scores(patch[None, None], box, np.ones((1, 1), bool), (224, 224))
  assert got["pointing_game"] == 1.0 and got["miou"] > 0.6 and got["cnr"] > 1.0

# ---------------------------------------------------------------------------- retrieval


def test_retrieval_hand_computed():
  sim = np.array([[0.9, 0.1, 0.2],
                  [0.5, 0.4, 0.6],
                  [0.3, 0.3, 0.3]])  # all tied: ties count against the true report
  np.testing.assert_array_equal(retrieval.true_match_ranks(sim), [1, 3, 3])
  labels = _labels([{"Cardiomegaly": 1}, {"Cardiomegaly": 1, "Edema": 1},
                    {"No Finding": 1, "Edema": -1}], fill=0)
  m = retrieval.retrieval_metrics(sim, labels)
  assert m["recall@1"] == pytest.approx(1 / 3)
  assert m["recall@5"] == 1.0 and m["recall@10"] == 1.0
  assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
  # K capped at 3: every report retrieved; relevant counts 2, 2, 1.
  for k in (5, 10, 100):
    assert m[f"precision@{k}"] == pytest.approx(5 / 9)
  # top-1: rep0 (relevant), rep2 (not), rep0 by tie order (not) -> 1/3.
  assert label_precision_at_k(sim, labels, 1) == pytest.approx(1 / 3)
  # top-2: {0, 2} -> 1/2, {2, 0} -> 1/2, {0, 1} for a No Finding query -> 0.
  assert label_precision_at_k(sim, labels, 2) == pytest.approx(1 / 3)
  assert "precision@5" not in retrieval.retrieval_metrics(sim)


def test_retrieval_with_distractor_reports_and_identity():
  sim = np.array([[0.1, 0.0, 0.9],
                  [0.0, 1.0, 0.2]])
  np.testing.assert_array_equal(retrieval.true_match_ranks(sim), [2, 1])
  m = retrieval.retrieval_metrics(np.eye(20) + 0.01 * np.arange(20))
  assert m["recall@1"] == 1.0 and m["mrr"] == 1.0
  with pytest.raises(ValueError):
    retrieval.true_match_ranks(sim.T)

# ---------------------------------------------------------------------------- zero-shot


def test_zero_shot_scores_with_fake_encoder():
  e = np.eye(3)
  calls = []

  def encode_text(prompts):
    calls.append(list(prompts))
    # Positive prompts of class "edema" point along e0, of "effusion" along e1;
    # every negative prompt along e2 (scaled, to exercise the normalisation).
    table = {"There is edema.": e[0], "There is effusion.": 5 * e[1]}
    return np.stack([table.get(p, 2 * e[2]) for p in prompts])

  images = np.array([[3.0, 0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
  got = zero_shot.zero_shot_scores(images, encode_text, ["edema", "effusion"])
  assert len(calls) == 1 and len(calls[0]) == 10
  assert calls[0][:5] == ["There is edema.", "the lung is clear.", "There is no edema.",
                          "no edema.", "no evidence of edema."]

  def sigmoid(x):
    return 1 / (1 + math.exp(-x))
  want = [[sigmoid(1), sigmoid(0)],
          [sigmoid(-1), sigmoid(-1)],
          [sigmoid(2 ** -0.5), sigmoid(2 ** -0.5)]]
  np.testing.assert_allclose(got, want)
  cooler = zero_shot.zero_shot_scores(images, encode_text, ["edema", "effusion"], 0.1)
  assert cooler[0, 0] == pytest.approx(sigmoid(10))


def test_zero_shot_rejects_wrong_text_shape():
  with pytest.raises(ValueError):
    zero_shot.zero_shot_scores(np.ones((2, 3)), lambda p: np.ones((len(p), 4)), ["edema"])

# -------------------------------------------------------------------------- report card


def test_jet_endpoints():
  np.testing.assert_allclose(report_card.jet([0.0, 0.5, 1.0]),
                             [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


def test_overlay_png(tmp_path):
  from PIL import Image
  image = np.zeros((32, 48), np.uint8)
  heat = np.zeros((32, 48))
  heat[5, 40] = 7.0
  path = tmp_path / "overlay.png"
  report_card.overlay_png(image, heat, path)
  with Image.open(path) as im:
    assert im.mode == "RGB" and im.size == (48, 32)
    px = np.asarray(im)
  assert tuple(px[5, 40]) == (64, 0, 0)  # jet(1) = dark red at half opacity
  assert tuple(px[0, 0]) == (0, 0, 64)  # jet(0) = dark blue
  with pytest.raises(ValueError):
    report_card.overlay_png(image, heat[:10], path)


def test_write_report_card(tmp_path):
  from PIL import Image
  image = (np.arange(32 * 48) % 256).astype(np.uint8).reshape(32, 48)
  existing = tmp_path / "pre.png"
  Image.fromarray(image).save(existing)
  studies = [
      {"study_id": "s<1>", "image": image,
       "heatmaps": {"lungs": np.random.default_rng(0).random((32, 48)),
                    "mediastinum & heart": np.ones((32, 48))},
       "generated": "No effusion < 1 cm & stable.", "reference": "Heart \"normal\".",
       "pathologies": ["Pleural Effusion"]},
      {"image": str(existing), "heatmaps": {"lungs": np.zeros((32, 48))},
       "generated": "", "reference": "ok"},
  ]
  card = tmp_path / "card" / "index.html"
  report_card.write_report_card(card, {"BLEU_4": 0.123456, "count": 3}, studies)
  text = card.read_text(encoding="utf-8")
  assert "BLEU_4" in text and "0.1235" in text and "count" in text
  assert "No effusion &lt; 1 cm &amp; stable." in text
  assert "Heart &quot;normal&quot;." in text and "s&lt;1&gt;" in text
  assert "mediastinum &amp; heart" in text and "Pleural Effusion" in text
  assert "<1 cm" not in text
  for name in ("index_study0_image.png", "index_study0_heat0.png", "index_study0_heat1.png",
               "index_study1_heat0.png"):
    assert f"src='{name}'" in text
    with Image.open(card.parent / name) as im:
      assert im.size == (48, 32)
  assert "src='../pre.png'" in text
