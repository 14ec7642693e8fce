"""The one example schema every SS-ACL data set builder writes (SPEC sections 3-4, 7-8).

Builders produce dicts with exactly these keys; `example_features()` is their TFDS
FeaturesDict. Readers (`tfds.data_source`) return numpy: text fields come back as
bytes, decode them with `as_text`.

Fields
  image           grey PNG, short side `image_size` px (aspect kept), uint8 [H, W, 1]
  report          findings + impression, one string ("FINDINGS. IMPRESSION." joined by a space)
  findings        findings section ('' when absent)
  impression      impression section ('' when absent)
  labels          int8 [14], anatomy.PATHOLOGIES order; 1 pos, 0 neg, -1 uncertain, -2 not mentioned
  prompt          anatomy.prompt_text(labels)
  regions         int8 [4], anatomy.REGIONS multi-hot from the positive labels
  study_id        str
  view            str ('PA', 'AP', 'LATERAL', ... ; '' when unknown)
  leaf_boxes      float32 [25, 4], anatomy.LEAVES order, (y0, x0, y1, x1) in [0, 1] of the stored
                  image; all zero when the data set has no boxes (has_boxes = 0)
  finding_boxes   float32 [14, 4], anatomy.PATHOLOGIES order, union box of each drawn finding;
                  zero rows for findings not drawn
  finding_sentences  [14] str: the report sentence that describes each drawn finding ('' otherwise)
  has_boxes       int8 scalar: 1 when leaf_boxes / finding_boxes are real
"""
from __future__ import annotations

import numpy as np

from ssacl_jax import anatomy

# Label values: the CheXpert labeler's.
POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -2


def example_features():
  import tensorflow_datasets as tfds
  f = tfds.features
  return f.FeaturesDict({
      "image": f.Image(shape=(None, None, 1), encoding_format="png"),
      "report": f.Text(),
      "findings": f.Text(),
      "impression": f.Text(),
      "labels": f.Tensor(shape=(anatomy.NUM_PATHOLOGIES,), dtype=np.int8),
      "prompt": f.Text(),
      "regions": f.Tensor(shape=(anatomy.NUM_REGIONS,), dtype=np.int8),
      "study_id": f.Text(),
      "view": f.Text(),
      "leaf_boxes": f.Tensor(shape=(anatomy.NUM_LEAVES, 4), dtype=np.float32),
      "finding_boxes": f.Tensor(shape=(anatomy.NUM_PATHOLOGIES, 4), dtype=np.float32),
      "finding_sentences": f.Sequence(f.Text(), length=anatomy.NUM_PATHOLOGIES),
      "has_boxes": f.Scalar(dtype=np.int8),
  })


def as_text(value) -> str:
  """Text field from a data-source record (bytes) or a python str."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.shape == ():
    return as_text(value.item())
  return str(value)


def label_fields(labels) -> dict:
  """prompt and regions derived from a 14-label vector, as builders store them."""
  labels = np.asarray(labels, np.int8)
  return {
      "labels": labels,
      "prompt": anatomy.prompt_text(labels),
      "regions": anatomy.region_vector(
          anatomy.regions_for_pathologies(anatomy.positive_pathologies(labels))),
  }


def no_boxes() -> dict:
  return {
      "leaf_boxes": np.zeros((anatomy.NUM_LEAVES, 4), np.float32),
      "finding_boxes": np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32),
      "finding_sentences": [""] * anatomy.NUM_PATHOLOGIES,
      "has_boxes": np.int8(0),
  }


def join_report(findings: str, impression: str) -> str:
  return " ".join(s.strip() for s in (findings, impression) if s and s.strip())


# ----------------------------------------------------------------------------------------
# Downstream tasks (fine-tuning the image encoder): one schema for every downstream
# builder (nih_cxr14, rsna_pneumonia, siim_acr, synthetic_finetune).
#   image     grey PNG, short side `image_size` px (aspect kept), uint8 [H, W, 1]
#   mask      grey PNG of the image's size, 255 inside the target (segmentation), all zero
#             where there is none; has_mask says whether the data set annotates masks
#   labels    int8 [C] multi-hot over the builder's CLASS_NAMES (1 positive, 0 negative)
#   image_id  str: the data set's own id (NIH 'Image Index', RSNA patientId, SIIM ImageId)
#   has_mask  int8 scalar


def downstream_features(num_classes: int):
  import tensorflow_datasets as tfds
  f = tfds.features
  return f.FeaturesDict({
      "image": f.Image(shape=(None, None, 1), encoding_format="png"),
      "mask": f.Image(shape=(None, None, 1), encoding_format="png"),
      "labels": f.Tensor(shape=(num_classes,), dtype=np.int8),
      "image_id": f.Text(),
      "has_mask": f.Scalar(dtype=np.int8),
  })


# ----------------------------------------------------------------------------------------
# Phrase grounding sets (ms_cxr): one example per phrase with its boxes.
#   image       grey PNG, short side `image_size` px (aspect kept), uint8 [H, W, 1]
#   phrase      the report phrase (MS-CXR `label_text`)
#   category    the phrase's finding (MS-CXR category name, e.g. 'Pleural Effusion')
#   boxes       float32 [K, 4], (y0, x0, y1, x1) in [0, 1] of the image: every box drawn for
#               the phrase (a phrase may name several regions, e.g. bilateral effusions)
#   study_id    str: the MIMIC-CXR study (from the image path), else the image path
#   image_path  str: the image's path as the annotation file gives it


def phrase_grounding_features():
  import tensorflow_datasets as tfds
  f = tfds.features
  return f.FeaturesDict({
      "image": f.Image(shape=(None, None, 1), encoding_format="png"),
      "phrase": f.Text(),
      "category": f.Text(),
      "boxes": f.Tensor(shape=(None, 4), dtype=np.float32),
      "study_id": f.Text(),
      "image_path": f.Text(),
  })
