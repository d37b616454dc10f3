"""Offline distillation: a pretrained teacher, frozen by construction, teaches the student."""
from __future__ import annotations

from torch import nn


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode and turn off its gradients, in place; return it.

    Eval mode fixes batch-norm statistics and dropout, so the teacher's outputs are a function of
    the input alone; no parameter requires a gradient, so no loss can update it.
    """
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None  # left over from the teacher's own training
    return teacher


def is_frozen(teacher: nn.Module) -> bool:
    return not teacher.training and not any(p.requires_grad for p in teacher.parameters())
