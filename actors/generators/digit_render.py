"""Rendering for the draw-digit simulator: one deformed glyph, finished the way a digit format was made.

Every format shares the first steps (:func:`deform`, :func:`field_values`): a glyph's
distance fields (:mod:`actors.generators.digit_glyphs`) are looked up through a smooth
elastic warp (a 3x3 grid of displacement vectors, interpolated biquadratically; for the
grey formats optionally a finer field, a cubic B-spline through a 7x6 grid), shear
(italic fonts straightened first), an optional horizontal stretch and a rotation, placed
in a frame by a scale and a centre. Each format then finishes its own way:

* :func:`optdigits_images` (UCI optdigits, scikit-learn's ``load_digits``): the
  deformed digit's box is scaled to the frame's height and, separately, to a width; a
  binary 32x32 bitmap with ``ink`` pixels on is reduced to 8x8 by counting the
  on-pixels of each 4x4 block (0..16);
* :func:`grey_images` with ``centre_of_mass=True`` (MNIST, LeCun et al.): the digit is
  size-normalised, aspect ratio kept, to fit a 20x20 box, anti-aliased to grey levels
  (a supersampled pen of soft edge, area-averaged) and centred by its centre of mass in
  a 28x28 frame (the box and frame scale together at other sizes); with ``thick_x`` and
  ``thick_y`` the pen's half-width varies across the glyph box (pen pressure);
* :func:`grey_images` with ``centre_of_mass=False`` and :func:`area_resize`: the same
  grey digit centred by its box in a square frame, then a plain (area) resize to the
  data's height and width.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline

from privevo.actors.generators.digit_glyphs import FIELD_PPU, FIELD_RANGE, FIELD_SIZE

WARP_GRID = 3  # nodes per side of the elastic-warp grid
WARP_NODES = [(i, j) for i in range(WARP_GRID) for j in range(WARP_GRID)]  # (row, col)
_WARP_X_SPAN = 0.65  # glyph units between the warp grid's centre and side columns
_LAGRANGE_NODES = np.linspace(-1.0, 1.0, WARP_GRID)
# The elastic field (grey formats, ``elastic`` > 0): control points every 0.6 glyph units (about
# 6 pixels of MNIST's 20-pixel box), 7 rows over y in [-1.2, 1.2] and 6 columns over x in
# [-0.9, 0.9] (digits are narrower than tall); a cubic B-spline between them, constant beyond.
_ELASTIC_ORDER = 3
_ELASTIC_AXES = {"y": (7, 1.2), "x": (6, 0.9)}  # control points, half span
ELASTIC_SHAPE = (_ELASTIC_AXES["y"][0], _ELASTIC_AXES["x"][0])  # (rows, columns)
ELASTIC_NODES = [(i, j) for i in range(ELASTIC_SHAPE[0]) for j in range(ELASTIC_SHAPE[1])]  # (row, col)
_ELASTIC_KNOTS = {axis: np.r_[[-span] * _ELASTIC_ORDER, np.linspace(-span, span, count - _ELASTIC_ORDER + 1),
                              [span] * _ELASTIC_ORDER]
                  for axis, (count, span) in _ELASTIC_AXES.items()}


@dataclass(frozen=True)
class Atlas:
    """The glyph fields of a font list (:func:`digit_glyphs.glyph_atlas`), read-only."""

    fields: np.ndarray  # complex64, flat: real = pen field, imag = outline field
    points: np.ndarray  # (glyphs, m, 2) skeleton points, glyph units
    lengths: np.ndarray  # (glyphs,) skeleton lengths, glyph units
    lean: np.ndarray  # (fonts,) slant each font adds to its digits


# --------------------------------------------------------------------------- frame geometry


@functools.lru_cache(maxsize=None)
def _coarse_nodes(size: int, step: int) -> np.ndarray:
    """Coarse grid nodes (x, y) every ``step`` pixels covering the frame, including both edges."""
    ticks = np.arange(0, size + step, step, dtype=np.float64)
    ys, xs = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], -1)


@functools.lru_cache(maxsize=None)
def _upsampler(size: int, step: int) -> np.ndarray:
    """Bilinear weights (k nodes, size*size pixel centres) from the coarse grid."""
    ticks = np.arange(0, size + step, step, dtype=np.float64)
    k = len(ticks)
    centres = np.arange(size) + 0.5
    w1 = np.zeros((size, k))
    i0 = np.minimum((centres // step).astype(int), k - 2)
    t = (centres - ticks[i0]) / step
    w1[np.arange(size), i0] = 1 - t
    w1[np.arange(size), i0 + 1] = t
    # pixel (r, c) = sum over nodes (i, j) of w1[r, i] * w1[c, j]
    w2 = np.einsum("ri,cj->rcij", w1, w1).reshape(size * size, k * k)
    return np.ascontiguousarray(w2.T).astype(np.float32)


def _lagrange(t: np.ndarray) -> list[np.ndarray]:
    """Lagrange basis on the warp grid's nodes in [-1, 1] (t clipped to keep extrapolation tame)."""
    t = np.clip(t, -1.15, 1.15)
    out = []
    for i, xi in enumerate(_LAGRANGE_NODES):
        b = np.ones_like(t)
        for j, xj in enumerate(_LAGRANGE_NODES):
            if j != i:
                b = b * ((t - xj) / (xi - xj))
        out.append(b)
    return out


def _elastic_basis(t: np.ndarray, axis: str) -> np.ndarray:
    """Cubic B-spline basis (..., control points) of the elastic field along ``axis`` ('x' or 'y')
    at coordinates t (clipped to the field's span)."""
    count, span = _ELASTIC_AXES[axis]
    flat = np.clip(t.reshape(-1), -span, span)
    basis = BSpline.design_matrix(flat, _ELASTIC_KNOTS[axis], _ELASTIC_ORDER).toarray()
    return basis.reshape(*t.shape, count)


@dataclass
class Deformation:
    """The forward map of n glyphs: warp (plus the elastic field, when given), then ``amat``
    (shear, stretch, rotation); and the box (centre, extent; glyph units after the map) of each
    deformed skeleton."""

    amat: np.ndarray  # (n, 2, 2)
    ainv: np.ndarray
    warp: np.ndarray  # (n, 2, 9)
    centre: np.ndarray  # (n, 2)
    extent: np.ndarray  # (n, 2)
    elastic: np.ndarray | None = None  # (n, 2, rows, columns) control-point displacements (x, y)

    def displacement(self, v: np.ndarray) -> np.ndarray:
        """Warp displacement E(v) at points v (n, m, 2) in glyph units."""
        bx = _lagrange(v[..., 0] / _WARP_X_SPAN)
        by = _lagrange(v[..., 1])
        out = np.zeros_like(v)
        for k, (i, j) in enumerate(WARP_NODES):
            b = by[i] * bx[j]
            out[..., 0] += b * self.warp[:, 0, k, None]
            out[..., 1] += b * self.warp[:, 1, k, None]
        if self.elastic is not None:
            # a smooth field with local detail: the tensor-product cubic B-spline of its grid
            ex = _elastic_basis(v[..., 0], "x")
            ey = _elastic_basis(v[..., 1], "y")
            out += np.einsum("nmi,nmj,naij->nma", ey, ex, self.elastic)
        return out


def deform(atlas: Atlas, font: np.ndarray, glyph: np.ndarray, f64: dict[str, np.ndarray],
           stretch: np.ndarray | None = None) -> Deformation:
    """The deformation of each glyph from its parameters (shear, rotation, warp_*, and elastic_*
    when present; ``stretch`` widens the writing before the rotation)."""
    n = len(glyph)
    theta = np.deg2rad(f64["rotation"])
    c, s = np.cos(theta), np.sin(theta)
    sh = f64["shear"] - atlas.lean[font]
    # x right, y down; positive rotation turns counter-clockwise on screen.
    shear_m = np.stack([np.stack([np.ones(n), -sh], -1), np.stack([np.zeros(n), np.ones(n)], -1)], -2)
    if stretch is not None:
        shear_m = shear_m * np.stack([np.asarray(stretch, dtype=np.float64), np.ones(n)], -1)[:, :, None]
    rot_m = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)
    amat = rot_m @ shear_m  # (n, 2, 2), det 1 without a stretch
    ainv = np.linalg.inv(amat)
    warp = np.stack(
        [np.stack([f64[f"warp_{axis}{i}{j}"] for i, j in WARP_NODES], -1) for axis in ("x", "y")], 1
    )  # (n, 2, 9): rows are grid rows (y), columns grid columns (x)
    elastic = None
    if "elastic_x00" in f64:
        elastic = np.stack([np.stack([f64[f"elastic_{axis}{i}{j}"] for i, j in ELASTIC_NODES], -1)
                            for axis in ("x", "y")], 1).reshape(n, 2, *ELASTIC_SHAPE)
    out = Deformation(amat, ainv, warp, np.zeros((n, 2)), np.zeros((n, 2)), elastic)
    # Box of the deformed skeleton: u = v + E(v), solved for v by fixed point.
    u_pts = atlas.points[glyph].astype(np.float64)
    v_pts = u_pts.copy()
    for _ in range(4):
        v_pts = u_pts - out.displacement(v_pts)
    q_pts = v_pts @ amat.transpose(0, 2, 1)
    lo, hi = q_pts.min(1), q_pts.max(1)
    out.centre = (lo + hi) / 2.0
    out.extent = np.maximum(hi - lo, 1e-3)
    return out


def glyph_coordinates(d: Deformation, px_per_unit: np.ndarray, frame_centre: np.ndarray, size: int,
                      step: int) -> np.ndarray:
    """Glyph coordinates (n, k, 2) of the coarse grid of frame points every ``step`` pixels
    (:func:`_coarse_nodes`): where each frame point takes its ink from."""
    nodes = _coarse_nodes(size, step)  # (k, 2)
    pq = (nodes[None] - frame_centre[:, None]) / px_per_unit[:, None, :] + d.centre[:, None]
    v = pq @ d.ainv.transpose(0, 2, 1)
    return v + d.displacement(v)


def field_values(atlas: Atlas, glyph: np.ndarray, pen: np.ndarray, d: Deformation, px_per_unit: np.ndarray,
                 frame_centre: np.ndarray, size: int, step: int = 4) -> np.ndarray:
    """The blended distance field (glyph units) at every pixel centre of a size x size frame,
    (n, size*size) float32: 0 on the pen's path, growing away from it. ``px_per_unit`` (n, 2)
    and ``frame_centre`` (n, 2) place the box centre of each deformed glyph in the frame."""
    # Glyph coordinates of a coarse grid of frame points (exact), then of every pixel centre by
    # bilinear upsampling (exact for the affine part; the warp is smooth on one coarse cell).
    u = glyph_coordinates(d, px_per_unit, frame_centre, size, step)  # (n, k, 2)
    up = _upsampler(size, step)  # (k, size*size)
    fx = (u[..., 0].astype(np.float32) + np.float32(FIELD_RANGE)) @ up
    fy = (u[..., 1].astype(np.float32) + np.float32(FIELD_RANGE)) @ up
    fx *= np.float32(FIELD_PPU)
    fy *= np.float32(FIELD_PPU)

    # Nearest samples of the (fine) pen and outline fields, fetched together.
    np.clip(fx, 0.0, FIELD_SIZE - 1.0, out=fx)
    np.clip(fy, 0.0, FIELD_SIZE - 1.0, out=fy)
    fx += np.float32(0.5)
    fy += np.float32(0.5)
    index = fy.astype(np.int32)
    index *= FIELD_SIZE
    index += fx.astype(np.int32)
    index += (glyph.astype(np.int32) * (FIELD_SIZE * FIELD_SIZE))[:, None]
    both = atlas.fields[index]  # complex64: real = pen field, imag = outline field
    pen = pen.astype(np.float32)[:, None]
    value = both.imag
    value += pen * (both.real - both.imag)
    return value


# --------------------------------------------------------------------------- the formats


def optdigits_images(atlas: Atlas, font: np.ndarray, glyph: np.ndarray, f64: dict[str, np.ndarray],
                     image_size: int, render_size: int, max_value: float, bitmaps: bool = False) -> np.ndarray:
    """optdigits: a binary render_size-square bitmap with ``ink`` pixels on, reduced to
    image_size by block counts, scaled so a full block is ``max_value`` (n, image_size, image_size)
    float32; or the (n, render_size, render_size) bitmaps themselves."""
    n = len(glyph)
    size = render_size
    d = deform(atlas, font, glyph, f64)
    # optdigits-like normalisation: the box is scaled to the frame's height and to ``width``
    # separately (x at most ``max_stretch`` times y), leaving room for the stroke, whose
    # width is estimated from the ink spread along the skeleton.
    box_h = size * f64["scale"]
    box_w = f64["width"] * (size / 32.0)
    ink = np.clip(np.rint(f64["ink"] * (size / 32.0) ** 2), 1, size * size).astype(np.int64)
    sy = box_h / d.extent[:, 1]
    sx = np.minimum(box_w / d.extent[:, 0], sy * f64["max_stretch"])
    stroke = np.clip(ink / (atlas.lengths[glyph] * np.sqrt(sx * sy)), 1.0, size / 3.0)
    sy = np.maximum(box_h - stroke, 1.0) / d.extent[:, 1]
    sx = np.minimum(np.maximum(box_w - stroke, 1.0) / d.extent[:, 0], sy * f64["max_stretch"])
    px_per_unit = np.stack([sx, sy], -1)  # (n, 2)
    frame_centre = np.stack([size / 2.0 + f64["dx"], size / 2.0 + f64["dy"]], -1)
    value = field_values(atlas, glyph, f64["pen"], d, px_per_unit, frame_centre, size)
    # The binarisation threshold that turns on exactly ``ink`` pixels (ties aside).
    threshold = np.take_along_axis(np.sort(value, axis=1), (ink - 1)[:, None], axis=1)
    bitmap = (value <= threshold).view(np.uint8)
    if bitmaps:
        return bitmap.reshape(n, size, size).astype(bool)

    # Block sums: four bytes of 0/1 at a time via one multiply, then rows.
    b = size // image_size
    if b == 4:
        words = bitmap.reshape(n, size, size).view(np.uint32)  # (n, size, size / 4)
        per_row = (words * np.uint32(0x01010101)) >> np.uint32(24)
        counts = per_row.reshape(n, image_size, b, image_size).sum(2, dtype=np.int32)
    else:
        counts = bitmap.reshape(n, image_size, b, image_size, b).sum((2, 4), dtype=np.int32)
    return counts.astype(np.float32) * np.float32(max_value / (b * b))


def grey_images(atlas: Atlas, font: np.ndarray, glyph: np.ndarray, f64: dict[str, np.ndarray], size: int,
                box: float, supersample: int, centre_of_mass: bool) -> np.ndarray:
    """Anti-aliased grey digits (n, size, size) float32 in [0, 1].

    The deformed digit, pen of half-width ``stroke`` glyph units included, is scaled with its
    aspect ratio kept so that its longer side spans ``box`` pixels (times ``scale`` when given),
    drawn at ``supersample`` times the resolution with a one-fine-pixel soft edge, centred by its
    box (offset by ``dx``, ``dy`` frame fractions when given) or by its centre of mass (to the
    nearest fine pixel), and area-averaged down to ``size``.
    """
    n = len(glyph)
    fine = size * supersample
    d = deform(atlas, font, glyph, f64, stretch=f64["aspect"])
    radius = f64["stroke"]
    inked = d.extent + 2.0 * radius[:, None]
    span = box * supersample * f64.get("scale", np.ones(n))
    ppu = span / inked.max(1)
    px_per_unit = np.stack([ppu, ppu], -1)
    shift = np.stack([f64.get("dx", np.zeros(n)), f64.get("dy", np.zeros(n))], -1) * fine
    frame_centre = fine / 2.0 + shift
    step = max(4, 2 * supersample)
    value = field_values(atlas, glyph, f64["pen"], d, px_per_unit, frame_centre, fine, step)
    if "thick_x" in f64:
        # pressure: the pen's half-width grows by a factor exp(thick . u) across the glyph
        u = glyph_coordinates(d, px_per_unit, frame_centre, fine, step)
        u = np.clip(u, -1.0, 1.0)  # the glyph box: no growth beyond it
        log_gain = u[..., 0] * f64["thick_x"][:, None] + u[..., 1] * f64["thick_y"][:, None]
        radius = (radius[:, None] * np.exp(log_gain)).astype(np.float32) @ _upsampler(fine, step)
    else:
        radius = radius.astype(np.float32)[:, None]
    # coverage: 1 inside the pen, 0 outside, a linear ramp one fine pixel wide across its edge
    cover = (radius - value) * ppu.astype(np.float32)[:, None] + np.float32(0.5)
    np.clip(cover, 0.0, 1.0, out=cover)
    cover = cover.reshape(n, fine, fine)
    if centre_of_mass:
        cover = _centre_by_mass(cover)
    return cover.reshape(n, size, supersample, size, supersample).mean((2, 4), dtype=np.float32)


def _centre_by_mass(images: np.ndarray) -> np.ndarray:
    """Each image translated (whole pixels, zeros shifted in) so its centre of mass is the frame's centre."""
    n, h, w = images.shape
    mass = images.sum((1, 2), dtype=np.float64)
    safe = np.where(mass > 0, mass, 1.0)
    rows = np.arange(h) + 0.5
    cols = np.arange(w) + 0.5
    cy = (images.sum(2, dtype=np.float64) @ rows) / safe
    cx = (images.sum(1, dtype=np.float64) @ cols) / safe
    dy = np.where(mass > 0, np.rint(h / 2.0 - cy), 0).astype(np.int64)
    dx = np.where(mass > 0, np.rint(w / 2.0 - cx), 0).astype(np.int64)
    src_r = np.arange(h)[None, :] - dy[:, None]  # (n, h): output row i takes row i - dy
    src_c = np.arange(w)[None, :] - dx[:, None]
    keep = ((src_r >= 0) & (src_r < h))[:, :, None] & ((src_c >= 0) & (src_c < w))[:, None, :]
    out = images[np.arange(n)[:, None, None], np.clip(src_r, 0, h - 1)[:, :, None], np.clip(src_c, 0, w - 1)[:, None, :]]
    out *= keep
    return out


@functools.lru_cache(maxsize=None)
def _area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights: each output pixel the mean of the source pixels it covers (fractions at edges)."""
    edges = np.linspace(0.0, src, dst + 1)
    m = np.zeros((dst, src))
    for i in range(dst):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), min(src, int(np.ceil(hi)))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
    return (m / m.sum(1, keepdims=True)).astype(np.float32)


def area_resize(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Images (n, h, w) resized to (n, *shape) by area averaging (the identity at the same size)."""
    h, w = images.shape[1:]
    if (h, w) == tuple(shape):
        return images
    return np.einsum("hs,nst,wt->nhw", _area_matrix(h, shape[0]), images, _area_matrix(w, shape[1]),
                     optimize=True).astype(np.float32)
