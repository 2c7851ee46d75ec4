"""Drawing primitives of the synthetic "shapes" dataset: shape outlines, alpha masks, textures, backgrounds.

Everything takes an explicit ``numpy.random.Generator`` so that an image is a pure function of its seed.
Geometry is float; masks are drawn by cv2 with 4 fractional bits and anti-aliasing.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import cv2
import numpy as np

SHAPES = ("circle", "triangle", "square", "star", "cross", "hexagon", "ring", "arrow")
_SHIFT = 4  # fractional bits for cv2 polygon vertices
_ONE = 1 << _SHIFT


def _regular(n: int, inner: float | None = None, phase: float = np.pi / 2) -> np.ndarray:
    """n-gon (or n-pointed star when ``inner`` is set) of circumradius 1."""
    if inner is None:
        a = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([np.cos(a), np.sin(a)], 1)
    a = phase + np.pi * np.arange(2 * n) / n
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def unit_shape(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Contours ``[(points (N, 2), fill)]`` of one shape around the origin, radius ~1; fill 0 cuts a hole."""
    if name == "circle":
        return [(_regular(64), 255)]
    if name == "triangle":
        return [(_regular(3), 255)]
    if name == "square":
        return [(_regular(4, phase=np.pi / 4), 255)]
    if name == "star":
        return [(_regular(5, inner=rng.uniform(0.38, 0.5)), 255)]
    if name == "hexagon":
        return [(_regular(6), 255)]
    if name == "cross":
        a = rng.uniform(0.26, 0.4)  # half width of an arm
        q = np.array([(a, 1), (a, a), (1, a)])
        pts = np.concatenate([q @ np.array([[c, -s], [s, c]]).T for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1))])
        return [(pts, 255)]
    if name == "ring":
        return [(_regular(64), 255), (_regular(64) * rng.uniform(0.45, 0.65), 0)]
    if name == "arrow":
        w, hw, h0 = rng.uniform(0.14, 0.24), rng.uniform(0.42, 0.6), rng.uniform(0.05, 0.35)
        pts = [(-1, -w), (h0, -w), (h0, -hw), (1, 0), (h0, hw), (h0, w), (-1, w)]
        return [(np.array(pts, float), 255)]
    raise ValueError(f"unknown shape {name!r}")


def place_shape(contours, size: float, aspect: float, angle: float) -> list[tuple[np.ndarray, int]]:
    """Stretch by ``aspect`` (x/y), rotate by ``angle`` (rad), scale so the longest box side is ``size`` px."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.diag([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    out = [(p @ m.T, f) for p, f in contours]
    ext = out[0][0].max(0) - out[0][0].min(0)
    return [(p * (size / ext.max()), f) for p, f in out]


def render_mask(contours, cx: float, cy: float) -> tuple[int, int, np.ndarray]:
    """Anti-aliased uint8 alpha of the shape centred at (cx, cy): ``(x0, y0, alpha)``, alpha's top-left at (x0, y0).

    The patch is not clipped to any image, so its pixel count is the shape's whole area."""
    outer = contours[0][0]
    x0, y0 = int(np.floor(cx + outer[:, 0].min())) - 1, int(np.floor(cy + outer[:, 1].min())) - 1
    x1, y1 = int(np.ceil(cx + outer[:, 0].max())) + 2, int(np.ceil(cy + outer[:, 1].max())) + 2
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for pts, fill in contours:
        p = np.round((pts + (cx - x0, cy - y0)) * _ONE).astype(np.int32)
        cv2.fillPoly(alpha, [p], fill, cv2.LINE_AA, _SHIFT)
    return x0, y0, alpha


def draw_outline(img: np.ndarray, contours, cx: float, cy: float, color, thickness: int) -> None:
    """Stroke the shape's contours onto ``img`` (in place)."""
    pts = [np.round((p + (cx, cy)) * _ONE).astype(np.int32) for p, _ in contours]
    cv2.polylines(img, pts, True, color, thickness, cv2.LINE_AA, _SHIFT)


def random_color(rng: np.random.Generator) -> np.ndarray:
    """A colour drawn from HSV so that saturated and grey-ish colours both occur; BGR float32."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def texture(h: int, w: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 fill: solid, stripes, checker, gradient or noise, times a soft lighting ramp."""
    c1, c2 = random_color(rng), random_color(rng)
    kind = rng.choice(5, p=[0.3, 0.2, 0.15, 0.2, 0.15])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    u = xx * np.cos(phi) + yy * np.sin(phi)
    v = -xx * np.sin(phi) + yy * np.cos(phi)
    if kind == 0:  # solid
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes
        period = rng.uniform(3.0, max(4.0, size / 3))
        t = ((u / period) % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32)
    elif kind == 2:  # checker
        cell = rng.uniform(2.5, max(3.0, size / 4))
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == 3:  # gradient
        t = (u - u.min()) / max(float(np.ptp(u)), 1.0)
    else:  # smooth noise
        g = rng.uniform(0, 1, (4, 4)).astype(np.float32)
        t = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    tex = c1 + t[..., None] * (c2 - c1)
    light = 1.0 + rng.uniform(-0.25, 0.25) * ((v - v.min()) / max(float(np.ptp(v)), 1.0) - 0.5)
    return tex * light[..., None]


@cache
def photos() -> tuple[np.ndarray, ...]:
    """The real photographs shipped inside the ultralytics package (bus.jpg, zidane.jpg), BGR uint8."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise RuntimeError("the ultralytics package is needed for the shapes dataset backgrounds")
    assets = Path(spec.origin).parent / "assets"
    imgs = tuple(cv2.imread(str(assets / n), cv2.IMREAD_COLOR) for n in ("bus.jpg", "zidane.jpg"))
    if any(i is None for i in imgs):
        raise RuntimeError(f"cannot read the background photos in {assets}")
    return imgs


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop (scale, position, flips) of a real photo with colour jitter and optional defocus; float32."""
    src = photos()[rng.integers(len(photos()))]
    sh, sw = src.shape[:2]
    fit = min(sh / h, sw / w)  # largest crop with the output's aspect
    ch, cw = int(h * fit * rng.uniform(0.25, 1.0)), int(w * fit * rng.uniform(0.25, 1.0))
    y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    img = cv2.resize(src[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = img[::-1]
    hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 180
    hsv[..., 1] *= rng.uniform(0.4, 1.5)
    hsv[..., 2] *= rng.uniform(0.5, 1.3)
    img = cv2.cvtColor(hsv.clip(0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() < 0.3:
        img = img[..., rng.permutation(3)]
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0))
    return np.ascontiguousarray(img, dtype=np.float32)


def clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Unlabelled distractors (in place): a few random lines and scribbles."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, 4)):
        n = rng.integers(2, 5)
        start = rng.uniform(0, 1, 2) * (w, h)
        steps = rng.normal(0, 0.15 * w, (n - 1, 2))
        pts = np.round(np.vstack([start, start + np.cumsum(steps, 0)]) * _ONE).astype(np.int32)
        cv2.polylines(img, [pts], False, random_color(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)


# ---- the second kind ("glyphs"): letters on procedural backgrounds -----------------------------------------------
GLYPHS = ("A", "E", "G", "K", "R", "S", "Y")  # no pair is a rotation of another within the +-30 degrees drawn


@cache
def _glyph_contours(ch: str, thickness: int) -> tuple[tuple[np.ndarray, int], ...]:
    """Outline and holes of ``ch`` drawn with cv2's Hershey font at ``thickness`` (of a 120-px letter), radius 1."""
    mask = np.zeros((240, 240), np.uint8)
    cv2.putText(mask, ch, (40, 180), cv2.FONT_HERSHEY_SIMPLEX, 4.0, 255, thickness, cv2.LINE_AA)
    found, hier = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = max((i for i in range(len(found)) if hier[0][i][3] < 0), key=lambda i: cv2.contourArea(found[i]))
    parts = [found[outer]] + [found[i] for i in range(len(found)) if hier[0][i][3] == outer]
    pts = [p.reshape(-1, 2).astype(np.float64) for p in parts]
    centre = (pts[0].max(0) + pts[0].min(0)) / 2
    radius = float(np.linalg.norm(pts[0] - centre, axis=1).max())
    return tuple(((p - centre) / radius, 255 if i == 0 else 0) for i, p in enumerate(pts))


def unit_glyph(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Contours of one letter (stroke width drawn at random) around the origin, radius 1; fill 0 cuts a hole."""
    if name not in GLYPHS:
        raise ValueError(f"unknown glyph {name!r}")
    return [(p.copy(), f) for p, f in _glyph_contours(name, int(rng.integers(9, 19)))]


def procedural_background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """No photograph: a large-scale texture, smooth colour noise and a few unlabelled panels; float32."""
    img = texture(h, w, max(h, w), rng)
    g = rng.uniform(0, 1, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    noise = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    img = img * rng.uniform(0.5, 0.9) + noise * 255 * rng.uniform(0.1, 0.5)
    for _ in range(rng.integers(0, 4)):  # panels: flat rectangles with edges that are not objects
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.uniform(0.1, 0.5) * w), y0 + int(rng.uniform(0.1, 0.5) * h)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * 0.3 + random_color(rng) * 0.7
    return np.ascontiguousarray(img.clip(0, 255), dtype=np.float32)
