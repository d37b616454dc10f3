"""Shared set-up of the fault tests: a small digits split and tiny, seeded models.

Faults do not need good models: the teacher is left untrained (a frozen random network is a valid
teacher), and the training split is cut to 256 images so that a run takes a fraction of a second.
"""
import os
import tempfile

import pytest
import torch

# hypothesis keeps an example database and a cache of source constants; keep them out of the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "kdwb-hypothesis"))

import workbench as wb


@pytest.fixture(scope="session")
def digits():
    return wb.data.load("digits", n_train=256)


@pytest.fixture
def make_student():
    def make(seed: int = 1, width: int = 4):
        torch.manual_seed(seed)
        return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)
    return make


@pytest.fixture
def make_teacher():
    def make(seed: int = 0, width: int = 8):
        torch.manual_seed(seed)
        return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)
    return make
