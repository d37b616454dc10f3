"""`shapes`: procedural RGB images of 10 shape classes, with the object's mask, box and segmentation.

Each image has one class shape at a random place, size, tilt and colour, on a random-coloured
background with a wavy texture, a few distractors (small blobs and line segments that belong to no
class and are not in the mask) and pixel noise. Shapes are rasterised by evaluating their implicit
inequalities on a coordinate grid, batched over images with numpy. Every shape fits inside the unit
disc of its local coordinates, so it always lies fully inside the image.
"""
from __future__ import annotations

import numpy as np
import torch

from workbench.data.bundle import DataBundle
from workbench.data.common import check_float, check_int, image_bundle
from workbench.registry import DATASETS

CLASS_NAMES = ["circle", "square", "triangle", "cross", "star",
               "ring", "diamond", "bar", "heart", "crescent"]
CHUNK = 512          # images rendered at a time, to bound memory at large sizes
MAX_TILT = 0.4       # radians; small enough that a tilted square never looks like the diamond


# ---------------------------------------------------------------------------- shapes
# Each takes local coordinates u (right), v (down), arrays (n, H, W) in units of the object's
# radius, and returns the (n, H, W) bool mask of points inside the shape.

def _polygon(u, v, sides, first_normal):
    """A regular polygon inscribed in the unit circle; ``first_normal`` is one edge normal's angle."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        a = first_normal + 2 * np.pi * k / sides
        inside &= u * np.cos(a) + v * np.sin(a) <= np.cos(np.pi / sides)
    return inside


def _star(u, v, points=5, inner=0.45):
    """A star with its outer tips on the unit circle, one tip pointing up."""
    sector = 2 * np.pi / points
    phi = np.abs((np.arctan2(v, u) + np.pi / 2) % sector - sector / 2)    # angle from the nearest tip
    rho = np.hypot(u, v)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    dx, dy = inner * np.cos(sector / 2) - 1, inner * np.sin(sector / 2)    # edge from tip to notch
    return dx * py - dy * (px - 1) >= 0


def _heart(u, v):
    x, y = 1.25 * u, 0.25 - 1.25 * v                       # lobes up, scaled into the unit disc
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


SHAPES = [
    lambda u, v: u * u + v * v <= 1,                                             # circle
    lambda u, v: _polygon(u, v, 4, 0.0),                                         # square
    lambda u, v: _polygon(u, v, 3, np.pi / 2),                                   # triangle, tip up
    lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.93))
    | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.93)),                                # cross
    _star,                                                                       # star
    lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.55 ** 2),            # ring
    lambda u, v: np.abs(u) / 0.6 + np.abs(v) <= 1,                               # diamond
    lambda u, v: (np.abs(u) <= 0.95) & (np.abs(v) <= 0.3),                       # bar
    _heart,                                                                      # heart
    lambda u, v: (u * u + v * v <= 1) & ((u - 0.45) ** 2 + v * v >= 0.8 ** 2),   # crescent
]


# ---------------------------------------------------------------------------- rendering

def _draw_params(n: int, size: int, distractors: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every random choice for ``n`` images (colours, places, distractors), drawn up front."""
    labels = rng.permutation(np.arange(n) % len(SHAPES))                  # balanced classes
    radius = size * rng.uniform(0.2, 0.34, n)
    bg = rng.uniform(0, 1, (n, 3))
    # Object colour: each channel 0.3..0.7 away from the background's (mod 1), so it always shows
    # but is as uniformly random as the background: colour says nothing about the class.
    fg = (bg + rng.uniform(0.3, 0.7, (n, 3))) % 1.0
    params = {
        "labels": labels,
        "radius": radius,
        "centre": rng.uniform(radius[:, None], size - radius[:, None], (n, 2)),   # (n, 2) x, y
        "tilt": rng.uniform(-MAX_TILT, MAX_TILT, n),
        "bg": bg, "fg": fg,
        "waves": rng.uniform(0, 1, (n, 2, 4)),            # two gratings: direction, frequency, phase, amp
        "d_kind": rng.random((n, distractors)) < 0.5,      # True: blob, False: line segment
        "d_ends": rng.uniform(0, size, (n, distractors, 2, 2)),   # start, and a point to head for
        "d_len": size * rng.uniform(0.2, 0.45, (n, distractors)),
        "d_half_width": size * rng.uniform(0.02, 0.04, (n, distractors)),
        "d_radius": size * rng.uniform(0.04, 0.07, (n, distractors)),
        "d_colour": rng.uniform(0, 1, (n, distractors, 3)),
    }
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in params.items()}


def _background(p: dict[str, np.ndarray], xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """(n, 3, H, W): the background colour modulated by two random sinusoidal gratings."""
    w = p["waves"][:, :, :, None, None]                                      # (n, 2, 4, 1, 1)
    angle, freq = w[:, :, 0] * np.pi, (1 + 3 * w[:, :, 1]) * 2 * np.pi / size
    phase, amp = w[:, :, 2] * 2 * np.pi, 0.05 + 0.1 * w[:, :, 3]
    texture = (amp * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)).sum(1)
    return p["bg"][:, :, None, None] + texture[:, None]                     # (n, 3, H, W)


def _distractor_masks(p: dict[str, np.ndarray], k: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(n, H, W) bool: distractor ``k`` of every image, a small disc or a thin line segment."""
    (x0, y0), (dx, dy) = p["d_ends"][:, k, 0].T, p["d_ends"][:, k, 1].T - p["d_ends"][:, k, 0].T
    scale = p["d_len"][:, k] / np.maximum(np.hypot(dx, dy), 1e-6)
    x0, y0, dx, dy = (a[:, None, None] for a in (x0, y0, dx * scale, dy * scale))
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)  # nearest point on segment
    line = np.hypot(xx - x0 - t * dx, yy - y0 - t * dy) <= p["d_half_width"][:, k, None, None]
    blob = np.hypot(xx - x0, yy - y0) <= p["d_radius"][:, k, None, None]
    return np.where(p["d_kind"][:, k, None, None], blob, line)


def _object_masks(p: dict[str, np.ndarray], xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(n, H, W) bool: each image's class shape, placed, scaled and tilted."""
    mask = np.zeros((len(p["labels"]), yy.shape[1], xx.shape[2]), dtype=bool)
    for c, inside in enumerate(SHAPES):
        idx = np.flatnonzero(p["labels"] == c)
        if len(idx) == 0:
            continue
        cx, cy, r, tilt = (a[:, None, None] for a in (*p["centre"][idx].T, p["radius"][idx], p["tilt"][idx]))
        ox, oy = xx - cx, yy - cy
        u = (ox * np.cos(tilt) + oy * np.sin(tilt)) / r
        v = (oy * np.cos(tilt) - ox * np.sin(tilt)) / r
        mask[idx] = inside(u, v)
    return mask


def render(n: int, size: int, noise: float, distractors: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make ``n`` images: (n, 3, size, size) float32 in [0, 1], (n,) int64 labels, (n, size, size) masks."""
    p = _draw_params(n, size, distractors, rng)
    grid = np.arange(size, dtype=np.float32) + 0.5                             # pixel centres
    yy, xx = grid[None, :, None], grid[None, None, :]                          # (1, H, 1), (1, 1, W)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    for start in range(0, n, CHUNK):
        q = {k: v[start:start + CHUNK] for k, v in p.items()}
        img = _background(q, xx, yy, size)                                    # (m, 3, H, W)
        for k in range(distractors):
            img = np.where(_distractor_masks(q, k, xx, yy)[:, None], q["d_colour"][:, k, :, None, None], img)
        mask = _object_masks(q, xx, yy)                                       # (m, H, W)
        img = np.where(mask[:, None], q["fg"][:, :, None, None], img)
        img += noise * rng.standard_normal(img.shape, dtype=np.float32)
        images[start:start + CHUNK] = np.clip(img, 0, 1)
        masks[start:start + CHUNK] = mask
    return images, p["labels"].astype(np.int64), masks


def _targets(labels: np.ndarray, masks: np.ndarray) -> dict[str, torch.Tensor]:
    """Extra targets: "mask" (N, H, W) bool, "box" (N, 4) xyxy pixel edges, "segmentation" (N, H, W)."""
    cols, rows = masks.any(axis=1), masks.any(axis=2)                          # (N, W), (N, H)
    first = lambda a: a.argmax(axis=1)                                         # noqa: E731
    last = lambda a: a.shape[1] - a[:, ::-1].argmax(axis=1)                    # noqa: E731  (exclusive)
    box = np.stack([first(cols), first(rows), last(cols), last(rows)], axis=1).astype(np.float32)
    segmentation = np.where(masks, labels[:, None, None] + 1, 0).astype(np.int64)
    return {"mask": torch.from_numpy(masks), "box": torch.from_numpy(box),
            "segmentation": torch.from_numpy(segmentation)}


def check_scene_args(size, n_train, n_test, seed, noise, distractors) -> tuple:
    """Validate the scene arguments shared by ``shapes`` and the loaders built on its scenes;
    ``n_train=None`` means the default 2,000."""
    return (check_int("size", size, 16, 128),
            check_int("n_train", 2000 if n_train is None else n_train, low=1),
            check_int("n_test", n_test, low=1),
            check_int("seed", seed, low=0),
            check_float("noise", noise, 0.0, 1.0),
            check_int("distractors", distractors, 0, 10))


@DATASETS.register("shapes", kind="embedded", modality="image",
                   description="procedural RGB shapes, 10 classes, with masks, boxes and segmentation")
def shapes(size: int = 32, n_train: int | None = 2000, n_test: int = 500, seed: int = 0,
           noise: float = 0.1, distractors: int = 2) -> DataBundle:
    """Generate the shapes set: (N, 3, size, size) float32 images and per-image extra targets.

    ``n_train=None`` means the default 2,000. Classes are balanced. The same ``seed`` gives identical
    tensors; the test split is drawn from a seed derived from it, so it never repeats training images.
    ``Split.extras`` holds ``"mask"`` (N, H, W) bool, the object's pixels; ``"box"`` (N, 4) float32,
    the object's box as xyxy pixel edges (pixel i spans [i, i+1)); ``"segmentation"`` (N, H, W)
    int64, 0 for background and class index + 1 on the object.
    """
    size, n_train, n_test, seed, noise, distractors = check_scene_args(
        size, n_train, n_test, seed, noise, distractors)
    splits = []
    for n, stream in ((n_train, 0), (n_test, 1)):
        images, labels, masks = render(n, size, noise, distractors, np.random.default_rng([seed, stream]))
        splits.append(((images, labels), _targets(labels, masks)))
    (train, train_extras), (test, test_extras) = splits
    return image_bundle("shapes", train, test, CLASS_NAMES, train_extras=train_extras, test_extras=test_extras,
                        meta={"size": size, "n_train": n_train, "n_test": n_test, "seed": seed,
                              "noise": noise, "distractors": distractors})
