"""Soft labels: a model's class distribution at temperature T and how two of them differ.

With logits z and temperature T (Hinton et al., 2015, arXiv 1503.02531):

    p_i(T) = exp(z_i / T) / sum_j exp(z_j / T)

Higher T flattens p towards uniform (entropy -> log K), exposing the "dark knowledge" in the
relative sizes of the small probabilities. Entropies and divergences are in nats.
"""
from __future__ import annotations

import torch


def soft_labels(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last dimension, in float64; (..., K) -> (..., K)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not valid; it must be > 0")
    return (logits.double() / temperature).softmax(dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_i p_i log p_i over the last dimension, with 0 log 0 = 0; (..., K) -> (...)."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def kl_divergence(p_teacher: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_i q_i (log q_i - log p_i), q the teacher's, p the student's; (..., K) -> (...).

    Multiplied by T^2 this is KD's soft loss for one input (``workbench.methods.logit.kd``).
    """
    return (torch.special.xlogy(p_teacher, p_teacher)
            - torch.special.xlogy(p_teacher, p_student)).sum(dim=-1)


def top_k_with_rest(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The ``k`` largest entries of a (K,) distribution and the mass of all the others.

    Returns ``(index, values, rest)``: class indices (k,) in decreasing order of probability,
    their probabilities (k,), and ``rest = 1 - sum(values)`` (0 when k >= K), so that
    ``values.sum() + rest == 1``. Apply ``index`` to a second distribution to compare the two on
    the same classes.
    """
    if probs.dim() != 1:
        raise ValueError(f"expected one distribution of shape (K,), got {tuple(probs.shape)}")
    if k < 1:
        raise ValueError(f"k={k!r} is not valid; it must be a positive integer")
    values, index = probs.topk(min(k, probs.numel()))
    rest = max(0.0, 1.0 - float(values.sum())) if k < probs.numel() else 0.0
    return index, values, rest
