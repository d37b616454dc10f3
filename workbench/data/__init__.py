"""Datasets: ``load(name, **kwargs)`` returns a :class:`DataBundle` (train and test splits in memory).

Embedded sets work offline: ``digits`` (scikit-learn's handwritten digits) and ``shapes``
(procedural RGB shapes with masks, boxes and segmentation). ``mnist``, ``fashion_mnist``,
``cifar10`` and ``cifar100`` are read from torchvision's on-disk layout under ``$KDWB_DATA``
(default ``~/.kdwb/data``); ``download=True`` fetches them. Importing this package registers
every loader in :data:`workbench.registry.DATASETS`.
"""
from __future__ import annotations

from typing import Any

from workbench.data import digits, shapes, torchvision_sets  # noqa: F401  (registers the loaders)
from workbench.data import sbm  # noqa: F401  (registers the graph loader)
from workbench.data import shapes_paired  # noqa: F401  (registers the paired-modality loader)
from workbench.data.bundle import Batch, DataBundle, Split
from workbench.data.common import DatasetUnavailableError, check_kwargs
from workbench.data.sealed import SealedSplit, TrainingDataAccessError, seal_training_data
from workbench.registry import DATASETS

__all__ = ["load", "names", "DataBundle", "Split", "Batch", "DatasetUnavailableError",
           "SealedSplit", "TrainingDataAccessError", "seal_training_data"]


def load(name: str, **kwargs: Any) -> DataBundle:
    """Build the dataset registered as ``name``: ``load("shapes", size=32, n_train=2000, seed=0)``.

    Unknown names and unknown keyword arguments raise errors that list what is accepted.
    """
    entry = DATASETS.get(name)
    check_kwargs(name, entry.factory, kwargs)
    bundle = entry.factory(**kwargs)
    # run configs record how the data was made, so equal configs mean equal data
    bundle.meta["load_args"] = {k: v for k, v in kwargs.items() if k not in ("root", "download")}
    return bundle


def names() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()
