"""`summary(model, input_shape)`: parameters, multiply-accumulates and tap shapes of one input.

MACs are counted by forward hooks on one input (batch of 1, eval mode, no grad):
- convolution: output elements x (in_channels / groups) x kernel area;
- linear: output elements x in_features;
- attention (``vit.Attention`` and ``nn.MultiheadAttention``): the two matmuls Q K^T and A V,
  2 x N x S x dim for N queries and S keys; ``nn.MultiheadAttention`` also counts its Q/K/V and output
  projections, which it applies without calling ``nn.Linear`` modules.
Norms, activations, pooling and additions are not counted (the usual convention, e.g. fvcore).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

from workbench.taps import capture, declared_attention_taps, declared_preact_taps, declared_taps

from .vit import Attention


@dataclass
class ModelSummary:
    """What :func:`summary` measured; ``str()`` gives a readable table."""

    name: str                                  # the model's class name
    input_shape: tuple[int, ...]               # one input, without the batch dimension
    params: int                                # all parameters
    trainable_params: int                      # parameters with requires_grad
    macs: int                                  # multiply-accumulates for one input
    tap_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tap -> output shape, batch 1

    def __str__(self) -> str:
        width = max([len(name) for name in self.tap_shapes] + [len("tap")])
        lines = [f"{self.name} on input {tuple(self.input_shape)}",
                 f"  params            {self.params:>14,}",
                 f"  trainable params  {self.trainable_params:>14,}",
                 f"  MACs              {self.macs:>14,}  ({self.macs / 1e6:.2f} M)",
                 f"  {'tap':<{width}}  output shape (batch 1)"]
        lines += [f"  {name:<{width}}  {tuple(shape)}" for name, shape in self.tap_shapes.items()]
        return "\n".join(lines)


def _macs(module: nn.Module, inputs: tuple, output) -> int:
    """Multiply-accumulates of one call of ``module`` (batch of 1)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() * (module.in_channels // module.groups) * prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, Attention):
        _, tokens, dim = inputs[0].shape                       # (1, N, dim)
        return 2 * tokens * tokens * dim
    if isinstance(module, nn.MultiheadAttention):
        dim = module.embed_dim
        queries, keys = inputs[0].numel() // dim, inputs[1].numel() // module.kdim  # batch of 1
        projections = 2 * queries * dim * dim + keys * (module.kdim + module.vdim) * dim  # Q, out; K, V
        return projections + 2 * queries * keys * dim
    return 0


def summary(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Count parameters and MACs of ``model`` on one input of ``input_shape`` (e.g. ``(3, 32, 32)``)
    and record the output shape of every declared tap (features, pre-activations, attentions)."""
    counted = (nn.modules.conv._ConvNd, nn.Linear, Attention, nn.MultiheadAttention)
    total = [0]

    def count(module, inputs, output):
        total[0] += _macs(module, inputs, output)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, counted)]
    names = [*declared_taps(model), *declared_preact_taps(model), *declared_attention_taps(model)]
    first = next(model.parameters(), torch.zeros(()))  # the input follows the model's device and dtype
    x = torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = capture(model, x, names)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    shapes = {**out.features, **out.attentions}
    return ModelSummary(
        name=type(model).__name__, input_shape=tuple(input_shape),
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=total[0], tap_shapes={name: tuple(shapes[name].shape) for name in names})
