"""Shared set-up of the method-family tests: the small `shapes` split their training-step tests use."""
import pytest

import workbench as wb


@pytest.fixture(scope="module")
def shapes():
    """48 training images of `shapes` 32x32: three batches of 16."""
    return wb.data.load("shapes", n_train=48, n_test=16)
