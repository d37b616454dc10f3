"""Sealed training data: proof that a data-free distillation never reads the training images.

``seal_training_data(bundle)`` returns a copy of ``bundle`` whose training split keeps only its
length; reading its inputs, labels or extras raises :class:`TrainingDataAccessError`. A data-free
scheme (DAFL, ZSKT: ``Scheme.reads_training_data = False``) trains on a sealed bundle, and the
test split stays readable for evaluation. Any other scheme fails on its first batch, naming the
access, so a test that passes on sealed data shows that nothing read the images.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NoReturn

from .bundle import DataBundle


class TrainingDataAccessError(RuntimeError):
    """Something read the inputs or labels of a sealed training split."""


class SealedSplit:
    """A training split of ``n`` samples whose contents cannot be read (only ``len`` works)."""

    def __init__(self, n: int, dataset: str):
        self._n, self._dataset = int(n), dataset

    def __len__(self) -> int:
        return self._n

    def _refuse(self, what: str) -> NoReturn:
        raise TrainingDataAccessError(
            f"the training split of {self._dataset!r} is sealed (data-free distillation): reading its "
            f"{what} is not allowed. Only data-free schemes (e.g. scheme='dafl' or 'zskt') can train "
            "on a sealed bundle; the test split stays readable for evaluation.")

    @property
    def x(self) -> NoReturn:
        self._refuse("inputs")

    @property
    def y(self) -> NoReturn:
        self._refuse("labels")

    @property
    def extras(self) -> NoReturn:
        self._refuse("extra targets")

    def subset(self, index) -> NoReturn:
        self._refuse("samples")

    def batch(self, index) -> NoReturn:
        self._refuse("samples")

    def batches(self, *args, **kwargs) -> NoReturn:
        self._refuse("batches")

    def __repr__(self) -> str:
        return f"SealedSplit({self._n} samples of {self._dataset!r})"


def seal_training_data(bundle: DataBundle) -> DataBundle:
    """A copy of ``bundle`` whose training split raises on any read (its length stays known)."""
    return replace(bundle, train=SealedSplit(len(bundle.train), bundle.name), meta=dict(bundle.meta))
