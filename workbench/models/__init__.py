"""The model zoo: CIFAR-style teachers and students from the KD literature, with named taps.

    import workbench as wb
    teacher = wb.models.build("resnet32x4", num_classes=100)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)   # digits, 1x8x8
    print(wb.models.summary(teacher, (3, 32, 32)))
    resnet18 = wb.models.from_torchvision("resnet18", num_classes=10, in_channels=1)

Importing this package registers every model in ``workbench.registry.MODELS`` (one file per
family: mlp_cnn, resnet, wrn, vgg, mobilenetv2, shufflenetv2, vit). Every model's ``forward(x)``
returns logits (B, num_classes) and the model declares, as module paths for forward hooks:
- ``taps``: ``stem`` (if the family has one), ``stage1``, ``stage2``, ... (stage outputs), then
  ``embedding`` (the pooled, flattened penultimate vector, (B, D));
- ``preact_taps``: ``stageN_pre``, the last block's output before its final ReLU (empty if none);
- ``attention_taps``: ``blockN`` -> attention probabilities (B, heads, N, N) (ViT only);
- ``classifier`` (the final ``nn.Linear``), ``num_classes`` and ``in_channels``.
"""
from __future__ import annotations

from torch import nn

from workbench.registry import MODELS

from . import gnn, mlp_cnn, mobilenetv2, resnet, shufflenetv2, vgg, vit, wrn  # noqa: F401  (registers)
from . import torchvision_wrap
from .summary import ModelSummary, summary

__all__ = ["build", "names", "summary", "ModelSummary", "from_torchvision"]


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def build(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (see :func:`names`); ``kwargs`` are the family's own
    arguments (``width``/``depth`` for ``cnn``, ``width_mult`` for ``mobilenetv2``, ``image_size`` and
    ``patch_size`` for ``vit_tiny`` and ``mlp``, ...). Unknown names raise ``UnknownNameError``."""
    entry = MODELS.get(name)
    _check_size("num_classes", num_classes)
    _check_size("in_channels", in_channels)
    model = entry.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    # how run configs name this model (workbench.api.model_spec adds a weight fingerprint)
    model.spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels, **kwargs}
    return model


def names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def from_torchvision(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                     **kwargs) -> nn.Module:
    """Any torchvision classifier (``torchvision.models.get_model(name)``) with this zoo's taps.

    Replaces the first conv when ``in_channels != 3`` and the final Linear when ``num_classes``
    differs. ``pretrained=True`` loads torchvision's default weights from the torch hub cache or the
    network; offline without a cached file it raises a RuntimeError saying what is missing and where
    it was looked for. Details, and the taps of each family, in :mod:`.torchvision_wrap`.
    """
    _check_size("num_classes", num_classes)
    _check_size("in_channels", in_channels)
    return torchvision_wrap.wrap(name, num_classes, in_channels, pretrained, **kwargs)
