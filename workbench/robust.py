"""Adversarial robustness: the PGD attack and robust accuracy.

Projected gradient descent (PGD), Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep
Learning Models Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083.
Starting from a random point of the L-infinity ball of radius epsilon around x (when
``random_start``), it takes ``steps`` signed-gradient ascent steps on the loss and projects back:

    x^{k+1} = clip_[lo, hi]( Proj_{||x' - x||_inf <= eps}( x^k + alpha * sign(grad_x L(f(x^k), y)) ) )

**Units.** The workbench's inputs are normalised per channel, x_in = (x_pixel - mean_c) / std_c
(:func:`workbench.data.common.image_bundle`), while attack budgets are quoted in pixel units of
[0, 1] (epsilon = 8/255 on CIFAR-10). :func:`pgd_attack` itself works in the units of its input
(epsilon, step size and bounds may be per-channel tensors); :class:`InputSpace` converts a pixel
budget into input units: eps_c = eps / std_c and [lo_c, hi_c] = [(0 - mean_c)/std_c, (1 - mean_c)/std_c],
the image of the valid pixel range. A bundle whose ``meta`` has no ``"mean"``/``"std"`` (data not
made by ``image_bundle``) is taken as already in pixel units: budgets are used as given and the
valid range is unbounded (say ``InputSpace.identity(bounds=(0, 1))`` to clamp anyway).

**Side effects.** Crafting puts the model in eval mode (batch-norm uses its running statistics
and is not updated, dropout is off) and restores every sub-module's mode afterwards; the gradient
is taken with ``torch.autograd.grad`` with respect to the input only, so no parameter's ``.grad``
is touched, and the returned examples are detached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.bundle import DataBundle, Split



def check_budget(owner: str, epsilon: float, step_size: float, steps: int) -> tuple[float, float, int]:
    """Validate an attack budget (pixel or input units); raise naming the bad value."""
    for name, value in (("epsilon", epsilon), ("step_size", step_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
        if not (value >= 0 and value < float("inf")):
            raise ValueError(f"{owner}: {name}={value!r} is not valid; it must be a finite number >= 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{owner}: steps={steps!r} is not valid; it must be an integer >= 0")
    if epsilon > 0 and steps > 0 and step_size == 0:
        raise ValueError(f"{owner}: step_size={step_size!r} is not valid with epsilon={epsilon!r} and "
                         f"steps={steps!r}; it must be > 0 (or set epsilon=0 for no attack)")
    return float(epsilon), float(step_size), int(steps)


@dataclass(frozen=True)
class InputSpace:
    """How pixel values in [0, 1] map to a model's inputs: x_in = (x_pixel - mean) / std per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    bounds: tuple[float, float] | None = (0.0, 1.0)   # the valid pixel range (None: unbounded)

    @classmethod
    def identity(cls, channels: int = 1, bounds: tuple[float, float] | None = None) -> "InputSpace":
        """Inputs that are pixels: mean 0, std 1 (a budget is used as given)."""
        return cls((0.0,) * channels, (1.0,) * channels, bounds)

    @classmethod
    def of(cls, data: DataBundle) -> "InputSpace":
        """The normalisation of ``data`` (``meta["mean"]``, ``meta["std"]``); without them the
        inputs are taken as already in pixel units, with no bound (see the module docstring)."""
        mean, std = data.meta.get("mean"), data.meta.get("std")
        if mean is None or std is None:
            return cls.identity(data.in_channels, bounds=None)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def _per_channel(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(values, dtype=like.dtype, device=like.device)
        return t.view(1, -1, *([1] * (like.dim() - 2))) if like.dim() > 2 else t.view(1, -1)

    def budget(self, pixels: float, like: torch.Tensor) -> torch.Tensor:
        """A pixel-unit distance as input units: pixels / std_c, shaped to broadcast over ``like``."""
        return pixels / self._per_channel(self.std, like)

    def clamp_bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """[lo_c, hi_c]: the valid pixel range in input units, or None when unbounded."""
        if self.bounds is None:
            return None
        mean, std = self._per_channel(self.mean, like), self._per_channel(self.std, like)
        return (self.bounds[0] - mean) / std, (self.bounds[1] - mean) / std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._per_channel(self.std, x) + self._per_channel(self.mean, x)


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: "float | torch.Tensor",
               step_size: "float | torch.Tensor", steps: int, *,
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               random_start: bool = True,
               clamp: "tuple[float | torch.Tensor, float | torch.Tensor] | None" = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """L-infinity PGD: inputs within ``epsilon`` of ``x`` (and within ``clamp``) that raise ``loss``.

    All of ``epsilon``, ``step_size`` and ``clamp`` are in the units of ``x`` (floats, or tensors
    that broadcast over x, e.g. per channel (1, C, 1, 1): see :class:`InputSpace`).
    ``loss(logits, y)`` is maximised (default: cross-entropy summed over the batch; only the sign
    of its gradient matters, per sample, since samples do not interact in eval mode).
    ``generator`` draws the random start (default: the global RNG). ``steps=0`` or ``epsilon=0``
    returns (a detached copy of) the start point. x: (B, ...) -> (B, ...), detached.
    """
    loss = loss or (lambda logits, target: F.cross_entropy(logits, target, reduction="sum"))
    x = x.detach()
    lo, hi = clamp if clamp is not None else (None, None)

    def project(z: torch.Tensor) -> torch.Tensor:
        z = torch.maximum(torch.minimum(z, x + epsilon), x - epsilon)     # the epsilon-ball
        if lo is not None:
            z = torch.maximum(torch.minimum(z, torch.as_tensor(hi, dtype=z.dtype, device=z.device)),
                              torch.as_tensor(lo, dtype=z.dtype, device=z.device))  # valid pixels
        return z

    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype,
                           device=generator.device if generator is not None else x.device).to(x.device)
        adv = project(x + (2 * noise - 1) * epsilon)                     # uniform in the ball
    else:
        adv = project(x.clone())
    if steps == 0:
        return adv.detach()
    modes = _modes(model)
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                adv.requires_grad_(True)
                value = loss(_logits(model, adv), y)
                # the gradient of the input alone: parameters' .grad stay untouched
                (grad,) = torch.autograd.grad(value, [adv])
                adv = project(adv.detach() + step_size * grad.sign())
    finally:
        _restore(modes)
    return adv.detach()


@torch.no_grad()
def robust_accuracy(model: nn.Module, split: Split, space: InputSpace | None = None, *,
                    epsilon: float = 8 / 255, step_size: float = 2 / 255, steps: int = 20,
                    batch_size: int = 256, random_start: bool = True, seed: int = 0,
                    device: torch.device | str | None = None) -> dict[str, float]:
    """Clean and PGD accuracy of ``model`` on ``split``: ``{"clean_acc", "robust_acc"}``.

    The budget is in pixel units and converted with ``space`` (``InputSpace.of(data)``; None: the
    inputs are pixels, unbounded). Defaults: epsilon = 8/255, step 2/255, 20 steps (PGD-20, the
    ARD paper's evaluation). A sample is robust if it is classified correctly on the clean input
    AND at the attack's end point (AutoAttack's convention: a random start could land a wrong
    sample on the right side), so ``robust_acc <= clean_acc`` always. The model's modes are
    restored; ``seed`` fixes the random starts, so equal calls give equal numbers.
    """
    epsilon, step_size, steps = check_budget("robust_accuracy", epsilon, step_size, steps)
    device = device or next(model.parameters()).device
    space = space or InputSpace.identity(split.x.shape[1] if split.x.dim() > 1 else 1, bounds=None)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    modes = _modes(model)
    model.eval()
    clean = robust = 0
    try:
        for batch in split.batches(batch_size):
            x, y = batch.x.to(device), batch.y.to(device)
            ok = _logits(model, x).argmax(1) == y
            adv = pgd_attack(model, x, y, space.budget(epsilon, x), space.budget(step_size, x), steps,
                             random_start=random_start, clamp=space.clamp_bounds(x), generator=generator)
            ok_adv = ok & (_logits(model, adv).argmax(1) == y)
            clean += int(ok.sum())
            robust += int(ok_adv.sum())
    finally:
        _restore(modes)
    n = max(len(split), 1)
    return {"clean_acc": clean / n, "robust_acc": robust / n}


__all__ = ["InputSpace", "check_budget", "pgd_attack", "robust_accuracy"]
