"""`shapes_paired`: the scenes of `shapes` seen through several paired modalities.

Cross-modal distillation (Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision
Transfer", CVPR 2016, https://arxiv.org/abs/1507.00448) needs the *same* scenes captured twice: a
labelled modality a teacher was trained on (RGB) and another one (depth) for which only unlabelled
pairs exist. This set renders every scene of :mod:`workbench.data.shapes` (the same seed gives the
same scenes, bit for bit) in these modalities:

- ``"rgb"`` (3 channels): the shapes images themselves, texture, distractors and noise included;
- ``"gray"`` (1): their luminance, 0.299 R + 0.587 G + 0.114 B (colour gone, texture kept);
- ``"depth"`` (1): a depth map, as a range sensor would see the scene. The background is a far,
  slightly tilted plane; every distractor is a flat slab above it; the class object is a solid
  whose top is a dome plus a ramp (height 1 at its rim grows towards its centre, tilted along a
  random direction), so its silhouette and a smooth relief are visible but none of its colour or
  the background's texture. Sensor noise is Gaussian, its standard deviation a fifth of ``noise``;
- ``"edges"`` (1): the boundaries between the scene's regions (background, each distractor, the
  object), 1 on a boundary pixel and 0 elsewhere, plus Gaussian noise of half ``noise``.

The depth and edge maps use random draws of their own (seeded from ``seed``), so rendering one
modality never changes another. Every modality is normalised per channel with the statistics of
its WHOLE training split, as the other loaders do.

The bundle's ``x`` is the student's modality; ``extras[teacher_modality]`` is the teacher's (the
:class:`~workbench.schemes.cross_modal.CrossModal` scheme feeds it to the teacher), next to
shapes' ``"mask"``, ``"box"`` and ``"segmentation"``. ``meta["modalities"]`` says which modality
is where; ``meta["teacher_mean"]`` / ``meta["teacher_std"]`` undo the teacher's normalisation as
``meta["mean"]`` / ``meta["std"]`` undo the student's.

A teacher is trained on its own modality with labels: ``load("shapes_paired",
student_modality="rgb")`` (``x`` is RGB), or :func:`teacher_view` of a loaded bundle, which gives
the same tensors without rendering again. ``keep_per_class=k`` keeps k scenes per class of the
training split (:func:`labelled_index` with ``label_seed``): exactly the samples whose labels the
cross-modal scheme with ``labels_per_class=k`` and the same ``label_seed`` lets its task loss use,
so "trained on the few labels alone" sees the same labelled scenes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workbench.data import shapes as _shapes
from workbench.data.bundle import DataBundle, Split
from workbench.data.common import check_int, image_bundle, normalise
from workbench.registry import DATASETS

#: modality -> channels
MODALITIES = {"rgb": 3, "depth": 1, "edges": 1, "gray": 1}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R BT.601 luminance weights
# depth layout (in arbitrary units; the normalisation removes the scale)
FAR = (0.8, 1.0)            # background plane's depth at the image centre
TILT = 0.15                 # most the plane's depth changes across the image, per axis
SLAB = (0.1, 0.25)          # distractors' height above the plane
RIM = (0.3, 0.45)           # the object's height at its rim
DOME = (0.1, 0.25)          # extra height at its centre
RAMP = 0.1                  # most its top tilts, per radius


def check_modality(arg: str, value: Any) -> str:
    if value not in MODALITIES:
        raise ValueError(f"{arg}={value!r} is not a modality of shapes_paired; "
                         f"valid: {', '.join(map(repr, MODALITIES))}")
    return value


def labelled_index(y: np.ndarray | torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of every class of ``y``, chosen by ``seed``.

    The choice depends on ``y`` and ``seed`` alone: the loader's ``keep_per_class`` and the
    cross-modal scheme's ``labels_per_class`` call this with the training split's labels, so both
    name the same samples. Raises if a class has fewer than ``per_class`` samples.
    """
    per_class = check_int("labels per class", per_class, low=0)
    seed = check_int("label_seed", seed, low=0)
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if per_class == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < per_class:
        raise ValueError(f"{per_class} labelled samples per class were asked for, but class "
                         f"{classes[counts.argmin()]} has only {counts.min()} training samples")
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(y))   # random order
    order = order[np.argsort(y[order], kind="stable")]                   # grouped by class
    starts = np.searchsorted(y[order], classes)                          # first of each class
    rank = np.arange(len(y)) - np.repeat(starts, counts)                 # place within its class
    return np.sort(order[rank < per_class]).astype(np.int64)


# ---------------------------------------------------------------------------- rendering

def _geometry(p: dict[str, np.ndarray], xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object's local coordinates (u, v), each (n, H, W), in units of its radius (as shapes)."""
    cx, cy, r, tilt = (a[:, None, None] for a in (*p["centre"].T, p["radius"], p["tilt"]))
    ox, oy = xx - cx, yy - cy
    return (ox * np.cos(tilt) + oy * np.sin(tilt)) / r, (oy * np.cos(tilt) - ox * np.sin(tilt)) / r


def _depth_params(n: int, distractors: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"far": rng.uniform(*FAR, n), "tilt": rng.uniform(-TILT, TILT, (n, 2)),
            "slab": rng.uniform(*SLAB, (n, max(distractors, 1))), "rim": rng.uniform(*RIM, n),
            "dome": rng.uniform(*DOME, n), "ramp": rng.uniform(-RAMP, RAMP, (n, 2))}


def _regions(p, xx, yy, distractors: int, mask: np.ndarray) -> np.ndarray:
    """(n, H, W) int8 region of each pixel: 0 background, k + 1 distractor k, -1 the object."""
    region = np.zeros(mask.shape, dtype=np.int8)
    for k in range(distractors):                       # later distractors cover earlier ones
        region = np.where(_shapes._distractor_masks(p, k, xx, yy), np.int8(k + 1), region)
    return np.where(mask, np.int8(-1), region)         # the object covers them all, as in the RGB


def _depth(p, d, region, u, v, size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 1, H, W) depth: plane, minus slab heights, minus the object's dome-and-ramp solid."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5          # -0.5 .. 0.5
    plane = (d["far"][:, None, None] + d["tilt"][:, 0, None, None] * grid[None, None, :]
             + d["tilt"][:, 1, None, None] * grid[None, :, None])          # (n, H, W)
    depth = plane.astype(np.float32)
    for k in range(region.max(initial=0)):
        depth = np.where(region == k + 1, plane - d["slab"][:, k, None, None], depth)
    rho2 = np.minimum(u * u + v * v, 1.0)
    top = (d["rim"][:, None, None] + d["dome"][:, None, None] * (1 - rho2)
           + d["ramp"][:, 0, None, None] * u + d["ramp"][:, 1, None, None] * v)
    depth = np.where(region == -1, plane - top, depth)
    depth = depth + sigma * rng.standard_normal(depth.shape, dtype=np.float32)
    return depth[:, None].astype(np.float32)


def _edges(region: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 1, H, W): 1 where a pixel's region differs from a 4-neighbour's, plus noise."""
    edge = np.zeros(region.shape, dtype=bool)
    horizontal = region[:, :, 1:] != region[:, :, :-1]
    vertical = region[:, 1:, :] != region[:, :-1, :]
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    out = edge.astype(np.float32) + sigma * rng.standard_normal(edge.shape, dtype=np.float32)
    return out[:, None]


def render_paired(n: int, size: int, noise: float, distractors: int, seed: int, stream: int,
                  modalities) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``n`` scenes in each of ``modalities``: ({name: (n, C, H, W) float32}, labels, masks).

    The RGB images, labels and masks are :func:`workbench.data.shapes.render`'s for the generator
    ``default_rng([seed, stream])``, which is what ``shapes`` uses (stream 0 train, 1 test).
    """
    images, labels, masks = _shapes.render(n, size, noise, distractors, np.random.default_rng([seed, stream]))
    out: dict[str, np.ndarray] = {}
    if "rgb" in modalities:
        out["rgb"] = images
    if "gray" in modalities:
        out["gray"] = np.einsum("c,nchw->nhw", LUMA, images)[:, None].astype(np.float32)
    if "depth" in modalities or "edges" in modalities:
        # the same draws as `render` made first: the same scenes, to place the geometry
        p = _shapes._draw_params(n, size, distractors, np.random.default_rng([seed, stream]))
        assert np.array_equal(p["labels"], labels)
        d = _depth_params(n, distractors, np.random.default_rng([seed, stream, 1]))
        depth_rng, edge_rng = np.random.default_rng([seed, stream, 2]), np.random.default_rng([seed, stream, 3])
        grid = np.arange(size, dtype=np.float32) + 0.5
        yy, xx = grid[None, :, None], grid[None, None, :]
        parts: dict[str, list[np.ndarray]] = {m: [] for m in ("depth", "edges") if m in modalities}
        for start in range(0, n, _shapes.CHUNK):
            q = {k: v[start:start + _shapes.CHUNK] for k, v in p.items()}
            region = _regions(q, xx, yy, distractors, masks[start:start + _shapes.CHUNK])
            if "depth" in parts:
                u, v = _geometry(q, xx, yy)
                dq = {k: v_[start:start + _shapes.CHUNK] for k, v_ in d.items()}
                parts["depth"].append(_depth(q, dq, region, u, v, size, noise / 5, depth_rng))
            if "edges" in parts:
                parts["edges"].append(_edges(region, noise / 2, edge_rng))
        out.update({m: np.concatenate(chunks) for m, chunks in parts.items()})
    return out, labels, masks


@DATASETS.register("shapes_paired", kind="embedded", modality="image",
                   description="the shapes scenes in paired modalities (rgb, depth, edges, gray) "
                               "for cross-modal distillation")
def shapes_paired(student_modality: str = "depth", teacher_modality: str = "rgb", size: int = 32,
                  n_train: int | None = 2000, n_test: int = 500, seed: int = 0, noise: float = 0.1,
                  distractors: int = 2, keep_per_class: int | None = None,
                  label_seed: int = 0) -> DataBundle:
    """Render the shapes scenes as (student modality, teacher modality) pairs.

    ``x``: the ``student_modality`` (N, C, size, size); ``extras[teacher_modality]``: the same
    scenes in the teacher's modality; ``extras`` also holds shapes' ``"mask"``, ``"box"`` and
    ``"segmentation"``. The other arguments are shapes' (the same values give the same scenes).
    ``keep_per_class``: keep only that many training scenes per class (chosen by ``label_seed``
    with :func:`labelled_index`; normalised with the whole split's statistics).
    """
    student_modality = check_modality("student_modality", student_modality)
    teacher_modality = check_modality("teacher_modality", teacher_modality)
    size, n_train, n_test, seed, noise, distractors = _shapes.check_scene_args(
        size, n_train, n_test, seed, noise, distractors)
    label_seed = check_int("label_seed", label_seed, low=0)
    wanted = {student_modality, teacher_modality}
    splits = []
    for n, stream in ((n_train, 0), (n_test, 1)):
        arrays, labels, masks = render_paired(n, size, noise, distractors, seed, stream, wanted)
        splits.append((arrays, labels, _shapes._targets(labels, masks)))
    (train, train_y, train_extras), (test, test_y, test_extras) = splits
    # the teacher's modality, normalised with its own whole-split statistics (copied: when both
    # modalities are the same, `image_bundle` normalises the student's array in place)
    teacher_train = torch.from_numpy(train[teacher_modality].copy())
    teacher_test = torch.from_numpy(test[teacher_modality].copy())
    teacher_mean, teacher_std = normalise(teacher_train, teacher_test)
    train_extras[teacher_modality], test_extras[teacher_modality] = teacher_train, teacher_test
    keep = None
    if keep_per_class is not None:
        keep = labelled_index(train_y, check_int("keep_per_class", keep_per_class, low=1), label_seed)
    meta = {"size": size, "n_train": n_train, "n_test": n_test, "seed": seed, "noise": noise,
            "distractors": distractors, "student_modality": student_modality,
            "teacher_modality": teacher_modality, "keep_per_class": keep_per_class,
            "label_seed": label_seed,
            "modalities": {"x": student_modality, f"extras[{teacher_modality!r}]": teacher_modality},
            "teacher_mean": teacher_mean, "teacher_std": teacher_std}
    return image_bundle("shapes_paired", (train[student_modality], train_y),
                        (test[student_modality], test_y), _shapes.CLASS_NAMES, meta=meta,
                        train_extras=train_extras, test_extras=test_extras, keep=keep)


def teacher_view(bundle: DataBundle) -> DataBundle:
    """The same scenes with the teacher's modality as ``x``: what the teacher is trained on.

    Equal to ``load("shapes_paired", student_modality=<the teacher's>, ...)`` with the bundle's
    other arguments (``meta["load_args"]`` says so, so a run on it has that run's config).
    """
    modality = bundle.meta["teacher_modality"]

    def view(split: Split) -> Split:
        return Split(split.extras[modality], split.y, dict(split.extras))

    meta = {**bundle.meta, "student_modality": modality,
            "modalities": {"x": modality, f"extras[{modality!r}]": modality},
            "mean": bundle.meta["teacher_mean"], "std": bundle.meta["teacher_std"]}
    if "load_args" in bundle.meta:
        meta["load_args"] = {**bundle.meta["load_args"], "student_modality": modality}
    train, test = view(bundle.train), view(bundle.test)
    return DataBundle(name=bundle.name, train=train, test=test, num_classes=bundle.num_classes,
                      class_names=list(bundle.class_names), input_shape=tuple(train.x.shape[1:]),
                      meta=meta)
