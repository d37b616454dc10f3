"""`digits`: scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes), embedded."""
from __future__ import annotations

import numpy as np

from workbench.data.bundle import DataBundle
from workbench.data.common import image_bundle, stratified_subset, train_index
from workbench.registry import DATASETS

N_TEST = 450      # fixed stratified test split: 1,347 train / 450 test
SPLIT_SEED = 0    # the split never depends on the loader's ``seed``


@DATASETS.register("digits", kind="embedded", modality="image",
                   description="scikit-learn handwritten digits: 1,797 grey 8x8 images, 10 classes")
def digits(n_train: int | None = None, seed: int = 0) -> DataBundle:
    """Load the digits as (N, 1, 8, 8) float32 images, split 1,347 train / 450 test.

    ``n_train`` takes a stratified subset of the training split chosen by ``seed``;
    the train/test split itself is fixed.
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    raw = load_digits()
    x = (raw.images / 16.0).astype(np.float32)[:, None]       # (1797, 1, 8, 8) in [0, 1]
    y = raw.target.astype(np.int64)                           # (1797,)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[stratified_subset(y, N_TEST, SPLIT_SEED)] = True
    keep = train_index(y[~is_test], n_train, seed, "digits")
    return image_bundle("digits", (x[~is_test], y[~is_test]), (x[is_test], y[is_test]),
                        class_names=[str(d) for d in range(10)],
                        meta={"n_train": n_train, "seed": seed}, keep=keep)
