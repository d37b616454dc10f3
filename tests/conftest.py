"""Shared test set-up: a private run store per test, one CPU thread, quiet progress bars."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Every test gets its own KDWB_HOME, so runs never leak between tests or into ~/.kdwb."""
    monkeypatch.setenv("KDWB_HOME", str(tmp_path / "kdwb"))
    return tmp_path / "kdwb"
