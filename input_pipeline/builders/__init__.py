"""The SS-ACL data set builders, by name (SPEC sections 7-8).

Importing this package registers every builder with TFDS. Each writes the one example
schema of `input_pipeline.features` in ArrayRecord files; none downloads anything.

  synthetic_cxr  built-in synthetic radiographs (no input needed; the default)
  mimic_cxr      MIMIC-CXR-JPG 2.x from a manual dir
  iu_xray        IU X-Ray: Open-i reports archive + PNGs, or annotation.json + images/
  release_csv    the release's split CSVs + image folder

Phrase grounding sets write `features.phrase_grounding_features` (scored only):
  ms_cxr         MS-CXR phrases and boxes over MIMIC-CXR-JPG images

Downstream (fine-tuning) sets write the schema of `features.downstream_features`:
  nih_cxr14          NIH ChestX-ray14: 14 findings, PNG folders + split lists
  rsna_pneumonia     RSNA Pneumonia (stage 2): binary, DICOM + split lists
  siim_acr           SIIM-ACR Pneumothorax: masks from RLE, DICOM + split lists
  synthetic_finetune the synthetic radiographs with finding labels and box masks
"""
from __future__ import annotations

from input_pipeline.builders.iu_xray import IuXray
from input_pipeline.builders.mimic_cxr import MimicCxr
from input_pipeline.builders.ms_cxr import MsCxr
from input_pipeline.builders.nih_cxr14 import NihCxr14
from input_pipeline.builders.release_csv import ReleaseCsv
from input_pipeline.builders.rsna_pneumonia import RsnaPneumonia
from input_pipeline.builders.siim_acr import SiimAcr
from input_pipeline.builders.synthetic_cxr import SyntheticCxr
from input_pipeline.builders.synthetic_finetune import SyntheticFinetune

BUILDERS = {cls.name: cls for cls in (SyntheticCxr, MimicCxr, IuXray, ReleaseCsv, NihCxr14,
                                      RsnaPneumonia, SiimAcr, SyntheticFinetune, MsCxr)}
# The fine-tuning sets (features.downstream_features); each has CLASS_NAMES.
DOWNSTREAM = ("nih_cxr14", "rsna_pneumonia", "siim_acr", "synthetic_finetune")
# The phrase grounding sets (features.phrase_grounding_features), scored by --mode eval
# with config.eval.dataset.
PHRASE_GROUNDING = ("ms_cxr",)


def get_builder_class(name: str):
  """The builder class registered under `name` (e.g. 'synthetic_cxr')."""
  if name not in BUILDERS:
    raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(BUILDERS))}")
  return BUILDERS[name]
