"""The drawing's anatomy: lungs, heart and mediastinum, airway, bones, vessels.

Coordinates are normalised (y, x) in [0, 1], y down, already jittered; point arrays are
[n, 2] (y, x). The patient's right is the image's left, as on a radiograph; "right" and
"left" in names are the patient's.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssacl_jax import anatomy

SIDES = ("right", "left")   # patient sides; index 0 is drawn on the image's left
ZONES = ("upper", "mid", "lower")


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


def ellipse_pts(cy, cx, ry, rx, angle=0.0, n=40) -> np.ndarray:
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


def poly_extent(pts: np.ndarray, y: float) -> tuple[float, float]:
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
  heart = ellipse_pts(h_cy, h_cx, h_ry, h_rx, cm["h_angle"], 48)
  ra = ellipse_pts(cm["ra_cy"], ra_cx, cm["ra_ry"], ra_rx, 0.0, 32)
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
  knob = ellipse_pts(cm["k_cy"], m + w_r * (1 + 0.6 * bulge) + cm["k_dx"],
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


def pts_box(*arrays, pad: float = 0.0) -> np.ndarray:
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
    boxes[f"{side} hemidiaphragm"] = pts_box(lung.dome, pad=0.015)
  for i, side in enumerate(SIDES):
    boxes[f"{side} clavicle"] = pts_box(g.clavicles[i], pad=g.clavicle_w / 2)
  boxes["right atrium"] = pts_box(g.ra)
  svc_box = pts_box(g.svc)
  boxes["superior vena cava"] = svc_box
  cay, cax = svc_box[2], 0.5 * (svc_box[1] + svc_box[3])
  boxes["cavoatrial junction"] = np.array([cay - 0.03, cax - 0.03, cay + 0.03, cax + 0.03])
  boxes["upper mediastinum"] = pts_box(g.upper_med)
  knob = pts_box(g.knob)
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
  return clip_boxes(out)


def clip_boxes(b: np.ndarray) -> np.ndarray:
  b = np.clip(b, 0.0, 1.0)
  b[:, 2] = np.maximum(b[:, 2], np.minimum(b[:, 0] + 1e-3, 1.0))
  b[:, 3] = np.maximum(b[:, 3], np.minimum(b[:, 1] + 1e-3, 1.0))
  b[:, 0] = np.minimum(b[:, 0], b[:, 2] - 1e-3)
  b[:, 1] = np.minimum(b[:, 1], b[:, 3] - 1e-3)
  return b.astype(np.float32)

