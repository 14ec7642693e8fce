"""Deterministic synthetic frontal chest radiographs with reports (SPEC section 8).

`generate_example(seed, split, index)` draws one grey PA/AP-like radiograph, writes its
report from a phrase bank, and returns it in the `features.py` schema with a box for every
anatomy leaf and for every drawn finding. Everything follows from (seed, split, index)
alone, so any index is valid and data sets of any size need no storage to stay
reproducible.

The modules, in the order an example is made:
  geometry  the anatomy (lungs, heart and mediastinum, airway, bones, vessels)
  findings  what is drawn where, and how often
  render    the rasteriser
  phrases   the report writer's phrase bank
  report    FINDINGS, IMPRESSION and the labels read off them
  example   the random streams and the example itself
"""
from input_pipeline.synthetic.example import Plan, generate_example, plan, render_finding_free

__all__ = ["Plan", "generate_example", "plan", "render_finding_free"]
