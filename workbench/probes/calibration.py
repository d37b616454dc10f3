"""Agreement and calibration measures shared by the trainer, widgets, notebooks and tests."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, K) logits against (N,) labels."""
    return (logits.argmax(1) == labels).float().mean().item()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of inputs on which student and teacher predict the same top-1 class."""
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width
    confidence bins (lo, hi]."""
    if bins <= 0:
        raise ValueError(f"bins={bins!r} is not valid; it must be a positive integer")
    probs = logits.float().softmax(1)
    confidence, predicted = probs.max(1)                              # (N,), (N,)
    correct = (predicted == labels).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence >= 1/K > 0 always
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1      # (N,)
    count = torch.zeros(bins).index_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(bins).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins).index_add_(0, index, correct)
    gap = (acc_sum - conf_sum).abs()                                   # = count * |acc - conf|
    return (gap.sum() / confidence.numel()).item()
