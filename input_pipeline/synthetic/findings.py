"""What is drawn where: the findings of one study, sampled from its findings stream."""
from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.synthetic.geometry import SIDES, ZONES, Geometry, Lung, poly_extent
from ssacl_jax import anatomy

CARDIOMEGALY, WIDE_MEDIASTINUM = "Cardiomegaly", "Enlarged Cardiomediastinum"

# P(number of drawn findings = k), k = 0..4: about 35% of studies are normal.
FINDING_COUNT_PROBS = (0.35, 0.30, 0.20, 0.10, 0.05)
# Relative frequency of each drawable observation among abnormal studies.
FINDING_WEIGHTS: dict[str, float] = {
    "Support Devices": 1.5, "Pleural Effusion": 1.3, "Lung Opacity": 1.2,
    "Atelectasis": 1.0, "Cardiomegaly": 1.0, "Edema": 0.8, "Consolidation": 0.8,
    "Pneumonia": 0.8, "Pneumothorax": 0.8, "Lung Lesion": 0.8,
    "Enlarged Cardiomediastinum": 0.6, "Fracture": 0.6, "Pleural Other": 0.5,
}
HEDGED_PNEUMONIA_PROB = 0.2  # drawn pneumonia reported as "possible" (label -1)
DEVICES = ("ett", "cvc", "pacemaker", "ngt")
_DEVICE_WEIGHTS = (0.3, 0.35, 0.2, 0.15)

# Observation groups: the report's FINDINGS section follows them, and pleural findings
# pick their zones first.
PARENCHYMA = ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion", "Atelectasis",
              "Edema")
PLEURA = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
CARDIOMEDIASTINAL = (CARDIOMEGALY, WIDE_MEDIASTINUM)


@dataclasses.dataclass(frozen=True)
class Finding:
  name: str                     # anatomy.PATHOLOGIES entry
  side: str | None = None       # patient side
  zone: str | None = None       # lung zone
  p: dict = dataclasses.field(default_factory=dict)  # drawing and wording parameters
  uncertain: bool = False       # reported with hedged wording (label -1)


def _zone_point(rng, lung: Lung, zone: str, margin: float = 0.22):
  """A point in the zone, in the lateral half of the lung (clear of the heart)."""
  y0, y1 = lung.zones[zone]
  y = rng.uniform(y0 + margin * (y1 - y0), y1 - margin * (y1 - y0))
  xa, xb = poly_extent(lung.outline, y)
  w = xb - xa
  t = rng.uniform(0.2, 0.55)  # fraction of the width in from the lateral wall
  return y, (xa + t * w if lung.side == "right" else xb - t * w)


def _pick_zone(rng, used: set, zones=ZONES, weights=None):
  options = [(i, z) for i in range(2) for z in zones if (i, z) not in used]
  if not options:
    options = [(i, z) for i in range(2) for z in zones]
  w = None
  if weights is not None:
    w = np.array([weights[z] for _, z in options], float)
    w /= w.sum()
  i, z = options[int(rng.choice(len(options), p=w))]
  used.add((i, z))
  return i, z


def _sample_finding(rng, name: str, g: Geometry, used: set) -> Finding:
  u = rng.uniform
  if name == "Lung Opacity":
    i, z = _pick_zone(rng, used)
    cy, cx = _zone_point(rng, g.lungs[i], z)
    blobs = [(u(-0.02, 0.02), u(-0.02, 0.02), u(0.035, 0.055), u(0.03, 0.05))
             for _ in range(int(rng.integers(1, 4)))]
    return Finding(name, SIDES[i], z, dict(c=(cy, cx), blobs=blobs, amp=u(0.16, 0.26)))
  if name == "Consolidation":
    i, z = _pick_zone(rng, used)
    cy, cx = _zone_point(rng, g.lungs[i], z)
    ry, rx = u(0.06, 0.095), u(0.05, 0.08)
    # A dense, irregular (several overlapping lobules) region with air bronchograms.
    lobes = [(u(-0.5, 0.5) * ry, u(-0.5, 0.5) * rx, u(0.6, 0.9) * ry, u(0.6, 0.9) * rx,
              u(-0.8, 0.8)) for _ in range(int(rng.integers(2, 4)))]
    bron = [(u(-0.4, 0.4) * ry, u(-0.4, 0.4) * rx, u(0, np.pi), u(0.02, 0.035))
            for _ in range(int(rng.integers(2, 4)))]
    return Finding(name, SIDES[i], z, dict(c=(cy, cx), r=(ry, rx), angle=u(-0.5, 0.5),
                                           lobes=lobes, amp=u(0.3, 0.42), bron=bron))
  if name == "Pneumonia":
    i, z = _pick_zone(rng, used, weights={"upper": 0.2, "mid": 0.35, "lower": 0.45})
    cy, cx = _zone_point(rng, g.lungs[i], z)
    blobs = [(u(-0.045, 0.045), u(-0.035, 0.035), u(0.015, 0.028), u(0.015, 0.028),
              u(0.6, 1.0)) for _ in range(int(rng.integers(5, 9)))]
    return Finding(name, SIDES[i], z, dict(c=(cy, cx), blobs=blobs, amp=u(0.22, 0.34)),
                   uncertain=bool(rng.random() < HEDGED_PNEUMONIA_PROB))
  if name == "Lung Lesion":
    i, z = _pick_zone(rng, used)
    cy, cx = _zone_point(rng, g.lungs[i], z, margin=0.3)
    mass = rng.random() < 0.35
    r = u(0.045, 0.065) if mass else u(0.017, 0.03)
    return Finding(name, SIDES[i], z, dict(c=(cy, cx), r=r, amp=u(0.26, 0.38), mass=mass))
  if name == "Atelectasis":
    i, z = _pick_zone(rng, used, zones=("mid", "lower"), weights={"mid": 0.3, "lower": 0.7})
    cy, cx = _zone_point(rng, g.lungs[i], z, margin=0.3)
    return Finding(name, SIDES[i], z, dict(c=(cy, cx), r=(u(0.01, 0.016), u(0.06, 0.1)),
                                           angle=u(-0.35, 0.25), amp=u(0.3, 0.4)))
  if name == "Edema":
    return Finding(name, p=dict(amp=u(0.15, 0.3), sig=(u(0.08, 0.11), u(0.07, 0.09)),
                                shift=u(0.02, 0.05)))
  if name == "Pleural Effusion":
    i = int(rng.integers(2))
    used.add((i, "lower"))
    return Finding(name, SIDES[i], "lower", dict(frac=u(0.1, 0.38), men=u(0.04, 0.09),
                                                 amp=u(0.85, 1.0)))
  if name == "Pneumothorax":
    i = int(rng.integers(2))
    used.add((i, "upper"))
    return Finding(name, SIDES[i], "upper", dict(f=u(0.78, 0.92), amp=u(0.1, 0.15),
                                                 line=u(0.1, 0.16)))
  if name == "Pleural Other":
    i = int(rng.integers(2))
    kind = "apical" if rng.random() < 0.4 else "lateral"
    z = "upper" if kind == "apical" else ("upper", "mid")[int(rng.integers(2))]
    used.add((i, z))
    return Finding(name, SIDES[i], z, dict(kind=kind, t=u(0.018, 0.03), amp=u(0.28, 0.38)))
  if name == "Fracture":
    i = int(rng.integers(2))
    common = dict(gap=u(0.014, 0.022), shift=u(1.0, 1.6), amp=u(0.05, 0.08))
    if rng.random() < 0.4:
      return Finding(name, SIDES[i], None, dict(bone="clavicle", u=u(0.35, 0.7), **common))
    return Finding(name, SIDES[i], None, dict(bone="rib", k=int(rng.integers(2, 8)),
                                              u=u(0.55, 0.85), **common))
  if name == "Support Devices":
    n = int(rng.choice(3, p=(0.6, 0.3, 0.1))) + 1
    kinds = rng.choice(len(DEVICES), size=n, replace=False, p=_DEVICE_WEIGHTS)
    return Finding(name, p=dict(devices=[_sample_device(rng, DEVICES[k])
                                         for k in sorted(kinds)]))
  if name == "Cardiomegaly":
    return Finding(name, p=dict(factor=u(1.22, 1.45)))
  if name == "Enlarged Cardiomediastinum":
    return Finding(name, p=dict(factor=u(1.55, 2.0)))
  raise KeyError(name)


def _sample_device(rng, kind: str) -> dict:
  u = rng.uniform
  if kind == "ett":
    return dict(kind=kind, above=u(0.08, 0.16))
  if kind == "cvc":
    entry = ("right internal jugular", "left internal jugular",
             "right subclavian")[int(rng.choice(3, p=(0.7, 0.15, 0.15)))]
    tip = ("svc", "cavoatrial", "ra")[int(rng.choice(3, p=(0.5, 0.35, 0.15)))]
    return dict(kind=kind, entry=entry, tip=tip, jitter=u(-0.01, 0.01, size=3))
  if kind == "pacemaker":
    return dict(kind=kind, side="left" if rng.random() < 0.8 else "right",
                leads=int(rng.integers(1, 3)), dy=u(0.17, 0.23), dx=u(0.2, 0.26))
  return dict(kind=kind, jitter=u(-0.01, 0.01, size=2))


def sample_findings(rng: np.random.Generator, g: Geometry) -> list[Finding]:
  """Number of findings from FINDING_COUNT_PROBS, observations from FINDING_WEIGHTS."""
  k = int(rng.choice(len(FINDING_COUNT_PROBS), p=FINDING_COUNT_PROBS))
  names = list(FINDING_WEIGHTS)
  w = np.array([FINDING_WEIGHTS[n] for n in names])
  chosen = rng.choice(len(names), size=k, replace=False, p=w / w.sum())
  # Pleural findings claim their zones before parenchymal ones pick theirs.
  order = sorted((names[c] for c in chosen),
                 key=lambda n: (n not in PLEURA, anatomy.PATHOLOGY_INDEX[n]))
  used: set = set()
  out = []
  for name in order:
    f = _sample_finding(rng, name, g, used)
    rival = {"Pneumothorax": "Pleural Effusion", "Pleural Effusion": "Pneumothorax"}.get(name)
    if any(x.name == rival and x.side == f.side for x in out):  # one per hemithorax
      f = dataclasses.replace(f, side=SIDES[1 - SIDES.index(f.side)])
    out.append(f)
  return sorted(out, key=lambda f: anatomy.PATHOLOGY_INDEX[f.name])

