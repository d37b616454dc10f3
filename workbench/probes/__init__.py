"""Measurements shared by the trainer, notebooks, widgets and tests."""
from .calibration import accuracy, agreement, expected_calibration_error
from .similarity import cka_matrix, cosine_similarity_matrix, distance_matrix, gram_similarity_matrix, linear_cka

__all__ = ["accuracy", "agreement", "expected_calibration_error", "cka_matrix", "cosine_similarity_matrix",
           "distance_matrix", "gram_similarity_matrix", "linear_cka"]
