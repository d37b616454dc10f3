"""Helpers shared by the dataset loaders: argument checks, stratified subsets, normalisation.

Every image loader ends with :func:`image_bundle`, which normalises the inputs per channel with the
training split's statistics and packs both splits into a :class:`DataBundle`.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable

import numpy as np
import torch

from workbench.data.bundle import DataBundle, Split


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are not on this machine (and were not downloaded)."""


# ---------------------------------------------------------------------------- argument checks

def check_int(arg: str, value: Any, low: int | None = None, high: int | None = None,
              why: str = "") -> int:
    """Return ``value`` as an int; raise naming ``arg`` and ``value`` if it is not one in [low, high]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{arg} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        raise ValueError(f"{arg} must be {bounds}{why}, got {value!r}")
    return int(value)


def check_float(arg: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float; raise naming ``arg`` and ``value`` if it is not one in [low, high]."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{arg} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{arg} must be between {low} and {high}, got {value!r}")
    return float(value)


def check_kwargs(dataset: str, loader: Callable, kwargs: dict[str, Any]) -> None:
    """Raise a TypeError naming any keyword that ``loader`` does not accept, and listing those it does."""
    accepted = list(inspect.signature(loader).parameters)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TypeError(f"dataset {dataset!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(accepted)}")


# ---------------------------------------------------------------------------- subsets

def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples whose class proportions follow ``y``'s, chosen by ``seed``.

    Each class's samples are shuffled and given keys rank/class_size; taking the ``n`` smallest keys
    (ties broken at random) fills the classes in proportion, and rank 0 puts one sample of every class
    first, so every class is present when ``n >= number of classes``.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))                      # (N,) random order
    ys = y[perm]
    order = np.argsort(ys, kind="stable")               # grouped by class, random within a class
    classes, starts, counts = np.unique(ys[order], return_index=True, return_counts=True)
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(starts, counts)
    key = rank / counts[np.searchsorted(classes, ys)]   # (N,) in [0, 1)
    chosen = np.lexsort((rng.random(len(y)), key))[:n]
    return np.sort(perm[chosen])


def train_index(y: np.ndarray, n_train: int | None, seed: int, dataset: str) -> np.ndarray | None:
    """None for the whole training split, else the indices of a stratified ``n_train`` subset."""
    check_int("seed", seed, low=0)
    if n_train is None:
        return None
    check_int("n_train", n_train, 1, len(y), why=f" (the {dataset} training split has {len(y)} samples)")
    return stratified_subset(y, n_train, seed)


# ---------------------------------------------------------------------------- bundles

def normalise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Normalise both (N, C, H, W) tensors in place with the training split's per-channel mean/std."""
    mean = train_x.mean(dim=(0, 2, 3), dtype=torch.float64)                        # (C,)
    std = train_x.std(dim=(0, 2, 3), correction=0).double().clamp_min(1e-8)        # (C,)
    shape = (1, -1, 1, 1)
    for x in (train_x, test_x):
        x.sub_(mean.float().view(shape)).div_(std.float().view(shape))
    return mean.tolist(), std.tolist()


def image_bundle(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 class_names: list[str], meta: dict[str, Any] | None = None,
                 train_extras: dict[str, torch.Tensor] | None = None,
                 test_extras: dict[str, torch.Tensor] | None = None,
                 keep: np.ndarray | None = None) -> DataBundle:
    """Pack (images, labels) pairs into a normalised DataBundle.

    ``keep`` (from :func:`train_index`) keeps a subset of the training split. The mean and std
    always come from the WHOLE training split, so a subset sees exactly the inputs that a model
    trained on all of it (a teacher) sees: teacher and student must agree on what an image is.

    Images are (N, C, H, W) arrays: uint8 (scaled to [0, 1]) or floats in [0, 1]; labels are (N,) ints.
    A float32 array is normalised in place (the bundle takes it over without a copy).
    ``meta`` gains ``"mean"`` and ``"std"`` (per-channel lists) so a plot can undo the normalisation.
    """
    def as_float(images: np.ndarray) -> torch.Tensor:
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(images)).float().div_(scale)

    (train_x, train_y), (test_x, test_y) = train, test
    xs = as_float(train_x), as_float(test_x)
    mean, std = normalise(*xs)
    ys = torch.from_numpy(train_y.astype(np.int64)), torch.from_numpy(test_y.astype(np.int64))
    if keep is not None:
        keep_t = torch.from_numpy(keep)
        xs, ys = (xs[0][keep_t], xs[1]), (ys[0][keep_t], ys[1])
        train_extras = {k: v[keep_t] for k, v in (train_extras or {}).items()}
    return DataBundle(
        name=name,
        train=Split(xs[0], ys[0], dict(train_extras or {})),
        test=Split(xs[1], ys[1], dict(test_extras or {})),
        num_classes=len(class_names),
        class_names=list(class_names),
        input_shape=tuple(xs[0].shape[1:]),
        meta={**(meta or {}), "mean": mean, "std": std},
    )
