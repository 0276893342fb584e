"""The embedded world: a seeded generator of captioned synthetic images.

Every image shows one object class (a drawn shape or a digit) in one nuisance *style*; its caption
uses the OpenAI ImageNet prompt template that names that style ("a blurry photo of a {}.",
"a sketch of the {}.", ...), so the standard 80 templates carry real style information for a CLIP
pretrained here. That is what FD-Align's spurious prototypes (template embeddings averaged over
classes) need in order to mean something.

Sample ``i`` of ``render(n, seed)`` depends only on ``(seed, i)``: re-running, or rendering in
chunks / worker processes, gives identical arrays and captions.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHAPES = (
    "circle", "square", "triangle", "star", "heart", "arrow", "moon", "cross",
    "hexagon", "diamond", "ring", "lightning bolt", "house", "hourglass",
)  # fmt: skip
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASSES: tuple[str, ...] = SHAPES + tuple(f"digit {w}" for w in DIGIT_WORDS)

# Style -> caption templates. All are OpenAI ImageNet templates except "rotated", which has none.
# Together the styles use each of the 80 templates exactly once.
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": (
        "a photo of a {}.", "a photo of the {}.", "a good photo of a {}.", "a good photo of the {}.",
        "itap of a {}.", "itap of the {}.", "itap of my {}.", "a photo of my {}.",
        "a photo of one {}.", "a photo of a nice {}.", "a photo of the nice {}.",
        "a photo of a cool {}.", "a photo of the cool {}.", "a photo of a clean {}.",
        "a photo of the clean {}.", "a photo of a weird {}.", "a photo of the weird {}.",
        "a {} in a video game.", "the {} in a video game.",
    ),
    "sketch": (
        "a sketch of a {}.", "a sketch of the {}.", "a drawing of a {}.", "a drawing of the {}.",
        "a doodle of a {}.", "a doodle of the {}.",
    ),
    "painting": ("a painting of a {}.", "a painting of the {}.", "art of a {}.", "art of the {}."),
    "cartoon": (
        "a cartoon {}.", "the cartoon {}.", "a rendering of a {}.", "a rendering of the {}.",
        "a rendition of a {}.", "a rendition of the {}.",
    ),
    "black and white": ("a black and white photo of a {}.", "a black and white photo of the {}."),
    "blurry": (
        "a blurry photo of a {}.", "a blurry photo of the {}.", "a bad photo of a {}.",
        "a bad photo of the {}.",
    ),
    "pixelated": ("a pixelated photo of a {}.", "a pixelated photo of the {}."),
    "low resolution": ("a low resolution photo of a {}.", "a low resolution photo of the {}."),
    "dark": (
        "a dark photo of a {}.", "a dark photo of the {}.", "a photo of a hard to see {}.",
        "a photo of the hard to see {}.",
    ),
    "bright": ("a bright photo of a {}.", "a bright photo of the {}."),
    "close-up": (
        "a close-up photo of a {}.", "a close-up photo of the {}.", "a photo of a large {}.",
        "a photo of the large {}.",
    ),
    "cropped": ("a cropped photo of a {}.", "a cropped photo of the {}."),
    "small": ("a photo of a small {}.", "a photo of the small {}."),
    "many": ("a photo of many {}.",),
    "jpeg corrupted": ("a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}."),
    "rotated": ("a rotated photo of a {}.", "a rotated photo of the {}."),
    "dirty": ("a photo of a dirty {}.", "a photo of the dirty {}."),
    "toy": (
        "a toy {}.", "the toy {}.", "a plastic {}.", "the plastic {}.", "a plushie {}.",
        "the plushie {}.", "a origami {}.", "the origami {}.",
    ),
    "sculpture": ("a sculpture of a {}.", "a sculpture of the {}."),
    "tattoo": ("a tattoo of a {}.", "a tattoo of the {}."),
    "graffiti": ("graffiti of a {}.", "graffiti of the {}."),
    "embroidered": ("a embroidered {}.", "the embroidered {}."),
}  # fmt: skip
STYLES: tuple[str, ...] = tuple(STYLE_TEMPLATES)
ID_STYLE = "photo"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (40, 165, 60), "blue": (35, 80, 225), "yellow": (245, 215, 30),
    "orange": (245, 135, 25), "purple": (135, 50, 185), "pink": (245, 120, 185),
    "brown": (135, 85, 35), "white": (245, 245, 245), "black": (25, 25, 25),
}  # fmt: skip
COLOUR_NAMES = tuple(COLOURS)
# Styles whose pixels keep the object's colour, so a colour word in the caption is true.
_COLOUR_VISIBLE = frozenset(
    {"photo", "painting", "cartoon", "blurry", "pixelated", "low resolution", "bright", "close-up",
     "cropped", "small", "many", "jpeg corrupted", "rotated", "dirty", "toy", "graffiti",
     "embroidered"}
)  # fmt: skip
COLOUR_CAPTION_PROB = 0.4
_SS = 2  # supersampling factor for the object masks (anti-aliasing)


@dataclass
class WorldBatch:
    """Rendered samples.

    Attributes:
        images: ``[N, H, W, 3]`` uint8.
        labels: ``[N]`` int64 indices into ``classes``.
        styles: ``[N]`` int64 indices into :data:`STYLES`.
        captions: N strings.
        areas: ``[N]`` float32, fraction of the image covered by the object(s) (from the mask).
        classes: the class names ``labels`` index (always the full :data:`CLASSES`).
    """

    images: np.ndarray
    labels: np.ndarray
    styles: np.ndarray
    captions: list[str]
    areas: np.ndarray | None = None
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> WorldBatch:
        idx = np.asarray(idx)
        return WorldBatch(
            self.images[idx], self.labels[idx], self.styles[idx],
            [self.captions[i] for i in idx], None if self.areas is None else self.areas[idx], self.classes,
        )  # fmt: skip


# ----------------------------------------------------------------------------------- shapes ----
def _regular(n: int, r: float = 1.0, phase: float = -90.0) -> list[tuple[float, float]]:
    return [
        (r * math.cos(math.radians(phase + 360 * k / n)), r * math.sin(math.radians(phase + 360 * k / n)))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, -90 + 36)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return [(float(a) / 17, float(-b) / 17 + 0.1) for a, b in zip(x, y)]


def _plus(w: float = 0.3) -> list[tuple[float, float]]:
    return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
            (-1, w), (-1, -w), (-w, -w)]  # fmt: skip


_CIRCLE = _regular(40)
# Each shape is a list of (polygon in unit coordinates, fill value); later polygons paint over
# earlier ones, so holes (ring) and bites (moon) are a second polygon filled with 0.
_SHAPE_OPS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)], 255)],
    "triangle": [([(x, y + 0.2) for x, y in _regular(3, 1.15)], 255)],
    "star": [(_star(), 255)],
    "heart": [(_heart(), 255)],
    "arrow": [
        ([(-1, -0.25), (0.15, -0.25), (0.15, -0.65), (1, 0), (0.15, 0.65), (0.15, 0.25), (-1, 0.25)], 255)
    ],  # fmt: skip
    "moon": [(_CIRCLE, 255), ([(x * 0.85 + 0.5, y * 0.85 - 0.15) for x, y in _CIRCLE], 0)],
    "cross": [(_plus(), 255)],
    "hexagon": [(_regular(6, 1.0, 0), 255)],
    "diamond": [([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], 255)],
    "ring": [(_CIRCLE, 255), ([(x * 0.55, y * 0.55) for x, y in _CIRCLE], 0)],
    "lightning bolt": [
        ([(0.15, -1), (-0.55, 0.15), (-0.05, 0.15), (-0.3, 1), (0.55, -0.2), (0.05, -0.2), (0.45, -1)], 255)
    ],  # fmt: skip
    "house": [([(-0.8, 1), (-0.8, -0.1), (0, -0.95), (0.8, -0.1), (0.8, 1)], 255)],
    "hourglass": [([(-0.7, -1), (0.7, -1), (0.1, 0), (0.7, 1), (-0.7, 1), (-0.1, 0)], 255)],
}


@lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font: identical glyphs on every machine, no system fonts needed.
    return ImageFont.load_default(size=size)


def _object_mask(cls: int, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Float mask ``[size, size]`` in [0, 1] of class ``cls`` centred at (cx, cy), radius r px."""
    s2 = size * _SS
    canvas = Image.new("L", (s2, s2), 0)
    name = CLASSES[cls]
    if name in _SHAPE_OPS:
        draw = ImageDraw.Draw(canvas)
        ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for poly, value in _SHAPE_OPS[name]:
            pts = [((ca * x - sa * y) * r * _SS + cx * _SS, (sa * x + ca * y) * r * _SS + cy * _SS) for x, y in poly]
            draw.polygon(pts, fill=value)
    else:
        digit = str(DIGIT_WORDS.index(name.split()[-1]))
        font_size = max(6, int(round(2.6 * r * _SS)))  # digit height ~0.72 em ~ 2r
        ImageDraw.Draw(canvas).text((s2 / 2, s2 / 2), digit, fill=255, font=_font(font_size), anchor="mm")
        canvas = canvas.rotate(-angle, resample=Image.BILINEAR, translate=(cx * _SS - s2 / 2, cy * _SS - s2 / 2))
    canvas = canvas.resize((size, size), Image.BOX)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Outline of a soft mask: dilation minus erosion, ``width`` px thick."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    k = 2 * width + 1
    hi = np.asarray(img.filter(ImageFilter.MaxFilter(k)), dtype=np.float32)
    lo = np.asarray(img.filter(ImageFilter.MinFilter(3)), dtype=np.float32)
    return np.clip((hi - lo) / 255.0, 0, 1)


# ------------------------------------------------------------------------------- textures ----
def _lowfreq(rng: np.random.Generator, size: int, cells: int, ch: int = 3) -> np.ndarray:
    """Smooth random field ``[size, size, ch]`` in [0, 1] (bilinear upsampling of a small grid)."""
    small = (rng.random((cells, cells, ch)) * 255).astype(np.uint8)
    img = Image.fromarray(small if ch == 3 else small[..., 0])
    out = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return out if ch == 3 else out[..., None]


def _contrasting_colour(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 110.0) -> np.ndarray:
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - avoid) > min_dist:
            return c
    return 255.0 - avoid


def _textured_background(rng, size, obj_rgb) -> np.ndarray:
    base = _contrasting_colour(rng, obj_rgb)
    tex = _lowfreq(rng, size, int(rng.integers(2, 7))) - 0.5
    bg = base + tex * rng.uniform(40, 110)
    return bg + rng.normal(0, 6, (size, size, 3))


def _shaded_object(rng, size, rgb) -> np.ndarray:
    """Object colour with a gentle lighting gradient and noise: ``[size, size, 3]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.05, 0.25) * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a))
    return rgb * light[..., None] + rng.normal(0, 5, (size, size, 3))


def _compose(bg: np.ndarray, fg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return bg * (1 - m) + fg * m


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- render ----
def _geometry(rng: np.random.Generator, style: str, size: int) -> list[tuple[float, float, float, float]]:
    """Object placements ``(cx, cy, radius, angle_deg)`` in pixels for one image."""
    ang = rng.uniform(-20, 20)
    if style == "rotated":
        ang = rng.choice([-1, 1]) * rng.uniform(60, 120)
    if style == "close-up":
        r = rng.uniform(0.5, 0.62) * size
        return [(size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2), r, ang)]
    if style == "small":
        r = rng.uniform(0.1, 0.14) * size
        return [(rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1), r, ang)]
    if style == "cropped":
        r = rng.uniform(0.35, 0.45) * size
        off = rng.uniform(0.25, 0.4) * size
        a = rng.uniform(0, 2 * np.pi)
        return [(size / 2 + off * math.cos(a), size / 2 + off * math.sin(a), r, ang)]
    if style == "many":
        out = []
        for _ in range(int(rng.integers(4, 8))):
            r = rng.uniform(0.1, 0.15) * size
            out.append((rng.uniform(r, size - r), rng.uniform(r, size - r), r, rng.uniform(-30, 30)))
        return out
    r = rng.uniform(0.26, 0.38) * size
    j = size / 2 - r - 1
    return [(size / 2 + rng.uniform(-j, j) * 0.6, size / 2 + rng.uniform(-j, j) * 0.6, r, ang)]


def _photo(rng, size, mask, rgb) -> np.ndarray:
    return _compose(_textured_background(rng, size, rgb), _shaded_object(rng, size, rgb), mask)


def _pil_filter(x: np.ndarray, f) -> np.ndarray:
    return np.asarray(Image.fromarray(_to_u8(x)).filter(f), dtype=np.float32)


def _resample(x: np.ndarray, small: int, down, up) -> np.ndarray:
    size = x.shape[0]
    img = Image.fromarray(_to_u8(x)).resize((small, small), down).resize((size, size), up)
    return np.asarray(img, dtype=np.float32)


def _stylise(rng: np.random.Generator, style: str, size: int, mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Float image ``[size, size, 3]`` (0..255 range, unclipped) of ``mask`` in ``style``."""
    if style in ("photo", "close-up", "cropped", "small", "many", "rotated"):
        return _photo(rng, size, mask, rgb)
    if style == "black and white":
        g = _photo(rng, size, mask, rgb) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.repeat(g[..., None], 3, axis=2)
    if style == "blurry":
        return _pil_filter(_photo(rng, size, mask, rgb), ImageFilter.GaussianBlur(rng.uniform(1.6, 2.6) * size / 64))
    if style == "pixelated":
        return _resample(_photo(rng, size, mask, rgb), int(rng.integers(9, 14)) * size // 64, Image.BOX, Image.NEAREST)
    if style == "low resolution":
        return _resample(
            _photo(rng, size, mask, rgb), int(rng.integers(12, 18)) * size // 64, Image.BILINEAR, Image.BILINEAR
        )
    if style == "dark":
        return _photo(rng, size, mask, rgb) * rng.uniform(0.15, 0.3)
    if style == "bright":
        w = rng.uniform(0.55, 0.7)
        return _photo(rng, size, mask, rgb) * (1 - w) + 255.0 * w
    if style == "jpeg corrupted":
        buf = io.BytesIO()
        Image.fromarray(_to_u8(_photo(rng, size, mask, rgb))).save(buf, format="JPEG", quality=int(rng.integers(2, 7)))
        return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)
    if style == "dirty":
        img = _photo(rng, size, mask, rgb)
        blot = np.clip((_lowfreq(rng, size, int(rng.integers(5, 10)), 1) - 0.55) * 6, 0, 1)
        dirt = np.array([95, 70, 40], dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        return img * (1 - 0.85 * blot) + dirt * 0.85 * blot
    if style == "sketch":
        paper = rng.uniform(235, 255) + rng.normal(0, 4, (size, size, 1))
        edge = _edge(mask, 1) * rng.uniform(0.5, 1.0, (size, size))  # pencil: broken, uneven strokes
        hatch = ((np.add.outer(np.arange(size), np.arange(size)) % 4) == 0) * mask * rng.uniform(0, 0.35)
        ink = np.clip(edge + hatch, 0, 1)[..., None]
        return np.repeat(paper * (1 - ink) + rng.uniform(30, 90) * ink, 3, axis=2)
    if style == "painting":
        bg = _contrasting_colour(rng, rgb) + (_lowfreq(rng, size, 3) - 0.5) * 80
        img = _compose(np.broadcast_to(bg, (size, size, 3)), np.broadcast_to(rgb, (size, size, 3)), mask)
        # Brush strokes: noise stretched along one axis.
        strokes = (
            np.asarray(
                Image.fromarray((rng.random((size // 8, size, 3)) * 255).astype(np.uint8)).resize(
                    (size, size), Image.BILINEAR
                ),
                dtype=np.float32,
            )
            - 127.5
        )
        if rng.random() < 0.5:
            strokes = strokes.transpose(1, 0, 2)
        return _pil_filter(img + strokes * rng.uniform(0.3, 0.45), ImageFilter.SMOOTH)
    if style == "cartoon":
        bg = np.broadcast_to(_contrasting_colour(rng, rgb, 140) * 0.5 + 127, (size, size, 3))
        img = _compose(bg, np.broadcast_to(rgb, (size, size, 3)), mask)
        return _compose(img, np.zeros(3, np.float32), _edge(mask, int(rng.integers(1, 3))))
    if style == "toy":
        bg = np.broadcast_to(rng.uniform(180, 240, 3), (size, size, 3))
        shadow = np.roll(mask, (2, 2), axis=(0, 1)) * 0.5
        img = bg * (1 - shadow[..., None])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        blur_mask = (
            np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3)), np.float32)
            / 255
        )
        shade = 0.55 + 0.6 * blur_mask  # rounded, glossy body: bright inside, darker towards the rim
        hx, hy = rng.uniform(0.3, 0.45) * size, rng.uniform(0.3, 0.45) * size
        spec = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.08 * size) ** 2)) * 120
        fg = rgb * shade[..., None] + spec[..., None]
        return _compose(img, fg, mask)
    if style == "sculpture":
        stone = rng.uniform(110, 170) + rng.normal(0, 8, (size, size))
        relief = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.EMBOSS), np.float32) - 128
        g = stone + relief * 0.9 + mask * 15
        return np.repeat(g[..., None], 3, axis=2) * np.array([1.0, 0.97, 0.9], np.float32)
    if style == "tattoo":
        skin = np.array([rng.uniform(170, 235), rng.uniform(120, 180), rng.uniform(90, 140)], np.float32)
        bg = skin + (_lowfreq(rng, size, 4) - 0.5) * 25
        ink = np.array([35, 45, 75], np.float32)
        m = np.clip(_edge(mask, 1) + mask * rng.uniform(0.2, 0.5), 0, 1)
        return _pil_filter(_compose(bg, np.broadcast_to(ink, (size, size, 3)), m), ImageFilter.GaussianBlur(0.6))
    if style == "graffiti":
        yy, xx = np.mgrid[0:size, 0:size]
        row = yy // 6
        mortar = ((yy % 6) == 0) | (((xx + (row % 2) * 6) % 12) == 0)
        brick = np.array([rng.uniform(130, 170), rng.uniform(60, 90), rng.uniform(45, 70)], np.float32)
        wall = np.where(mortar[..., None], np.float32(190), brick + rng.normal(0, 10, (size, size, 3)))
        spray = mask * (rng.random((size, size)) < 0.8)
        outline = _edge(mask, 1)
        img = _compose(wall, np.broadcast_to(rgb, (size, size, 3)), spray.astype(np.float32))
        return _compose(img, np.broadcast_to(255 - rgb, (size, size, 3)), outline)
    if style == "embroidered":
        fabric = rng.uniform(150, 230, 3) * (
            0.9 + 0.1 * ((np.add.outer(np.arange(size), np.arange(size)) % 2)[..., None])
        )
        stripes = (np.add.outer(np.arange(size), -np.arange(size)) % 3 != 0).astype(np.float32)
        thread = rgb * (0.8 + 0.25 * stripes[..., None])
        img = _compose(fabric, thread, mask * (0.6 + 0.4 * stripes))
        stitch = _edge(mask, 1) * ((np.arange(size)[None, :] + np.arange(size)[:, None]) % 4 < 2)
        return _compose(img, np.broadcast_to(rgb * 0.5, (size, size, 3)), stitch)
    raise ValueError(f"unknown style {style!r}")


def render_one(label: int, style: int, rng: np.random.Generator, image_size: int = 64) -> tuple[np.ndarray, str, float]:
    """One ``[H, W, 3]`` uint8 image of class ``label`` in style ``style``, its caption and object area."""
    style_name = STYLES[style]
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    rgb = np.array(COLOURS[colour], dtype=np.float32)
    mask = np.zeros((image_size, image_size), np.float32)
    for cx, cy, r, ang in _geometry(rng, style_name, image_size):
        mask = np.maximum(mask, _object_mask(label, image_size, cx, cy, r, ang))
    img = _to_u8(_stylise(rng, style_name, image_size, mask, rgb))
    templates = STYLE_TEMPLATES[style_name]
    template = templates[int(rng.integers(len(templates)))]
    word = CLASSES[label]
    if style_name in _COLOUR_VISIBLE and rng.random() < COLOUR_CAPTION_PROB:
        word = f"{colour} {word}"
    return img, template.format(word), float(mask.mean())


def _resolve(names: Sequence[str] | None, universe: tuple[str, ...], what: str) -> np.ndarray:
    if names is None:
        return np.arange(len(universe))
    bad = [n for n in names if n not in universe]
    if bad:
        from fdalign.errors import FDAlignError

        raise FDAlignError(f"unknown world {what} {bad}; choose from {list(universe)}")
    return np.array([universe.index(n) for n in names])


def render_items(
    labels: Sequence[int], styles: Sequence[int], seed: int, image_size: int = 64, start: int = 0
) -> WorldBatch:
    """Render given (label, style) pairs; sample ``k`` uses ``rng = default_rng([seed, start + k])``."""
    labels = np.asarray(labels, dtype=np.int64)
    styles = np.asarray(styles, dtype=np.int64)
    images = np.empty((len(labels), image_size, image_size, 3), np.uint8)
    areas = np.empty(len(labels), np.float32)
    captions = []
    for k, (y, s) in enumerate(zip(labels, styles)):
        images[k], cap, areas[k] = render_one(int(y), int(s), np.random.default_rng([seed, start + k]), image_size)
        captions.append(cap)
    return WorldBatch(images, labels, styles, captions, areas)


def sample_items(n: int, seed: int, classes=None, styles=None, style_weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (label, style) index pairs: classes uniform, styles uniform or ``style_weights``."""
    cls_ids = _resolve(classes, CLASSES, "class")
    sty_ids = _resolve(styles, STYLES, "style")
    rng = np.random.default_rng([seed, 2**31 - 1])  # a stream no per-sample generator uses
    p = None
    if style_weights is not None:
        p = np.asarray(style_weights, dtype=np.float64)
        p = p / p.sum()
    return rng.choice(cls_ids, n), rng.choice(sty_ids, n, p=p)


def render(n: int, seed: int, classes=None, styles=None, image_size: int = 64, style_weights=None) -> WorldBatch:
    """Render ``n`` random samples of the world (deterministic in ``seed``).

    Args:
        classes / styles: names to draw from (default: all :data:`CLASSES` / :data:`STYLES`).
        style_weights: optional relative frequencies, one per entry of ``styles``.
    """
    labels, styles_ = sample_items(n, seed, classes, styles, style_weights)
    return render_items(labels, styles_, seed, image_size)


def render_grid(per_cell: int, seed: int, classes=None, styles=None, image_size: int = 64) -> WorldBatch:
    """A balanced set: ``per_cell`` images for every (class, style) pair, e.g. a fixed test set."""
    cls_ids = _resolve(classes, CLASSES, "class")
    sty_ids = _resolve(styles, STYLES, "style")
    s, c, _ = np.meshgrid(sty_ids, cls_ids, np.arange(per_cell), indexing="ij")
    return render_items(c.ravel(), s.ravel(), seed, image_size)


def _render_chunk(args):
    labels, styles, seed, image_size, start = args
    return render_items(labels, styles, seed, image_size, start)


def concat(batches: Sequence[WorldBatch]) -> WorldBatch:
    return WorldBatch(
        np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
        np.concatenate([b.styles for b in batches]), [c for b in batches for c in b.captions],
        None if any(b.areas is None for b in batches) else np.concatenate([b.areas for b in batches]),
    )  # fmt: skip


def render_parallel(labels, styles, seed: int, image_size: int = 64, workers: int = 2, chunk: int = 2000) -> WorldBatch:
    """:func:`render_items` split over a process pool; identical output to the serial call."""
    labels, styles = np.asarray(labels), np.asarray(styles)
    jobs = [(labels[i : i + chunk], styles[i : i + chunk], seed, image_size, i) for i in range(0, len(labels), chunk)]
    if workers <= 1:
        return concat([_render_chunk(j) for j in jobs])
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        return concat(pool.map(_render_chunk, jobs))
