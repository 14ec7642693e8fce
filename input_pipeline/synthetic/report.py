"""The report writer: FINDINGS and IMPRESSION from the phrase bank, and their labels.

Labels follow the CheXpert labeler: 1 positive, 0 explicitly negated, -1 hedged
("possible pneumonia"), -2 not mentioned; No Finding is 1 when nothing but support devices
is positive or uncertain (the labeler's rule), else -2.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline import features
from input_pipeline.synthetic.findings import (CARDIOMEDIASTINAL, CARDIOMEGALY, PARENCHYMA,
                                               PLEURA, WIDE_MEDIASTINUM, Finding)
from input_pipeline.synthetic.geometry import Geometry
from input_pipeline.synthetic.phrases import (DEVICE_PHRASES, FINDING_PHRASES,
                                              HEDGED_IMPRESSIONS, HEDGED_PHRASES,
                                              IMPRESSION_PHRASES, LOCATIONS,
                                              NEGATION_PHRASES, NORMAL_STATEMENTS)
from ssacl_jax import anatomy

_CM_PER_UNIT = 35.0  # one image height of the template is about 35 cm of patient

# Priority of the findings in the IMPRESSION.
_IMPRESSION_PRIORITY = ("Pneumothorax", "Consolidation", "Pneumonia", "Edema",
                        "Pleural Effusion", "Cardiomegaly", "Enlarged Cardiomediastinum",
                        "Lung Lesion", "Lung Opacity", "Atelectasis", "Fracture",
                        "Pleural Other")
_NEGATION_WEIGHTS = {"Pneumothorax": 3.0, "Pleural Effusion": 3.0, "Consolidation": 2.5,
                     "Edema": 2.0, "Pneumonia": 1.5, "Cardiomegaly": 1.0,
                     "Lung Opacity": 1.0, "Atelectasis": 0.7, "Fracture": 0.7,
                     "Lung Lesion": 0.5, "Pleural Other": 0.3,
                     "Enlarged Cardiomediastinum": 0.5}


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _ordinal(n: int) -> str:
  return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _context(rng, f: Finding, g: Geometry) -> dict:
  """Template slots for one finding, consistent with how it was drawn."""
  ctx = {"side": f.side or ""}
  if f.side and f.zone:
    ctx["loc"] = _pick(rng, LOCATIONS[(f.side, f.zone)])
  p = f.p
  if f.name == "Lung Lesion":
    cm = 2 * p["r"] * _CM_PER_UNIT / g.tf[2]
    ctx["kind"] = "mass" if p["mass"] else "nodule"
    ctx["dim"] = f"{round(cm)} cm" if p["mass"] else f"{round(cm * 10)} mm"
  elif f.name == "Edema":
    ctx["size"] = "mild" if p["amp"] < 0.2 else "moderate" if p["amp"] < 0.25 else "severe"
  elif f.name == "Pleural Effusion":
    ctx["size"] = ("small" if p["frac"] < 0.2 else "moderate" if p["frac"] < 0.3
                   else "large")
  elif f.name == "Pneumothorax":
    ctx["size"] = "large" if p["f"] < 0.82 else "moderate" if p["f"] < 0.87 else "small"
    ctx["pt_loc"] = _pick(rng, ("apical", "apicolateral"))
  elif f.name == "Pleural Other":
    ctx["po_loc"] = p["kind"]
    ctx["wall"] = "lung apex" if p["kind"] == "apical" else "lateral chest wall"
  elif f.name == "Fracture":
    if p["bone"] == "clavicle":
      ctx["bone"] = f"{f.side} clavicle"
    else:
      ctx["bone"] = f"{f.side} {_ordinal(p['k'] + 2)} posterior rib"
  elif f.name == "Cardiomegaly":
    size = "mild" if p["factor"] < 1.3 else "moderate" if p["factor"] < 1.38 else "severe"
    ctx["size"], ctx["adv"] = size, size + "ly"
  return ctx


def _device_sentence(rng, dev: dict) -> str:
  kind = dev["kind"]
  ctx = {}
  if kind == "ett":
    ctx["cm"] = max(1, round(dev["above"] * _CM_PER_UNIT))
  elif kind == "cvc":
    side, entry = dev["entry"].split(" ", 1)
    ctx.update(side=side, entry=entry, tip={
        "svc": "in the superior vena cava", "cavoatrial": "at the cavoatrial junction",
        "ra": "in the right atrium"}[dev["tip"]])
  elif kind == "pacemaker":
    ctx.update(side=dev["side"], nlead="single-lead" if dev["leads"] == 1 else "dual-lead",
               leads=("in the right atrium" if dev["leads"] == 1
                      else "in the right atrium and right ventricle"))
  return _cap(_pick(rng, DEVICE_PHRASES[kind]).format(**ctx))


@dataclasses.dataclass
class Report:
  findings: str
  impression: str
  labels: np.ndarray           # int8 [14]
  sentences: list              # [14] str


def write_report(rng: np.random.Generator, findings: list[Finding], g: Geometry) -> Report:
  """FINDINGS and IMPRESSION from the phrase bank; labels read off what was written."""
  by_name = {f.name: f for f in findings}
  ctx = {f.name: _context(rng, f, g) for f in findings}
  labels = np.full(anatomy.NUM_PATHOLOGIES, features.NOT_MENTIONED, np.int8)
  sentences = [""] * anatomy.NUM_PATHOLOGIES
  negated: set[str] = set()
  groups: dict[str, list[str]] = {k: [] for k in ("devices", "lungs", "pleura", "heart",
                                                  "bones")}

  def positive(name, group):
    f = by_name[name]
    bank = HEDGED_PHRASES[name] if f.uncertain else FINDING_PHRASES[name]
    s = _cap(_pick(rng, bank).format(**ctx[name]))
    labels[anatomy.PATHOLOGY_INDEX[name]] = features.UNCERTAIN if f.uncertain else 1
    sentences[anatomy.PATHOLOGY_INDEX[name]] = s
    groups[group].append(s)

  def normal(topic, group):
    text, tags = _pick(rng, NORMAL_STATEMENTS[topic])
    negated.update(tags)
    groups[group].append(text)

  if "Support Devices" in by_name:
    dev = [_device_sentence(rng, d) for d in by_name["Support Devices"].p["devices"]]
    labels[anatomy.PATHOLOGY_INDEX["Support Devices"]] = 1
    sentences[anatomy.PATHOLOGY_INDEX["Support Devices"]] = " ".join(dev)
    groups["devices"] += dev
  for name in PARENCHYMA:
    if name in by_name:
      positive(name, "lungs")
  if not any(n in by_name for n in PARENCHYMA):
    normal("lungs", "lungs")
  for name in PLEURA:
    if name in by_name:
      positive(name, "pleura")
  if not any(n in by_name for n in ("Pleural Effusion", "Pneumothorax")) and rng.random() < 0.7:
    normal("pleura", "pleura")
  for name in CARDIOMEDIASTINAL:
    if name in by_name:
      positive(name, "heart")
  has_cm, has_ec = CARDIOMEGALY in by_name, WIDE_MEDIASTINUM in by_name
  if not has_cm and not has_ec:
    if rng.random() < 0.5:
      normal("cardiomediastinal", "heart")
    else:
      normal("heart", "heart")
      if rng.random() < 0.7:
        normal("mediastinum", "heart")
  elif not has_cm and rng.random() < 0.7:
    normal("heart", "heart")
  elif not has_ec and rng.random() < 0.5:
    normal("mediastinum", "heart")
  if "Fracture" in by_name:
    positive("Fracture", "bones")
  elif rng.random() < 0.6:
    normal("bones", "bones")

  # A few explicit negations of absent observations.
  pool = [n for n in _NEGATION_WEIGHTS if n not in by_name and n not in negated]
  want = max(int(rng.integers(1, 4)), 2 - len(negated))
  if pool and want > 0:
    w = np.array([_NEGATION_WEIGHTS[n] for n in pool])
    picks = rng.choice(len(pool), size=min(want, len(pool)), replace=False, p=w / w.sum())
    group_of = {**{n: "lungs" for n in PARENCHYMA}, **{n: "pleura" for n in PLEURA},
                **{n: "heart" for n in CARDIOMEDIASTINAL}, "Fracture": "bones"}
    for k in sorted(picks):
      name = pool[k]
      groups[group_of[name]].append(_pick(rng, NEGATION_PHRASES[name]))
      negated.add(name)

  order = ["devices", "lungs", "pleura", "heart", "bones"]
  if rng.random() < 0.3:
    order = order[1:] + order[:1]
  findings_text = " ".join(s for k in order for s in groups[k])

  # Impression: the most important abnormalities, or a normal statement.
  abnormal = [n for n in _IMPRESSION_PRIORITY if n in by_name]
  imp = []
  if abnormal:
    for name in abnormal[:int(rng.integers(1, 4))]:
      f = by_name[name]
      bank = HEDGED_IMPRESSIONS[name] if f.uncertain else IMPRESSION_PHRASES[name]
      imp.append(_cap(_pick(rng, bank).format(**ctx[name])))
    if "Support Devices" in by_name and rng.random() < 0.3:
      imp.append(_pick(rng, IMPRESSION_PHRASES["Support Devices"]))
  else:
    if "Support Devices" in by_name and rng.random() < 0.5:
      imp.append(_pick(rng, IMPRESSION_PHRASES["Support Devices"]))
    text, tags = _pick(rng, NORMAL_STATEMENTS["impression"])
    negated.update(tags)
    imp.append(text)

  for name in negated:
    assert name not in by_name, (name, findings_text)
    labels[anatomy.PATHOLOGY_INDEX[name]] = 0
  no_finding = not any(labels[anatomy.PATHOLOGY_INDEX[n]] in (1, features.UNCERTAIN)
                       for n in anatomy.PATHOLOGIES if n not in ("No Finding",
                                                                 "Support Devices"))
  if no_finding:
    labels[anatomy.PATHOLOGY_INDEX["No Finding"]] = 1
  return Report(findings_text, " ".join(imp), labels, sentences)

