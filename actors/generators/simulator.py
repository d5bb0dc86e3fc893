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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from pydantic import BaseModel, Field
from scipy.special import ndtr, ndtri

from actors.generators.base import SampleBatch

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


# --------------------------------------------------------------------------- fonts

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _matplotlib_font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render_mask(path: str, char: str, size: int) -> np.ndarray:
    """Binary ink mask of one character, cropped to its ink (empty array if none)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(path, size)
    canvas = 3 * size
    im = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(im).text((size, size // 2), char, fill=255, font=font)
    ink = np.asarray(im) >= 128
    if not ink.any():
        return np.zeros((0, 0), dtype=bool)
    rows = np.flatnonzero(ink.any(1))
    cols = np.flatnonzero(ink.any(0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def font_renders_digits(path: str) -> bool:
    """Whether a font really draws '0'..'9': mapped, named as digits, inked and distinct.

    Symbol fonts (cmsy10, cmex10, STIXSize*) map the digit code points to other
    glyphs; display and "non-unicode" fonts map none; LastResort draws one
    placeholder for all of them.
    """
    try:
        from fontTools.ttLib import TTFont

        table = TTFont(path, lazy=True)["cmap"]
        sub = table.getcmap(3, 1) or table.getcmap(3, 0) or table.getcmap(1, 0)
        cmap = sub.cmap if sub is not None else {}
    except Exception:
        return False
    for d, word in enumerate(_DIGIT_NAMES):
        glyph = cmap.get(0x30 + d)
        if glyph is None:
            return False
        informative = not glyph.startswith(("glyph", "cid"))
        if informative and not (glyph.startswith(word) or glyph.lower() in (f"uni{0x30 + d:04x}", f"u{0x30 + d:04x}")):
            return False
    masks = []
    for d in range(10):
        m = _render_mask(path, str(d), 32)
        if m.size == 0 or m.sum() < 10:
            return False
        masks.append(m)
    for a in range(10):
        for b in range(a + 1, 10):
            if masks[a].shape == masks[b].shape and np.array_equal(masks[a], masks[b]):
                return False
    return True


@functools.lru_cache(maxsize=None)
def _default_fonts(folder: str) -> tuple[str, ...]:
    paths = sorted(str(p) for p in Path(folder).glob("*.ttf"))
    return tuple(p for p in paths if font_renders_digits(p))


def default_fonts() -> list[str]:
    """The TTF fonts matplotlib ships that draw real digits, sorted by file name.

    Only matplotlib's own fonts, so the default set (and so every seeded sample) is
    the same on every machine with the same matplotlib; system fonts only when passed.
    """
    return list(_default_fonts(str(_matplotlib_font_dir())))


def _resolve_font(name: str) -> str:
    """A font path from a path or a matplotlib font file name (with or without .ttf)."""
    if os.path.isfile(name):
        return name
    folder = _matplotlib_font_dir()
    for candidate in (folder / name, folder / f"{name}.ttf"):
        if candidate.is_file():
            return str(candidate)
    raise ValueError(f"DigitSimulator: font {name!r} is neither a file nor a matplotlib font in {folder}")


# --------------------------------------------------------------------------- glyph fields

_FIELD_RANGE = 1.6  # glyph fields cover [-R, R]^2 glyph units
_FIELD_PPU = 32  # field samples per glyph unit
_FIELD_SIZE = int(round(2 * _FIELD_RANGE * _FIELD_PPU)) + 1
_GLYPH_POINTS = 48  # skeleton points kept per glyph for the bounding box
_RENDER_PT = 96  # font size used to rasterise glyphs once


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Zhang-Suen deletion rules for both sub-iterations, indexed by the 8-neighbour code.

    Bit k of the code is neighbour P(k+2) in Zhang and Suen's numbering: north, then
    clockwise (north-east, east, ..., north-west).
    """
    tables = np.zeros((2, 256), dtype=bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # p[0] = P2 (north) ... p[7] = P9 (north-west)
        count = sum(p)
        trans = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
        p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
        base = 2 <= count <= 6 and trans == 1
        tables[0, code] = base and p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        tables[1, code] = base and p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return tables[0], tables[1]


_THIN_TABLES = _thinning_tables()


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel-wide skeleton of a binary mask."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for table in _THIN_TABLES:
            ring = (img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                    img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2])
            code = np.zeros(mask.shape, dtype=np.uint8)
            for k, nb in enumerate(ring):
                code |= nb << k
            remove = (img[1:-1, 1:-1] == 1) & table[code]
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


# --------------------------------------------------------------------------- hand styles
#
# Fonts draw printed digits; people write some digits differently: a '1' with a long
# flag and no base, a '7' with a crossbar, an open '4', a '9' with a straight stem.
# These built-in styles draw each digit as pen strokes (polylines in a box x in
# [0, 0.6], y in [0, 1], y down); style k uses variant k of each digit (cycling).


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 40) -> list:
    """Points of an elliptic arc; angles in degrees, 0 = east, 90 = north (up)."""
    a = np.deg2rad(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(a), cy - ry * np.sin(a)))


def _bezier(*ctrl: tuple[float, float], n: int = 30) -> list:
    """Points of a Bezier curve through its control points."""
    from math import comb

    t = np.linspace(0.0, 1.0, n)[:, None]
    k = len(ctrl) - 1
    pts = sum(comb(k, i) * (1 - t) ** (k - i) * t**i * np.asarray(c, dtype=float) for i, c in enumerate(ctrl))
    return [tuple(p) for p in pts]


def _figure_eight(n: int = 80, top: float = 0.5) -> list:
    """A figure eight drawn in one stroke; ``top`` is the height share of the upper loop."""
    t = np.linspace(0.0, 2 * np.pi, n)
    y = 0.5 - 0.5 * np.cos(t)
    y = np.where(y < 0.5, y * 2 * top, 2 * top * 0.5 + (y - 0.5) * 2 * (1 - top))
    return list(zip(0.3 + 0.27 * np.sin(2 * t), y))


def _superellipse(cx: float, cy: float, rx: float, ry: float, p: float = 3.0, n: int = 60) -> list:
    t = np.linspace(0.0, 2 * np.pi, n)
    c, s = np.cos(t), np.sin(t)
    return list(zip(cx + rx * np.sign(c) * np.abs(c) ** (2 / p), cy - ry * np.sign(s) * np.abs(s) ** (2 / p)))


def _rotated(points: list, degrees: float, cx: float = 0.3, cy: float = 0.5) -> list:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return [(cx + c * (x - cx) + s * (y - cy), cy - s * (x - cx) + c * (y - cy)) for x, y in points]


_LOOP9 = _arc(0.3, 0.25, 0.27, 0.24, 0, 360)

_HAND_VARIANTS: dict[int, list[list[list]]] = {
    0: [
        [_arc(0.3, 0.5, 0.28, 0.49, 0, 360)],
        [_arc(0.3, 0.5, 0.24, 0.49, 70, 445)],
        [_bezier((0.35, 0.0), (-0.15, 0.05), (-0.05, 1.05), (0.3, 1.0))
         + _bezier((0.3, 1.0), (0.7, 0.95), (0.75, -0.05), (0.3, 0.02))],
        [_rotated(_arc(0.3, 0.5, 0.22, 0.5, 0, 360), -12)],
        [_superellipse(0.3, 0.5, 0.28, 0.49, 3.0)],
    ],
    1: [
        [[(0.4, 0.0), (0.4, 1.0)], [(0.4, 0.0), (0.08, 0.4)]],
        [[(0.35, 0.0), (0.35, 1.0)], [(0.35, 0.0), (0.12, 0.22)], [(0.12, 1.0), (0.58, 1.0)]],
        [[(0.38, 0.0), (0.36, 1.0)], [(0.38, 0.0), (0.22, 0.16)]],
        [[(0.42, 1.0), (0.42, 0.0), (0.06, 0.45), (0.42, 0.42)]],
        [[(0.4, 0.0), (0.4, 1.0)], _bezier((0.4, 0.0), (0.3, 0.2), (0.12, 0.25))],
    ],
    2: [
        [_arc(0.3, 0.28, 0.27, 0.27, 160, -35) + [(0.03, 1.0), (0.6, 1.0)]],
        [_arc(0.3, 0.27, 0.26, 0.26, 170, -30)
         + _bezier((0.52, 0.42), (0.3, 0.75), (0.0, 0.9), (0.08, 1.0), (0.3, 0.93), (0.6, 0.98))],
        [[(0.03, 0.05)] + _bezier((0.03, 0.05), (0.6, -0.08), (0.62, 0.25)) + [(0.02, 1.0), (0.6, 1.0)]],
        [_arc(0.3, 0.3, 0.28, 0.29, 150, -20) + _bezier((0.56, 0.4), (0.35, 0.7), (0.05, 1.0))
         + _bezier((0.05, 1.0), (0.3, 0.92), (0.6, 0.96))],
        [_arc(0.3, 0.22, 0.22, 0.22, 170, -40) + [(0.05, 1.0), (0.6, 0.98)]],
    ],
    3: [
        [_arc(0.27, 0.26, 0.26, 0.25, 155, -90) + _arc(0.27, 0.74, 0.3, 0.26, 90, -155)],
        [[(0.04, 0.0), (0.56, 0.0), (0.22, 0.4)] + _arc(0.28, 0.7, 0.3, 0.29, 100, -155)],
        [_arc(0.3, 0.25, 0.25, 0.24, 170, -60) + [(0.25, 0.48)] + _arc(0.27, 0.74, 0.3, 0.26, 80, -170)],
        [_arc(0.3, 0.2, 0.2, 0.2, 160, -90) + _arc(0.28, 0.68, 0.3, 0.32, 90, -160)],
        [_arc(0.28, 0.27, 0.26, 0.27, 200, -90) + _arc(0.28, 0.76, 0.28, 0.24, 90, -200)],
    ],
    4: [
        [[(0.2, 0.0), (0.05, 0.6), (0.6, 0.6)], [(0.45, 0.0), (0.45, 1.0)]],
        [[(0.45, 1.0), (0.45, 0.0), (0.0, 0.65), (0.6, 0.65)]],
        [[(0.1, 0.0), (0.08, 0.55), (0.6, 0.55)], [(0.45, 0.05), (0.43, 1.0)]],
        [[(0.05, 0.0), (0.05, 0.58), (0.6, 0.58)], [(0.42, 0.0), (0.42, 1.0)]],
        [[(0.35, 0.0), (0.02, 0.58), (0.6, 0.58)], [(0.5, 0.3), (0.48, 1.0)]],
    ],
    5: [
        [[(0.56, 0.0), (0.1, 0.0), (0.08, 0.46)] + _arc(0.28, 0.7, 0.28, 0.29, 130, -150)],
        [[(0.1, 0.0), (0.06, 0.45)] + _bezier((0.06, 0.45), (0.65, 0.25), (0.7, 1.05), (0.02, 0.92)),
         [(0.1, 0.0), (0.58, 0.02)]],
        [[(0.58, 0.0), (0.12, 0.02), (0.06, 0.5), (0.4, 0.45), (0.58, 0.65), (0.5, 0.95), (0.02, 0.95)]],
        [[(0.5, 0.0), (0.12, 0.0), (0.1, 0.4)] + _arc(0.3, 0.68, 0.26, 0.31, 120, -160)],
        [_bezier((0.58, 0.02), (0.1, -0.02), (0.02, 0.45)) + _arc(0.3, 0.72, 0.28, 0.27, 150, -140)],
    ],
    6: [
        [_bezier((0.52, 0.0), (0.12, 0.15), (0.02, 0.72)) + _arc(0.3, 0.73, 0.28, 0.26, 180, 540)],
        [[(0.46, 0.0), (0.06, 0.65)] + _arc(0.3, 0.74, 0.26, 0.25, 200, 560)],
        [_bezier((0.55, 0.05), (0.3, -0.05), (0.0, 0.3), (0.03, 0.75)) + _arc(0.3, 0.75, 0.27, 0.24, 180, 520)],
        [_bezier((0.5, 0.0), (0.1, 0.3), (0.05, 0.85)) + _arc(0.3, 0.82, 0.24, 0.18, 180, 540)],
        [_bezier((0.55, 0.0), (0.2, 0.05), (0.02, 0.6)) + _arc(0.3, 0.66, 0.28, 0.33, 180, 540)],
    ],
    7: [
        [[(0.02, 0.02), (0.58, 0.02), (0.2, 1.0)]],
        [[(0.02, 0.02), (0.58, 0.02), (0.22, 1.0)], [(0.16, 0.52), (0.56, 0.5)]],
        [[(0.02, 0.14), (0.03, 0.02), (0.58, 0.02), (0.3, 1.0)], [(0.22, 0.5), (0.6, 0.5)]],
        [[(0.02, 0.02), (0.58, 0.02)] + _bezier((0.58, 0.02), (0.35, 0.4), (0.3, 1.0)), [(0.2, 0.48), (0.6, 0.46)]],
        [[(0.02, 0.02), (0.58, 0.02)] + _bezier((0.58, 0.02), (0.3, 0.45), (0.25, 1.0))],
    ],
    8: [
        [_arc(0.3, 0.25, 0.22, 0.24, 0, 360), _arc(0.3, 0.74, 0.28, 0.26, 0, 360)],
        [_figure_eight()],
        [_arc(0.3, 0.24, 0.25, 0.23, 0, 360), _arc(0.3, 0.73, 0.25, 0.26, 0, 360)],
        [_figure_eight(top=0.4)],
        [_rotated(_figure_eight(top=0.45), -10)],
    ],
    9: [
        [_LOOP9, [(0.57, 0.25), (0.55, 1.0)]],
        [_LOOP9, _bezier((0.57, 0.25), (0.6, 1.05), (0.04, 0.95))],
        [_arc(0.3, 0.24, 0.27, 0.23, 10, 370), [(0.57, 0.2), (0.38, 1.0)]],
        [_LOOP9, [(0.57, 0.25), (0.57, 0.75)] + _bezier((0.57, 0.75), (0.57, 1.0), (0.05, 0.97))],
        [_arc(0.3, 0.2, 0.25, 0.2, 0, 360), _bezier((0.55, 0.2), (0.5, 0.6), (0.45, 1.0))],
    ],
}
HAND_STYLES = 5
HAND_WEIGHT = 0.8  # prior probability of a hand style when fonts are in use too
_HAND_PREFIX = "hand-"


def _hand_mask(style: int, digit: int, size: int) -> np.ndarray:
    """Binary ink mask of one digit drawn with a thin pen in a hand style, cropped."""
    from PIL import Image, ImageDraw

    variants = _HAND_VARIANTS[digit]
    strokes = variants[style % len(variants)]
    scale = float(size)
    margin = size // 2
    im = Image.new("L", (int(scale) + 2 * margin, int(scale) + 2 * margin), 0)
    draw = ImageDraw.Draw(im)
    width = max(2, size // 16)
    for stroke in strokes:
        pts = [(margin + x * scale, margin + y * scale) for x, y in stroke]
        draw.line(pts, fill=255, width=width, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    ink = np.asarray(im) >= 128
    rows = np.flatnonzero(ink.any(1))
    cols = np.flatnonzero(ink.any(0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _is_hand(source: str) -> bool:
    """Whether a font name is a built-in hand style, ``hand-0`` .. ``hand-{HAND_STYLES-1}``."""
    tail = source[len(_HAND_PREFIX) :]
    return source.startswith(_HAND_PREFIX) and tail.isdigit() and int(tail) < HAND_STYLES


def _glyph_mask(source: str, digit: int) -> np.ndarray:
    if _is_hand(source):
        return _hand_mask(int(source[len(_HAND_PREFIX) :]), digit, _RENDER_PT)
    return _render_mask(source, str(digit), _RENDER_PT)


def _glyph_fields(source: str, digit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Pen field, outline field (glyph units, on the common grid), skeleton points and
    length, and the glyph's slant (second moments)."""
    ink = _glyph_mask(source, digit)
    # Fields are needed up to about 0.8 glyph heights from the centre; beyond the
    # padded canvas the nearest value (already far from any stroke) is used.
    pad = int(0.45 * ink.shape[0]) + 2
    skeleton = np.pad(_thin(ink), pad)
    ink = np.pad(ink, pad)
    rows = np.flatnonzero(ink.any(1))
    cols = np.flatnonzero(ink.any(0))
    unit = (rows[-1] + 1 - rows[0]) / 2.0  # px per glyph unit: the glyph spans [-1, 1] in y
    cy = (rows[0] + rows[-1] + 1) / 2.0
    cx = (cols[0] + cols[-1] + 1) / 2.0

    inside = ndimage.distance_transform_edt(ink)
    outside = ndimage.distance_transform_edt(~ink)
    half = float(np.median(inside[skeleton]))  # the font's typical half stroke width
    pen = ndimage.distance_transform_edt(~skeleton) / unit
    outline = (outside - inside + half) / unit

    grid = (np.arange(_FIELD_SIZE) / _FIELD_PPU - _FIELD_RANGE) * unit
    gy, gx = np.meshgrid(grid + cy - 0.5, grid + cx - 0.5, indexing="ij")
    coords = np.stack([gy, gx])
    pen_f = ndimage.map_coordinates(pen, coords, order=1, mode="nearest").astype(np.float32)
    out_f = ndimage.map_coordinates(outline, coords, order=1, mode="nearest").astype(np.float32)

    sy, sx = np.nonzero(skeleton)
    pts = np.stack([(sx + 0.5 - cx) / unit, (sy + 0.5 - cy) / unit], axis=1)
    # Keep the extreme points and an even subsample: enough for a bounding box.
    keep = np.unique(np.concatenate([
        np.linspace(0, len(pts) - 1, _GLYPH_POINTS - 4).round().astype(int),
        [pts[:, 0].argmin(), pts[:, 0].argmax(), pts[:, 1].argmin(), pts[:, 1].argmax()],
    ]))
    pts = pts[keep]
    pts = np.concatenate([pts, np.repeat(pts[:1], _GLYPH_POINTS - len(pts), axis=0)])
    length = float(skeleton.sum()) / unit  # skeleton length in glyph units (8-connected count)
    iy, ix = np.nonzero(ink)
    dy, dx = iy - iy.mean(), ix - ix.mean()
    slant = float(-(dx * dy).mean() / (dy * dy).mean())  # > 0: the top leans right
    return pen_f, out_f, pts.astype(np.float32), length, slant


# --------------------------------------------------------------------------- the simulator


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


@functools.lru_cache(maxsize=4)
def _glyph_atlas(sources: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fields, skeleton points, skeleton lengths (per glyph) and lean (per font).

    Shared by every simulator of the process with the same fonts; read-only.
    Fields are complex64, flattened: real part the pen field, imaginary part the
    outline field, glyph ``font * 10 + digit`` at offset ``glyph * _FIELD_SIZE**2``.
    """
    pens, outlines, points, lengths, slants = [], [], [], [], []
    for source in sources:
        for d in range(10):
            pen, outline, pts, length, slant = _glyph_fields(source, d)
            pens.append(pen)
            outlines.append(outline)
            points.append(pts)
            lengths.append(length)
            slants.append(slant)
    # Italic fonts lean: a font's lean is the median, over its digits, of how much
    # more its glyph leans than the median glyph of that digit; rendering removes
    # it, so that the shear parameter alone sets the slant.
    slant_table = np.asarray(slants).reshape(-1, 10)
    lean = np.median(slant_table - np.median(slant_table, axis=0, keepdims=True), axis=1)
    fields = (np.stack(pens) + 1j * np.stack(outlines)).astype(np.complex64).reshape(-1)
    for arr in (fields,):
        arr.flags.writeable = False
    return fields, np.stack(points), np.asarray(lengths), lean


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
        """The simulator a config's ``generator.options`` describe (the plugin contract)."""
        return cls(**options.model_dump())

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
                paths = default_fonts() + [f"{_HAND_PREFIX}{k}" for k in range(HAND_STYLES)]
            else:
                paths = [f if _is_hand(f) else _resolve_font(f) for f in self._font_args]
                bad = [p for p in paths if not _is_hand(p) and not font_renders_digits(p)]
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
            self._fields, self._points, self._lengths, self._font_lean = _glyph_atlas(tuple(self._font_paths()))

    def glyph_fields(self, font: int, digit: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached (pen, outline) distance fields of one glyph, for inspection."""
        self._load()
        g = font * 10 + digit
        size = _FIELD_SIZE * _FIELD_SIZE
        shape = (_FIELD_SIZE, _FIELD_SIZE)
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
        hand = np.flatnonzero([_is_hand(p) for p in self._font_paths()])
        typed = np.flatnonzero([not _is_hand(p) for p in self._font_paths()])
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
        fx = (u[..., 0].astype(np.float32) + np.float32(_FIELD_RANGE)) @ up
        fy = (u[..., 1].astype(np.float32) + np.float32(_FIELD_RANGE)) @ up
        fx *= np.float32(_FIELD_PPU)
        fy *= np.float32(_FIELD_PPU)

        # Nearest samples of the (fine) pen and outline fields, fetched together.
        np.clip(fx, 0.0, _FIELD_SIZE - 1.0, out=fx)
        np.clip(fy, 0.0, _FIELD_SIZE - 1.0, out=fy)
        fx += np.float32(0.5)
        fy += np.float32(0.5)
        index = fy.astype(np.int32)
        index *= _FIELD_SIZE
        index += fx.astype(np.int32)
        index += (glyph.astype(np.int32) * (_FIELD_SIZE * _FIELD_SIZE))[:, None]
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
