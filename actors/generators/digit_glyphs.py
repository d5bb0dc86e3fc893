"""Digit glyphs for the draw-digit simulator: fonts, hand styles, and their distance fields.

A glyph of a digit comes from a font (only fonts that really draw '0'..'9',
:func:`font_renders_digits`) or from one of the built-in hand styles (pen strokes:
a '1' with a flag and no base, a crossed '7', an open '4', ...; :data:`HAND_STYLES`
classic ones, :data:`HAND_STYLES_MAX` with the extended set). It is rasterised
once, thinned to its skeleton, and turned into two distance fields on a common grid
(:data:`FIELD_SIZE` samples a side, covering [-:data:`FIELD_RANGE`, :data:`FIELD_RANGE`]^2
glyph units, :data:`FIELD_PPU` samples per unit): the distance to the skeleton (a pen
of even width, like handwriting) and a signed distance to the outline (the font's own
thick and thin strokes). :func:`glyph_atlas` builds them for every (font, digit) of a
font list, once per process.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

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


def resolve_font(name: str) -> str:
    """A font path from a path or a matplotlib font file name (with or without .ttf)."""
    if os.path.isfile(name):
        return name
    folder = _matplotlib_font_dir()
    for candidate in (folder / name, folder / f"{name}.ttf"):
        if candidate.is_file():
            return str(candidate)
    raise ValueError(f"DigitSimulator: font {name!r} is neither a file nor a matplotlib font in {folder}")


# --------------------------------------------------------------------------- glyph fields

FIELD_RANGE = 1.6  # glyph fields cover [-R, R]^2 glyph units
FIELD_PPU = 32  # field samples per glyph unit
FIELD_SIZE = int(round(2 * FIELD_RANGE * FIELD_PPU)) + 1
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
# [0, 0.6], y in [0, 1], y down); style k uses variant k of each digit. Styles 0..4 are
# the classic set (every format); styles 5..9 add the hands that MNIST's writers use and
# the classic set lacks (the grey formats, ``hand_styles: 10``): a plain '1', a looped
# '2', a one-stroke '9', closed and slanted '4's, curved '7' bars, and so on.


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
# Styles 5..9: the extended hands (grey formats only; appended so styles 0..4 never move).
_EXTENDED_VARIANTS: dict[int, list[list[list]]] = {
    0: [
        [_arc(0.3, 0.5, 0.2, 0.49, 95, -285)],  # narrow, closed with an overlap at the top
        [_rotated(_arc(0.3, 0.5, 0.26, 0.49, 0, 360), 15)],  # leaning left
        [_arc(0.3, 0.5, 0.27, 0.48, 60, 400)],  # left open at the top right
        [_arc(0.3, 0.5, 0.36, 0.47, 0, 360)],  # round
        [_bezier((0.32, 0.0), (-0.1, 0.2), (0.0, 1.05), (0.35, 1.0))
         + _bezier((0.35, 1.0), (0.7, 0.9), (0.55, 0.1), (0.32, 0.0))],  # pointed top
    ],
    1: [
        [[(0.3, 0.0), (0.3, 1.0)]],  # one plain stroke
        [_bezier((0.38, 0.0), (0.3, 0.5), (0.26, 1.0))],  # one stroke, slightly curved
        [[(0.22, 0.1), (0.32, 0.0), (0.32, 1.0)]],  # a short hook at the top
        [[(0.15, 0.22), (0.42, 0.0), (0.42, 1.0)]],  # European: a long up-stroke
        [_bezier((0.3, 0.0), (0.42, 0.5), (0.28, 1.0))],  # bowed
    ],
    2: [
        [_arc(0.3, 0.27, 0.26, 0.26, 160, -30) + _bezier((0.52, 0.4), (0.2, 0.75), (0.02, 0.98))
         + _arc(0.14, 0.9, 0.12, 0.1, 219, -141) + [(0.6, 0.98)]],  # a loop at the bottom left
        [[(0.05, 0.15)] + _bezier((0.05, 0.15), (0.3, -0.1), (0.6, 0.1), (0.5, 0.35))
         + [(0.0, 1.0), (0.6, 1.0)]],  # small top, straight diagonal
        [_arc(0.3, 0.28, 0.27, 0.27, 170, -40) + _bezier((0.5, 0.45), (0.2, 0.75), (0.02, 1.0))
         + _bezier((0.02, 1.0), (0.3, 0.9), (0.45, 1.05), (0.62, 0.9))],  # wavy base
        [_arc(0.3, 0.3, 0.3, 0.3, 180, -20) + [(0.1, 1.0), (0.5, 1.0)]],  # wide top, short base
        [_arc(0.3, 0.3, 0.28, 0.3, 150, -60)
         + _bezier((0.44, 0.56), (0.2, 0.8), (0.0, 1.0), (0.3, 0.95), (0.62, 1.0))],  # round top
    ],
    3: [
        [_arc(0.3, 0.25, 0.26, 0.23, 160, -80) + [(0.2, 0.47)] + _arc(0.28, 0.73, 0.3, 0.27, 110, -160)],
        [_arc(0.3, 0.26, 0.18, 0.25, 150, -90) + _arc(0.3, 0.74, 0.22, 0.26, 90, -150)],  # narrow
        [_arc(0.3, 0.27, 0.32, 0.26, 150, -90) + _arc(0.3, 0.74, 0.32, 0.26, 90, -150)],  # wide
        [_arc(0.3, 0.25, 0.25, 0.24, 160, -100), _arc(0.3, 0.74, 0.3, 0.27, 100, -160)],  # two strokes
        [_rotated(_arc(0.27, 0.26, 0.26, 0.25, 155, -90) + _arc(0.27, 0.74, 0.3, 0.26, 90, -155), -10)],
    ],
    4: [
        [_bezier((0.08, 0.0), (0.0, 0.45), (0.1, 0.6)) + [(0.6, 0.58)], [(0.48, 0.1), (0.48, 1.0)]],
        [[(0.2, 0.0), (0.0, 0.5), (0.6, 0.5)], [(0.45, 0.15), (0.45, 1.0)]],
        [_bezier((0.05, 0.0), (0.02, 0.6), (0.3, 0.6), (0.55, 0.5)), [(0.5, 0.0), (0.5, 1.0)]],  # a 'u' and a stem
        [[(0.25, 0.0), (0.05, 0.55), (0.5, 0.55)], [(0.4, 0.2), (0.4, 1.0)]],  # narrow
        [[(0.12, 0.0), (0.05, 0.5), (0.6, 0.52)], [(0.5, 0.0), (0.38, 1.0)]],  # slanted stem
    ],
    5: [
        [[(0.6, 0.0), (0.15, 0.0), (0.1, 0.5)] + _arc(0.3, 0.74, 0.25, 0.25, 140, -160)],  # small belly
        [[(0.58, 0.0), (0.2, 0.02), (0.05, 0.45)] + _arc(0.3, 0.7, 0.3, 0.28, 150, -140)],  # slanted stem
        [_bezier((0.6, 0.0), (0.1, 0.0), (0.05, 0.45))
         + _bezier((0.05, 0.45), (0.8, 0.3), (0.6, 1.1), (0.0, 0.9))],  # one curve
        [[(0.55, 0.0), (0.1, 0.0), (0.1, 0.4)] + _arc(0.28, 0.68, 0.32, 0.32, 130, -170)],  # big belly
        [[(0.5, 0.0), (0.15, 0.0), (0.12, 0.42)] + _arc(0.28, 0.7, 0.2, 0.28, 130, -150)],  # narrow
    ],
    6: [
        [_bezier((0.55, 0.0), (0.1, 0.2), (0.05, 0.8)) + _arc(0.28, 0.82, 0.2, 0.17, 180, 530)],  # small loop
        [[(0.5, 0.0), (0.1, 0.7)] + _arc(0.3, 0.76, 0.22, 0.23, 190, 550)],  # straight stem
        [_bezier((0.5, 0.0), (0.1, 0.1), (0.02, 0.55)) + _arc(0.3, 0.64, 0.29, 0.35, 180, 530)],  # big loop
        [_bezier((0.5, 0.0), (0.1, 0.2), (0.05, 0.75)) + _arc(0.3, 0.75, 0.25, 0.24, 180, 480)],  # open loop
        [_bezier((0.45, 0.0), (0.15, 0.2), (0.1, 0.75)) + _arc(0.3, 0.76, 0.2, 0.23, 180, 540)],  # upright
    ],
    7: [
        [_bezier((0.02, 0.08), (0.3, -0.04), (0.58, 0.02)) + [(0.22, 1.0)]],  # bowed bar
        [[(0.02, 0.02), (0.58, 0.02), (0.42, 1.0)]],  # near-vertical stem
        [[(0.1, 0.02), (0.55, 0.02), (0.1, 1.0)]],  # long slanted stem
        [[(0.02, 0.1), (0.1, 0.02), (0.58, 0.02), (0.25, 1.0)], [(0.15, 0.5), (0.55, 0.5)]],  # European
        [[(0.02, 0.02), (0.58, 0.02)] + _bezier((0.58, 0.02), (0.25, 0.5), (0.35, 1.0))],  # curved stem
    ],
    8: [
        [_arc(0.3, 0.2, 0.16, 0.19, 0, 360), _arc(0.3, 0.68, 0.27, 0.3, 0, 360)],  # small top loop
        [_figure_eight(top=0.55)],
        [_rotated(_figure_eight(top=0.45), 10)],
        [_figure_eight()[6:]],  # top loop left open
        [[(0.3 + 0.6 * (x - 0.3), y) for x, y in _figure_eight(top=0.47)]],  # narrow
    ],
    9: [
        [_LOOP9, _bezier((0.57, 0.25), (0.55, 0.8), (0.35, 1.0))],  # short curved tail
        [_arc(0.3, 0.2, 0.22, 0.2, 0, 360), [(0.52, 0.2), (0.5, 1.0)]],  # small loop, long stem
        [_arc(0.3, 0.25, 0.27, 0.24, -10, 350) + [(0.55, 1.0)]],  # one stroke
        [_LOOP9, [(0.57, 0.25), (0.3, 1.0)]],  # stem slanted left
        [_rotated(_arc(0.3, 0.25, 0.28, 0.2, 0, 360), 15, 0.3, 0.25), [(0.56, 0.25), (0.52, 1.0)]],
    ],
}
for _digit, _extra in _EXTENDED_VARIANTS.items():
    _HAND_VARIANTS[_digit] = _HAND_VARIANTS[_digit] + _extra
HAND_STYLES = 5  # the classic set: every format's default
HAND_STYLES_MAX = 10  # with the extended hands (grey formats)
HAND_PREFIX = "hand-"


def _hand_mask(style: int, digit: int, size: int) -> np.ndarray:
    """Binary ink mask of one digit drawn with a thin pen in a hand style, cropped."""
    from PIL import Image, ImageDraw

    strokes = _HAND_VARIANTS[digit][style]
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


def is_hand(source: str, styles: int = HAND_STYLES_MAX) -> bool:
    """Whether a font name is a built-in hand style among the first ``styles``, ``hand-0`` .. ``hand-{styles-1}``."""
    tail = source[len(HAND_PREFIX) :]
    return source.startswith(HAND_PREFIX) and tail.isdigit() and int(tail) < min(styles, HAND_STYLES_MAX)


# --------------------------------------------------------------------------- the atlas


def _glyph_mask(source: str, digit: int) -> np.ndarray:
    if is_hand(source):
        return _hand_mask(int(source[len(HAND_PREFIX) :]), digit, _RENDER_PT)
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

    grid = (np.arange(FIELD_SIZE) / FIELD_PPU - FIELD_RANGE) * unit
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


@functools.lru_cache(maxsize=4)
def glyph_atlas(sources: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fields, skeleton points, skeleton lengths (per glyph) and lean (per font).

    Shared by every simulator of the process with the same fonts; read-only.
    Fields are complex64, flattened: real part the pen field, imaginary part the
    outline field, glyph ``font * 10 + digit`` at offset ``glyph * FIELD_SIZE**2``.
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
    # it, so that the shear parameter alone sets the slant. The median glyph is taken over the
    # fonts and classic hand styles only, so that adding the extended styles moves no old glyph.
    slant_table = np.asarray(slants).reshape(-1, 10)
    classic = np.asarray([not is_hand(s) or int(s[len(HAND_PREFIX) :]) < HAND_STYLES for s in sources])
    reference = slant_table[classic] if classic.any() else slant_table
    lean = np.median(slant_table - np.median(reference, axis=0, keepdims=True), axis=1)
    fields = (np.stack(pens) + 1j * np.stack(outlines)).astype(np.complex64).reshape(-1)
    for arr in (fields,):
        arr.flags.writeable = False
    return fields, np.stack(points), np.asarray(lengths), lean
