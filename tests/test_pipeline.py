"""Input pipeline: transforms, bad records, Grain determinism/resume/sharding, eval
padding, global arrays, and an array_record source written by a tiny TFDS builder."""
from __future__ import annotations

import io
import logging

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from PIL import Image

from input_pipeline import bad_records, features, pipeline, tokenizers as T, transforms as X
from ssacl_jax import anatomy

SENTENCES = [
    "The heart is normal in size", "Left lower lobe opacity", "No pleural effusion",
    "Small right pleural effusion", "Mild cardiomegaly", "No pneumothorax",
    "Stable left basilar atelectasis", "The right lung is clear",
]
S = 32  # model image size in these tests


def make_report(i: int) -> str:
  k = 2 + i % 3
  return " ".join(SENTENCES[(i + j) % len(SENTENCES)] + "." for j in range(k))


def make_grey(i: int, h: int = 40, w: int = 36) -> np.ndarray:
  """uint8 [h, w]: a left-to-right ramp from 0 to 255 plus a bright block on the left."""
  y, x = np.mgrid[:h, :w]
  img = (x * 255.0 / (w - 1)).astype(np.float64)
  img[5 + i % 7:15 + i % 7, 2:9] = 255.0
  return np.round(img).astype(np.uint8)


def make_record(i: int, image=None, report=None, study_id=None) -> dict:
  labels = np.full(anatomy.NUM_PATHOLOGIES, -2, np.int8)
  labels[i % anatomy.NUM_PATHOLOGIES] = 1
  return {
      "image": make_grey(i)[..., None] if image is None else image,
      "report": make_report(i).encode() if report is None else report,
      "study_id": (study_id or f"s{i:03d}").encode(),
      **features.label_fields(labels),
      "leaf_boxes": np.full((anatomy.NUM_LEAVES, 4), 0.25, np.float32),
      "finding_boxes": np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32),
      "has_boxes": np.int8(1),
  }


def make_config(**data) -> ml_collections.ConfigDict:
  d = dict(image_size=S, channels=3, text_len=16, report_len=20, prompt_len=6,
           decoder_len=28, prompt_prob=0.5, flip_prob=0.0, affine_degrees=20.0,
           affine_scale=(0.8, 1.2), max_skip_fraction=0.01, skip_check_min_records=200,
           shuffle_seed=0, num_workers=0, prefetch_buffer=2)
  d.update(data)
  return ml_collections.ConfigDict({"data": d, "train": {"global_batch_size": 4},
                                    "eval": {"batch_size": 4}})


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  reports = [make_report(i) for i in range(24)]
  text = T.train_sentencepiece([r.lower() for r in reports], str(d / "text"), 300, "text")
  dec = T.train_sentencepiece(reports, str(d / "dec"), 300, "decoder")
  return T.TokenizerPair(T.load_tokenizer(text), T.load_tokenizer(dec))


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------------------- images


def png_bytes(array, mode=None, palette=None) -> bytes:
  img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
  if palette is not None:
    img.putpalette(palette)
  out = io.BytesIO()
  img.save(out, format="PNG")
  return out.getvalue()


def dicom_bytes(pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0) -> bytes:
  import pydicom
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta, ds.preamble = meta, b"\0" * 128
  ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelData = np.asarray(pixels, "<u2").tobytes()
  out = io.BytesIO()
  pydicom.dcmwrite(out, ds, enforce_file_format=True)
  return out.getvalue()


G8 = make_grey(0)            # spans 0..255
UNIT = G8 / 255.0            # what every lossless encoding of it must decode to
G12 = G8.astype(np.uint16) * 16  # 12-bit data in 16-bit storage, 0..4080
GOOD_FILES = {
    "png8": (png_bytes(G8), UNIT),
    "png16": (png_bytes(G12), UNIT),
    "rgba": (png_bytes(np.stack([G8, G8, G8, np.full_like(G8, 255)], -1)), UNIT),
    "rgba_half_alpha": (png_bytes(np.stack([G8, G8, G8, np.full_like(G8, 51)], -1)),
                        UNIT * 0.2),
    "palette": (png_bytes(G8, mode="P", palette=[v for g in range(256) for v in (g, g, g)]),
                UNIT),
    "rgb": (png_bytes(np.stack([G8] * 3, -1)), UNIT),
    "dicom_mono2": (dicom_bytes(G12), UNIT),
    "dicom_mono1": (dicom_bytes(G12, "MONOCHROME1"), 1.0 - UNIT),
    "dicom_negative_slope": (dicom_bytes(G12, slope=-1.0, intercept=4095.0), 1.0 - UNIT),
}
BAD_FILES = {
    "zero": (b"", "zero bytes"),
    "truncated": (GOOD_FILES["png8"][0][:len(GOOD_FILES["png8"][0]) // 2], "unreadable"),
    "garbage": (b"this is not an image" * 10, "unreadable"),
    "truncated_dicom": (GOOD_FILES["dicom_mono2"][0][:400], "DICOM"),
}


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_decode_image_bytes_converts(name):
  data, expected = GOOD_FILES[name]
  out = X.decode_image_bytes(data)
  assert out.dtype == np.float32 and out.shape == G8.shape
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_decode_jpeg():
  out = io.BytesIO()
  Image.fromarray(G8).save(out, format="JPEG", quality=95)
  np.testing.assert_allclose(X.decode_image_bytes(out.getvalue()), UNIT, atol=0.06)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_decode_image_bytes_rejects(name):
  data, message = BAD_FILES[name]
  with pytest.raises(X.BadRecord, match=message):
    X.decode_image_bytes(data)


def test_to_grey_float_layouts():
  np.testing.assert_allclose(X.to_grey_float(G8[..., None]), UNIT, atol=1e-7)
  np.testing.assert_allclose(X.to_grey_float(G12), UNIT, atol=1e-7)
  np.testing.assert_allclose(X.to_grey_float(np.stack([G8] * 3, -1)), UNIT, atol=1e-6)
  la = np.stack([G8, np.full_like(G8, 255)], -1)
  np.testing.assert_allclose(X.to_grey_float(la), UNIT, atol=1e-7)
  np.testing.assert_array_equal(X.to_grey_float(G8 > 100), (G8 > 100).astype(np.float32))
  np.testing.assert_allclose(X.to_grey_float(UNIT * 2 - 0.5), np.clip(UNIT * 2 - 0.5, 0, 1),
                             atol=1e-7)
  assert X.to_grey_float(np.full((4, 4), 7, np.uint16)).max() == 0.0  # flat 16-bit
  for bad in (np.zeros((2, 3, 5), np.uint8), np.zeros((0, 4), np.uint8),
              np.full((2, 2), np.nan)):
    with pytest.raises(X.BadRecord):
      X.to_grey_float(bad)


def test_resize_affine_normalise():
  grey = X.to_grey_float(G8)
  small = X.resize_grey(grey, 24)
  assert small.shape == (24, 24) and 0.0 <= small.min() and small.max() <= 1.0
  sq = np.random.default_rng(0).random((16, 16)).astype(np.float32)
  np.testing.assert_allclose(X.affine_grey(sq, 0.0, 1.0), sq, atol=1e-6)
  # 90 degrees about the centre maps pixel centres onto pixel centres: exact, and
  # counter-clockwise like np.rot90.
  np.testing.assert_allclose(X.affine_grey(sq, 90.0, 1.0), np.rot90(sq), atol=1e-5)
  # Scale 2 about the centre: the centre 8x8 grows to fill the image.
  ramp = np.tile(np.arange(16, dtype=np.float32) / 15, (16, 1))
  zoomed = X.affine_grey(ramp, 0.0, 2.0)
  assert zoomed[8, 0] > 0.2 and zoomed[8, 15] < 0.8
  # Nearest-neighbour (torchvision's default, the release's): no value is interpolated.
  turned = X.affine_grey(sq, 13.0, 1.1)
  assert set(np.unique(turned)) <= set(np.unique(sq)) | {0.0}
  assert np.count_nonzero(turned != 0) > 0.8 * sq.size
  x = X.normalise(np.array([[X.MEAN, 1.0]], np.float32), 3)
  assert x.shape == (1, 2, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, :, 0], [0.0, (1 - 0.4978) / 0.2449], atol=1e-6)
  assert np.all(x[..., 0] == x[..., 2])
  rng = np.random.default_rng(0)
  draws = [X.sample_affine(rng, 20.0, (0.8, 1.2)) for _ in range(200)]
  assert all(-20 <= a <= 20 and 0.8 <= s <= 1.2 for a, s in draws)
  assert X.sample_affine(rng, 0.0, (1.0, 1.0)) == (0.0, 1.0)


# ---------------------------------------------------------------------------- flip


def test_swap_left_right_keeps_case_and_words():
  assert (X.swap_left_right("Left lung, RIGHT apex, left-sided effusion; leftover rights.")
          == "Right lung, LEFT apex, right-sided effusion; leftover rights.")


def test_leaf_flip_permutation():
  perm = X.leaf_flip_permutation()
  np.testing.assert_array_equal(perm[perm], np.arange(anatomy.NUM_LEAVES))
  idx = anatomy.LEAF_INDEX
  assert perm[idx["left upper lung zone"]] == idx["right upper lung zone"]
  assert perm[idx["right hemidiaphragm"]] == idx["left hemidiaphragm"]
  assert perm[idx["left clavicle"]] == idx["right clavicle"]
  for same in ("spine", "right atrium", "trachea", "abdomen"):
    assert perm[idx[same]] == idx[same]


def test_flip_example_consistent():
  grey = np.zeros((20, 20), np.float32)
  grey[4:10, 2:8] = 1.0                      # a finding on the image's left side
  box = np.array([4 / 20, 2 / 20, 10 / 20, 8 / 20], np.float32)
  idx = anatomy.LEAF_INDEX
  leaf_mask = np.zeros(anatomy.NUM_LEAVES, np.int32)
  leaf_mask[idx["right upper lung zone"]] = 1
  leaf_boxes = np.zeros((anatomy.NUM_LEAVES, 4), np.float32)
  leaf_boxes[idx["right upper lung zone"]] = box
  finding_boxes = np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32)
  finding_boxes[3] = box
  out = X.flip_example(grey, "Right upper lobe nodule.", leaf_mask, leaf_boxes,
                       finding_boxes)
  assert out["report"] == "Left upper lobe nodule."
  assert np.flatnonzero(out["leaf_mask"]).tolist() == [idx["left upper lung zone"]]
  mirrored = np.array([4 / 20, 12 / 20, 10 / 20, 18 / 20], np.float32)
  np.testing.assert_allclose(out["leaf_boxes"][idx["left upper lung zone"]], mirrored)
  assert np.count_nonzero(out["leaf_boxes"].any(-1)) == 1   # empty rows stay zero
  np.testing.assert_allclose(out["finding_boxes"][3], mirrored)
  assert np.count_nonzero(out["finding_boxes"].any(-1)) == 1
  # The bright block sits exactly inside the mirrored box.
  ys, xs = np.nonzero(out["grey"])
  assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (4, 12, 10, 18)


def test_pipeline_flip_swaps_image_words_and_leaves(toks):
  record = make_record(1, report=b"Left lower lobe opacity. The right lung is clear.")
  base = dict(affine_degrees=0.0, affine_scale=(1.0, 1.0), prompt_prob=0.0, text_len=64)
  plain = next(pipeline.make_train_iterator([record], make_config(**base), toks,
                                            batch_size=1))
  flipped = next(pipeline.make_train_iterator([record], make_config(flip_prob=1.0, **base),
                                              toks, batch_size=1))
  np.testing.assert_allclose(flipped["image"][0], plain["image"][0][:, ::-1], atol=1e-6)
  expected = X.decoder_sequence("Right lower lobe opacity. The left lung is clear.", "",
                                False, toks.decoder, 28, 6, 20)
  np.testing.assert_array_equal(flipped["dec_ids"][0], expected["dec_ids"])
  np.testing.assert_array_equal(flipped["leaf_mask"][0],
                                plain["leaf_mask"][0][X.leaf_flip_permutation()])
  texts = set(toks.text.decode(flipped["text_ids"][0][1:]).split(". "))
  assert texts <= {"right lower lobe opacity", "the left lung is clear"}


# ---------------------------------------------------------------------------- text


def test_contrastive_text_properties():
  report = "The Heart is normal.  No effusion. . Left lower lobe opacity. Mild edema"
  sentences = {"the heart is normal", "no effusion", "left lower lobe opacity",
               "mild edema"}
  counts, orders = set(), set()
  for seed in range(200):
    out = X.contrastive_text(report, np.random.default_rng(seed))
    parts = out.split(". ")
    assert out == out.lower()
    assert 1 <= len(parts) <= 4 and len(set(parts)) == len(parts)
    assert set(parts) <= sentences
    assert out == X.contrastive_text(report, np.random.default_rng(seed))
    counts.add(len(parts))
    if len(parts) == 4:
      orders.add(out)
  assert counts == {1, 2, 3, 4} and len(orders) > 3
  assert X.contrastive_text(report, None) == ("the heart is normal. no effusion. "
                                              "left lower lobe opacity. mild edema")
  assert X.contrastive_text(" . ..", np.random.default_rng(0)) == ""


class WordTok:
  """One id per word; newline 9, bos 2, pad 0."""
  vocab = {"p": 5, "q": 6, "a": 10, "b": 11, "c": 12}
  pad_id, bos_id, eos_id, newline_id, vocab_size = 0, 2, 3, 9, 13

  def encode(self, text):
    return [self.vocab[w] for w in text.split()]

  def decode(self, ids):
    inv = {v: k for k, v in self.vocab.items()}
    return " ".join(inv[i] for i in ids if i in inv)


def test_decoder_sequence_layout_exact():
  tok = WordTok()
  out = X.decoder_sequence("a b c", "p q", True, tok, decoder_len=8, prompt_len=1,
                           report_len=2)
  assert out["dec_ids"].tolist() == [5, 9, 10, 11, 9, 0, 0, 0]
  assert out["dec_mask"].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
  assert out["dec_loss_mask"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
  assert (out["dec_ids"].dtype, out["dec_mask"].dtype, out["dec_loss_mask"].dtype) == (
      np.int32, np.int32, np.float32)
  out = X.decoder_sequence("a b", "p q", False, tok, 8, 2, 3)
  assert out["dec_ids"].tolist() == [10, 11, 9, 0, 0, 0, 0, 0]
  assert out["dec_loss_mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  out = X.decoder_sequence("a", "  ", True, tok, 8, 2, 3)   # empty prompt: no prefix
  assert out["dec_ids"].tolist() == [10, 9, 0, 0, 0, 0, 0, 0]
  out = X.decoder_sequence("a b", "p q", True, tok, 7, 2, 3)  # exactly full
  assert out["dec_ids"].tolist() == [5, 6, 9, 10, 11, 9, 0]
  with pytest.raises(ValueError, match="decoder_len"):
    X.decoder_sequence("a", "p", True, tok, 6, 2, 3)


def test_text_sequence_exact():
  out = X.text_sequence("a b c", WordTok(), 3)
  assert out["text_ids"].tolist() == [2, 10, 11]
  assert out["text_mask"].tolist() == [1, 1, 1]
  out = X.text_sequence("a", WordTok(), 4)
  assert out["text_ids"].tolist() == [2, 10, 0, 0]
  assert out["text_mask"].tolist() == [1, 1, 0, 0]


# ---------------------------------------------------------------------------- training


def test_train_batch_matches_contract(toks):
  cfg = make_config()
  batch = next(pipeline.make_train_iterator([make_record(i) for i in range(10)], cfg, toks))
  assert set(batch) == set(pipeline.TRAIN_KEYS)
  shapes = {"image": ((4, S, S, 3), np.float32), "text_ids": ((4, 16), np.int32),
            "text_mask": ((4, 16), np.int32), "dec_ids": ((4, 28), np.int32),
            "dec_mask": ((4, 28), np.int32), "dec_loss_mask": ((4, 28), np.float32),
            "leaf_mask": ((4, anatomy.NUM_LEAVES), np.int32),
            "labels": ((4, anatomy.NUM_PATHOLOGIES), np.int8)}
  for key, (shape, dtype) in shapes.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert np.all(batch["text_ids"][:, 0] == toks.text.bos_id)
  assert np.all(batch["text_ids"][batch["text_mask"] == 0] == 0)
  assert np.all(batch["dec_ids"][batch["dec_mask"] == 0] == 0)
  assert np.all(batch["dec_loss_mask"] <= batch["dec_mask"])
  for row in range(4):
    last = np.flatnonzero(batch["dec_mask"][row])[-1]
    assert batch["dec_ids"][row, last] == toks.decoder.newline_id
    assert batch["dec_loss_mask"][row, last] == 1
    np.testing.assert_array_equal(batch["leaf_mask"][row],
                                  anatomy.leaf_mask_from_labels(batch["labels"][row]))


def test_train_image_is_normalised_resized_grey(toks):
  cfg = make_config(affine_degrees=0.0, affine_scale=(1.0, 1.0))
  batch = next(pipeline.make_train_iterator([make_record(3)], cfg, toks, batch_size=2))
  grey = X.resize_grey(X.to_grey_float(make_grey(3)), S)
  expected = (grey - 0.4978) / 0.2449
  for row in range(2):
    for c in range(3):
      np.testing.assert_allclose(batch["image"][row, :, :, c], expected, atol=1e-5)


@pytest.mark.parametrize("read_threads", [0, 2])
def test_restore_continues_exact_stream(toks, read_threads):
  source = [make_record(i) for i in range(10)]
  cfg = make_config(read_threads=read_threads, flip_prob=0.5)
  it = pipeline.make_train_iterator(source, cfg, toks, seed=7)
  first = take(it, 5)        # 20 records: crosses two epoch boundaries
  state = it.get_state()
  after = take(it, 3)
  again = pipeline.make_train_iterator(source, cfg, toks, seed=7)
  again.set_state(state)
  assert_batches_equal(take(again, 3), after)
  fresh = take(pipeline.make_train_iterator(source, cfg, toks, seed=7), 5)
  assert_batches_equal(fresh, first)
  other = next(pipeline.make_train_iterator(source, cfg, toks, seed=8))
  assert not np.array_equal(other["image"], first[0]["image"])


class LoggingSource:
  def __init__(self, records):
    self.records, self.read = records, []

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.records[i]


@pytest.mark.parametrize("process_count", [2, 3])
def test_process_slices_disjoint_and_covering(toks, process_count):
  n = 10
  records = [make_record(i) for i in range(n)]
  seen = []
  for p in range(process_count):
    source = LoggingSource(records)
    it = pipeline.make_train_iterator(source, make_config(), toks, p, process_count,
                                      batch_size=1)
    take(it, len(range(p, n, process_count)))   # this process's share of epoch 0
    assert len(source.read) == len(range(p, n, process_count))
    seen.append(set(source.read))
  assert set().union(*seen) == set(range(n))
  assert sum(len(s) for s in seen) == n
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_train_iterator(records, make_config(), toks, 0, 3)


def bad_and_converted_records():
  """(records, expected bad study ids) covering every bad-input case."""
  records = [make_record(i) for i in range(8)]
  for name, (data, _) in sorted(GOOD_FILES.items()):
    records.append(make_record(0, image=data, study_id=f"ok-{name}"))
  for name, (data, _) in sorted(BAD_FILES.items()):
    records.append(make_record(1, image=data, study_id=f"bad-{name}"))
  records.append(make_record(2, report=b"", study_id="bad-empty-report"))
  records.append(make_record(2, report=b" \n ", study_id="bad-blank-report"))
  records.append(make_record(2, report=b"Left \xff\xfe opacity.", study_id="bad-not-utf8"))
  records.append(make_record(2, report="Left opacity.", study_id="ok-str-report"))
  bad = {f"bad-{n}" for n in BAD_FILES} | {"bad-empty-report", "bad-blank-report",
                                           "bad-not-utf8"}
  return records, bad


def test_eval_converts_or_skips_every_bad_input(toks, caplog):
  records, bad = bad_and_converted_records()
  cfg = make_config(max_skip_fraction=0.5)
  ds, tracker = pipeline.make_eval_dataset(records, cfg, toks, batch_size=4)
  with caplog.at_level(logging.WARNING):
    batches = list(ds)
  valid = np.concatenate([b["valid"] for b in batches])
  ids = np.concatenate([b["study_id"] for b in batches])
  assert len(valid) == 4 * -(-len(records) // 4)
  assert set(ids[valid]) == {features.as_text(r["study_id"]) for r in records} - bad
  assert (tracker.seen, tracker.skipped) == (len(records), len(bad))
  for i, r in enumerate(records):
    sid = features.as_text(r["study_id"])
    if sid in bad:
      assert f"record {i} (study_id {sid!r})" in caplog.text
  # Converted images equal the plain 8-bit record's (inverted for MONOCHROME1, dimmed for
  # half alpha) after the same resize.
  raw = np.concatenate([b["raw_image"] for b in batches]).astype(np.float64) / 255
  reference = raw[list(ids).index("s000")]
  for name, (_, expected) in GOOD_FILES.items():
    got = raw[list(ids).index(f"ok-{name}")]
    want = X.resize_grey(expected.astype(np.float32), S)
    np.testing.assert_allclose(got, want, atol=1 / 255 + 1e-6, err_msg=name)
    if np.allclose(expected, UNIT):
      np.testing.assert_allclose(got, reference, atol=1 / 255 + 1e-6, err_msg=name)


def test_train_skips_bad_records_and_keeps_batches_full(toks, caplog):
  records, bad = bad_and_converted_records()
  cfg = make_config(max_skip_fraction=0.5)
  ds, tracker = pipeline.make_train_dataset(records, cfg, toks)
  with caplog.at_level(logging.WARNING):
    batches = take(iter(ds), 2 * len(records) // 4)   # about two epochs
  assert all(b["image"].shape[0] == 4 for b in batches)
  assert all(np.isfinite(b["image"]).all() for b in batches)
  assert tracker.skipped >= len(bad)
  assert tracker.seen >= 2 * len(records) - len(bad)
  for sid in bad:   # named once, though met in both epochs
    assert caplog.text.count(f"(study_id {sid!r})") == 1


def test_too_many_bad_records_fails_clearly(toks):
  records = [make_record(i) for i in range(20)]
  records += [make_record(i, image=b"", study_id=f"bad{i}") for i in range(5)]
  cfg = make_config(max_skip_fraction=0.1, skip_check_min_records=10)
  with pytest.raises(bad_records.TooManyBadRecords, match="max_skip_fraction=0.1"):
    take(pipeline.make_train_iterator(records, cfg, toks, batch_size=1), 40)
  # Every record bad: an error, not an endless search for a good one.
  cfg = make_config(skip_check_min_records=10)
  with pytest.raises(bad_records.TooManyBadRecords, match="10 of 10 records"):
    next(pipeline.make_train_iterator(records[20:], cfg, toks, batch_size=1))
  # Tolerated below the threshold (20% bad; after the first epoch the running fraction
  # stays below 10 / 30).
  cfg = make_config(max_skip_fraction=0.4, skip_check_min_records=25)
  assert len(take(pipeline.make_train_iterator(records, cfg, toks), 15)) == 15


def test_config_validation(toks):
  with pytest.raises(ValueError, match="decoder_len"):
    pipeline.make_train_iterator([make_record(0)], make_config(decoder_len=20), toks)


# ---------------------------------------------------------------------------- evaluation


def test_eval_iterator_pads_and_covers(toks):
  records = [make_record(i) for i in range(10)]
  cfg = make_config()
  batches = list(pipeline.make_eval_iterator(records, cfg, toks))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.dtype == bool and valid.tolist() == [True] * 10 + [False] * 2
  ids = np.concatenate([b["study_id"] for b in batches])
  assert ids[:10].tolist() == [f"s{i:03d}" for i in range(10)]
  b = batches[0]
  assert b["raw_image"].shape == (4, S, S) and b["raw_image"].dtype == np.uint8
  assert b["report"][1] == make_report(1)
  assert b["leaf_boxes"].shape == (4, anatomy.NUM_LEAVES, 4)
  assert b["finding_boxes"].shape == (4, anatomy.NUM_PATHOLOGIES, 4)
  assert b["has_boxes"].tolist() == [1, 1, 1, 1]
  for key in pipeline.TRAIN_KEYS:
    assert batches[-1][key].dtype == b[key].dtype and batches[-1][key].shape == b[key].shape
  assert np.all(batches[-1]["dec_mask"][2:] == 0) and np.all(batches[-1]["image"][2:] == 0)
  # No augmentation: the image is the plain resize, and the text the whole report.
  grey = X.resize_grey(X.to_grey_float(make_grey(0)), S)
  np.testing.assert_allclose(b["image"][0, :, :, 0], (grey - 0.4978) / 0.2449, atol=1e-5)
  np.testing.assert_array_equal(b["raw_image"][0], X.to_uint8(grey))
  expected = X.text_sequence(X.contrastive_text(make_report(0), None), toks.text, 16)
  np.testing.assert_array_equal(b["text_ids"][0], expected["text_ids"])
  assert_batches_equal(batches, list(pipeline.make_eval_iterator(records, cfg, toks)))


@pytest.mark.parametrize("process_count", [2, 3])
def test_eval_processes_cover_each_record_once(toks, process_count):
  records = [make_record(i) for i in range(11)]
  all_ids, counts = [], set()
  for p in range(process_count):
    batches = list(pipeline.make_eval_iterator(records, make_config(), toks, p,
                                               process_count, batch_size=2))
    counts.add(len(batches))
    for b in batches:
      all_ids += b["study_id"][b["valid"]].tolist()
  assert len(counts) == 1 == len(set(counts))
  assert sorted(all_ids) == [f"s{i:03d}" for i in range(11)]


# ---------------------------------------------------------------------------- global arrays


def test_make_global_batch_shards_leading_axis(toks):
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  spec = P(("data", "fsdp"))
  local = next(pipeline.make_eval_iterator([make_record(i) for i in range(8)],
                                           make_config(), toks, batch_size=8))
  out = pipeline.make_global_batch(local, mesh, spec)
  assert "study_id" not in out and "report" not in out
  assert set(pipeline.TRAIN_KEYS) <= set(out)
  for key, value in out.items():
    assert isinstance(value, jax.Array)
    assert value.shape == local[key].shape and value.dtype == local[key].dtype, key
    assert value.sharding.spec == spec
    assert len(value.addressable_shards) == 8
    for shard in value.addressable_shards:
      assert shard.data.shape[0] == 1
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
  np.testing.assert_array_equal(np.asarray(out["image"]), local["image"])


# ---------------------------------------------------------------------------- array_record


def test_array_record_source_through_tfds(toks, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyCxr(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=features.example_features())

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(9):
        r = make_record(i, image=png_bytes(make_grey(i)))
        r.update(findings="", impression="", view="PA",
                 finding_sentences=[""] * anatomy.NUM_PATHOLOGIES,
                 report=make_report(i), study_id=f"s{i:03d}")
        if i == 4:
          r["image"] = r["image"][:60]   # a truncated PNG stored in the file
          r["study_id"] = "bad-truncated"
        yield i, r

  builder = TinyCxr(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  assert list(tmp_path.rglob("*.array_record*"))
  source = builder.as_data_source(split="train")
  assert len(source) == 9
  cfg = make_config(max_skip_fraction=0.5)
  ds, tracker = pipeline.make_eval_dataset(source, cfg, toks, batch_size=4)
  batches = list(ds)
  ids = np.concatenate([b["study_id"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  assert sorted(ids[valid]) == [f"s{i:03d}" for i in range(9) if i != 4]
  assert tracker.skipped == 1
  for b in batches:
    for row in np.flatnonzero(b["valid"]):
      i = int(b["study_id"][row][1:])
      grey = X.resize_grey(X.to_grey_float(make_grey(i)), S)
      np.testing.assert_array_equal(b["raw_image"][row], X.to_uint8(grey))
  it = pipeline.make_train_iterator(source, cfg, toks)
  first = take(it, 3)
  state = it.get_state()
  after = take(it, 2)
  again = pipeline.make_train_iterator(source, cfg, toks)
  again.set_state(state)
  assert_batches_equal(take(again, 2), after)
  assert all(b["image"].shape == (4, S, S, 3) for b in first)
