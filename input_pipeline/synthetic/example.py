"""One synthetic study from (seed, split, index): plan, image, report, boxes and labels.

Four independent random streams are derived from (seed, split, index):
  0 anatomy (geometry, vessel tree), 1 findings, 2 report wording, 3 noise and exposure
(and 4 the view). The image of an example without its findings (`render_finding_free`)
therefore shares anatomy and noise pixel for pixel, which makes "does the finding show?"
testable.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from input_pipeline import features
from input_pipeline.synthetic.findings import CARDIOMEGALY, WIDE_MEDIASTINUM, sample_findings
from input_pipeline.synthetic.geometry import (Geometry, clip_boxes, leaf_boxes,
                                               sample_geometry, with_findings_geometry)
from input_pipeline.synthetic.render import render
from input_pipeline.synthetic.report import write_report
from ssacl_jax import anatomy

ANATOMY, FINDINGS, TEXT, NOISE, VIEW = range(5)  # the random streams


def split_id(split: str) -> int:
  """Stable integer for a split name (crc32; Python's hash() varies between runs)."""
  return zlib.crc32(split.encode("utf-8"))


def stream_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
  return np.random.default_rng([int(seed), split_id(split), int(index), stream])


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything an example is made of, before pixels: geometry and findings."""
  geometry: Geometry          # finding-free anatomy
  drawn: Geometry             # anatomy with cardiomegaly / widening applied
  findings: list


def plan(seed: int, split: str, index: int) -> Plan:
  g = sample_geometry(stream_rng(seed, split, index, ANATOMY))
  findings = sample_findings(stream_rng(seed, split, index, FINDINGS), g)
  by_name = {f.name: f for f in findings}
  cardio = by_name[CARDIOMEGALY].p["factor"] if CARDIOMEGALY in by_name else 1.0
  widen = by_name[WIDE_MEDIASTINUM].p["factor"] if WIDE_MEDIASTINUM in by_name else 1.0
  return Plan(g, with_findings_geometry(g, cardio, widen), findings)


def render_finding_free(seed: int, split: str, index: int, image_size: int = 256) -> np.ndarray:
  """The example's image with no findings: same anatomy, exposure and noise."""
  pl = plan(seed, split, index)
  img, _ = render(pl.geometry, [], image_size, stream_rng(seed, split, index, NOISE))
  return img


def generate_example(seed: int, split: str, index: int, image_size: int = 256) -> dict:
  """One synthetic study in the features.py schema (image as uint8 [S, S, 1])."""
  pl = plan(seed, split, index)
  g = pl.drawn
  img, boxes = render(g, pl.findings, image_size, stream_rng(seed, split, index, NOISE))
  rep = write_report(stream_rng(seed, split, index, TEXT), pl.findings, g)
  finding_boxes = np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32)
  for name, box in boxes.items():
    finding_boxes[anatomy.PATHOLOGY_INDEX[name]] = clip_boxes(np.asarray(box)[None])[0]
  devices = "Support Devices" in {f.name for f in pl.findings}
  view_rng = stream_rng(seed, split, index, VIEW)
  view = "AP" if view_rng.random() < (0.7 if devices else 0.1) else "PA"
  return {
      "image": img,
      "report": features.join_report(rep.findings, rep.impression),
      "findings": rep.findings,
      "impression": rep.impression,
      **features.label_fields(rep.labels),
      "study_id": f"synthetic-{split}-{seed}-{index}",
      "view": view,
      "leaf_boxes": leaf_boxes(g),
      "finding_boxes": finding_boxes,
      "finding_sentences": rep.sentences,
      "has_boxes": np.int8(1),
  }
