"""Deterministic synthetic frontal chest radiographs with reports (SPEC section 8).

`generate_example(seed, split, index)` draws one grey PA/AP-like radiograph, writes its
report from a phrase bank, and returns it in the `features.py` schema with a box for every
anatomy leaf and for every drawn finding. Everything follows from (seed, split, index)
alone, so any index is valid and data sets of any size need no storage to stay
reproducible.

Four independent random streams are derived from (seed, split, index):
  0 anatomy (geometry, vessel tree), 1 findings, 2 report wording, 3 noise and exposure.
The image of an example without its findings (`render_finding_free`) therefore shares
anatomy and noise pixel for pixel, which makes "does the finding show?" testable.

Conventions: coordinates are normalised (y, x) in [0, 1], y down. The patient's right is
the image's left, as on a radiograph; "right"/"left" in names and reports are the
patient's. Labels follow the CheXpert labeler: 1 positive, 0 explicitly negated,
-1 hedged ("possible pneumonia"), -2 not mentioned; No Finding is 1 when nothing but
support devices is positive or uncertain (the labeler's rule), else -2.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from input_pipeline import features
from ssacl_jax import anatomy

SIDES = ("right", "left")   # patient sides; index 0 is drawn on the image's left
ZONES = ("upper", "mid", "lower")
_CM_PER_UNIT = 35.0         # one image height of the template is about 35 cm of patient

# ----------------------------------------------------------------------------------------
# What gets drawn: prevalence mix.
# ----------------------------------------------------------------------------------------

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

# ----------------------------------------------------------------------------------------
# Phrase bank. Every wording was checked against the CheXpert labeler's mention phrases
# (tests/test_synthetic.py does it again): a positive sentence mentions its own
# observation and no other one, and avoids hedging words unless it is meant as hedged.
# Placeholders: {loc} lung location, {side} patient side, {size}/{adv} severity,
# {kind} nodule/mass, {dim} its size, {bone}, {pt_loc}, {po_loc}, {wall}, {cm}, {entry},
# {tip}, {leads}, {nlead}.
# ----------------------------------------------------------------------------------------

FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    "Lung Opacity": (
        "There is a patchy opacity in the {loc}.",
        "Hazy opacity in the {loc}.",
        "Ill-defined opacity projects over the {loc}.",
        "Increased opacity is seen in the {loc}.",
        "Focal airspace opacity in the {loc}.",
        "An area of airspace disease is present in the {loc}.",
        "Patchy infiltrate in the {loc}.",
        "Ground-glass opacity in the {loc}.",
        "There is increased density in the {loc}.",
    ),
    "Consolidation": (
        "There is consolidation in the {loc}.",
        "Dense consolidation in the {loc}.",
        "Focal consolidation is present in the {loc}.",
        "{loc} consolidation.",
        "Airspace consolidation in the {loc}.",
        "Consolidation with air bronchograms in the {loc}.",
        "There is a dense area of consolidation in the {loc}.",
        "Lobar consolidation involving the {loc}.",
        "Well-defined consolidation in the {loc}.",
    ),
    "Pneumonia": (
        "{loc} pneumonia.",
        "There is a {loc} pneumonia.",
        "Findings of pneumonia in the {loc}.",
        "Pneumonia in the {loc}.",
        "Focal pneumonia is seen in the {loc}.",
        "Patchy multifocal pneumonia in the {loc}.",
        "Bronchopneumonia in the {loc}.",
        "Infection in the {loc}.",
        "Infectious process in the {loc}.",
    ),
    "Lung Lesion": (
        "There is a {dim} {kind} in the {loc}.",
        "A {dim} {kind} projects over the {loc}.",
        "Well-circumscribed {dim} {kind} in the {loc}.",
        "{kind} in the {loc} measuring {dim}.",
        "A rounded {kind} is present in the {loc}.",
        "Solitary pulmonary {kind} in the {loc}.",
        "There is a {kind} in the {loc}.",
        "A {dim} pulmonary {kind} in the {loc}.",
        "A well-defined {kind} is seen in the {loc}.",
    ),
    "Atelectasis": (
        "Linear atelectasis in the {loc}.",
        "Segmental atelectasis in the {loc}.",
        "Subsegmental atelectasis in the {loc}.",
        "There is discoid atelectasis in the {loc}.",
        "Bandlike atelectasis in the {loc}.",
        "Streaky atelectasis in the {loc}.",
        "Atelectatic changes are seen in the {loc}.",
        "{loc} atelectasis.",
        "Minor atelectasis in the {loc}.",
    ),
    "Edema": (
        "{size} pulmonary edema.",
        "There is {size} pulmonary edema.",
        "{size} interstitial pulmonary edema.",
        "Perihilar pulmonary edema.",
        "Pulmonary vascular congestion with {size} edema.",
        "Findings of {size} pulmonary edema.",
        "{size} bilateral perihilar edema.",
        "There is {size} bilateral pulmonary edema.",
    ),
    "Pneumothorax": (
        "{size} {side} pneumothorax.",
        "There is a {size} {side} pneumothorax.",
        "{size} {side} {pt_loc} pneumothorax.",
        "A {size} {side}-sided pneumothorax is present.",
        "{side} pneumothorax with a visible pleural edge.",
        "There is a {side} {pt_loc} pneumothorax.",
        "{side}-sided pneumothorax, {size} in size.",
        "A {size} pneumothorax is seen on the {side}.",
    ),
    "Pleural Effusion": (
        "{size} {side} pleural effusion.",
        "There is a {size} {side} pleural effusion.",
        "{size} {side}-sided pleural effusion.",
        "A {size} {side} effusion is present.",
        "{side} pleural effusion blunting the costophrenic angle.",
        "{size} {side} pleural fluid collection.",
        "{side} pleural effusion with a meniscus.",
        "There is a {size} layering {side} pleural effusion.",
    ),
    "Pleural Other": (
        "{side} {po_loc} pleural thickening.",
        "There is {side} {po_loc} pleural thickening.",
        "Pleural thickening along the {side} {wall}.",
        "Focal {side} pleural thickening.",
        "Smooth pleural thickening is seen along the {side} {wall}.",
        "Mild {side} pleural thickening.",
        "Chronic {side} {po_loc} pleural thickening.",
        "{side}-sided pleural thickening.",
    ),
    "Fracture": (
        "Acute fracture of the {bone}.",
        "There is a displaced fracture of the {bone}.",
        "{bone} fracture.",
        "Fracture of the {bone} is noted.",
        "A displaced {bone} fracture is seen.",
        "There is an acute {bone} fracture.",
        "Mildly displaced fracture of the {bone}.",
        "Fracture deformity of the {bone}.",
    ),
    "Cardiomegaly": (
        "{size} cardiomegaly.",
        "The heart is {adv} enlarged.",
        "The heart is enlarged.",
        "There is {size} cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "The cardiac silhouette is {adv} enlarged.",
        "{size} enlargement of the cardiac silhouette.",
        "Heart size is enlarged.",
        "Cardiac enlargement is noted.",
    ),
    "Enlarged Cardiomediastinum": (
        "The mediastinum is widened.",
        "Widened mediastinum.",
        "The superior mediastinum is widened.",
        "Widening of the upper mediastinum.",
        "Enlarged cardiomediastinal silhouette.",
        "The mediastinal silhouette is widened.",
        "The mediastinal contour is widened.",
        "Enlarged cardiomediastinum.",
        "Mediastinal contours are widened.",
    ),
}

# Support devices: one sentence per drawn device (finding_sentences joins them).
DEVICE_PHRASES: dict[str, tuple[str, ...]] = {
    "ett": (
        "Endotracheal tube terminates {cm} cm above the carina.",
        "An endotracheal tube is in place with tip {cm} cm above the carina.",
        "The endotracheal tube tip is {cm} cm above the carina.",
        "Endotracheal tube in standard position, {cm} cm above the carina.",
        "Endotracheal tube with tip approximately {cm} cm from the carina.",
        "ET tube ends {cm} cm above the carina.",
        "The patient is intubated with the endotracheal tube {cm} cm above the carina.",
        "Endotracheal tube is appropriately positioned {cm} cm above the carina.",
    ),
    "cvc": (
        "{side} {entry} central venous catheter terminates {tip}.",
        "{side} {entry} catheter with tip {tip}.",
        "A {side} {entry} central line ends {tip}.",
        "{side} {entry} central venous catheter is seen with its tip {tip}.",
        "There is a {side} {entry} venous catheter with the tip {tip}.",
        "{side}-sided central venous catheter terminates {tip}.",
        "The {side} {entry} catheter tip lies {tip}.",
        "{side} {entry} line tip is {tip}.",
    ),
    "pacemaker": (
        "{side}-sided pacemaker with leads {leads}.",
        "A {side} chest wall pacemaker is present with leads {leads}.",
        "{nlead} pacemaker with leads {leads}.",
        "{nlead} pacemaker device overlies the {side} chest wall.",
        "{side} pectoral pacemaker with leads {leads}.",
        "Pacemaker leads terminate {leads}.",
        "A {nlead} cardiac pacemaker is seen in the {side} chest wall.",
        "Pacer generator in the {side} chest wall with leads {leads}.",
    ),
    "ngt": (
        "Nasogastric tube courses below the diaphragm with tip in the stomach.",
        "An enteric tube terminates in the stomach.",
        "Nasogastric tube tip is in the stomach.",
        "The nasogastric tube extends into the stomach.",
        "Enteric tube with tip below the diaphragm in the stomach.",
        "Orogastric tube terminates in the stomach.",
        "A feeding tube passes below the diaphragm into the stomach.",
        "Nasogastric tube in place with tip in the stomach.",
    ),
}

# Hedged wording for a drawn pneumonia: label -1 (uncertain).
HEDGED_PHRASES: dict[str, tuple[str, ...]] = {
    "Pneumonia": (
        "Possible pneumonia in the {loc}.",
        "Probable {loc} pneumonia.",
        "Findings may represent early pneumonia in the {loc}.",
        "Cannot exclude pneumonia in the {loc}.",
        "Questionable {loc} pneumonia.",
        "Suspected pneumonia in the {loc}.",
    ),
}

IMPRESSION_PHRASES: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("{loc} opacity.", "Patchy {loc} opacity.", "Opacity in the {loc}.",
                     "Focal opacity in the {loc}.", "{loc} airspace opacity."),
    "Consolidation": ("{loc} consolidation.", "Consolidation in the {loc}.",
                      "Focal {loc} consolidation.", "Dense consolidation in the {loc}.",
                      "Airspace consolidation in the {loc}."),
    "Pneumonia": ("{loc} pneumonia.", "Pneumonia in the {loc}.",
                  "Findings of {loc} pneumonia.", "Focal pneumonia in the {loc}.",
                  "{loc} bronchopneumonia."),
    "Lung Lesion": ("{loc} {kind}.", "{dim} {loc} {kind}.", "Pulmonary {kind} in the {loc}.",
                    "Solitary {kind} in the {loc}.", "{kind} in the {loc}."),
    "Atelectasis": ("{loc} atelectasis.", "Linear atelectasis in the {loc}.",
                    "Subsegmental atelectasis in the {loc}.", "Atelectasis in the {loc}.",
                    "Discoid {loc} atelectasis."),
    "Edema": ("{size} pulmonary edema.", "Pulmonary edema.", "{size} interstitial edema.",
              "Perihilar pulmonary edema.", "Findings of {size} pulmonary edema."),
    "Pneumothorax": ("{size} {side} pneumothorax.", "{side} pneumothorax.",
                     "{side}-sided pneumothorax.", "{side} {pt_loc} pneumothorax.",
                     "Pneumothorax on the {side}."),
    "Pleural Effusion": ("{size} {side} pleural effusion.", "{side} pleural effusion.",
                         "{side}-sided pleural effusion.", "{size} {side} effusion.",
                         "Pleural effusion on the {side}."),
    "Pleural Other": ("{side} pleural thickening.", "{side} {po_loc} pleural thickening.",
                      "Pleural thickening on the {side}.", "Focal {side} pleural thickening.",
                      "{side}-sided pleural thickening."),
    "Fracture": ("{bone} fracture.", "Acute {bone} fracture.", "Fracture of the {bone}.",
                 "Displaced {bone} fracture.", "{bone} fracture as described."),
    "Cardiomegaly": ("Cardiomegaly.", "{size} cardiomegaly.", "Enlarged heart.",
                     "The heart is enlarged.", "Cardiac enlargement."),
    "Enlarged Cardiomediastinum": ("Widened mediastinum.", "Enlarged cardiomediastinum.",
                                   "The mediastinum is widened.",
                                   "Widening of the superior mediastinum.",
                                   "Widened mediastinal silhouette."),
    "Support Devices": ("Support devices as described.", "Lines and tubes as described.",
                        "Support devices in place.", "Tubes and lines in appropriate position.",
                        "Medical devices in standard position."),
}
HEDGED_IMPRESSIONS: dict[str, tuple[str, ...]] = {
    "Pneumonia": ("Possible {loc} pneumonia.", "Cannot exclude pneumonia in the {loc}.",
                  "Probable {loc} pneumonia.", "Questionable pneumonia in the {loc}.",
                  "Suspected {loc} pneumonia."),
}

# Explicit negations of absent observations (label 0).
NEGATION_PHRASES: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "The mediastinum is normal in width.", "No widening of the mediastinum.",
        "No evidence of a widened mediastinum.", "The mediastinal silhouette is not enlarged.",
        "The cardiomediastinal silhouette is not enlarged."),
    "Cardiomegaly": (
        "No cardiomegaly.", "There is no cardiomegaly.", "The heart is not enlarged.",
        "No evidence of cardiomegaly.", "The cardiac silhouette is not enlarged."),
    "Lung Lesion": (
        "No pulmonary nodules or masses.", "There is no lung mass.",
        "No focal nodule or mass is identified.", "No evidence of a pulmonary mass.",
        "No discrete pulmonary nodule."),
    "Lung Opacity": (
        "No focal opacity.", "There is no focal airspace opacity.", "No airspace disease.",
        "No focal airspace disease.", "No abnormal opacity is seen.", "No infiltrate."),
    "Edema": (
        "No pulmonary edema.", "There is no pulmonary edema.",
        "No evidence of pulmonary edema.", "No pulmonary vascular congestion.",
        "There is no evidence of edema."),
    "Consolidation": (
        "No focal consolidation.", "There is no consolidation.",
        "No evidence of consolidation.", "No consolidation is seen.", "No lobar consolidation."),
    "Pneumonia": (
        "No evidence of pneumonia.", "There is no pneumonia.",
        "No radiographic evidence of pneumonia.", "No pneumonia.",
        "No findings of pneumonia."),
    "Atelectasis": (
        "No atelectasis.", "There is no atelectasis.", "No evidence of atelectasis.",
        "No focal atelectasis.", "No lobar collapse."),
    "Pneumothorax": (
        "No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.",
        "No pneumothorax is identified.", "No pneumothorax is seen."),
    "Pleural Effusion": (
        "No pleural effusion.", "There is no pleural effusion.",
        "No evidence of pleural effusion.", "No pleural effusions are seen.",
        "No effusion is present."),
    "Pleural Other": (
        "No pleural thickening.", "There is no pleural thickening.",
        "No evidence of pleural thickening.", "No focal pleural thickening.",
        "No pleural thickening is seen."),
    "Fracture": (
        "No acute fracture.", "No displaced fracture.", "There is no rib fracture.",
        "No evidence of fracture.", "No displaced rib fractures are seen."),
}

# Normal statements: (sentence, observations it negates). Topics are used only when none
# of their observations is present.
_EC, _CM = "Enlarged Cardiomediastinum", "Cardiomegaly"
NORMAL_STATEMENTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "lungs": (
        ("The lungs are clear.", ()),
        ("Lungs are clear bilaterally.", ()),
        ("The lungs are well expanded and clear.", ()),
        ("Clear lungs.", ()),
        ("The lungs are clear without focal consolidation.", ("Consolidation",)),
        ("No focal airspace consolidation.", ("Consolidation",)),
        ("No focal airspace disease.", ("Lung Opacity",)),
    ),
    "pleura": (
        ("No pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("There is no pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("No pneumothorax or pleural effusion is seen.", ("Pleural Effusion", "Pneumothorax")),
        ("No effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
        ("The costophrenic angles are sharp.", ()),
        ("The pleural spaces are clear.", ()),
    ),
    "heart": (
        ("Heart size is normal.", (_CM,)),
        ("The heart is normal in size.", (_CM,)),
        ("Normal heart size.", (_CM,)),
        ("The cardiac silhouette is normal in size.", (_CM,)),
        ("The heart is not enlarged.", (_CM,)),
        ("Cardiac size is within normal limits.", (_CM,)),
    ),
    "mediastinum": (
        ("The mediastinal contours are normal.", (_EC,)),
        ("Normal cardiomediastinal silhouette.", (_EC,)),
        ("The mediastinum is normal in width.", (_EC,)),
        ("Mediastinal contours are within normal limits.", (_EC,)),
        ("Hilar and mediastinal contours are unremarkable.", (_EC,)),
    ),
    "cardiomediastinal": (
        ("The heart and mediastinum are normal.", (_CM, _EC)),
        ("Heart size and mediastinal contours are normal.", (_CM, _EC)),
        ("Normal heart size and mediastinal contour.", (_CM, _EC)),
        ("The heart size and mediastinal silhouette are within normal limits.", (_CM, _EC)),
        ("Heart size is normal and there is no widening of the mediastinum.", (_CM, _EC)),
    ),
    "bones": (
        ("No acute osseous abnormality.", ()),
        ("The osseous structures are intact.", ()),
        ("Visualized osseous structures are unremarkable.", ()),
        ("The bony thorax is intact.", ()),
        ("No acute fracture.", ("Fracture",)),
        ("No displaced rib fracture.", ("Fracture",)),
    ),
    "impression": (
        ("No acute cardiopulmonary process.", ()),
        ("No acute cardiopulmonary abnormality.", ()),
        ("No acute intrathoracic process.", ()),
        ("No acute cardiopulmonary disease.", ()),
        ("No radiographic evidence of acute cardiopulmonary disease.", ()),
    ),
}

# Location wordings per (side, zone): lobar and zonal names that match the drawing.
_LOCATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("right", "upper"): ("right upper lobe", "right upper lung zone", "right upper lung"),
    ("right", "mid"): ("right middle lobe", "right mid lung zone", "right mid lung"),
    ("right", "lower"): ("right lower lobe", "right lung base", "right lower lung zone",
                         "right base"),
    ("left", "upper"): ("left upper lobe", "left upper lung zone", "left upper lung"),
    ("left", "mid"): ("lingula", "left mid lung zone", "left mid lung"),
    ("left", "lower"): ("left lower lobe", "left lung base", "left lower lung zone",
                        "left base"),
}

# Findings order in the FINDINGS section and priority in the IMPRESSION.
_PARENCHYMA = ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion", "Atelectasis",
               "Edema")
_PLEURA = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
_CARDIOMEDIASTINAL = ("Cardiomegaly", "Enlarged Cardiomediastinum")
_IMPRESSION_PRIORITY = ("Pneumothorax", "Consolidation", "Pneumonia", "Edema",
                        "Pleural Effusion", "Cardiomegaly", "Enlarged Cardiomediastinum",
                        "Lung Lesion", "Lung Opacity", "Atelectasis", "Fracture",
                        "Pleural Other")
_NEGATION_WEIGHTS = {"Pneumothorax": 3.0, "Pleural Effusion": 3.0, "Consolidation": 2.5,
                     "Edema": 2.0, "Pneumonia": 1.5, "Cardiomegaly": 1.0,
                     "Lung Opacity": 1.0, "Atelectasis": 0.7, "Fracture": 0.7,
                     "Lung Lesion": 0.5, "Pleural Other": 0.3,
                     "Enlarged Cardiomediastinum": 0.5}

# ----------------------------------------------------------------------------------------
# Random streams.
# ----------------------------------------------------------------------------------------

_ANATOMY, _FINDINGS, _TEXT, _NOISE, _VIEW = range(5)


def split_id(split: str) -> int:
  """Stable integer for a split name (crc32; Python's hash() varies between runs)."""
  return zlib.crc32(split.encode("utf-8"))


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
  return np.random.default_rng([int(seed), split_id(split), int(index), stream])


# ----------------------------------------------------------------------------------------
# Geometry (normalised coordinates, already jittered). Point arrays are [n, 2] (y, x).
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lung:
  side: str                    # patient side
  outline: np.ndarray          # closed polygon
  apex_y: float
  bottom_y: float
  cp: tuple[float, float]      # costophrenic angle
  dome: np.ndarray             # hemidiaphragm curve, lateral -> medial
  hilum: tuple[float, float]
  zones: dict                  # zone -> (y0, y1)

  @property
  def height(self) -> float:
    return self.bottom_y - self.apex_y


@dataclasses.dataclass(frozen=True)
class Geometry:
  tf: tuple[float, float, float, float]  # (ty, tx, sy, sx) global jitter
  mid_x: float                            # spine centre
  body: np.ndarray
  abdomen: np.ndarray
  lungs: tuple[Lung, Lung]                # (right, left)
  cm: dict                                # cardiomediastinal template parameters
  heart: np.ndarray
  ra: np.ndarray
  upper_med: np.ndarray
  svc: np.ndarray
  knob: np.ndarray
  trachea: np.ndarray
  trachea_w: float
  bronchi: tuple[np.ndarray, np.ndarray]
  carina: tuple[float, float]
  spine: tuple[float, float, float, float]  # (y0, x0, y1, x1)
  vertebra_step: float
  clavicles: tuple[np.ndarray, np.ndarray]
  clavicle_w: float
  ribs: tuple[np.ndarray, np.ndarray]      # per side [9, 12, 2] posterior ribs
  ant_ribs: tuple[np.ndarray, np.ndarray]  # per side [6, 8, 2] anterior ribs
  rib_w: float
  vessels: tuple[tuple[tuple[np.ndarray, float], ...], ...]  # per lung: ([k, n, 2], width)
  stomach: tuple[float, float, float, float] | None  # (cy, cx, ry, rx)
  diaphragm_y: float                       # where the mediastinum meets the abdomen
  tissue: float                            # soft tissue grey level
  lung_dark: float


def _affine(pts, tf) -> np.ndarray:
  ty, tx, sy, sx = tf
  pts = np.asarray(pts, np.float64)
  return np.stack([0.5 + ty + sy * (pts[..., 0] - 0.5),
                   0.5 + tx + sx * (pts[..., 1] - 0.5)], axis=-1)


def _map_y(y: float, tf) -> float:
  return float(0.5 + tf[0] + tf[2] * (y - 0.5))


def _ellipse_pts(cy, cx, ry, rx, angle=0.0, n=40) -> np.ndarray:
  t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
  ly, lx = ry * np.sin(t), rx * np.cos(t)
  c, s = math.cos(angle), math.sin(angle)
  return np.stack([cy + ly * c + lx * s, cx - ly * s + lx * c], axis=-1)


def _poly_extents(pts: np.ndarray, ys) -> tuple[np.ndarray, np.ndarray]:
  """x range where horizontal lines at ys [k] cross the polygon: (x_min [k], x_max [k])."""
  ys = np.asarray(ys, np.float64)[None, :]
  a, b = pts[:, None, :], np.roll(pts, -1, axis=0)[:, None, :]
  ay, by = a[..., 0], b[..., 0]
  hit = ((ay - ys) * (by - ys) <= 0) & (ay != by)
  with np.errstate(divide="ignore", invalid="ignore"):
    x = a[..., 1] + (ys - ay) * (b[..., 1] - a[..., 1]) / (by - ay)
  lo = np.where(hit, x, np.inf).min(axis=0)
  hi = np.where(hit, x, -np.inf).max(axis=0)
  miss = ~hit.any(axis=0)
  lo[miss], hi[miss] = pts[:, 1].min(), pts[:, 1].max()
  return lo, hi


def _poly_extent(pts: np.ndarray, y: float) -> tuple[float, float]:
  """x range where the horizontal line at y crosses the polygon."""
  lo, hi = _poly_extents(pts, [y])
  return float(lo[0]), float(hi[0])


def _band_box(pts: np.ndarray, y0: float, y1: float) -> np.ndarray:
  """Box (y0, x0, y1, x1) of the part of a polygon between two rows."""
  inside = pts[(pts[:, 0] >= y0) & (pts[:, 0] <= y1), 1]
  xs = np.concatenate([inside, *_poly_extents(pts, [y0, y1])])
  return np.array([max(y0, pts[:, 0].min()), xs.min(), min(y1, pts[:, 0].max()), xs.max()])


def _lung_outline(rng, sgn, m, apex_y, cp_y, dome_y, d_med, d_lat):
  """Lung polygon: rounded apex, lateral wall, parabolic dome, straight medial wall."""
  u = rng.uniform
  d_apex = d_med + u(0.25, 0.4) * (d_lat - d_med)
  ry1, ry2 = u(0.04, 0.07), u(0.3, 0.45) * (cp_y - apex_y)
  t = np.linspace(0.0, np.pi / 2, 8)
  med_arc = np.stack([apex_y + ry1 - ry1 * np.sin(t), d_apex - (d_apex - d_med) * np.cos(t)], -1)
  t = np.linspace(0.0, np.pi / 2, 14)[1:]
  lat_arc = np.stack([apex_y + ry2 - ry2 * np.cos(t), d_apex + (d_lat - d_apex) * np.sin(t)], -1)
  t = np.linspace(0.0, 1.0, 8)[1:]
  bulge = u(0.0, 0.012)
  wall = np.stack([apex_y + ry2 + t * (cp_y - apex_y - ry2),
                   d_lat + bulge * np.sin(np.pi * t) - 0.012 * t ** 2], -1)
  s0 = u(0.45, 0.6)
  s = np.linspace(0.0, 1.0, 16)[1:]
  cp_d = d_lat - 0.012
  a = (cp_y - dome_y) / s0 ** 2
  a = np.where(s < s0, a, u(0.25, 0.45) * a)  # flatter toward the cardiophrenic angle
  dome = np.stack([dome_y + a * (s - s0) ** 2, cp_d + s * (d_med - cp_d)], -1)
  base_y = dome[-1, 0]
  t = np.linspace(0.0, 1.0, 8)[1:-1]
  medial = np.stack([base_y + t * (apex_y + ry1 - base_y), d_med + 0.006 * np.sin(np.pi * t)], -1)
  dist = np.concatenate([med_arc, lat_arc, wall, dome, medial])
  def to_x(p):  # distance from the midline -> image x
    return np.stack([p[:, 0], m + sgn * p[:, 1]], -1)

  full_dome = np.concatenate([wall[-1:], dome])
  return to_x(dist), to_x(full_dome), base_y


def _cardiomediastinum(cm: dict, tf, cardio: float = 1.0, widen: float = 1.0) -> dict:
  """Heart, right atrium, upper mediastinum, SVC and aortic knob polygons.

  `cardio` > 1 enlarges the heart (cardiomegaly), `widen` > 1 widens the upper
  mediastinum (enlarged cardiomediastinum); both act on the same template so the
  finding-free image keeps everything else in place.
  """
  m = cm["m"]
  c = cardio - 1.0
  h_rx, h_ry = cm["h_rx"] * (1 + c), cm["h_ry"] * (1 + 0.45 * c)
  h_cx = cm["h_cx"] + 0.55 * c * cm["h_rx"]
  h_cy = cm["h_cy"] + 0.3 * c * cm["h_ry"]
  ra_rx = cm["ra_rx"] * (1 + 0.8 * c)
  ra_cx = cm["ra_cx"] - 0.8 * c * cm["ra_rx"]
  heart = _ellipse_pts(h_cy, h_cx, h_ry, h_rx, cm["h_angle"], 48)
  ra = _ellipse_pts(cm["ra_cy"], ra_cx, cm["ra_ry"], ra_rx, 0.0, 32)
  w_l, w_r = cm["w_l"] * widen, cm["w_r"] * widen
  bulge = cm["bulge"] + 0.25 * (widen - 1.0)
  y0, y1 = cm["um_y0"], cm["um_y1"]
  t = np.linspace(0.0, 1.0, 10)
  ys = y0 + t * (y1 - y0)
  prof = 1.0 + bulge * np.sin(np.pi * t)
  upper_med = np.concatenate([np.stack([ys, m - w_l * prof], -1),
                              np.stack([ys[::-1], (m + w_r * prof)[::-1]], -1)])
  ra_top = cm["ra_cy"] - 0.75 * cm["ra_ry"]
  sx0 = m - w_l * (1 + 0.5 * bulge) - cm["svc_w"]
  svc = np.array([[cm["svc_y0"], sx0], [cm["svc_y0"], sx0 + cm["svc_w"] + 0.02],
                  [ra_top, sx0 + cm["svc_w"] + 0.02], [ra_top, sx0]])
  knob = _ellipse_pts(cm["k_cy"], m + w_r * (1 + 0.6 * bulge) + cm["k_dx"],
                      cm["k_r"] * (1 + 0.3 * (widen - 1)), cm["k_r"] * (1 + 0.3 * (widen - 1)))
  return {k: _affine(v, tf) for k, v in
          dict(heart=heart, ra=ra, upper_med=upper_med, svc=svc, knob=knob).items()}


def _polylines(y0, x0, y1, x1, bend, n: int) -> np.ndarray:
  """[k, n, 2] bent lines; all arguments are [k] arrays (see _polyline)."""
  t = np.linspace(0.0, 1.0, n)
  dy, dx = (y1 - y0)[:, None], (x1 - x0)[:, None]
  ln = np.hypot(dy, dx) + 1e-9
  off = bend[:, None] * np.sin(np.pi * t)
  return np.stack([y0[:, None] + t * dy + off * dx / ln,
                   x0[:, None] + t * dx - off * dy / ln], -1)


def _polyline(y0, x0, y1, x1, bend=0.0, n=10) -> np.ndarray:
  """Gently bent line from (y0, x0) to (y1, x1); bend is a perpendicular offset."""
  t = np.linspace(0.0, 1.0, n)
  y, x = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
  ln = math.hypot(y1 - y0, x1 - x0) + 1e-9
  off = bend * np.sin(np.pi * t)
  return np.stack([y + off * (x1 - x0) / ln, x - off * (y1 - y0) / ln], -1)


def sample_geometry(rng: np.random.Generator) -> Geometry:
  """Template anatomy with per-structure jitter, then a global scale/shift jitter."""
  u = rng.uniform
  s = u(0.9, 1.04)
  tf = (u(-0.03, 0.03), u(-0.03, 0.03), s * u(0.96, 1.04), s * u(0.95, 1.05))
  m = 0.5 + u(-0.012, 0.012)

  # Lungs (index 0 = patient right = image left, sgn -1).
  apex_y = u(0.10, 0.14)
  cp_r = u(0.72, 0.79)
  cp_l = cp_r + u(-0.005, 0.03)
  dome_r = cp_r - u(0.08, 0.13)
  dome_l = min(dome_r + u(0.0, 0.04), cp_l - 0.06)
  lungs, lung_tpl = [], []
  for i, (sgn, cp_y, dome_y) in enumerate(((-1.0, cp_r, dome_r), (1.0, cp_l, dome_l))):
    ay = apex_y + u(-0.01, 0.01)
    d_med, d_lat = u(0.045, 0.06) + 0.005 * i, u(0.32, 0.37)
    outline, dome, base_y = _lung_outline(rng, sgn, m, ay, cp_y, dome_y, d_med, d_lat)
    bottom = max(cp_y, base_y)
    h = bottom - ay
    hil = (ay + u(0.40, 0.48) * h - 0.02 * i, m + sgn * (d_med + u(0.04, 0.06)))
    lung_tpl.append((outline, ay, bottom, sgn, d_med, d_lat, hil, dome))
    zones = {"upper": (ay, ay + h / 3), "mid": (ay + h / 3, ay + 2 * h / 3),
             "lower": (ay + 2 * h / 3, bottom)}
    lungs.append(Lung(
        side=SIDES[i], outline=_affine(outline, tf), apex_y=_map_y(ay, tf),
        bottom_y=_map_y(bottom, tf), cp=tuple(_affine(dome[0], tf)), dome=_affine(dome, tf),
        hilum=tuple(_affine(hil, tf)),
        zones={z: (_map_y(a, tf), _map_y(b, tf)) for z, (a, b) in zones.items()}))

  # Cardiomediastinum template.
  h_cy = u(0.56, 0.62)
  h_ry = u(0.12, 0.145)
  ra_ry = u(0.07, 0.09)
  cm = dict(
      m=m, h_cy=h_cy, h_cx=m + u(0.04, 0.06), h_ry=h_ry, h_rx=u(0.145, 0.17),
      h_angle=u(0.25, 0.45), ra_cy=h_cy + u(-0.01, 0.03), ra_cx=m - u(0.06, 0.08),
      ra_ry=ra_ry, ra_rx=u(0.05, 0.065), w_l=u(0.05, 0.065), w_r=u(0.045, 0.06),
      bulge=u(0.0, 0.15), um_y0=u(0.08, 0.11), um_y1=h_cy - 0.8 * h_ry,
      svc_y0=u(0.14, 0.18), svc_w=u(0.012, 0.02), k_cy=u(0.25, 0.30), k_dx=u(0.0, 0.015),
      k_r=u(0.03, 0.04))
  parts = _cardiomediastinum(cm, tf)

  # Airways.
  tx_ = m - u(0.0, 0.01)
  car_y = u(0.29, 0.34)
  tw = u(0.028, 0.036)
  trachea = np.array([[0.0, tx_ + u(-0.005, 0.005)], [car_y, tx_]])
  bronchi = (_polyline(car_y, tx_, car_y + u(0.05, 0.07), tx_ - u(0.045, 0.06), 0.005, 5),
             _polyline(car_y, tx_, car_y + u(0.06, 0.08), tx_ + u(0.06, 0.08), -0.008, 5))

  # Bones.
  diaphragm = 0.5 * (lungs[0].dome[-1, 0] + lungs[1].dome[-1, 0])  # already mapped
  diaphragm = 0.5 + (diaphragm - 0.5 - tf[0]) / tf[2]                # back to template
  spine_hw = u(0.028, 0.036)
  clavicles, ribs, ant_ribs = [], [], []
  spacing = u(0.058, 0.068)
  for i, sgn in enumerate((-1.0, 1.0)):
    my, ly = u(0.17, 0.21), u(0.09, 0.14)
    md, ld = u(0.03, 0.045), u(0.27, 0.32)
    t = np.linspace(0.0, 1.0, 12)
    amp = u(0.008, 0.015)
    clavicles.append(np.stack([my + t * (ly - my) + amp * np.sin(2 * np.pi * t),
                               m + sgn * (md + t * (ld - md))], -1))
    d_lat = lung_tpl[i][5]
    # Posterior ribs rise from the spine and curve down laterally; anterior ribs (fainter)
    # run down and medially from the lateral wall.
    y0 = apex_y - 0.01 + np.arange(9) * spacing + u(-0.004, 0.004, size=9)
    t = np.linspace(0.0, 1.0, 12)
    ribs.append(_affine(np.stack(np.broadcast_arrays(
        y0[:, None] - 0.025 * np.sin(np.pi * t) + 0.10 * t ** 3,
        m + sgn * (0.035 + t * d_lat)), -1), tf))
    t = np.linspace(0.0, 1.0, 8)
    ant_ribs.append(_affine(np.stack(np.broadcast_arrays(
        y0[:6, None] + 0.1 + 0.09 * t - 0.02 * t ** 2,
        m + sgn * (d_lat + 0.03 - t * (d_lat - 0.09))), -1), tf))

  # Vessel tree: branches from each hilum toward random points in the lung.
  vessels = []
  for outline, ay, bottom, sgn, d_med, d_lat, hil, _ in lung_tpl:
    n = int(rng.integers(10, 15))
    ty_ = u(ay + 0.04, bottom - 0.06, size=n)
    xa, xb = _poly_extents(outline, ty_)
    # A narrow lung tip can leave less than the 0.02 margins: clamp instead of failing.
    lo = xa + 0.02
    main = _polylines(hil[0] + u(-0.02, 0.02, size=n), np.full(n, hil[1]), ty_,
                      u(lo, np.maximum(xb - 0.02, lo)), u(-0.03, 0.03, size=n), 6)
    by, bx = main[:, 3, 0], main[:, 3, 1]
    branch = _polylines(by, bx, by + u(-0.08, 0.08, size=n), bx + sgn * u(0.0, 0.06, size=n),
                        np.full(n, 0.01), 4)
    keep = rng.random(n) < 0.6
    main, branch = _affine(main, tf), _affine(branch[keep], tf)
    vessels.append(((main[:, :3], 0.007 * s), (main[:, 2:], 0.004 * s), (branch, 0.003 * s)))

  stomach = None
  if rng.random() < 0.8:
    c = _affine([dome_l + u(0.05, 0.08), m + u(0.1, 0.16)], tf)
    stomach = (float(c[0]), float(c[1]), u(0.025, 0.04) * s, u(0.04, 0.06) * s)

  neck = u(0.11, 0.14)
  sh_y = u(0.04, 0.08)
  half = np.array([[-0.05, 0.5 - neck], [sh_y - 0.01, 0.5 - neck - 0.01],
                   [sh_y + 0.005, 0.32], [sh_y + 0.03, 0.16], [sh_y + 0.08, 0.06],
                   [sh_y + 0.16, -0.03], [1.2, -0.08]])
  body = np.concatenate([half, half[::-1] * [1.0, -1.0] + [0.0, 1.0]])
  # Abdomen: everything below the two hemidiaphragms.
  dr, dl = lung_tpl[0][7], lung_tpl[1][7]
  abdomen = np.concatenate([[[dr[0, 0] + 0.03, -0.2]], dr, dl[::-1],
                            [[dl[0, 0] + 0.03, 1.2], [1.3, 1.2], [1.3, -0.2]]])

  def mapped(p):
    return tuple(float(v) for v in _affine(p, tf))

  return Geometry(
      tf=tf, mid_x=mapped([0.5, m])[1], body=_affine(body, tf),
      abdomen=_affine(abdomen, tf), lungs=tuple(lungs), cm=cm,
      **parts, trachea=_affine(trachea, tf), trachea_w=tw * s,
      bronchi=tuple(_affine(b, tf) for b in bronchi), carina=mapped([car_y, tx_]),
      spine=(*mapped([0.02, m - spine_hw]), *mapped([diaphragm + 0.12, m + spine_hw])),
      vertebra_step=u(0.038, 0.046) * s, clavicles=tuple(_affine(c, tf) for c in clavicles),
      clavicle_w=u(0.024, 0.03) * s, ribs=tuple(ribs), ant_ribs=tuple(ant_ribs),
      rib_w=u(0.013, 0.017) * s, vessels=tuple(vessels), stomach=stomach,
      diaphragm_y=mapped([diaphragm + 0.01, 0.5])[0], tissue=u(0.36, 0.44),
      lung_dark=u(0.26, 0.32))


def with_findings_geometry(g: Geometry, cardio: float = 1.0, widen: float = 1.0) -> Geometry:
  """The same anatomy with an enlarged heart and/or widened upper mediastinum."""
  if cardio == 1.0 and widen == 1.0:
    return g
  return dataclasses.replace(g, **_cardiomediastinum(g.cm, g.tf, cardio, widen))


def _pts_box(*arrays, pad: float = 0.0) -> np.ndarray:
  p = np.concatenate([np.asarray(a).reshape(-1, 2) for a in arrays])
  return np.array([p[:, 0].min() - pad, p[:, 1].min() - pad,
                   p[:, 0].max() + pad, p[:, 1].max() + pad])


def leaf_boxes(g: Geometry) -> np.ndarray:
  """[25, 4] float32 (y0, x0, y1, x1) in anatomy.LEAVES order, from the drawing geometry."""
  boxes = {}
  for lung in g.lungs:
    side, o = lung.side, lung.outline
    for z in ZONES:
      boxes[f"{side} {z} lung zone"] = _band_box(o, *lung.zones[z])
    top = lung.apex_y
    boxes[f"{side} apical zone"] = _band_box(o, top, top + 0.18 * lung.height)
    hy, hx = lung.hilum
    boxes[f"{side} hilar structures"] = np.array([hy - 0.05, hx - 0.045, hy + 0.05, hx + 0.045])
    cy, cx = lung.cp
    inward = 1.0 if cx < g.mid_x else -1.0
    x0, x1 = sorted((cx - inward * 0.015, cx + inward * 0.06))
    boxes[f"{side} costophrenic angle"] = np.array([cy - 0.07, x0, cy + 0.015, x1])
    boxes[f"{side} hemidiaphragm"] = _pts_box(lung.dome, pad=0.015)
  for i, side in enumerate(SIDES):
    boxes[f"{side} clavicle"] = _pts_box(g.clavicles[i], pad=g.clavicle_w / 2)
  boxes["right atrium"] = _pts_box(g.ra)
  svc_box = _pts_box(g.svc)
  boxes["superior vena cava"] = svc_box
  cay, cax = svc_box[2], 0.5 * (svc_box[1] + svc_box[3])
  boxes["cavoatrial junction"] = np.array([cay - 0.03, cax - 0.03, cay + 0.03, cax + 0.03])
  boxes["upper mediastinum"] = _pts_box(g.upper_med)
  knob = _pts_box(g.knob)
  knob[1] = min(knob[1], g.mid_x)
  boxes["aortic arch"] = knob
  half = g.trachea_w / 2 + 0.006
  boxes["trachea"] = np.array([max(0.0, g.trachea[0, 0]) + 0.02,
                               g.trachea[:, 1].min() - half, g.carina[0],
                               g.trachea[:, 1].max() + half])
  cy, cx = g.carina
  boxes["carina"] = np.array([cy - 0.025, cx - 0.035, cy + 0.035, cx + 0.035])
  y0, x0, y1, x1 = g.spine
  boxes["spine"] = np.array([y0, x0, y1, x1])
  lo = min(l.dome[:, 0].min() for l in g.lungs)
  xs = np.concatenate([l.outline[:, 1] for l in g.lungs])
  boxes["abdomen"] = np.array([lo, xs.min(), 1.0, xs.max()])
  out = np.stack([boxes[name] for name in anatomy.LEAVES]).astype(np.float32)
  return _clip_boxes(out)


def _clip_boxes(b: np.ndarray) -> np.ndarray:
  b = np.clip(b, 0.0, 1.0)
  b[:, 2] = np.maximum(b[:, 2], np.minimum(b[:, 0] + 1e-3, 1.0))
  b[:, 3] = np.maximum(b[:, 3], np.minimum(b[:, 1] + 1e-3, 1.0))
  b[:, 0] = np.minimum(b[:, 0], b[:, 2] - 1e-3)
  b[:, 1] = np.minimum(b[:, 1], b[:, 3] - 1e-3)
  return b.astype(np.float32)


# ----------------------------------------------------------------------------------------
# Findings: what is drawn where (sampled from the findings stream).
# ----------------------------------------------------------------------------------------


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
  xa, xb = _poly_extent(lung.outline, y)
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
                 key=lambda n: (n not in _PLEURA, anatomy.PATHOLOGY_INDEX[n]))
  used: set = set()
  out = []
  for name in order:
    f = _sample_finding(rng, name, g, used)
    rival = {"Pneumothorax": "Pleural Effusion", "Pleural Effusion": "Pneumothorax"}.get(name)
    if any(x.name == rival and x.side == f.side for x in out):  # one per hemithorax
      f = dataclasses.replace(f, side=SIDES[1 - SIDES.index(f.side)])
    out.append(f)
  return sorted(out, key=lambda f: anatomy.PATHOLOGY_INDEX[f.name])


# ----------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  c = ((np.arange(size, dtype=np.float32) + 0.5) / size)
  c.setflags(write=False)
  return c, c


class _Raster:
  """Pixel helpers for one square raster of `size` pixels."""

  def __init__(self, size: int):
    self.size = size
    self.ys, self.xs = _grid(size)

  def _xy(self, pts):
    """(y, x) normalised points [..., 2] -> PIL pixel (x, y) coordinates as nested lists."""
    p = np.asarray(pts, np.float64)[..., ::-1] * self.size - 0.5
    return p.reshape(*p.shape[:-2], -1).tolist()

  def layer(self, shapes, blur: float = 0.0) -> np.ndarray:
    """Draw shapes onto a black layer; returns float32 [S, S] in [0, 1].

    shapes: ("poly", pts, fill) | ("line", pts, width, fill) | ("lines", [k, n, 2], width,
    fill) | ("rect", box, fill) with widths in normalised units, boxes (y0, x0, y1, x1),
    fills in [0, 1]. Later shapes paint over earlier ones. blur is a box-blur radius in
    normalised units.
    """
    n = self.size
    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    for shape in shapes:
      kind = shape[0]
      if kind == "poly":
        d.polygon(self._xy(shape[1]), fill=int(255 * shape[2]))
      elif kind in ("line", "lines"):
        xy = self._xy(shape[1])
        width = max(1, int(round(shape[2] * n)))
        for line in (xy if kind == "lines" else [xy]):
          d.line(line, fill=int(255 * shape[3]), width=width, joint="curve" if width > 2 else None)
      else:
        y0, x0, y1, x1 = shape[1]
        d.polygon(self._xy([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]), fill=int(255 * shape[2]))
    if blur * n >= 0.5:
      img = img.filter(ImageFilter.BoxBlur(blur * n))
    return np.asarray(img, dtype=np.float32) * np.float32(1 / 255)

  def window(self, y0, y1, x0, x1):
    s = self.size
    i0, i1 = max(0, int(y0 * s)), min(s, int(math.ceil(y1 * s)))
    j0, j1 = max(0, int(x0 * s)), min(s, int(math.ceil(x1 * s)))
    return slice(i0, max(i0, i1)), slice(j0, max(j0, j1))

  def ellipse(self, out, cy, cx, ry, rx, angle=0.0, edge=0.006, amp=1.0):
    """out[window] += amp * soft ellipse alpha (in place)."""
    e = max(ry, rx) + edge
    sy, sx = self.window(cy - e, cy + e, cx - e, cx + e)
    dy = self.ys[sy, None] - np.float32(cy)
    dx = self.xs[None, sx] - np.float32(cx)
    c, s = math.cos(angle), math.sin(angle)
    ly, lx = dy * c - dx * s, dy * s + dx * c
    d = np.sqrt((ly / ry) ** 2 + (lx / rx) ** 2)
    out[sy, sx] += amp * np.clip((1.0 - d) * (min(ry, rx) / edge), 0.0, 1.0)

  def gauss(self, out, cy, cx, sgy, sgx, amp=1.0):
    sy, sx = self.window(cy - 3 * sgy, cy + 3 * sgy, cx - 3 * sgx, cx + 3 * sgx)
    gy = np.exp(-0.5 * ((self.ys[sy] - np.float32(cy)) / sgy) ** 2)
    gx = np.exp(-0.5 * ((self.xs[sx] - np.float32(cx)) / sgx) ** 2)
    out[sy, sx] += amp * np.outer(gy, gx)


def _working_size(size: int) -> int:
  """Anatomy and findings are rasterised at half size (>= 128 px) and upsampled once."""
  return size // 2 if size >= 128 else size


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
  if a.shape[0] == size:
    return a
  img = Image.fromarray(np.ascontiguousarray(a, np.float32), mode="F")
  return np.array(img.resize((size, size), Image.BILINEAR), dtype=np.float32)


def _smooth_step(t):
  t = np.clip(t, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _mask_box(alpha: np.ndarray, thr: float = 0.25, fallback=None) -> np.ndarray:
  """Normalised box of the pixels where a finding's alpha exceeds thr.

  Thin findings on small rasters never reach full alpha, so the threshold is capped at
  half the peak; an invisible finding falls back to the given geometric box.
  """
  peak = float(alpha.max())
  if peak <= 1e-3:
    return np.asarray(fallback if fallback is not None else np.zeros(4), np.float32)
  thr = min(thr, 0.5 * peak)
  rows = np.flatnonzero(alpha.max(axis=1) > thr)
  cols = np.flatnonzero(alpha.max(axis=0) > thr)
  s = alpha.shape[0]
  return np.array([rows[0] / s, cols[0] / s, (rows[-1] + 1) / s, (cols[-1] + 1) / s],
                  np.float32)


def _lung_masks(r: _Raster, g: Geometry):
  lungs = r.layer([("poly", l.outline, 1.0) for l in g.lungs], blur=0.006)
  right = (r.xs < g.mid_x).astype(np.float32)[None, :]
  return lungs * right, lungs * (1.0 - right)


def _ptx_gap(r: _Raster, g: Geometry, f: Finding) -> tuple[np.ndarray, np.ndarray]:
  """Pneumothorax (air rim, visceral pleural line): the lung minus the lung shrunk toward
  its lower medial corner, so the rim is widest at the apex and along the lateral wall."""
  lung = g.lungs[SIDES.index(f.side)]
  o = lung.outline
  anchor = np.array([lung.dome[-1, 0], lung.dome[-1, 1]])
  collapsed = anchor + f.p["f"] * (o - anchor)
  full = r.layer([("poly", o, 1.0)], blur=0.004)
  inner = r.layer([("poly", collapsed, 1.0)], blur=0.004)
  edge = r.layer([("line", np.concatenate([collapsed, collapsed[:1]]), 0.004, 1.0)])
  return np.clip(full - inner, 0.0, 1.0), edge * full


def _ribs_layer(r: _Raster, g: Geometry, fracture: Finding | None) -> np.ndarray:
  shapes = []
  fr = fracture.p if fracture is not None and fracture.p["bone"] == "rib" else None
  for i in range(2):
    shapes.append(("lines", g.ant_ribs[i], g.rib_w * 0.8, 0.45))
    if fr is not None and SIDES[i] == fracture.side:
      k = fr["k"]
      shapes.append(("lines", np.delete(g.ribs[i], k, axis=0), g.rib_w, 1.0))
      shapes += [("line", p, g.rib_w, 1.0) for p in _broken(g.ribs[i][k], fr, g.rib_w)]
    else:
      shapes.append(("lines", g.ribs[i], g.rib_w, 1.0))
  return r.layer(shapes, blur=0.003)


def _broken(line: np.ndarray, fr: dict, width: float) -> list[np.ndarray]:
  """Split a bone polyline at fraction u with a gap; the distal end is displaced at the
  break (step-off) and rejoins the bone's course within a few centimetres."""
  seg = np.diff(line, axis=0)
  cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
  at = fr["u"] * cum[-1]
  half = fr["gap"] / 2
  def along(d):  # points at arc lengths d
    return np.stack([np.interp(d, cum, line[:, 0]), np.interp(d, cum, line[:, 1])], -1)

  pb = np.linspace(at + half, cum[-1], 16)
  taper = np.exp(-(pb - at - half) / 0.03)[:, None]
  a = along(np.linspace(0.0, at - half, 8))
  b = along(pb) + taper * np.array([fr["shift"] * width, 0.0])
  return [a, b]


def fracture_point(g: Geometry, f: Finding) -> tuple[float, float]:
  i = SIDES.index(f.side)
  line = g.clavicles[i] if f.p["bone"] == "clavicle" else g.ribs[i][f.p["k"]]
  seg = np.diff(line, axis=0)
  cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
  at = f.p["u"] * cum[-1]
  return float(np.interp(at, cum, line[:, 0])), float(np.interp(at, cum, line[:, 1]))


def _bones_layer(r: _Raster, g: Geometry, fracture: Finding | None) -> np.ndarray:
  y0, x0, y1, x1 = g.spine
  shapes = [("rect", (0.0, x0, 1.0, x1), 0.3)]
  step = g.vertebra_step
  for yv in np.arange(y0 - 0.5 * step, 1.0, step):
    shapes.append(("rect", (yv + 0.12 * step, x0 + 0.004, yv + 0.88 * step, x1 - 0.004), 0.45))
  for i in range(2):
    cl = g.clavicles[i]
    if fracture is not None and fracture.p["bone"] == "clavicle" and fracture.side == SIDES[i]:
      shapes += [("line", p, g.clavicle_w, 1.0) for p in _broken(cl, fracture.p, g.clavicle_w)]
    else:
      shapes.append(("line", cl, g.clavicle_w, 1.0))
  return r.layer(shapes, blur=0.003)


def _vessels_layer(r: _Raster, g: Geometry) -> np.ndarray:
  shapes = [("lines", pts, w, 1.0) for tree in g.vessels for pts, w in tree if len(pts)]
  return r.layer(shapes, blur=0.004)


def _devices(g: Geometry, f: Finding) -> list[tuple]:
  """Device shapes (normalised) and the context their report sentences need."""
  m = g.mid_x
  shapes = []
  for dev in f.p["devices"]:
    kind = dev["kind"]
    if kind == "ett":
      cy, cx = g.carina
      tip = cy - dev["above"] * g.tf[2]
      pts = np.array([[-0.02, g.trachea[0, 1]], [tip, cx]])
      shapes += [("line", pts, 0.012, 0.45), ("line", pts, 0.004, 1.0)]
    elif kind == "cvc":
      svc = _pts_box(g.svc)
      sx = 0.5 * (svc[1] + svc[3])
      tip_y = {"svc": 0.5 * (svc[0] + svc[2]), "cavoatrial": svc[2],
               "ra": svc[2] + 0.05}[dev["tip"]] + dev["jitter"][0]
      j = dev["jitter"]
      if dev["entry"] == "right internal jugular":
        pts = [[-0.02, m - 0.09 + j[1]], [0.12, m - 0.075], [0.2, sx], [tip_y, sx]]
      elif dev["entry"] == "left internal jugular":
        pts = [[-0.02, m + 0.09 + j[1]], [0.14, m + 0.08], [0.22, m + 0.02],
               [0.25, sx + 0.01], [tip_y, sx]]
      else:
        cl = g.clavicles[0]
        pts = [[cl[-3, 0] + 0.03, cl[-3, 1]], [cl[3, 0] + 0.025, cl[3, 1] + j[2]],
               [0.22, sx], [tip_y, sx]]
      shapes.append(("line", np.array(pts), 0.005, 1.0))
    elif kind == "pacemaker":
      sgn = -1.0 if dev["side"] == "right" else 1.0
      gy, gx = g.tf[0] + 0.5 + g.tf[2] * (dev["dy"] - 0.5), m + sgn * dev["dx"] * g.tf[3]
      shapes.append(("poly", _ellipse_pts(gy, gx, 0.025, 0.035, 0.0, 24), 1.0))
      ra = g.ra.mean(axis=0)
      hb = _pts_box(g.heart)
      apex = (0.75 * hb[2] + 0.25 * hb[0], 0.4 * hb[1] + 0.6 * hb[3])
      svc = _pts_box(g.svc)
      sx = 0.5 * (svc[1] + svc[3])
      path = [[gy, gx], [gy - 0.04, gx - sgn * 0.08], [0.2, sx], [svc[2] - 0.02, sx]]
      shapes.append(("line", np.array(path + [list(ra)]), 0.004, 1.0))
      if dev["leads"] == 2:
        shapes.append(("line", np.array(path + [[ra[0] + 0.04, ra[1] + 0.03], list(apex)]),
                       0.004, 1.0))
    else:
      j = dev["jitter"]
      dome_l = g.lungs[1].dome
      dy = dome_l[:, 0].min()
      stomach = (dy + 0.08, m + 0.13)
      pts = [[-0.02, m + 0.005 + j[0]], [g.carina[0], m + 0.015], [dy - 0.02, m + 0.04],
             [dy + 0.04, m + 0.08 + j[1]], list(stomach)]
      shapes.append(("line", np.array(pts), 0.006, 0.9))
  return shapes


def _draw_findings(r: _Raster, g: Geometry, findings: list[Finding], lungs, ptx):
  """Adds the findings' density to a layer; returns it and each finding's box."""
  add = np.zeros((r.size, r.size), np.float32)
  boxes = {}
  for f in findings:
    alpha = np.zeros_like(add)
    side = SIDES.index(f.side) if f.side is not None else None
    name, p = f.name, f.p
    amp = p.get("amp", 1.0)
    if name == "Lung Opacity":
      cy, cx = p["c"]
      for dy, dx, sgy, sgx in p["blobs"]:
        r.gauss(alpha, cy + dy, cx + dx, sgy, sgx)
      alpha = np.minimum(alpha, 1.0) * lungs[side]
    elif name == "Consolidation":
      cy, cx = p["c"]
      r.ellipse(alpha, cy, cx, *p["r"], angle=p["angle"], edge=0.015)
      for dy, dx, ly, lx, ang in p["lobes"]:
        r.ellipse(alpha, cy + dy, cx + dx, ly, lx, angle=ang, edge=0.015)
      alpha = np.minimum(alpha, 1.0)
      bron = np.zeros_like(add)
      for dy, dx, ang, ln in p["bron"]:
        r.ellipse(bron, cy + dy, cx + dx, 0.004, ln, angle=ang, edge=0.003)
      alpha = np.clip(alpha - 0.45 * np.minimum(bron, 1.0) * alpha, 0.0, 1.0) * lungs[side]
    elif name == "Pneumonia":
      cy, cx = p["c"]
      for dy, dx, sgy, sgx, a in p["blobs"]:
        r.gauss(alpha, cy + dy, cx + dx, sgy, sgx, a)
      alpha = np.minimum(alpha, 1.0) * lungs[side]
    elif name == "Lung Lesion":
      cy, cx = p["c"]
      r.ellipse(alpha, cy, cx, p["r"], p["r"], edge=0.004)
      alpha *= lungs[side]
    elif name == "Atelectasis":
      cy, cx = p["c"]
      r.ellipse(alpha, cy, cx, *p["r"], angle=p["angle"], edge=0.005)
      alpha *= lungs[side]
    elif name == "Edema":
      for i, lung in enumerate(g.lungs):
        hy, hx = lung.hilum
        sgn = -1.0 if i == 0 else 1.0
        r.gauss(alpha, hy + 0.02, hx + sgn * p["shift"], *p["sig"])
      alpha = np.minimum(alpha, 1.0) * (lungs[0] + lungs[1])
    elif name == "Pleural Effusion":
      lung = g.lungs[side]
      xm, xl = lung.dome[-1, 1], lung.cp[1]
      lat = np.clip((r.xs - np.float32(xm)) / np.float32(xl - xm), 0.0, 1.0) ** 1.5
      top = lung.cp[0] - p["frac"] * lung.height
      men = np.float32(top) - np.float32(p["men"]) * lat  # meniscus: higher laterally
      alpha = _smooth_step((r.ys[:, None] - men[None, :]) / 0.03) * lungs[side]
      amp = p["amp"] * g.lung_dark  # fluid brings the lung back to soft-tissue density
    elif name == "Pneumothorax":
      gap, edge = ptx
      alpha = gap
      add += p["line"] * edge * lungs[side]
      add -= p["amp"] * gap
      boxes[name] = _mask_box(gap, 0.5)
      continue
    elif name == "Pleural Other":
      lung = g.lungs[side]
      o = lung.outline
      if p["kind"] == "apical":
        inner = o + [p["t"] * 1.3, 0.0]
        y_lim = (lung.apex_y - 0.01, lung.zones["upper"][1])
      else:
        xm = lung.dome[-1, 1]
        inner = o.copy()
        inner[:, 1] = xm + (1.0 - p["t"] / abs(lung.cp[1] - xm)) * (o[:, 1] - xm)
        y_lim = lung.zones[f.zone]
      shrunk = r.layer([("poly", inner, 1.0)], blur=0.004)
      rows = ((r.ys >= y_lim[0]) & (r.ys <= y_lim[1])).astype(np.float32)[:, None]
      alpha = np.clip(lungs[side] - shrunk, 0.0, 1.0) * rows
    elif name == "Fracture":  # the break itself is drawn with the bones
      cy, cx = fracture_point(g, f)
      r.gauss(add, cy, cx, 0.012, 0.012, p["amp"])  # soft-tissue swelling at the break
      boxes[name] = np.array([cy - 0.035, cx - 0.035, cy + 0.035, cx + 0.035], np.float32)
      continue
    elif name in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
      continue  # drawn through the geometry; boxed by the caller
    elif name == "Support Devices":
      continue  # drawn on top of everything by the caller
    add += amp * alpha
    c = p.get("c", g.lungs[side].hilum if side is not None else (0.5, 0.5))
    boxes[name] = _mask_box(alpha, fallback=[c[0] - 0.02, c[1] - 0.02, c[0] + 0.02, c[1] + 0.02])
  return add, boxes


def render(g: Geometry, findings: list[Finding], size: int,
           noise_rng: np.random.Generator) -> tuple[np.ndarray, dict]:
  """uint8 [size, size, 1] radiograph and {finding name: box} for the drawn findings.

  Anatomy and findings are drawn at the working size and upsampled once; devices and
  grain are added at full size so thin lines stay sharp.
  """
  r = _Raster(_working_size(size))
  ys, xs = r.ys, r.xs
  by_name = {f.name: f for f in findings}

  body = r.layer([("poly", g.body, 1.0)], blur=0.01)
  abdomen = r.layer([("poly", g.abdomen, 1.0)], blur=0.03)
  canvas = 0.05 + body * ((g.tissue - 0.05) + 0.22 * abdomen)

  med = r.layer([("poly", g.upper_med, 0.8), ("poly", g.svc, 0.8), ("poly", g.knob, 0.9),
                 ("poly", g.heart, 1.0), ("poly", g.ra, 1.0)], blur=0.01)
  top = float(g.upper_med[:, 0].min())
  med *= (_smooth_step((ys - top) / 0.07) *
          (1.0 - _smooth_step((ys - g.diaphragm_y - 0.01) / 0.04)))[:, None]

  lungs = _lung_masks(r, g)
  lung = lungs[0] + lungs[1]
  shade = np.float32(0.72)
  for l in g.lungs:
    hy, hx = l.hilum
    cx = hx + (0.12 if l.cp[1] > hx else -0.12)
    gy = np.exp(-0.5 * ((ys - (l.apex_y + 0.5 * l.height)) / (0.35 * l.height)) ** 2)
    gx = np.exp(-0.5 * ((xs - cx) / 0.12) ** 2)
    shade = shade + 0.28 * np.outer(gy, gx)
  canvas -= g.lung_dark * lung * shade * (1.0 - 0.75 * med)
  canvas += 0.27 * med * (1.0 - 0.7 * abdomen)

  ptx = None
  if "Pneumothorax" in by_name:
    ptx = _ptx_gap(r, g, by_name["Pneumothorax"])
  vessels = _vessels_layer(r, g) * lung
  if ptx is not None:
    vessels *= 1.0 - np.minimum(ptx[0] * 1.5, 1.0)
  canvas += 0.1 * vessels
  for l in g.lungs:
    r.gauss(canvas, l.hilum[0], l.hilum[1], 0.03, 0.022, 0.07)

  fracture = by_name.get("Fracture")
  canvas += 0.055 * _ribs_layer(r, g, fracture) * (0.35 + 0.65 * lung)
  canvas += 0.14 * _bones_layer(r, g, fracture)

  airway = r.layer([("line", g.trachea, g.trachea_w, 1.0)] +
                   [("line", b, g.trachea_w * 0.6, 1.0) for b in g.bronchi], blur=0.004)
  canvas -= 0.2 * airway
  if g.stomach is not None:
    cy, cx, ry, rx = g.stomach
    bubble = np.zeros_like(canvas)
    r.ellipse(bubble, cy, cx, ry, rx, edge=0.008)
    bubble *= (ys < cy + 0.3 * ry)[:, None]
    canvas -= 0.18 * bubble

  add, boxes = _draw_findings(r, g, findings, lungs, ptx)
  canvas += add * (1.0 - 0.75 * med)  # like the lung itself, findings fade behind the heart
  canvas = _upsample(canvas, size)
  if "Cardiomegaly" in by_name:
    b = _pts_box(g.heart, g.ra)
    b[2] = min(b[2], g.diaphragm_y + 0.02)
    boxes["Cardiomegaly"] = b
  if "Enlarged Cardiomediastinum" in by_name:
    boxes["Enlarged Cardiomediastinum"] = _pts_box(g.upper_med, g.knob, g.svc)
  if "Support Devices" in by_name:
    shapes = _devices(g, by_name["Support Devices"])
    canvas += 0.6 * _Raster(size).layer(shapes)
    boxes["Support Devices"] = _pts_box(*[s[1] for s in shapes], pad=0.012)

  # Exposure, grain and low-frequency unevenness (noise stream only).
  u = noise_rng.uniform
  contrast, bright, gamma = u(0.9, 1.12), u(-0.04, 0.04), u(0.85, 1.15)
  field = _upsample(noise_rng.standard_normal((6, 6)).astype(np.float32), size)
  grain = noise_rng.random((size, size), dtype=np.float32) - np.float32(0.5)
  canvas = np.clip(canvas * contrast + bright, 0.0, 1.0) ** gamma
  canvas += 0.015 * field + (3.46 * u(0.01, 0.022)) * grain  # uniform grain, sd 1-2.2 %
  img = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return img[:, :, None], boxes


# ----------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------


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
    ctx["loc"] = _pick(rng, _LOCATIONS[(f.side, f.zone)])
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
  for name in _PARENCHYMA:
    if name in by_name:
      positive(name, "lungs")
  if not any(n in by_name for n in _PARENCHYMA):
    normal("lungs", "lungs")
  for name in _PLEURA:
    if name in by_name:
      positive(name, "pleura")
  if not any(n in by_name for n in ("Pleural Effusion", "Pneumothorax")) and rng.random() < 0.7:
    normal("pleura", "pleura")
  for name in _CARDIOMEDIASTINAL:
    if name in by_name:
      positive(name, "heart")
  has_cm, has_ec = _CM in by_name, _EC in by_name
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
    group_of = {**{n: "lungs" for n in _PARENCHYMA}, **{n: "pleura" for n in _PLEURA},
                **{n: "heart" for n in _CARDIOMEDIASTINAL}, "Fracture": "bones"}
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


# ----------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything an example is made of, before pixels: geometry and findings."""
  geometry: Geometry          # finding-free anatomy
  drawn: Geometry             # anatomy with cardiomegaly / widening applied
  findings: list


def plan(seed: int, split: str, index: int) -> Plan:
  g = sample_geometry(_rng(seed, split, index, _ANATOMY))
  findings = sample_findings(_rng(seed, split, index, _FINDINGS), g)
  by_name = {f.name: f for f in findings}
  cardio = by_name[_CM].p["factor"] if _CM in by_name else 1.0
  widen = by_name[_EC].p["factor"] if _EC in by_name else 1.0
  return Plan(g, with_findings_geometry(g, cardio, widen), findings)


def render_finding_free(seed: int, split: str, index: int, image_size: int = 256) -> np.ndarray:
  """The example's image with no findings: same anatomy, exposure and noise."""
  pl = plan(seed, split, index)
  img, _ = render(pl.geometry, [], image_size, _rng(seed, split, index, _NOISE))
  return img


def generate_example(seed: int, split: str, index: int, image_size: int = 256) -> dict:
  """One synthetic study in the features.py schema (image as uint8 [S, S, 1])."""
  pl = plan(seed, split, index)
  g = pl.drawn
  img, boxes = render(g, pl.findings, image_size, _rng(seed, split, index, _NOISE))
  rep = write_report(_rng(seed, split, index, _TEXT), pl.findings, g)
  finding_boxes = np.zeros((anatomy.NUM_PATHOLOGIES, 4), np.float32)
  for name, box in boxes.items():
    finding_boxes[anatomy.PATHOLOGY_INDEX[name]] = _clip_boxes(np.asarray(box)[None])[0]
  devices = "Support Devices" in {f.name for f in pl.findings}
  view_rng = _rng(seed, split, index, _VIEW)
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
