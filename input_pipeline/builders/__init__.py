"""The SS-ACL data set builders, by name (SPEC sections 7-8).

Importing this package registers every builder with TFDS. Each writes the one example
schema of `input_pipeline.features` in ArrayRecord files; none downloads anything.

  synthetic_cxr  built-in synthetic radiographs (no input needed; the default)
  mimic_cxr      MIMIC-CXR-JPG 2.x from a manual dir
  iu_xray        IU X-Ray: Open-i reports archive + PNGs, or annotation.json + images/
  release_csv    the release's split CSVs + image folder
"""
from __future__ import annotations

from input_pipeline.builders.iu_xray import IuXray
from input_pipeline.builders.mimic_cxr import MimicCxr
from input_pipeline.builders.release_csv import ReleaseCsv
from input_pipeline.builders.synthetic_cxr import SyntheticCxr

BUILDERS = {cls.name: cls for cls in (SyntheticCxr, MimicCxr, IuXray, ReleaseCsv)}


def get_builder_class(name: str):
  """The builder class registered under `name` (e.g. 'synthetic_cxr')."""
  if name not in BUILDERS:
    raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(BUILDERS))}")
  return BUILDERS[name]
