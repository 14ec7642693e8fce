"""The synthetic chest radiograph generator (SPEC section 8)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from input_pipeline import features
from input_pipeline import synthetic
from input_pipeline.synthetic import example, findings, phrases, report
from ssacl_jax import anatomy

P = anatomy.PATHOLOGIES
IDX = anatomy.PATHOLOGY_INDEX
DRAWABLE = tuple(p for p in P if p != "No Finding")
TEXT_FIELDS = ("report", "findings", "impression", "prompt", "study_id", "view")
SIZE = 128  # small enough to be quick, large enough for the half-size rasteriser


@pytest.fixture(scope="module")
def examples():
  return [synthetic.generate_example(0, "train", i, SIZE) for i in range(40)]


def drawn_names(seed, split, index):
  return [f.name for f in synthetic.plan(seed, split, index).findings]


def first_index_with(name, split="train", limit=400):
  for i in range(limit):
    if name in drawn_names(0, split, i):
      return i
  raise AssertionError(f"no {name} in the first {limit} examples")


# ------------------------------------------------------------------- determinism, schema


def test_same_arguments_give_identical_examples():
  a = synthetic.generate_example(3, "train", 17, 96)
  b = synthetic.generate_example(3, "train", 17, 96)
  assert a["image"].tobytes() == b["image"].tobytes()
  for k in a:
    if isinstance(a[k], np.ndarray):
      np.testing.assert_array_equal(a[k], b[k])
    else:
      assert a[k] == b[k], k


def test_index_split_and_seed_change_the_example():
  base = synthetic.generate_example(0, "train", 5, 64)
  for other in (synthetic.generate_example(0, "train", 6, 64),
                synthetic.generate_example(0, "validation", 5, 64),
                synthetic.generate_example(1, "train", 5, 64)):
    assert other["image"].tobytes() != base["image"].tobytes()
    assert not np.array_equal(other["leaf_boxes"], base["leaf_boxes"])


def test_large_indices_work():
  ex = synthetic.generate_example(0, "train", 123_456_789, 64)
  assert ex["image"].shape == (64, 64, 1) and ex["report"]


def test_negative_seed_is_rejected():
  with pytest.raises(ValueError, match="non-negative"):
    synthetic.generate_example(-1, "train", 0)


def test_keys_dtypes_and_shapes_match_the_features_schema(examples):
  keys = {"image", *TEXT_FIELDS, "labels", "regions", "leaf_boxes", "finding_boxes",
          "finding_sentences", "has_boxes"}
  for ex in examples:
    assert set(ex) == keys
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (SIZE, SIZE, 1)
    for k in TEXT_FIELDS:
      assert isinstance(ex[k], str)
    assert ex["labels"].dtype == np.int8 and ex["labels"].shape == (anatomy.NUM_PATHOLOGIES,)
    assert set(ex["labels"].tolist()) <= {1, 0, -1, -2}
    assert ex["regions"].dtype == np.int8 and ex["regions"].shape == (anatomy.NUM_REGIONS,)
    assert ex["leaf_boxes"].dtype == np.float32
    assert ex["leaf_boxes"].shape == (anatomy.NUM_LEAVES, 4)
    assert ex["finding_boxes"].dtype == np.float32
    assert ex["finding_boxes"].shape == (anatomy.NUM_PATHOLOGIES, 4)
    assert len(ex["finding_sentences"]) == anatomy.NUM_PATHOLOGIES
    assert all(isinstance(s, str) for s in ex["finding_sentences"])
    assert ex["has_boxes"] == 1 and ex["has_boxes"].dtype == np.int8
    derived = features.label_fields(ex["labels"])
    assert ex["prompt"] == derived["prompt"]
    np.testing.assert_array_equal(ex["regions"], derived["regions"])
    assert ex["report"] == features.join_report(ex["findings"], ex["impression"])
    assert ex["findings"] and ex["impression"]
    assert ex["view"] in ("PA", "AP")
    assert ex["study_id"].startswith("synthetic-train-0-")


def test_image_looks_like_a_radiograph(examples):
  """Dark outside the body and in the lungs, bright mediastinum and abdomen."""
  for i, ex in enumerate(examples[:10]):
    img = ex["image"][:, :, 0].astype(np.float32)
    boxes = dict(zip(anatomy.LEAVES, ex["leaf_boxes"]))

    def mean_in(box):
      y0, x0, y1, x1 = (np.asarray(box) * SIZE).round().astype(int)
      return img[y0:y1, x0:x1].mean()

    lung = mean_in(boxes["right mid lung zone"])
    hy, hx = synthetic.plan(0, "train", i).drawn.heart.mean(axis=0)
    assert mean_in([hy - 0.04, hx - 0.04, hy + 0.04, hx + 0.04]) > lung + 40
    assert mean_in([0.9, 0.3, 1.0, 0.7]) > lung + 40  # abdomen
    assert img[:4, :4].mean() < lung  # air above the shoulder
    assert img.std() > 30


def test_geometry_and_text_do_not_depend_on_image_size():
  small = synthetic.generate_example(2, "test", 9, 64)
  large = synthetic.generate_example(2, "test", 9, 224)
  assert small["report"] == large["report"]
  np.testing.assert_array_equal(small["labels"], large["labels"])
  np.testing.assert_array_equal(small["leaf_boxes"], large["leaf_boxes"])
  assert large["image"].shape == (224, 224, 1)


# -------------------------------------------------------------------------------- boxes


def test_boxes_are_normalised_and_ordered(examples):
  for ex in examples:
    b = ex["leaf_boxes"]
    assert (b >= 0).all() and (b <= 1).all()
    assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
    fb = ex["finding_boxes"]
    assert (fb >= 0).all() and (fb <= 1).all()
    drawn = [i for i, p in enumerate(P) if p != "No Finding" and ex["labels"][i] in (1, -1)]
    for i in range(anatomy.NUM_PATHOLOGIES):
      if i in drawn:
        assert fb[i, 0] < fb[i, 2] and fb[i, 1] < fb[i, 3], (P[i], fb[i])
        assert ex["finding_sentences"][i], P[i]
      else:
        assert not fb[i].any() and not ex["finding_sentences"][i], P[i]


def test_right_structures_are_on_the_image_left(examples):
  for ex in examples:
    boxes = dict(zip(anatomy.LEAVES, ex["leaf_boxes"]))
    cx = {k: 0.5 * (b[1] + b[3]) for k, b in boxes.items()}
    mid = cx["spine"]
    pairs = [n[len("right "):] for n in anatomy.LEAVES
             if n.startswith("right ") and "left " + n[len("right "):] in boxes]
    assert len(pairs) == 8  # 7 lung leaves and the clavicle
    for rest in pairs:
      assert cx["right " + rest] < mid < cx["left " + rest], rest
    assert cx["right atrium"] < mid < cx["aortic arch"]
    assert cx["superior vena cava"] < mid


def test_lung_zones_stack_top_to_bottom(examples):
  for ex in examples:
    boxes = dict(zip(anatomy.LEAVES, ex["leaf_boxes"]))
    for side in ("right", "left"):
      up, mid, low = (boxes[f"{side} {z} lung zone"] for z in ("upper", "mid", "lower"))
      assert up[0] < mid[0] < low[0]
      assert boxes[f"{side} apical zone"][0] == pytest.approx(up[0], abs=1e-3)
      assert boxes[f"{side} hemidiaphragm"][2] > low[0]
    assert boxes["trachea"][0] < boxes["carina"][0] < boxes["right atrium"][0]
    assert boxes["abdomen"][0] > boxes["right mid lung zone"][2]


@pytest.mark.parametrize("name", DRAWABLE)
def test_drawn_finding_changes_its_box(name):
  """The box of a drawn finding differs from the same place on the finding-free image."""
  index = first_index_with(name)
  ex = synthetic.generate_example(0, "train", index, SIZE)
  free = synthetic.render_finding_free(0, "train", index, SIZE)
  b = ex["finding_boxes"][IDX[name]] * SIZE
  y0, x0, y1, x1 = int(b[0]), int(b[1]), int(np.ceil(b[2])), int(np.ceil(b[3]))
  diff = np.abs(ex["image"].astype(np.float32) - free.astype(np.float32))[:, :, 0]
  inside = diff[y0:y1, x0:x1]
  assert inside.mean() > 2.0, (name, inside.mean())
  # Local findings leave the rest of the image alone.
  if name not in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema", "Support Devices",
                  "Pneumothorax") and len(drawn_names(0, "train", index)) == 1:
    outside = diff.copy()
    outside[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x1 + 3] = 0
    assert outside.mean() < 0.2 * inside.mean(), (name, outside.mean(), inside.mean())


def test_finding_free_image_keeps_anatomy_and_noise():
  index = next(i for i in range(200) if not drawn_names(0, "train", i))
  ex = synthetic.generate_example(0, "train", index, 64)
  np.testing.assert_array_equal(ex["image"], synthetic.render_finding_free(0, "train", index, 64))


# ------------------------------------------------------------------------------- report

_KEY_TERMS = {
    "Enlarged Cardiomediastinum": ("mediastin",), "Cardiomegaly": ("cardi", "heart"),
    "Lung Lesion": ("nodule", "mass"), "Lung Opacity": ("opacity", "infiltrate", "density",
                                                        "airspace disease"),
    "Edema": ("edema",), "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia", "infect"), "Atelectasis": ("atelecta",),
    "Pneumothorax": ("pneumothorax",), "Pleural Effusion": ("effusion", "pleural fluid"),
    "Pleural Other": ("pleural thickening",), "Fracture": ("fracture",),
    "Support Devices": ("tube", "catheter", "line", "pacemaker", "pacer"),
}


def test_report_mentions_each_drawn_finding_where_it_was_drawn():
  seen = set()
  for i in range(150):
    pl = synthetic.plan(0, "train", i)
    ex = synthetic.generate_example(0, "train", i, 32)
    for f in pl.findings:
      seen.add(f.name)
      sentence = ex["finding_sentences"][IDX[f.name]]
      assert sentence in ex["findings"], (f.name, sentence)
      low = sentence.lower()
      assert any(t in low for t in _KEY_TERMS[f.name]), (f.name, sentence)
      if f.side is not None:  # laterality matches the drawing
        other = "left" if f.side == "right" else "right"
        assert f.side in low or "lingula" in low, sentence
        if f.name != "Support Devices":
          assert other not in low, sentence
      if f.zone is not None and f.name not in _PLEURAL:
        zone_words = {"upper": ("upper",), "mid": ("mid", "middle", "lingula"),
                      "lower": ("lower", "base")}[f.zone]
        assert any(w in low for w in zone_words), (f.zone, sentence)
      want = features.UNCERTAIN if f.uncertain else 1
      assert ex["labels"][IDX[f.name]] == want
  assert seen == set(DRAWABLE)


_PLEURAL = ("Pleural Effusion", "Pneumothorax", "Pleural Other")


def test_report_negates_some_absent_findings_and_no_drawn_one(examples):
  for ex in examples:
    negated = [P[i] for i in range(len(P)) if ex["labels"][i] == 0]
    assert len(negated) >= 2, ex["report"]
    for name in negated:
      assert not ex["finding_boxes"][IDX[name]].any(), name
    assert re.search(r"\bno\b|\bnot\b|normal|without", ex["findings"].lower())


def test_no_finding_follows_the_chexpert_rule(examples):
  for ex in examples:
    lab = ex["labels"]
    abnormal = any(lab[IDX[p]] in (1, -1) for p in P if p not in ("No Finding",
                                                                  "Support Devices"))
    assert lab[IDX["No Finding"]] == (-2 if abnormal else 1)


def test_sentences_end_with_a_full_stop(examples):
  for ex in examples:
    for sentence in re.split(r"(?<=\.) ", ex["report"]):
      assert sentence.endswith(".") and sentence.count(".") == 1, sentence
      assert sentence[0].isupper(), sentence


# -------------------------------------------------------------------------- phrase bank


def _all_templates():
  for name, bank in phrases.FINDING_PHRASES.items():
    yield from ((name, t) for t in bank)
  for name, bank in phrases.DEVICE_PHRASES.items():
    yield from (("Support Devices", t) for t in bank)
  for name, bank in {**phrases.HEDGED_PHRASES, **phrases.IMPRESSION_PHRASES,
                     **phrases.HEDGED_IMPRESSIONS}.items():
    yield from ((name, t) for t in bank)


def test_phrase_bank_has_enough_wordings():
  assert set(phrases.FINDING_PHRASES) == set(DRAWABLE) - {"Support Devices"}
  for name, bank in phrases.FINDING_PHRASES.items():
    assert len(set(bank)) >= 8, name
  assert set(phrases.DEVICE_PHRASES) == set(findings.DEVICES)
  for kind, bank in phrases.DEVICE_PHRASES.items():
    assert len(set(bank)) >= 8, kind
  for topic, bank in phrases.NORMAL_STATEMENTS.items():
    assert len({text for text, _ in bank}) >= 5, topic
  assert set(phrases.NEGATION_PHRASES) == set(DRAWABLE) - {"Support Devices"}
  for name, bank in phrases.NEGATION_PHRASES.items():
    assert len(set(bank)) >= 5, name
  for name, bank in phrases.IMPRESSION_PHRASES.items():
    assert len(set(bank)) >= 5, name
  for loc, bank in phrases.LOCATIONS.items():
    assert len(bank) >= 3, loc


def test_templates_are_single_sentences():
  texts = [t for _, t in _all_templates()]
  texts += [t for bank in phrases.NEGATION_PHRASES.values() for t in bank]
  texts += [t for bank in phrases.NORMAL_STATEMENTS.values() for t, _ in bank]
  for t in texts:
    assert t.endswith(".") and t.count(".") == 1, t


def _load_phrases(shared_data, kind):
  out = {}
  for path in (shared_data / "chexpert_labeler_rules" / "phrases" / kind).glob("*.txt"):
    name = path.stem.replace("_", " ").title()
    out[name] = [l.strip().lower().replace("_", " ") for l in path.read_text().splitlines()
                 if l.strip()]
  return out


_SAMPLE_CTX = dict(loc="right lower lobe", side="right", size="moderate", adv="moderately",
                   kind="nodule", dim="14 mm", bone="right 6th posterior rib",
                   pt_loc="apical", po_loc="lateral", wall="lateral chest wall", cm=4,
                   entry="internal jugular", tip="in the superior vena cava",
                   leads="in the right atrium", nlead="dual-lead")


def _mentions(text, vocabulary):
  text = " " + text.lower() + " "
  return {name for name, ps in vocabulary.items() if any(p in text for p in ps)}


def test_wordings_use_the_chexpert_labelers_vocabulary(shared_data):
  """A positive wording mentions its own observation and no other one."""
  mention = _load_phrases(shared_data, "mention")
  unmention = _load_phrases(shared_data, "unmention")
  no_finding = {"No Finding": mention.pop("No Finding")}
  assert set(mention) == set(DRAWABLE)
  for name, template in _all_templates():
    text = template.format(**_SAMPLE_CTX)
    assert _mentions(text, mention) == {name}, (name, text)
    assert not _mentions(text, unmention), text
    if name == "Support Devices":  # device-only studies stay "No Finding"
      assert not _mentions(text, no_finding), text
  for name, bank in phrases.NEGATION_PHRASES.items():
    for text in bank:
      assert _mentions(text, mention) == {name}, (name, text)
  for topic, bank in phrases.NORMAL_STATEMENTS.items():
    for text, tags in bank:
      assert _mentions(text, mention) == set(tags), (topic, text)
      assert not _mentions(text, no_finding), text
  for bank in phrases.LOCATIONS.values():
    for loc in bank:
      assert not _mentions(loc, {**mention, **no_finding}), loc


# ---------------------------------------------------------------------------- prevalence


def test_prevalence_is_roughly_as_designed():
  n = 500
  counts = np.zeros(len(findings.FINDING_COUNT_PROBS))
  per_name = dict.fromkeys(DRAWABLE, 0)
  no_finding = hedged = 0
  for i in range(n):
    pl = synthetic.plan(0, "train", i)
    counts[len(pl.findings)] += 1
    for f in pl.findings:
      per_name[f.name] += 1
      hedged += f.uncertain
    text_rng = example.stream_rng(0, "train", i, example.TEXT)
    rep = report.write_report(text_rng, pl.findings, pl.drawn)
    no_finding += rep.labels[IDX["No Finding"]] == 1
  frac = counts / n
  np.testing.assert_allclose(frac, findings.FINDING_COUNT_PROBS, atol=0.06)
  assert abs(frac[0] - 0.35) < 0.06
  w = np.array([findings.FINDING_WEIGHTS[p] for p in DRAWABLE])
  total = sum(per_name.values())
  expected = w / w.sum() * total
  for (name, got), want in zip(per_name.items(), expected):
    assert 0.5 * want < got < 1.6 * want, (name, got, want)
  assert 0.35 - 0.06 < no_finding / n < 0.5  # normal studies plus device-only ones
  assert 0 < hedged < per_name["Pneumonia"]


# ------------------------------------------------------------------------------ labeler


def test_labeler_agrees_with_the_generators_positives():
  labeler = pytest.importorskip("input_pipeline.labeler")
  lab = labeler.default_labeler()
  agree = total = 0
  for i in range(200):
    pl = synthetic.plan(0, "validation", i)
    text_rng = example.stream_rng(0, "validation", i, example.TEXT)
    rep = report.write_report(text_rng, pl.findings, pl.drawn)
    got = lab.label(features.join_report(rep.findings, rep.impression))
    agree += int(((got == 1) == (rep.labels == 1)).sum())
    total += anatomy.NUM_PATHOLOGIES
  assert agree / total >= 0.9, agree / total
