"""The rasteriser: a grey radiograph of one study's geometry and findings."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from input_pipeline.synthetic.findings import Finding
from input_pipeline.synthetic.geometry import SIDES, Geometry, ellipse_pts, pts_box


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
      svc = pts_box(g.svc)
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
      shapes.append(("poly", ellipse_pts(gy, gx, 0.025, 0.035, 0.0, 24), 1.0))
      ra = g.ra.mean(axis=0)
      hb = pts_box(g.heart)
      apex = (0.75 * hb[2] + 0.25 * hb[0], 0.4 * hb[1] + 0.6 * hb[3])
      svc = pts_box(g.svc)
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
    b = pts_box(g.heart, g.ra)
    b[2] = min(b[2], g.diaphragm_y + 0.02)
    boxes["Cardiomegaly"] = b
  if "Enlarged Cardiomediastinum" in by_name:
    boxes["Enlarged Cardiomediastinum"] = pts_box(g.upper_med, g.knob, g.svc)
  if "Support Devices" in by_name:
    shapes = _devices(g, by_name["Support Devices"])
    canvas += 0.6 * _Raster(size).layer(shapes)
    boxes["Support Devices"] = pts_box(*[s[1] for s in shapes], pad=0.012)

  # Exposure, grain and low-frequency unevenness (noise stream only).
  u = noise_rng.uniform
  contrast, bright, gamma = u(0.9, 1.12), u(-0.04, 0.04), u(0.85, 1.15)
  field = _upsample(noise_rng.standard_normal((6, 6)).astype(np.float32), size)
  grain = noise_rng.random((size, size), dtype=np.float32) - np.float32(0.5)
  canvas = np.clip(canvas * contrast + bright, 0.0, 1.0) ** gamma
  canvas += 0.015 * field + (3.46 * u(0.01, 0.022)) * grain  # uniform grain, sd 1-2.2 %
  img = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return img[:, :, None], boxes

