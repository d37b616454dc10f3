"""Running a teacher or a student for a view, without disturbing a run that may be training it."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from workbench.taps import Outputs, capture


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor, taps: Iterable[str] = ()) -> Outputs:
    """One eval-mode, no-grad pass on the model's device; the outputs come back on the CPU as float.

    The model's train/eval mode is restored afterwards, so a view can call this from a run's
    callback between two steps.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = capture(model, x.to(device), taps)
    finally:
        model.train(was_training)
    cpu = lambda t: t.detach().float().cpu()  # noqa: E731
    return Outputs(cpu(out.logits), {k: cpu(v) for k, v in out.features.items()},
                   {k: cpu(v) for k, v in out.attentions.items()})


def snapshot(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` without its forward hooks.

    For reading a model that a background run is training: running the original from another
    thread would switch its batch-norm mode under the trainer and fire the trainer's tap hooks.
    """
    twin = copy.deepcopy(model).eval()
    for module in twin.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return twin


def for_view(model: nn.Module, run) -> nn.Module:
    """``model`` itself, or a :func:`snapshot` of it while ``run`` trains in its thread."""
    return snapshot(model) if run.is_alive else model
