"""Synthetic stimuli: scenes of 1-3 coloured shapes, their rendering, captions and labels.

A scene is sampled first as a structured description and only then drawn, so the same description
drives the pixels, the captions (which therefore can only say what is drawn) and the simulated cortex's
semantic features. Everything is a pure function of a numpy Generator, hence reproducible per image id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "diamond",
    "hexagon",
    "ring",
    "pentagon",
    "crescent",
)
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "pink": (245, 120, 180),
}
COLOR_NAMES = tuple(COLORS)
# backgrounds use a separate, muted palette so an object never vanishes into a same-coloured background
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "beige": (225, 210, 180),
    "navy": (25, 35, 90),
    "olive": (110, 110, 40),
    "teal": (30, 110, 110),
    "maroon": (110, 30, 40),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
MAX_OBJECTS = 3
_COUNT_WORDS = ("one", "two", "three")
_PLACES = (
    ("in the upper left", "at the top", "in the upper right"),
    ("on the left", "in the center", "on the right"),
    ("in the lower left", "at the bottom", "in the lower right"),
)
_SUPERSAMPLE = 2  # draw at 2x and box-downsample: cheap anti-aliasing


def _article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


@dataclass(frozen=True)
class SceneObject:
    """One shape; ``radius``, ``x``, ``y`` are fractions of the image side (y grows downwards)."""

    shape: int
    color: int
    radius: float
    x: float
    y: float
    angle: float  # radians

    @property
    def size_word(self) -> str:
        return "small" if self.radius < 0.14 else "medium-sized" if self.radius < 0.2 else "large"

    @property
    def place(self) -> str:
        return _PLACES[min(int(self.y * 3), 2)][min(int(self.x * 3), 2)]

    @property
    def name(self) -> str:
        return f"{COLOR_NAMES[self.color]} {SHAPES[self.shape]}"

    def phrase(self, size: bool = True) -> str:
        """'a small red star' / 'an orange ring': the object with its article."""
        return _article(f"{self.size_word} {self.name}" if size else self.name)


@dataclass(frozen=True)
class Background:
    """Plain, two-colour gradient or faintly striped: enough variety that pixels are not just the objects."""

    kind: str  # "plain" | "gradient" | "stripes"
    colors: tuple[int, ...]  # indices into BACKGROUND_NAMES (two for a gradient)
    angle: float  # gradient / stripe direction, radians
    frequency: float  # stripe cycles per image side

    @property
    def phrase(self) -> str:
        names = [BACKGROUND_NAMES[c] for c in self.colors]
        if self.kind == "gradient":
            return _article(f"{names[0]}-to-{names[1]} gradient background")
        if self.kind == "stripes":
            return _article(f"{names[0]} background with faint stripes")
        return _article(f"{names[0]} background")


@dataclass(frozen=True)
class Scene:
    """The ground truth of one stimulus: what is rendered, captioned, labelled and seen by the cortex."""

    objects: tuple[SceneObject, ...]  # largest first
    background: Background

    def labels(self) -> dict[str, int]:
        """Linear-probe targets: shape and colour of the largest object, number of objects."""
        main = self.objects[0]
        return {"shape": main.shape, "color": main.color, "count": len(self.objects)}


def sample_scene(rng: np.random.Generator) -> Scene:
    """1-3 objects, largest first (it carries the labels and is drawn first, so it is never hidden)."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    radii = sorted(rng.uniform(0.08, 0.28, count), reverse=True)
    objects: list[SceneObject] = []
    for radius in radii:
        for _ in range(10):  # rejection-sample a spot that overlaps the objects already placed little
            x, y = rng.uniform(radius, 1 - radius, 2)
            if all(math.hypot(x - o.x, y - o.y) > 0.8 * (radius + o.radius) for o in objects):
                break
        angle = rng.uniform(-0.4, 0.4)  # mild rotation: a square must still read as a square
        shape, color = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLORS)))
        objects.append(SceneObject(shape, color, float(radius), float(x), float(y), float(angle)))
    kind = ("plain", "gradient", "stripes")[int(rng.integers(3))]
    colors = tuple(
        int(c) for c in rng.choice(len(BACKGROUNDS), 2 if kind == "gradient" else 1, replace=False)
    )
    background = Background(kind, colors, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(3, 10)))
    return Scene(tuple(objects), background)


def _background(bg: Background, size: int) -> Image.Image:
    """RGB image at ``size * _SUPERSAMPLE``. Smooth, so it is computed (numpy) at ``size`` and upsampled:
    at 256 px this is most of the render time otherwise."""
    side = size * _SUPERSAMPLE
    base = np.asarray([BACKGROUNDS[BACKGROUND_NAMES[c]] for c in bg.colors], np.float32)  # [k, 3]
    if bg.kind == "plain":
        return Image.new("RGB", (side, side), tuple(int(v) for v in base[0]))
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    proj = coords[None, :] * math.cos(bg.angle) + coords[:, None] * math.sin(bg.angle)  # [size, size]
    if bg.kind == "gradient":
        t = np.clip(proj / math.sqrt(0.5) + 0.5, 0, 1)[..., None]
        image = (1 - t) * base[0] + t * base[1]
    else:  # stripes
        image = base[0] + 14.0 * np.sin(2 * math.pi * bg.frequency * proj)[..., None]
    small = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return small.resize((side, side), Image.Resampling.BILINEAR)


def _polygon(obj: SceneObject, side: int) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape on a unit radius, rotated, scaled and placed in pixels."""
    name = SHAPES[obj.shape]
    if name == "star":
        pts = [(0.45 + 0.55 * (k % 2 == 0), -math.pi / 2 + k * math.pi / 5) for k in range(10)]
        xy = [(r * math.cos(a), r * math.sin(a)) for r, a in pts]
    elif name == "cross":
        w = 0.33
        xy = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    elif name == "diamond":
        xy = [(0.62 * math.cos(k * math.pi / 2), math.sin(k * math.pi / 2)) for k in range(4)]
    else:
        corners = {"square": 4, "triangle": 3, "hexagon": 6, "pentagon": 5}[name]
        start = math.pi / 4 if name == "square" else -math.pi / 2
        xy = [
            (math.cos(start + 2 * math.pi * k / corners), math.sin(start + 2 * math.pi * k / corners))
            for k in range(corners)
        ]
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    r, cx, cy = obj.radius * side, obj.x * side, obj.y * side
    return [(cx + r * (c * px - s * py), cy + r * (s * px + c * py)) for px, py in xy]


def _draw(image: Image.Image, obj: SceneObject) -> None:
    side = image.size[0]
    color = COLORS[COLOR_NAMES[obj.color]]
    r, cx, cy = obj.radius * side, obj.x * side, obj.y * side
    box = (cx - r, cy - r, cx + r, cy + r)
    name = SHAPES[obj.shape]
    draw = ImageDraw.Draw(image)
    if name == "circle":
        draw.ellipse(box, fill=color)
    elif name == "ring":
        draw.ellipse(box, outline=color, width=max(1, round(0.35 * r)))
    elif name == "crescent":  # a disc minus an offset disc, via a mask so the background shows through
        mask = Image.new("L", image.size, 0)
        mask_draw = ImageDraw.Draw(mask)
        mask_draw.ellipse(box, fill=255)
        turn = 4 * obj.angle  # spread the mild rotation range over the crescent's opening directions
        dx, dy = 0.45 * r * math.cos(turn), 0.45 * r * math.sin(turn)
        mask_draw.ellipse((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), fill=0)
        image.paste(color, mask=mask)
    else:
        draw.polygon(_polygon(obj, side), fill=color)


def render(scene: Scene, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8; objects are drawn largest first so smaller ones stay visible on top."""
    image = _background(scene.background, size)
    for obj in scene.objects:
        _draw(image, obj)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """1-3 distinct captions, each true of the drawn scene and each naming the largest object."""
    objs, bg = scene.objects, scene.background.phrase
    main, n = objs[0], len(objs)
    listing = ", ".join(o.phrase() for o in objs[:-1]) + (" and " if n > 1 else "") + objs[-1].phrase()
    templates = [
        f"{main.phrase()} on {bg}",
        f"{_COUNT_WORDS[n - 1]} object{'s' if n > 1 else ''}: {listing}",
        f"{main.phrase()} {main.place}",
        f"{_COUNT_WORDS[n - 1]} shapes on {bg}, the largest {main.phrase(size=False)}"
        if n > 1
        else f"a single {main.name} on {bg}",
        f"{main.phrase(size=False)} {_relation(main, objs[1])} {objs[1].phrase(size=False)}"
        if n > 1
        else f"{main.phrase(size=False)} {main.place}, nothing else in view",
    ]
    picks = rng.choice(len(templates), int(rng.integers(1, 4)), replace=False)
    return [templates[int(i)] for i in picks]
