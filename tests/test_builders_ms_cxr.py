"""MS-CXR phrase grounding: the ms_cxr builder over an MS-CXR-format fixture of synthetic
images, and `--mode eval` with eval.dataset=ms_cxr on the tiny trained workdir."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from input_pipeline import build, features, synthetic, transforms
from ssacl_jax import anatomy, evaluators, inference
from ssacl_jax.evaluators import _phrase_grounding
from ssacl_jax.evaluation import grounding
from helpers import config_for

CATEGORIES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
              "Pleural Effusion", "Pneumonia", "Pneumothorax"]
# Stored non-square, as radiographs are: boxes must follow each axis's own scale.
WIDTH, HEIGHT = 60, 48
# A second box for the first phrase of the first image, in original pixels [x, y, w, h].
EXTRA_BOX = [6, 4.8, 18, 14.4]
IMAGE_PATH = "files/p10/p10000000/s5000000{i}/dicom{i}.jpg"


def ms_cxr_json(indices=(0, 4, 5, 7)):
  """MS-CXR-format annotations of synthetic test examples: a phrase per drawn finding of
  the 8 categories (its report sentence), its box in pixels of a WIDTH x HEIGHT image."""
  images, annotations = [], []
  for image_id, i in enumerate(indices, start=1):
    ex = synthetic.generate_example(0, "test", i, 48)
    images.append({"id": image_id, "path": IMAGE_PATH.format(i=i), "width": WIDTH,
                   "height": HEIGHT})
    for j, name in enumerate(anatomy.PATHOLOGIES):
      if name in CATEGORIES and ex["finding_boxes"][j].any():
        y0, x0, y1, x1 = ex["finding_boxes"][j].astype(float)
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": CATEGORIES.index(name) + 1,
                            "bbox": [x0 * WIDTH, y0 * HEIGHT, (x1 - x0) * WIDTH, (y1 - y0) * HEIGHT],
                            "label_text": ex["finding_sentences"][j]})
  annotations.append(dict(annotations[0], id=len(annotations) + 1, bbox=EXTRA_BOX))
  categories = [{"id": k + 1, "name": n} for k, n in enumerate(CATEGORIES)]
  return {"images": images, "annotations": annotations, "categories": categories}


def write_fixture(root: pathlib.Path, data: dict, leave_out: str = "") -> pathlib.Path:
  """The JSON at root/ms_cxr.json and its images (but `leave_out`) under root/mimic/."""
  for image in data["images"]:
    if image["path"] == leave_out:
      continue
    i = int(image["path"][-5])
    path = root / "mimic" / image["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = synthetic.generate_example(0, "test", i, 48)["image"][..., 0]
    Image.fromarray(grey).resize((WIDTH, HEIGHT)).save(path, quality=95)
  (root / "ms_cxr.json").write_text(json.dumps(data))
  return root / "ms_cxr.json"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("ms_cxr")
  return root, write_fixture(root, ms_cxr_json())


def test_builder_stores_phrases_with_boxes_scaled_like_the_image(fixture_dir, tmp_path):
  root, annotations = fixture_dir
  build.build_dataset("ms_cxr", str(tmp_path), str(root / "mimic"), annotations=str(annotations),
                      image_size=32)
  source = build.load_split("ms_cxr", str(tmp_path), "test", annotations=str(annotations),
                            image_size=32)
  data = json.loads(annotations.read_text())
  assert len(source) == len(data["annotations"]) - 1  # the extra box joins its phrase
  first = source[0]
  assert features.as_text(first["category"]) == "Cardiomegaly"
  assert features.as_text(first["phrase"]) == "There is severe cardiomegaly."
  assert features.as_text(first["study_id"]) == "50000000"
  assert first["image"].shape == (32, 40, 1)  # short side 32, aspect 60:48 kept
  # [x, y, w, h] = [6, 4.8, 18, 14.4] of a 60 x 48 image, by hand: (y0, x0, y1, x1)
  np.testing.assert_allclose(first["boxes"][1], [0.1, 0.1, 0.4, 0.4], atol=1e-6)
  x, y, w, h = data["annotations"][0]["bbox"]
  np.testing.assert_allclose(first["boxes"][0], [y / 48, x / 60, (y + h) / 48, (x + w) / 60],
                             atol=1e-6)
  # On the 16 x 16 model input, (0.1, 0.1, 0.4, 0.4) covers pixels 1.6..6.4 on each axis.
  model_boxes = transforms.resize_boxes(first["boxes"], first["image"].shape[:2], 16)
  mask = grounding.boxes_to_mask(model_boxes[1:], (16, 16))
  want = np.zeros((16, 16), bool)
  want[1:7, 1:7] = True
  np.testing.assert_array_equal(mask, want)


def build_fixture(root, data, leave_out=""):
  path = write_fixture(root, data, leave_out)
  build.build_dataset("ms_cxr", str(root / "data"), str(root / "mimic"), annotations=str(path))


def test_missing_image_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"1 image\(s\).*s50000000/dicom0\.jpg"):
    build_fixture(tmp_path, ms_cxr_json((0, 4)), leave_out=IMAGE_PATH.format(i=0))


def test_box_outside_its_image_is_named(tmp_path):
  data = ms_cxr_json((0,))
  data["annotations"][1]["bbox"] = [50, 10, 20, 10]  # x + w = 70 > 60
  with pytest.raises(ValueError, match=r"annotation 2 .*dicom0\.jpg.*outside its 60x48 image"):
    build_fixture(tmp_path, data)


def test_unknown_category_is_named(tmp_path):
  data = ms_cxr_json((0,))
  data["annotations"][0]["category_id"] = 42
  with pytest.raises(ValueError, match="annotation 1 has unknown category id 42"):
    build_fixture(tmp_path, data)


def test_phrase_grounding_eval_scores_each_phrase_with_both_maps(uninterrupted, tiny_data_dir,
                                                                  fixture_dir, monkeypatch):
  root, annotations = fixture_dir
  restored, restore = [], inference.restore  # the eval's model, kept to recompute a phrase
  monkeypatch.setattr(inference, "restore", lambda *a, **k: restored.append(restore(*a, **k))
                      or restored[0])
  config = config_for(tiny_data_dir)
  config.eval.dataset = "ms_cxr"
  config.eval.builder.annotations = str(annotations)
  config.eval.manual_dir = str(root / "mimic")
  config.eval.batch_size = 8
  metrics = evaluators.evaluate_workdir(config, str(uninterrupted))
  out = uninterrupted / "eval" / "ms_cxr" / "test"
  saved = json.loads((out / "metrics.json").read_text())
  rows = [json.loads(l) for l in (out / "phrases.jsonl").read_text().splitlines()]
  assert saved["examples"] == len(rows) == 8 and saved["protocol"]["dataset"] == "ms_cxr"
  assert saved["phrase_grounding/all/ours/count"] == 8
  assert saved["phrase_grounding/pneumothorax/cls_attention/count"] == 2

  # One phrase recomputed outside the eval: its image through the model with its phrase
  # as the query, the box mask from the JSON's pixels, CNR by its formula.
  r = restored[0]
  source = build.load_split("ms_cxr", tiny_data_dir, "test", annotations=str(annotations))
  record, size, grid = source[0], config.model.image_size, config.model.image_size // config.model.patch
  grey = transforms.load_grey(record["image"])
  image = transforms.normalise(transforms.resize_grey(grey, size), config.model.channels)[None]
  ids, mask = inference.encode_batch(r.tokenizers.text, ["there is severe cardiomegaly"],
                                    config.data.text_len)
  maps = np.asarray(inference.jit_method(r, _phrase_grounding.phrase_and_cls_maps)(image, ids, mask))[0]
  data = json.loads(annotations.read_text())
  box_mask = np.zeros((size, size), bool)
  for ann in (data["annotations"][0], data["annotations"][-1]):
    x, y, w, h = ann["bbox"]
    box_mask[int(np.floor(y / HEIGHT * size)):int(np.ceil((y + h) / HEIGHT * size)),
             int(np.floor(x / WIDTH * size)):int(np.ceil((x + w) / WIDTH * size))] = True
  for row, method in enumerate(_phrase_grounding.PHRASE_METHODS):
    heat = grounding.smooth_and_resize(maps[row].reshape(grid, grid), (size, size),
                                        resize="nearest")
    h = (heat - heat.min()) / (heat.max() - heat.min())
    inside, outside = h[box_mask], h[~box_mask]
    want_cnr = (inside.mean() - outside.mean()) / np.sqrt(inside.var() + outside.var())
    np.testing.assert_allclose(rows[0][method]["cnr"], want_cnr, rtol=1e-4)
    assert rows[0][method]["miou"] == pytest.approx(grounding.miou(heat, box_mask), abs=1e-9)
    assert rows[0][method]["pointing_game"] == grounding.pointing_game(heat, box_mask)
  assert rows[0]["ours"]["cnr"] != rows[0]["cls_attention"]["cnr"]

  # Category means are the means of their phrases' scores.
  effusion = [r["ours"]["miou"] for r in rows if r["category"] == "Pleural Effusion"]
  assert metrics["phrase_grounding/pleural_effusion/ours/miou"] == pytest.approx(np.mean(effusion))
  assert metrics["phrase_grounding/all/cls_attention/pointing_game"] == pytest.approx(
      np.mean([r["cls_attention"]["pointing_game"] for r in rows]))


def test_category_means_count_each_phrase_once_and_skip_undefined_cnr():
  categories = ["Edema", "Pleural Effusion", "Edema"]
  scores = {"ours": [{"cnr": 1.0, "miou": 0.2, "pointing_game": 1.0},
                     {"cnr": float("nan"), "miou": 0.4, "pointing_game": 0.0},
                     {"cnr": 3.0, "miou": 0.6, "pointing_game": 0.0}]}
  m = grounding.phrase_grounding_metrics(categories, scores)
  assert m["phrase_grounding/edema/ours/cnr"] == 2.0
  assert m["phrase_grounding/edema/ours/pointing_game"] == 0.5
  assert np.isnan(m["phrase_grounding/pleural_effusion/ours/cnr"])
  assert m["phrase_grounding/all/ours/cnr"] == 2.0
  assert m["phrase_grounding/all/ours/miou"] == pytest.approx(0.4)
  assert (m["phrase_grounding/all/ours/count"], m["phrase_grounding/edema/ours/count"]) == (3, 2)


def test_eval_dataset_must_be_a_phrase_grounding_set():
  from ssacl_jax import config_lib
  config = config_for("data")
  config.eval.dataset = "iu_xray"
  with pytest.raises(config_lib.ConfigError, match="eval.dataset 'iu_xray' must be.*ms_cxr"):
    config_lib.validate(config)
