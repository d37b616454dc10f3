"""Measurements shared by the trainer, notebooks, widgets and tests."""
from .calibration import accuracy, agreement, expected_calibration_error

__all__ = ["accuracy", "agreement", "expected_calibration_error"]
