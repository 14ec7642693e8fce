"""Downstream builders (NIH ChestX-ray14, RSNA Pneumonia, SIIM-ACR, synthetic_finetune):
fixtures written here (DICOMs with pydicom, the real NIH rows from ../shared/data), built
and read back; RLE against hand-made masks; every user error named."""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import build, features
from helpers import write_dicom
from input_pipeline.builders import downstream, nih_cxr14, synthetic_finetune

tfds.disable_progress_bar()


def records(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


def write_lists(root: pathlib.Path, **lists) -> None:
  for name, ids in lists.items():
    (root / f"{name}_list.txt").write_text("# ids\n" + "\n".join(ids) + "\n")


def gradient(h, w, seed=0) -> np.ndarray:
  return ((np.arange(h)[:, None] * 3 + np.arange(w)[None] * 5 + seed * 40) % 256).astype(np.uint8)


# ----------------------------------------------------------------------------- RLE

def test_rle_decode_matches_a_hand_made_mask():
  # 4 rows x 3 columns; column-major pixel k = column * 4 + row.
  want = np.zeros((4, 3), bool)
  want[0, 0] = want[1, 0] = True          # k = 0, 1
  want[3, 1] = want[0, 2] = True          # k = 7, 8
  # runs (0, 2) and (7, 2); the second offset counts from the end of the first (2): 5.
  np.testing.assert_array_equal(downstream.rle_decode("0 2 5 2", 4, 3), want)
  assert not downstream.rle_decode("-1", 4, 3).any()
  assert not downstream.rle_decode(" -1", 4, 3).any()


def test_rle_decode_rejects_runs_past_the_image_and_odd_lengths():
  with pytest.raises(ValueError, match="past the 4x3 image"):
    downstream.rle_decode("10 3", 4, 3)
  with pytest.raises(ValueError, match="pairs"):
    downstream.rle_decode("1 2 3", 4, 3)


def test_box_mask_counts_pixel_centres():
  mask = downstream.box_mask(np.array([[0.0, 0.5, 0.5, 1.0], [0, 0, 0, 0]]), 4, 4)
  want = np.zeros((4, 4), bool)
  want[:2, 2:] = True
  np.testing.assert_array_equal(mask, want)


# ----------------------------------------------------------------------------- NIH

@pytest.fixture()
def nih_dir(shared_data, tmp_path):
  """The two real NIH images and label rows, plus a drawn third one for the test list."""
  root = tmp_path / "nih"
  images = root / "images_001" / "images"
  images.mkdir(parents=True)
  src = shared_data / "real_cxr" / "nih"
  for name in ("00000001_000.png", "00027426_000.png"):
    shutil.copy(src / name, images / name)
  Image.fromarray(gradient(90, 120)).save(images / "00000003_000.png")
  rows = (src / "nih_labels_Data_Entry_2017_v2020_rows.csv").read_text().splitlines()
  rows.append("00000003_000.png,Effusion|Hernia,0,3,40,F,AP,120,90,0.1,0.1")
  (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
  write_lists(root, train=["00000001_000.png"], val=["00027426_000.png"],
              test=["00000003_000.png"], train_1pct=["00000001_000.png"])
  return root


def test_nih_builds_real_images_with_their_labels(nih_dir, tmp_path):
  b = build.build_dataset("nih_cxr14", str(tmp_path / "data"), str(nih_dir), image_size=64)
  assert {s: b.info.splits[s].num_examples for s in b.info.splits} == {
      "train": 1, "validation": 1, "test": 1, "train_1pct": 1}
  train = records(build.load_split("nih_cxr14", str(tmp_path / "data"), "train", image_size=64))
  (rec,) = train
  assert features.as_text(rec["image_id"]) == "00000001_000.png"
  want = np.zeros(14, np.int8)
  want[nih_cxr14.CLASS_NAMES.index("Cardiomegaly")] = 1
  np.testing.assert_array_equal(rec["labels"], want)
  assert min(rec["image"].shape[:2]) == 64 and rec["image"].std() > 10  # a real radiograph
  assert rec["has_mask"] == 0 and not rec["mask"].any()
  (val,) = records(build.load_split("nih_cxr14", str(tmp_path / "data"), "validation",
                                    image_size=64))
  assert not val["labels"].any()  # No Finding
  (test,) = records(build.load_split("nih_cxr14", str(tmp_path / "data"), "test", image_size=64))
  assert [nih_cxr14.CLASS_NAMES[i] for i in np.flatnonzero(test["labels"])] == [
      "Effusion", "Hernia"]
  assert test["image"].shape == (64, 85, 1)


@pytest.mark.parametrize("change, error, message", [
    (lambda r: (r / "Data_Entry_2017_v2020.csv").unlink(), FileNotFoundError,
     "Data_Entry_2017_v2020.csv"),
    (lambda r: write_lists(r, test=["00009999_000.png"]), ValueError,
     "test list names 1 image.* that Data_Entry_2017_v2020.csv does not have.*00009999_000"),
    (lambda r: (r / "images_001/images/00000003_000.png").unlink(), FileNotFoundError,
     "1 listed image.* no PNG file.*00000003_000.png"),
    (lambda r: (r / "val_list.txt").unlink(), FileNotFoundError, "validation split list"),
    (lambda r: write_lists(r, train_1pct=["00000003_000.png"]), ValueError,
     "train_1pct list names 1 image.* not in the train list"),
    (lambda r: write_lists(r, test=["00000001_000.png"]), ValueError,
     "test image.* also appear in train"),
])
def test_nih_user_errors_are_named(nih_dir, tmp_path, change, error, message):
  change(nih_dir)
  with pytest.raises(error, match=message):
    build.build_dataset("nih_cxr14", str(tmp_path / "data"), str(nih_dir), image_size=32)


def test_nih_unknown_finding_is_named():
  with pytest.raises(ValueError, match="unknown finding 'Pneumonitis'"):
    nih_cxr14.parse_labels("Effusion|Pneumonitis", "row 3")


# ----------------------------------------------------------------------------- RSNA

def rsna_dir(tmp_path) -> pathlib.Path:
  root = tmp_path / "rsna"
  for i, pid in enumerate(("p0", "p1", "p2", "p3")):
    write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", gradient(40, 50, i))
  (root / "stage_2_train_labels.csv").write_text(
      "patientId,x,y,width,height,Target\n"
      "p0,,,,,0\n"
      "p1,10,10,5,5,1\n"
      "p1,20,20,5,5,1\n"
      "p2,,,,,0\n"
      "p3,1,1,5,5,1\n")
  write_lists(root, train=["p0", "p1"], val=["p2"], test=["p3"])
  return root


def test_rsna_builds_dicoms_with_binary_labels(tmp_path):
  root = rsna_dir(tmp_path)
  b = build.build_dataset("rsna_pneumonia", str(tmp_path / "data"), str(root), image_size=20)
  assert sorted(b.info.splits) == ["test", "train", "validation"]
  train = records(build.load_split("rsna_pneumonia", str(tmp_path / "data"), "train",
                                   image_size=20))
  assert [(features.as_text(r["image_id"]), int(r["labels"][0])) for r in train] == [
      ("p0", 0), ("p1", 1)]
  assert train[0]["image"].shape == (20, 25, 1)


def test_rsna_corrupt_dicom_is_named(tmp_path):
  root = rsna_dir(tmp_path)
  (root / "stage_2_train_images" / "p1.dcm").write_bytes(b"not a dicom at all")
  with pytest.raises(Exception, match=r"cannot read image .*p1\.dcm"):
    build.build_dataset("rsna_pneumonia", str(tmp_path / "data"), str(root), image_size=20)


# ----------------------------------------------------------------------------- SIIM

def siim_dir(tmp_path, rle_rows: list[str]) -> pathlib.Path:
  root = tmp_path / "siim"
  for i, image_id in enumerate(("a", "b", "c", "d")):
    write_dicom(root / "dicom-images-train" / f"study{i}" / "series" / f"{image_id}.dcm",
                gradient(8, 6, i))
  (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rle_rows) + "\n")
  write_lists(root, train=["a", "b"], val=["c"], test=["d"])
  return root


def test_siim_unites_mask_rows_and_resizes_with_the_image(tmp_path):
  # 8 rows x 6 columns. Image a: column 0 rows 0-3 (k 0..3) in one row of the CSV and
  # column 5 rows 4-7 (k 44..47) in another; b: no pneumothorax.
  root = siim_dir(tmp_path, ["a, 0 4", "a, 44 4", "b, -1", "c, -1", "d, 0 1"])
  build.build_dataset("siim_acr", str(tmp_path / "data"), str(root), image_size=6)
  train = records(build.load_split("siim_acr", str(tmp_path / "data"), "train", image_size=6))
  a, b = train
  want = np.zeros((8, 6), np.uint8)
  want[0:4, 0] = 255
  want[4:8, 5] = 255
  np.testing.assert_array_equal(a["mask"][..., 0], want)
  assert a["image"].shape == (8, 6, 1) and int(a["labels"][0]) == 1 and a["has_mask"] == 1
  assert not b["mask"].any() and int(b["labels"][0]) == 0 and b["has_mask"] == 1


def test_siim_mask_is_resized_nearest_with_the_image(tmp_path):
  root = siim_dir(tmp_path, ["a, 0 4 4 4", "b, -1", "c, -1", "d, 0 1"])  # rows 0-3, cols 0-1
  build.build_dataset("siim_acr", str(tmp_path / "data"), str(root), image_size=3)
  a = build.load_split("siim_acr", str(tmp_path / "data"), "train", image_size=3)[0]
  assert a["image"].shape == a["mask"].shape == (4, 3, 1)
  assert set(np.unique(a["mask"])) == {0, 255} and a["mask"][:2, 0, 0].all()


def test_siim_rle_that_does_not_fit_is_named(tmp_path):
  root = siim_dir(tmp_path, ["a, 40 20", "b, -1", "c, -1", "d, 0 1"])
  with pytest.raises(Exception, match="siim_acr: mask of a .*past the 8x6 image"):
    build.build_dataset("siim_acr", str(tmp_path / "data"), str(root), image_size=6)


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_finetune_subsets_labels_and_masks(tmp_path):
  from input_pipeline import synthetic
  opts = dict(train_size=200, validation_size=4, test_size=4, image_size=40, seed=3)
  b = build.build_dataset("synthetic_finetune", str(tmp_path), **opts)
  sizes = {s: b.info.splits[s].num_examples for s in b.info.splits}
  assert sizes == {"train": 200, "validation": 4, "test": 4, "train_10pct": 20, "train_1pct": 2}
  one = [features.as_text(r["image_id"]) for r in records(
      build.load_split("synthetic_finetune", str(tmp_path), "train_1pct", **opts))]
  ten = [features.as_text(r["image_id"]) for r in records(
      build.load_split("synthetic_finetune", str(tmp_path), "train_10pct", **opts))]
  assert set(one) <= set(ten) and len(set(ten)) == 20
  index = int(one[0].split("/")[1])
  rec = build.load_split("synthetic_finetune", str(tmp_path), "train", **opts)[index]
  ex = synthetic.generate_example(3, "train", index, 40)
  np.testing.assert_array_equal(rec["labels"], (ex["labels"] == 1).astype(np.int8))
  np.testing.assert_array_equal(rec["image"], ex["image"])
  np.testing.assert_array_equal(rec["mask"][..., 0] > 0,
                                downstream.box_mask(ex["finding_boxes"], 40, 40))
  np.testing.assert_array_equal(
      synthetic_finetune.subset_indices(3, 200, 0.01),
      sorted(int(i.split("/")[1]) for i in one))


def test_split_for_fraction():
  assert downstream.split_for_fraction(0.01) == "train_1pct"
  assert downstream.split_for_fraction(1) == "train"
  with pytest.raises(ValueError, match="0.05 is not one of"):
    downstream.split_for_fraction(0.05)
