"""Data set builders: each layout built from tiny fixtures made here, read back for real."""
from __future__ import annotations

import gzip
import io
import json
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from input_pipeline import build
from input_pipeline import features
from input_pipeline.builders import common
from input_pipeline.builders import iu_xray
from input_pipeline.builders import mimic_cxr
from input_pipeline.builders import release_csv
from helpers import write_dicom
from configs import common as config_common
from ssacl_jax import anatomy

tfds.disable_progress_bar()
P = anatomy.PATHOLOGY_INDEX


def text(v) -> str:
  return features.as_text(v)


def records(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


def draw_cxr(size=(120, 80), seed=0, mode="L") -> Image.Image:
  """A grey chest-like picture: dark lungs on a bright body, a heart blob."""
  w, h = size
  img = Image.new("L", size, 200)
  d = ImageDraw.Draw(img)
  d.ellipse((w * 0.1, h * 0.1, w * 0.45, h * 0.9), fill=40 + seed)
  d.ellipse((w * 0.55, h * 0.1, w * 0.9, h * 0.9), fill=40 + seed)
  d.ellipse((w * 0.4, h * 0.5, w * 0.65, h * 0.85), fill=170)
  return img.convert(mode)


def write_csv_gz(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  lines = [",".join(header)] + [",".join(str(c) for c in r) for r in rows]
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------- image loading

def test_load_grey_resizes_short_side_and_keeps_aspect(tmp_path):
  draw_cxr((300, 200), mode="RGB").save(tmp_path / "a.jpg")
  draw_cxr((100, 250)).save(tmp_path / "b.png")
  assert common.load_grey(tmp_path / "a.jpg", 64).shape == (64, 96, 1)
  assert common.load_grey(tmp_path / "b.png", 64).shape == (160, 64, 1)


def test_load_grey_stretches_16_bit_png(tmp_path):
  arr = np.full((40, 60), 100, np.uint16)
  arr[:, 30:] = 3000
  Image.fromarray(arr).save(tmp_path / "x16.png")
  g = common.load_grey(tmp_path / "x16.png", 40)[..., 0]
  assert g.dtype == np.uint8
  assert g[:, :25].max() == 0 and g[:, 35:].min() == 255


def test_load_grey_reads_dicom_and_inverts_monochrome1(tmp_path):
  arr = np.zeros((40, 60), np.uint16)
  arr[:, 30:] = 4000
  write_dicom(tmp_path / "x.dcm", arr, photometric="MONOCHROME1", bits_stored=12)
  g = common.load_grey(tmp_path / "x.dcm", 20)[..., 0]
  assert g.shape == (20, 30)
  assert g[:, :12].min() == 255 and g[:, -12:].max() == 0  # high values are dark


def test_load_grey_reads_real_radiographs(shared_data):
  paths = sorted(p for p in (shared_data / "real_cxr").rglob("*")
                 if p.suffix.lower() in (".png", ".jpg"))
  assert len(paths) >= 20
  for path in paths:
    g = common.load_grey(path, 128)
    assert g.dtype == np.uint8 and g.shape[-1] == 1 and min(g.shape[:2]) == 128, path
    assert 20 < g.mean() < 235, path


def test_read_png_skips_unreadable_file_and_counts(tmp_path):
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  skips = common.SkipCounter("t", "train")
  assert common.read_png(tmp_path / "bad.jpg", 32, skips) is None
  assert common.read_png(tmp_path / "missing.png", 32, skips) is None
  assert skips.count == 2


# --------------------------------------------------------------------------- configs

def test_config_naming_and_coercion():
  from input_pipeline.builders.synthetic_cxr import SyntheticCxr
  default = SyntheticCxr.BUILDER_CONFIGS[0]
  assert common.make_config(default, seed="0") is default
  cfg = common.make_config(default, train_size="12", image_size=64)
  assert (cfg.train_size, cfg.image_size, cfg.seed) == (12, 64, 0)
  assert cfg.name == "image_size-64.train_size-12"
  views = common.make_config(mimic_cxr.MimicCxr.BUILDER_CONFIGS[0], views="PA,LATERAL")
  assert views.views == ("PA", "LATERAL") and views.name == "views-PA+LATERAL"
  with pytest.raises(ValueError, match="unknown config field.*sizes"):
    common.make_config(default, sizes=3)


def test_split_config_args():
  rest, options = build.split_config_args(
      ["prog", "--dataset=x", "--config.seed=3", "--config.views=PA,AP"])
  assert rest == ["prog", "--dataset=x"]
  assert options == {"seed": "3", "views": "PA,AP"}


def test_hash_split_is_stable_and_roughly_70_10_20():
  splits = [common.hash_split(f"CXR{i}") for i in range(3000)]
  assert common.hash_split("CXR1") == common.hash_split("CXR1")
  frac = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
  assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["validation"] - 0.1) < 0.03
  assert abs(frac["test"] - 0.2) < 0.03


# ------------------------------------------------------------------------- synthetic

SYNTH = dict(train_size=12, validation_size=4, test_size=4, image_size=64)


@pytest.fixture(scope="module")
def synthetic_builds(tmp_path_factory):
  pytest.importorskip("input_pipeline.synthetic")
  a = build.build_dataset("synthetic_cxr", str(tmp_path_factory.mktemp("a")), **SYNTH)
  b = build.build_dataset("synthetic_cxr", str(tmp_path_factory.mktemp("b")), **SYNTH)
  return a, b


def test_synthetic_split_sizes_and_images(synthetic_builds):
  a, _ = synthetic_builds
  assert {s: i.num_examples for s, i in a.info.splits.items()} == {
      "train": 12, "validation": 4, "test": 4}
  src = build.load_split("synthetic_cxr", a.data_dir_root, "validation", **SYNTH)
  assert len(src) == 4
  for ex in records(src):
    assert ex["image"].dtype == np.uint8 and min(ex["image"].shape[:2]) == 64
    assert ex["image"].shape[-1] == 1
    assert text(ex["report"]) and ex["labels"].shape == (anatomy.NUM_PATHOLOGIES,)


def test_synthetic_is_deterministic_and_in_generator_order(synthetic_builds):
  from input_pipeline import synthetic
  a, b = synthetic_builds
  src_a = a.as_data_source(split="train")
  src_b = b.as_data_source(split="train")
  for i in (0, 5, 11):
    assert text(src_a[i]["report"]) == text(src_b[i]["report"])
    np.testing.assert_array_equal(src_a[i]["image"], src_b[i]["image"])
    want = synthetic.generate_example(0, "train", i, 64)
    assert text(src_a[i]["report"]) == want["report"]
    np.testing.assert_array_equal(src_a[i]["image"], want["image"])
    np.testing.assert_array_equal(src_a[i]["labels"], want["labels"])
    np.testing.assert_allclose(src_a[i]["leaf_boxes"], want["leaf_boxes"])


def test_build_reuses_existing_and_options_get_their_own_dir(synthetic_builds, tmp_path):
  a, _ = synthetic_builds
  shard = next(pathlib.Path(a.data_dir).glob("*.array_record*"))
  stamp = shard.stat().st_mtime_ns
  again = build.make_builder("synthetic_cxr", a.data_dir_root, **SYNTH)
  assert again.is_prepared()
  build.build_dataset("synthetic_cxr", a.data_dir_root, **SYNTH)
  assert shard.stat().st_mtime_ns == stamp  # not rewritten
  other = build.make_builder("synthetic_cxr", a.data_dir_root, **SYNTH, seed=1)
  assert not other.is_prepared() and other.data_dir != a.data_dir


def test_load_split_of_unbuilt_data_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m input_pipeline.build"):
    build.load_split("synthetic_cxr", str(tmp_path), "train", **SYNTH)


# ----------------------------------------------------------------------------- MIMIC

MIMIC_REPORTS = {
    "50000001": """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___M with cough.

 COMPARISON:  None.

 FINDINGS:

 The heart is enlarged.  There is a small
 left pleural effusion.

 IMPRESSION:

 Cardiomegaly and small left effusion.
 """,
    "50000002": """ WET READ: ___ 10:15 AM  no pneumothorax
 IMPRESSION:  No acute cardiopulmonary process.
 NOTIFICATION:  Findings discussed with Dr. ___.
 """,
    "50000003": """ FINDINGS:  Lungs are clear.  No effusion.
 IMPRESSION:  Normal chest.""",
    "50000004": """ INDICATION:  follow up.  (no findings or impression section)""",
}
# study -> (subject, split, [(dicom, view)])
MIMIC_STUDIES = {
    "50000001": ("10000001", "train", [("d1", "PA"), ("d2", "LATERAL"), ("dbad", "PA")]),
    "50000002": ("10000001", "validate", [("d3", "AP")]),
    "50000003": ("11000003", "test", [("d4", "PA"), ("d5", "")]),
    "50000004": ("11000003", "train", [("d6", "PA")]),
}


def make_mimic(root: pathlib.Path, chexpert=True) -> pathlib.Path:
  split_rows, meta_rows = [], []
  for study, (subject, split, images) in MIMIC_STUDIES.items():
    folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    folder.mkdir(parents=True)
    for k, (dicom, view) in enumerate(images):
      if dicom == "dbad":
        (folder / f"{dicom}.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
      else:
        draw_cxr((300, 240), seed=k).save(folder / f"{dicom}.jpg", quality=90)
      split_rows.append([dicom, study, subject, split])
      meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, 240, 300])
    report = root / "mimic-cxr-reports" / "files" / f"p{subject[:2]}" / f"p{subject}"
    report.mkdir(parents=True, exist_ok=True)
    (report / f"s{study}.txt").write_text(MIMIC_REPORTS[study])
  write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz",
               ["dicom_id", "study_id", "subject_id", "split"], split_rows)
  write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz",
               ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                "ViewPosition", "Rows", "Columns"], meta_rows)
  if chexpert:
    cols = sorted(anatomy.PATHOLOGIES)  # the real csv orders them alphabetically
    rows = []
    for study, (subject, _, _) in MIMIC_STUDIES.items():
      values = {p: "" for p in cols}
      if study == "50000001":
        values.update({"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0", "Edema": "0.0"})
      else:
        values["No Finding"] = "1.0"
      rows.append([subject, study] + [values[p] for p in cols])
    write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id"] + cols,
                 rows)
  return root


def test_report_sections_parse_mimic_style_headers():
  sec = mimic_cxr.report_sections(MIMIC_REPORTS["50000001"])
  assert sec["EXAMINATION"] == "CHEST (PA AND LAT)"
  assert sec["INDICATION"] == "___M with cough."
  assert sec["FINDINGS"] == "The heart is enlarged. There is a small left pleural effusion."
  assert mimic_cxr.findings_impression(MIMIC_REPORTS["50000002"]) == (
      "", "No acute cardiopulmonary process.")
  assert mimic_cxr.findings_impression("Findings: clear lungs.\nImpression: normal") == (
      "clear lungs.", "normal")
  assert mimic_cxr.findings_impression(MIMIC_REPORTS["50000004"]) == ("", "")
  assert mimic_cxr.findings_impression("") == ("", "")


def test_mimic_builds_frontal_images_with_official_splits_and_labels(tmp_path):
  root = make_mimic(tmp_path / "mimic")
  b = build.build_dataset("mimic_cxr", str(tmp_path / "data"), str(root), image_size=64)
  # train: d1 (PA) only: d2 is lateral, dbad unreadable, d6's report has no sections.
  # test: d4 only (d5 has no view).
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      "train": 1, "validation": 1, "test": 1}
  ex = b.as_data_source(split="train")[0]
  assert text(ex["findings"]) == "The heart is enlarged. There is a small left pleural effusion."
  assert text(ex["impression"]) == "Cardiomegaly and small left effusion."
  assert text(ex["report"]) == text(ex["findings"]) + " " + text(ex["impression"])
  assert (text(ex["study_id"]), text(ex["view"])) == ("50000001", "PA")
  assert ex["image"].shape == (64, 80, 1)
  want = np.full(anatomy.NUM_PATHOLOGIES, -2, np.int8)
  want[[P["Cardiomegaly"], P["Pleural Effusion"], P["Edema"]]] = [1, -1, 0]
  np.testing.assert_array_equal(ex["labels"], want)
  assert text(ex["prompt"]) == "cardiomegaly"
  np.testing.assert_array_equal(ex["regions"], anatomy.region_vector(["mediastinum"]))
  assert ex["has_boxes"] == 0 and not ex["leaf_boxes"].any()
  val = b.as_data_source(split="validation")[0]
  assert (text(val["view"]), text(val["findings"])) == ("AP", "")
  assert text(val["report"]) == "No acute cardiopulmonary process."


def test_mimic_views_option_and_labeler_fallback(tmp_path):
  pytest.importorskip("input_pipeline.labeler")
  from input_pipeline import labeler
  root = make_mimic(tmp_path / "mimic", chexpert=False)
  b = build.build_dataset("mimic_cxr", str(tmp_path / "data"), str(root), image_size=32,
                          views="PA,LATERAL")
  train = records(b.as_data_source(split="train"))
  assert sorted(text(e["view"]) for e in train) == ["LATERAL", "PA"]
  assert "validation" not in b.info.splits  # its only image is AP
  for e in train:
    np.testing.assert_array_equal(e["labels"],
                                  labeler.default_labeler().label(text(e["report"])))


def test_mimic_data_choices_from_the_config_are_recorded_and_prepared_apart(tmp_path):
  """config.data.views / report_sections reach the builder, sit in the prepared set's
  metadata, and another choice is prepared in its own folder (the first one untouched)."""
  from ssacl_jax import data as data_lib
  root = make_mimic(tmp_path / "mimic")
  config = config_common.base_config()
  config.data.dataset, config.data.data_dir = "mimic_cxr", str(tmp_path / "data")
  config.data.manual_dir, config.data.builder = str(root), dict(image_size=32)
  train = data_lib.load_source(config, "train")
  options = data_lib.builder_options(config)
  default = build.make_builder("mimic_cxr", config.data.data_dir, **options)
  assert default.builder_config.name == "image_size-32"  # the default choices add nothing
  assert dict(default.info.metadata) == {"views": ["PA", "AP"],
                                         "report_sections": ["findings", "impression"]}
  assert text(train[0]["report"]) == ("The heart is enlarged. There is a small left pleural "
                                      "effusion. Cardiomegaly and small left effusion.")

  config.data.report_sections = ("impression",)
  config.data.views = ("PA", "LATERAL")
  impressions = records(data_lib.load_source(config, "train"))
  options = data_lib.builder_options(config)
  chosen = build.make_builder("mimic_cxr", config.data.data_dir, **options)
  assert chosen.builder_config.name == "image_size-32.report_sections-impression.views-PA+LATERAL"
  assert dict(chosen.info.metadata) == {"views": ["PA", "LATERAL"],
                                        "report_sections": ["impression"]}
  assert chosen.data_path != default.data_path
  assert sorted((text(e["view"]), text(e["report"])) for e in impressions) == [
      ("LATERAL", "Cardiomegaly and small left effusion."),
      ("PA", "Cardiomegaly and small left effusion.")]
  assert all(text(e["findings"]) == "" for e in impressions)
  config.data.report_sections, config.data.views = ("findings", "impression"), ("PA", "AP")
  again = data_lib.load_source(config, "train")
  assert len(again) == 1 and text(again[0]["report"]) == text(train[0]["report"])
  with pytest.raises(ValueError, match="report_sections .*one or more of findings, impression"):
    build.make_builder("mimic_cxr", config.data.data_dir, report_sections="history").info


def test_mimic_missing_split_csv_is_named(tmp_path):
  root = make_mimic(tmp_path / "mimic")
  (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
  with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv"):
    build.build_dataset("mimic_cxr", str(tmp_path / "data"), str(root))


def test_mimic_missing_reports_are_named(tmp_path):
  root = make_mimic(tmp_path / "mimic")
  for txt in (root / "mimic-cxr-reports").rglob("*.txt"):
    txt.unlink()
  with pytest.raises(FileNotFoundError, match="mimic-cxr-reports/"):
    build.build_dataset("mimic_cxr", str(tmp_path / "data"), str(root))


# ---------------------------------------------------------------------------- IU X-Ray

def openi_xml(uid: str, findings: str | None, impression: str, images: list[str],
              caption: str) -> str:
  def section(label, body):
    if body is None:
      return f'<AbstractText Label="{label}"/>'
    return f'<AbstractText Label="{label}">{body}</AbstractText>'
  parents = "".join(
      f'<parentImage id="{i}"><figureId>F1</figureId><caption>{caption}</caption>'
      f'<panel type="single"><url>/x/{i}.jpg</url></panel></parentImage>' for i in images)
  return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/>'
          f'<MedlineCitation><Article><Abstract>{section("COMPARISON", "None.")}'
          f'{section("INDICATION", "Cough")}{section("FINDINGS", findings)}'
          f'{section("IMPRESSION", impression)}</Abstract></Article></MedlineCitation>'
          f'<MeSH><major>normal</major></MeSH>{parents}</eCitation>')


def ids_covering_splits() -> dict[str, str]:
  """One Open-i style report id per split (the split is a hash of the id)."""
  out = {}
  for n in range(1, 200):
    out.setdefault(common.hash_split(f"CXR{n}"), f"CXR{n}")
  return out


def make_openi(root: pathlib.Path) -> dict:
  ids = ids_covering_splits()
  reports = {
      ids["train"]: ("The heart is normal in size. The lungs are clear.", "Normal chest.",
                     2, "Xray Chest PA and Lateral"),
      ids["validation"]: (None, "No acute disease.", 1, "AP portable chest"),
      ids["test"]: ("Mild cardiomegaly.", "Enlarged heart.", 1, "PA and lateral"),
  }
  (root / "NLMCXR_png").mkdir(parents=True)
  with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as tar:
    for uid, (findings, impression, n_images, caption) in reports.items():
      num = uid[3:]
      images = [f"{uid}_IM-{int(num):04d}-{k + 1}001" for k in range(n_images)]
      for image in images:
        draw_cxr((90, 110)).save(root / "NLMCXR_png" / f"{image}.png")
      data = openi_xml(uid, findings, impression, images, caption).encode()
      info = tarfile.TarInfo(f"ecgen-radiology/{num}.xml")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return ids


def test_parse_openi_archive_reads_every_real_report(shared_data):
  reports = iu_xray.parse_openi_archive(shared_data / "iu_xray" / "NLMCXR_reports.tgz")
  assert len(reports) == 3955
  assert len({r["id"] for r in reports}) == 3955
  assert sum(len(r["images"]) for r in reports) == 7470
  first = reports[0]
  assert first["id"] == "CXR1"
  assert first["images"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
  assert first["findings"].startswith("The cardiac silhouette and mediastinum size are")
  assert first["impression"] == "Normal chest x-XXXX."
  assert sum(bool(r["findings"] or r["impression"]) for r in reports) > 3900


def test_caption_view():
  assert iu_xray.caption_view("Xray Chest PA and Lateral") == ""
  assert iu_xray.caption_view("CHEST 2V FRONTAL/LATERAL") == ""
  assert iu_xray.caption_view("AP portable chest") == "AP"
  assert iu_xray.caption_view("Lateral chest") == "LATERAL"


def test_iu_xray_openi_layout(tmp_path):
  pytest.importorskip("input_pipeline.labeler")
  from input_pipeline import labeler
  ids = make_openi(tmp_path / "iu")
  b = build.build_dataset("iu_xray", str(tmp_path / "data"), str(tmp_path / "iu"),
                          image_size=48)
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      "train": 2, "validation": 1, "test": 1}
  train = records(b.as_data_source(split="train"))
  assert {text(e["study_id"]) for e in train} == {ids["train"]}
  for e in train:
    assert text(e["report"]) == "The heart is normal in size. The lungs are clear. Normal chest."
    assert text(e["view"]) == "" and e["image"].shape == (59, 48, 1)
    np.testing.assert_array_equal(e["labels"], labeler.default_labeler().label(
        text(e["report"])))
  val = b.as_data_source(split="validation")[0]
  assert (text(val["findings"]), text(val["impression"]), text(val["view"])) == (
      "", "No acute disease.", "AP")
  by_name = tfds.data_source("iu_xray/image_size-48", data_dir=str(tmp_path / "data"),
                             split="validation")
  assert text(by_name[0]["report"]) == "No acute disease."


def test_iu_xray_annotation_layout_defines_splits(tmp_path):
  pytest.importorskip("input_pipeline.labeler")
  root = tmp_path / "iu"
  entries = {"train": [], "val": [], "test": []}
  for split, n in (("train", 3), ("val", 1), ("test", 2)):
    for k in range(n):
      sid = f"CXR{split}{k}_IM-00{k}"
      (root / "images" / sid).mkdir(parents=True)
      paths = []
      for v in range(2):
        draw_cxr((64, 64)).save(root / "images" / sid / f"{v}.png")
        paths.append(f"{sid}/{v}.png")
      entries[split].append({"id": sid, "report": f"The lungs are clear {split} {k}.",
                             "image_path": paths, "split": split})
  (root / "annotation.json").write_text(json.dumps(entries))
  b = build.build_dataset("iu_xray", str(tmp_path / "data"), str(root), image_size=32)
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {
      "train": 6, "validation": 2, "test": 4}
  val = records(b.as_data_source(split="validation"))
  assert {text(e["report"]) for e in val} == {"The lungs are clear val 0."}
  assert {text(e["study_id"]) for e in val} == {"CXRval0_IM-000"}


def test_iu_xray_missing_archive_is_named(tmp_path):
  (tmp_path / "iu").mkdir()
  (tmp_path / "iu" / "README").write_text("nothing here")
  with pytest.raises(FileNotFoundError, match="NLMCXR_reports.tgz"):
    build.build_dataset("iu_xray", str(tmp_path / "data"), str(tmp_path / "iu"))


def test_iu_xray_missing_png_folder_is_named(tmp_path):
  make_openi(tmp_path / "iu")
  for png in (tmp_path / "iu" / "NLMCXR_png").iterdir():
    png.unlink()
  (tmp_path / "iu" / "NLMCXR_png").rmdir()
  with pytest.raises(FileNotFoundError, match="NLMCXR_png/"):
    build.build_dataset("iu_xray", str(tmp_path / "data"), str(tmp_path / "iu"))


# ------------------------------------------------------------------------ release CSV

def test_parse_names_and_regions():
  assert release_csv.parse_names('["lungs", "mediastinum"]') == ["lungs", "mediastinum"]
  assert release_csv.parse_names("['abdomen']") == ["abdomen"]
  assert release_csv.parse_names("") == []
  np.testing.assert_array_equal(
      release_csv.regions_from_names(["right lung", "Mediastinum", "spine"]),
      anatomy.region_vector(["lungs", "mediastinum", "skeletal structures"]))
  with pytest.raises(ValueError, match="unknown anatomy 'elbow'"):
    release_csv.regions_from_names(["elbow"])


def write_release_csv(path: pathlib.Path, rows: list[dict]) -> None:
  import csv
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(release_csv.COLUMNS))
    w.writeheader()
    w.writerows(rows)


def test_release_csv_keeps_prompt_and_anatomies(tmp_path):
  pytest.importorskip("input_pipeline.labeler")
  from input_pipeline import labeler
  root = tmp_path / "release"
  (root / "images" / "a").mkdir(parents=True)
  draw_cxr((100, 140)).save(root / "images" / "a" / "1.jpg")
  draw_cxr((100, 140), mode="RGB").save(root / "images" / "a" / "2.png")
  write_release_csv(root / "train.csv", [
      {"image_id": "img1", "image_path": "a/1.jpg",
       "report": "The heart is enlarged.  Small right pleural effusion.",
       "prompt": "cardiomegaly, pleural effusion",
       "anatomies": json.dumps(["mediastinum", "lungs", "abdomen"])},
      {"image_id": "img2", "image_path": "a/2.png", "report": "No acute disease.",
       "prompt": "", "anatomies": "[]"},
      {"image_id": "img3", "image_path": "a/missing.png", "report": "Clear lungs.",
       "prompt": "", "anatomies": "[]"},
  ])
  write_release_csv(root / "val.csv", [
      {"image_id": "img4", "image_path": "a/2.png", "report": "Lungs are clear.",
       "prompt": "", "anatomies": '["lungs"]'}])
  b = build.build_dataset("release_csv", str(tmp_path / "data"), str(root), image_size=40,
                          image_root="images")
  assert {s: i.num_examples for s, i in b.info.splits.items()} == {"train": 2,
                                                                   "validation": 1}
  train = {text(e["study_id"]): e for e in records(b.as_data_source(split="train"))}
  assert set(train) == {"img1", "img2"}  # img3's image is missing: skipped
  e = train["img1"]
  assert text(e["report"]) == "The heart is enlarged. Small right pleural effusion."
  assert text(e["prompt"]) == "cardiomegaly, pleural effusion"
  np.testing.assert_array_equal(
      e["regions"], anatomy.region_vector(["lungs", "mediastinum", "abdomen"]))
  np.testing.assert_array_equal(e["labels"],
                                labeler.default_labeler().label(text(e["report"])))
  assert e["image"].shape == (56, 40, 1)
  assert not train["img2"]["regions"].any()
  val = b.as_data_source(split="validation")[0]
  np.testing.assert_array_equal(val["regions"], anatomy.region_vector(["lungs"]))


def test_release_csv_missing_split_files_are_named(tmp_path):
  (tmp_path / "release").mkdir()
  (tmp_path / "release" / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="train.csv.*val.csv.*test.csv"):
    build.build_dataset("release_csv", str(tmp_path / "data"), str(tmp_path / "release"))


def test_release_csv_missing_column_is_named(tmp_path):
  root = tmp_path / "release"
  root.mkdir()
  (root / "test.csv").write_text("image_id,image_path,report\nx,y.png,z\n")
  with pytest.raises(ValueError, match="test.csv lacks column.*prompt, anatomies"):
    build.build_dataset("release_csv", str(tmp_path / "data"), str(root))
