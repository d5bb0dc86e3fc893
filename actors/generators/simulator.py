"""The draw-digit simulator: PE's "foundation model" for the digits demo.

The private set of the demo is scikit-learn's ``load_digits`` (UCI optdigits):
handwritten digits were scanned into binary 32x32 bitmaps, normalised in size and
position, then reduced to 8x8 by counting the on-pixels of each non-overlapping
4x4 block (integer values 0..16). The simulator follows the same process:

1. a glyph of the digit, from a font or from one of a few built-in hand styles (pen
   strokes: a '1' with a flag and no base, a crossed '7', an open '4', ...), turned
   once, when the simulator loads, into two distance fields: distance to the
   glyph's skeleton (a pen of even width, like handwriting) and a signed distance
   to its outline (the font's own thick and thin strokes);
2. a smooth elastic warp (a 3x3 grid of displacement vectors, interpolated
   biquadratically), then shear (slant; italic fonts are straightened first) and
   rotation;
3. optdigits-like normalisation: the deformed digit's bounding box is scaled to
   the frame's height and, separately, to a box width of about 20 pixels (a
   narrow digit is stretched at most ``max_stretch`` times), centred and offset;
4. a binary 32x32 bitmap with ``ink`` pixels on: the (blended) distance field is
   thresholded where the ``ink`` nearest pixels end, which sets the stroke width
   (optdigits bitmaps hold about 310 on-pixels whatever the digit); then 4x4 block
   sums give the 8x8 image in 0..16.

Each sample is described by its parameters (the "genome", :data:`PARAM_SPECS`),
stored column-wise in ``SampleBatch.params``; rendering is a pure function of
labels and parameters, so ``variation`` only perturbs parameters. Glyph fields are
built once per (font, digit) and every image costs one vectorised field lookup: no
text is rasterised after loading.

The priors were set from what is public about optdigits (the process above) and
from summary statistics of the held-out split (ink per image, slant, column
extent), never from the private split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from scipy.special import ndtr, ndtri

from privevo.actors.generators.base import SampleBatch
from privevo.actors.generators.digit_glyphs import (
    FIELD_PPU,
    FIELD_RANGE,
    FIELD_SIZE,
    HAND_PREFIX,
    HAND_STYLES,
    default_fonts,
    font_renders_digits,
    glyph_atlas,
    is_hand,
    resolve_font,
)

__all__ = [
    "DigitSimulator",
    "ParamSpec",
    "PARAM_SPECS",
    "default_fonts",
    "font_renders_digits",
    "param_table",
]


@dataclass(frozen=True)
class ParamSpec:
    """One simulator parameter: its range, its prior and how far ``variation`` moves it.

    ``prior`` is ``"normal"`` (mean, std; clipped to [low, high]), ``"uniform"``
    (on [low, high]) or ``"categorical"`` (uniform over the fonts; ``low``/``high``
    are filled in per simulator). ``variation`` scales ``degree``: the parameter is
    resampled in its prior's standard-normal coordinate z as
    ``z' = sqrt(1 - a^2) z + a eps`` with ``a = min(1, degree * variation)``, so
    degree 0 keeps it and ``a = 1`` is a fresh prior draw.
    """

    name: str
    low: float
    high: float
    prior: str
    mean: float = 0.0
    std: float = 1.0
    variation: float = 1.0
    unit: str = ""
    doc: str = ""


# Pixel units refer to the 32x32 bitmap; "glyph units" to the glyph's own frame,
# in which the undeformed digit spans [-1, 1] vertically.
_WARP_STD = 0.11
_WARP_LIMIT = 0.4
_WARP_GRID = 3  # nodes per side of the elastic-warp grid
_WARP_NODES = [(i, j) for i in range(_WARP_GRID) for j in range(_WARP_GRID)]  # (row, col)

PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("font", 0, 0, "categorical", variation=1.0, unit="index",
              doc="index into DigitSimulator.fonts; switches (to a prior draw) with probability degree**3"),
    ParamSpec("scale", 0.80, 1.0, "normal", 0.97, 0.04, 1.0, "fraction",
              doc="height of the digit's box as a fraction of the 32-pixel frame"),
    ParamSpec("width", 12.0, 28.0, "normal", 19.5, 1.5, 1.0, "px",
              doc="width of the normalised digit's box (optdigits stretches x and y separately)"),
    ParamSpec("max_stretch", 1.0, 3.0, "normal", 1.3, 0.4, 1.0, "ratio",
              doc="most the x scale may exceed the y scale (narrow digits stay narrower than width)"),
    ParamSpec("shear", -0.45, 0.45, "normal", -0.02, 0.12, 1.0, "dx/dy",
              doc="slant: horizontal shift per unit height, positive leans right"),
    ParamSpec("rotation", -15.0, 15.0, "normal", 0.0, 4.0, 1.0, "degrees",
              doc="rotation about the glyph centre, positive counter-clockwise"),
    ParamSpec("ink", 170.0, 450.0, "normal", 310.0, 35.0, 1.0, "px",
              doc="on-pixels of the 32x32 bitmap: sets the stroke width (binarisation threshold)"),
    ParamSpec("pen", 0.0, 1.0, "uniform", variation=1.0, unit="blend",
              doc="1: uniform pen along the glyph skeleton; 0: the font's own outline"),
    ParamSpec("dx", -3.0, 3.0, "normal", -0.3, 0.8, 1.0, "px",
              doc="horizontal offset of the normalised digit"),
    ParamSpec("dy", -2.0, 2.0, "normal", 0.0, 0.5, 1.0, "px",
              doc="vertical offset of the normalised digit"),
) + tuple(
    ParamSpec(f"warp_{axis}{i}{j}", -_WARP_LIMIT, _WARP_LIMIT, "normal", 0.0, _WARP_STD, 1.0,
              "glyph units",
              doc=f"{axis}-displacement of node ({i},{j}) of the 3x3 elastic-warp grid")
    for axis in ("x", "y")
    for i, j in _WARP_NODES
)

_CONTINUOUS = tuple(s for s in PARAM_SPECS if s.prior != "categorical")
HAND_WEIGHT = 0.8  # prior probability of a hand style when fonts are in use too


def param_table() -> str:
    """The parameter table (name, range, prior, variation scale, meaning) as Markdown."""
    lines = [
        "| name | low | high | prior | variation | unit | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in PARAM_SPECS:
        if s.prior == "normal":
            prior = f"N({s.mean:g}, {s.std:g}) clipped"
        elif s.prior == "uniform":
            prior = "uniform"
        else:
            prior = f"hand style w.p. {HAND_WEIGHT:g}, else a font; uniform within each"
        rng = ("0", "n_fonts-1") if s.prior == "categorical" else (f"{s.low:g}", f"{s.high:g}")
        lines.append(f"| {s.name} | {rng[0]} | {rng[1]} | {prior} | {s.variation:g} | {s.unit} | {s.doc} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- frame geometry

_COARSE_STEP = 4  # frame pixels between coarse grid nodes


@functools.lru_cache(maxsize=None)
def _coarse_nodes(size: int) -> np.ndarray:
    """Coarse grid nodes (x, y) covering the frame, including both edges."""
    ticks = np.arange(0, size + _COARSE_STEP, _COARSE_STEP, dtype=np.float64)
    ys, xs = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], -1)


@functools.lru_cache(maxsize=None)
def _upsampler(size: int) -> np.ndarray:
    """Bilinear weights (k nodes, size*size pixel centres) from the coarse grid."""
    ticks = np.arange(0, size + _COARSE_STEP, _COARSE_STEP, dtype=np.float64)
    k = len(ticks)
    centres = np.arange(size) + 0.5
    w1 = np.zeros((size, k))
    i0 = np.minimum((centres // _COARSE_STEP).astype(int), k - 2)
    t = (centres - ticks[i0]) / _COARSE_STEP
    w1[np.arange(size), i0] = 1 - t
    w1[np.arange(size), i0 + 1] = t
    # pixel (r, c) = sum over nodes (i, j) of w1[r, i] * w1[c, j]
    w2 = np.einsum("ri,cj->rcij", w1, w1).reshape(size * size, k * k)
    return np.ascontiguousarray(w2.T).astype(np.float32)


_LAGRANGE_NODES = np.linspace(-1.0, 1.0, _WARP_GRID)


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


_WARP_X_SPAN = 0.65  # glyph units between the warp grid's centre and side columns


# --------------------------------------------------------------------------- the simulator


class SimulatorOptions(BaseModel, extra="forbid"):
    """``generator.options`` of the ``simulator`` kind."""

    fonts: list[str] | None = None
    image_size: int = Field(8, ge=1)
    render_size: int = Field(32, ge=1)
    max_value: float = Field(16.0, gt=0)


class DigitSimulator:
    """Draws 8x8 optdigits-like images of digits from fonts, warps and pen strokes.

    A plain class (the PE driver wraps it in ``ray.remote``): the constructor only
    records its arguments; glyph fields are built on first use (one to two seconds)
    and shared by the simulators of a process. ``params["font"]`` indexes
    :attr:`fonts`: by default the digit-drawing fonts matplotlib ships (sorted by
    file name), then the built-in hand styles ``hand-0`` .. ``hand-4``. ``fonts``
    may name font files, matplotlib font file names, or hand styles.
    """

    modality = "image"
    Options = SimulatorOptions

    @classmethod
    def from_options(cls, options: SimulatorOptions, context=None) -> DigitSimulator:
        """The simulator a config's ``generator.options`` describe (the plugin contract), its glyph
        atlas built now: a worker's start-up, not its first call, pays for rendering the fonts."""
        simulator = cls(**options.model_dump())
        simulator._load()
        return simulator

    def __init__(
        self,
        fonts: list[str] | None = None,
        image_size: int = 8,
        render_size: int = 32,
        max_value: float = 16.0,
    ) -> None:
        if render_size % image_size != 0:
            raise ValueError(
                f"DigitSimulator: render_size {render_size} must be a multiple of image_size {image_size}"
            )
        if max_value <= 0:
            raise ValueError(f"DigitSimulator: max_value must be > 0, got {max_value}")
        self._font_args = None if fonts is None else list(fonts)
        self.image_size = int(image_size)
        self.render_size = int(render_size)
        self.max_value = float(max_value)
        self._paths: list[str] | None = None
        self._fields: np.ndarray | None = None
        self._points: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._font_lean: np.ndarray | None = None

    # -- fonts and glyph cache ------------------------------------------------------

    def _font_paths(self) -> list[str]:
        if self._paths is None:
            if self._font_args is None:
                paths = default_fonts() + [f"{HAND_PREFIX}{k}" for k in range(HAND_STYLES)]
            else:
                paths = [f if is_hand(f) else resolve_font(f) for f in self._font_args]
                bad = [p for p in paths if not is_hand(p) and not font_renders_digits(p)]
                if bad:
                    raise ValueError(f"DigitSimulator: fonts without real digit glyphs: {bad}")
            if not paths:
                raise ValueError("DigitSimulator: no usable fonts")
            self._paths = paths
        return self._paths

    @property
    def fonts(self) -> list[str]:
        """Names (file stems, or ``hand-k``) of the fonts in use, in ``params['font']`` order."""
        return [Path(p).stem for p in self._font_paths()]

    @property
    def n_fonts(self) -> int:
        return len(self._font_paths())

    def _load(self) -> None:
        if self._fields is None:
            self._fields, self._points, self._lengths, self._font_lean = glyph_atlas(tuple(self._font_paths()))

    def glyph_fields(self, font: int, digit: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached (pen, outline) distance fields of one glyph, for inspection."""
        self._load()
        g = font * 10 + digit
        size = FIELD_SIZE * FIELD_SIZE
        shape = (FIELD_SIZE, FIELD_SIZE)
        both = self._fields[g * size : (g + 1) * size].reshape(shape)
        return both.real.copy(), both.imag.copy()

    def __getstate__(self) -> dict:
        # Ship only the cheap constructor state; the receiver rebuilds the cache.
        state = self.__dict__.copy()
        state.update(_fields=None, _points=None, _lengths=None, _font_lean=None)
        return state

    # -- the Generator protocol -----------------------------------------------------

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """One fresh sample from the prior for each label."""
        labels = self._check_labels(labels)
        rng = np.random.default_rng(seed)
        n = len(labels)
        params: dict[str, np.ndarray] = {"font": self._draw_fonts(rng, n)}
        for spec in _CONTINUOUS:
            params[spec.name] = _from_z(spec, rng.standard_normal(n))
        return SampleBatch(labels=labels, samples=self.render(labels, params), params=params)

    def variation(self, parents: SampleBatch, degree: float | np.ndarray, seed: int) -> SampleBatch:
        """One sample near each parent; ``degree`` (scalar or per row) in [0, 1]."""
        n = len(parents)
        degree = np.broadcast_to(np.asarray(degree, dtype=np.float64), (n,))
        if np.any(~np.isfinite(degree)) or np.any(degree < 0) or np.any(degree > 1):
            raise ValueError("DigitSimulator.variation: degree must lie in [0, 1]")
        missing = [s.name for s in PARAM_SPECS if s.name not in parents.params]
        if missing:
            raise ValueError(f"DigitSimulator.variation: parents lack params {missing}")
        labels = self._check_labels(parents.labels)
        rng = np.random.default_rng(seed)
        font = np.asarray(parents.params["font"], dtype=np.int64).copy()
        switch = rng.random(n) < degree**3
        font[switch] = self._draw_fonts(rng, int(switch.sum()))
        params: dict[str, np.ndarray] = {"font": np.clip(font, 0, self.n_fonts - 1)}
        for spec in _CONTINUOUS:
            a = np.minimum(1.0, degree * spec.variation)
            z = _to_z(spec, np.asarray(parents.params[spec.name], dtype=np.float64))
            z = np.sqrt(1.0 - a * a) * z + a * rng.standard_normal(n)
            params[spec.name] = _from_z(spec, z)
        return SampleBatch(labels=labels, samples=self.render(labels, params), params=params)

    def _draw_fonts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Font indices from the prior: a hand style with probability HAND_WEIGHT
        (when both kinds are in use), else uniform within the kind."""
        hand = np.flatnonzero([is_hand(p) for p in self._font_paths()])
        typed = np.flatnonzero([not is_hand(p) for p in self._font_paths()])
        pick_hand = rng.random(n) < HAND_WEIGHT
        if len(hand) == 0 or len(typed) == 0:
            pick_hand[:] = len(hand) > 0
        out = np.empty(n, dtype=np.int64)
        out[pick_hand] = hand[rng.integers(0, max(len(hand), 1), size=int(pick_hand.sum()))] if len(hand) else 0
        out[~pick_hand] = typed[rng.integers(0, max(len(typed), 1), size=int((~pick_hand).sum()))] if len(typed) else 0
        return out

    # -- rendering ------------------------------------------------------------------

    def render(self, labels: np.ndarray, params: dict[str, np.ndarray], chunk: int = 256) -> np.ndarray:
        """Images (n, image_size, image_size) float32 in 0..max_value; deterministic.

        Values are multiples of ``max_value / (render_size / image_size) ** 2``
        (integers 0..16 by default): block counts of a binary bitmap.
        """
        labels = self._check_labels(labels)
        n = len(labels)
        missing = [s.name for s in PARAM_SPECS if s.name not in params]
        if missing:
            raise ValueError(f"DigitSimulator.render: params lack {missing}")
        short = [s.name for s in PARAM_SPECS if len(params[s.name]) != n]
        if short:
            raise ValueError(f"DigitSimulator.render: params {short} do not have {n} rows")
        self._load()
        out = np.empty((n, self.image_size, self.image_size), dtype=np.float32)
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            part = {k: np.asarray(v)[sl] for k, v in params.items()}
            out[sl] = self._render_chunk(labels[sl], part)
        return out

    def render_bitmaps(self, labels: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        """The binary (n, render_size, render_size) bitmaps behind :meth:`render`, for inspection."""
        labels = self._check_labels(labels)
        self._load()
        return self._render_chunk(labels, {k: np.asarray(v) for k, v in params.items()}, bitmaps=True)

    def _render_chunk(self, labels: np.ndarray, p: dict[str, np.ndarray], bitmaps: bool = False) -> np.ndarray:
        n = len(labels)
        size = self.render_size
        font = np.clip(np.asarray(p["font"], dtype=np.int64), 0, self.n_fonts - 1)
        glyph = font * 10 + labels
        f64 = {k: np.asarray(v, dtype=np.float64) for k, v in p.items() if k != "font"}

        # Affine part, forward map v -> A v: shear, then rotation.
        theta = np.deg2rad(f64["rotation"])
        c, s = np.cos(theta), np.sin(theta)
        sh = f64["shear"] - self._font_lean[font]
        # x right, y down; positive rotation turns counter-clockwise on screen.
        shear_m = np.stack([np.stack([np.ones(n), -sh], -1), np.stack([np.zeros(n), np.ones(n)], -1)], -2)
        rot_m = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)
        amat = rot_m @ shear_m  # (n, 2, 2), det 1
        ainv = np.linalg.inv(amat)

        warp = np.stack(
            [np.stack([f64[f"warp_{axis}{i}{j}"] for i, j in _WARP_NODES], -1) for axis in ("x", "y")], 1
        )  # (n, 2, 9): rows are grid rows (y), columns grid columns (x)

        def displacement(v: np.ndarray) -> np.ndarray:
            """Warp displacement E(v) at points v (n, m, 2) in glyph units."""
            bx = _lagrange(v[..., 0] / _WARP_X_SPAN)
            by = _lagrange(v[..., 1])
            out = np.zeros_like(v)
            for k, (i, j) in enumerate(_WARP_NODES):
                b = by[i] * bx[j]
                out[..., 0] += b * warp[:, 0, k, None]
                out[..., 1] += b * warp[:, 1, k, None]
            return out

        # Bounding box of the deformed skeleton: u = v + E(v), solved for v by fixed point.
        u_pts = self._points[glyph].astype(np.float64)
        v_pts = u_pts.copy()
        for _ in range(4):
            v_pts = u_pts - displacement(v_pts)
        q_pts = v_pts @ amat.transpose(0, 2, 1)
        lo, hi = q_pts.min(1), q_pts.max(1)
        centre = (lo + hi) / 2.0
        extent = np.maximum(hi - lo, 1e-3)
        # optdigits-like normalisation: the box is scaled to the frame's height and to
        # ``width`` separately (x at most ``max_stretch`` times y), leaving room for the
        # stroke, whose width is estimated from the ink spread along the skeleton.
        box_h = size * f64["scale"]
        box_w = f64["width"] * (size / 32.0)
        ink = np.clip(np.rint(f64["ink"] * (size / 32.0) ** 2), 1, size * size).astype(np.int64)
        sy = box_h / extent[:, 1]
        sx = np.minimum(box_w / extent[:, 0], sy * f64["max_stretch"])
        stroke = np.clip(ink / (self._lengths[glyph] * np.sqrt(sx * sy)), 1.0, size / 3.0)
        sy = np.maximum(box_h - stroke, 1.0) / extent[:, 1]
        sx = np.minimum(np.maximum(box_w - stroke, 1.0) / extent[:, 0], sy * f64["max_stretch"])
        px_per_unit = np.stack([sx, sy], -1)  # (n, 2)
        frame_centre = np.stack([size / 2.0 + f64["dx"], size / 2.0 + f64["dy"]], -1)

        # Glyph coordinates of a coarse grid of frame points (exact), then of every
        # pixel centre by bilinear upsampling (exact for the affine part; the warp is
        # smooth on the scale of one coarse cell).
        nodes = _coarse_nodes(size)  # (k, 2)
        pq = (nodes[None] - frame_centre[:, None]) / px_per_unit[:, None, :] + centre[:, None]
        v = pq @ ainv.transpose(0, 2, 1)
        u = v + displacement(v)  # (n, k, 2)
        up = _upsampler(size)  # (k, size*size)
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
        both = self._fields[index]  # complex64: real = pen field, imag = outline field
        pen = f64["pen"].astype(np.float32)[:, None]
        value = both.imag
        value += pen * (both.real - both.imag)
        # The binarisation threshold that turns on exactly ``ink`` pixels (ties aside).
        threshold = np.take_along_axis(np.sort(value, axis=1), (ink - 1)[:, None], axis=1)
        bitmap = (value <= threshold).view(np.uint8)
        if bitmaps:
            return bitmap.reshape(n, size, size).astype(bool)

        # 4x4 block sums: four bytes of 0/1 at a time via one multiply, then rows.
        b = size // self.image_size
        if b == 4:
            words = bitmap.reshape(n, size, size).view(np.uint32)  # (n, 32, 8)
            per_row = (words * np.uint32(0x01010101)) >> np.uint32(24)
            counts = per_row.reshape(n, self.image_size, b, self.image_size).sum(2, dtype=np.int32)
        else:
            counts = bitmap.reshape(n, self.image_size, b, self.image_size, b).sum((2, 4), dtype=np.int32)
        return counts.astype(np.float32) * np.float32(self.max_value / (b * b))

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _check_labels(labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError("DigitSimulator: labels must be digits 0..9")
        return labels


def _to_z(spec: ParamSpec, x: np.ndarray) -> np.ndarray:
    """A parameter value in its prior's standard-normal coordinate."""
    if spec.prior == "normal":
        return (x - spec.mean) / spec.std
    frac = (x - spec.low) / (spec.high - spec.low)
    return ndtri(np.clip(frac, 1e-9, 1 - 1e-9))


def _from_z(spec: ParamSpec, z: np.ndarray) -> np.ndarray:
    """A standard-normal coordinate back to a parameter value, clipped to its range."""
    if spec.prior == "normal":
        x = spec.mean + spec.std * z
    else:
        x = spec.low + (spec.high - spec.low) * ndtr(z)
    return np.clip(x, spec.low, spec.high)
