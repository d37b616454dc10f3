"""Small helpers shared by the views: layout, images, control values."""
from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import numpy as np
import torch


def boxed(figure: widgets.DOMWidget) -> widgets.VBox:
    """A ``FigureWidget`` in a box of its own: placed directly in an ``HBox`` it may render broken
    (plotly 6+/7)."""
    return widgets.VBox([figure])


def clean(value: float, digits: int = 6) -> float:
    """A slider value without float noise from keyboard steps (3.9999999999999996 -> 4.0)."""
    return round(float(value), digits)


def to_rgb(image: torch.Tensor, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None) -> np.ndarray:
    """A normalised (C, H, W) input as an (H, W, 3) uint8 picture: x * std + mean, then min-max
    scaled when no statistics are given. One channel is shown grey."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
