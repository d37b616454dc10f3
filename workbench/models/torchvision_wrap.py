"""Any torchvision classifier as a workbench model: `wrap(name, num_classes, in_channels, pretrained)`.

The model is built by ``torchvision.models.get_model`` and keeps its own ``forward``; only these
changes are made, none of which renames a parameter (torchvision checkpoints still load):
- ``in_channels != 3``: the first ``nn.Conv2d`` is replaced by one with ``in_channels`` inputs whose
  kernel is the mean of the RGB kernels times 3 / ``in_channels``, so an image with every channel
  equal to a grey value gives the response the original gave to that grey RGB image;
- the last ``nn.Linear`` is replaced when its output size differs from ``num_classes``;
- for the ``embedding`` tap, a parameter-free ``avgpool`` becomes ``Sequential(avgpool, Flatten)``
  (ResNet, RegNet, Swin, GoogLeNet, Inception) and ViT's ``heads`` gets a leading ``nn.Identity``.

Taps by family (module paths worked out from the module tree, shallow to deep):
- ResNet / ResNeXt / Wide ResNet: ``stem`` = ``maxpool``, ``stage1..4`` = ``layer1..4``;
- RegNet: ``stem``, ``stage1..4`` = ``trunk_output.block1..4``;
- ViT: ``stem`` = ``conv_proj`` (4D), ``stageN`` = ``encoder.layers.encoder_layer_{N-1}`` (tokens);
- models with a ``features`` Sequential (VGG, AlexNet, MobileNetV2/V3, EfficientNet, ConvNeXt,
  MNASNet, DenseNet): ``stem`` = the first child if it downsamples; a stage ends at the child
  before each downsampling child (strided conv or pool) and at the last child;
- ``embedding``: the module just before the final Linear in its Sequential (e.g. VGG's
  ``classifier.5``, MobileNetV2's ``classifier.0``, ConvNeXt's ``classifier.1``), else the
  flattened ``avgpool``; none for models that pool functionally (DenseNet, ShuffleNetV2).
Pre-activation and attention taps are not available (torchvision calls its ReLUs in place and
asks its attention for no weights): ``preact_taps`` and ``attention_taps`` are empty.
"""
from __future__ import annotations

import difflib
import os
from collections import OrderedDict
from urllib.parse import urlparse

import torch
from torch import nn

from workbench.registry import UnknownNameError


def wrap(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
         **kwargs) -> nn.Module:
    """Build torchvision's ``name`` with ``num_classes`` outputs on ``in_channels`` inputs, with taps.

    ``pretrained=True`` loads the default ImageNet weights through torch hub (the cache, or a
    download); offline and not cached, it raises a RuntimeError naming the file and where it was
    looked for. Extra keyword arguments go to ``torchvision.models.get_model``. Sets ``taps``,
    ``preact_taps``, ``attention_taps``, ``num_classes``, ``in_channels``, ``classifier_path`` and,
    where torchvision does not use that name itself, ``classifier`` (an alias of the final Linear,
    not a registered child, so ``state_dict`` keys stay torchvision's).
    """
    model = _load(name, pretrained, kwargs)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    path, linear = _final_linear(model, name)
    if linear.out_features != num_classes:
        linear = nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None)
        model.set_submodule(path, linear)
    model.taps = _taps(model, path)
    model.preact_taps, model.attention_taps = {}, {}
    model.num_classes, model.in_channels, model.classifier_path = num_classes, in_channels, path
    if "classifier" not in model._modules:  # VGG, MobileNet, ... call their own `classifier` Sequential
        model.__dict__["classifier"] = linear
    return model


def _load(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    import torchvision  # here, not at the top: it adds about 1.5 s to `import workbench`

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown torchvision classifier {name!r}.{hint} "
                               f"See torchvision.models.list_models(module=torchvision.models).")
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(checkpoints, os.path.basename(urlparse(weights.url).path))
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except OSError as err:  # URLError, DNS or socket errors: offline
        if os.path.exists(cached):
            raise
        raise RuntimeError(
            f"pretrained weights {weights} for torchvision {name!r} are not cached and could not be "
            f"downloaded ({err}). Torch hub looks for {cached} (folder {checkpoints}; set TORCH_HOME to "
            f"move it); put the file from {weights.url} there, or use pretrained=False, or an embedded "
            f"zoo model (workbench.models.build, e.g. 'resnet32x4', 'wrn_40_2', 'vit_tiny')."
        ) from err


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    path, conv = next((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():  # (out, 3, k, k) -> (out, in_channels, k, k), same response to grey images
        new.weight.copy_(conv.weight.sum(1, keepdim=True).expand_as(new.weight) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(path, new)
    if getattr(model, "transform_input", False):  # GoogLeNet / Inception re-normalise 3 RGB channels
        model.transform_input = False


def _final_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    linears = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision {name!r} has no nn.Linear classifier (it classifies with a "
                         f"conv); from_torchvision supports models that end in a Linear")
    return linears[-1]


def _taps(model: nn.Module, classifier_path: str) -> dict[str, str]:
    features = getattr(model, "features", None)
    if all(hasattr(model, f"layer{i}") for i in (1, 2, 3, 4)):          # ResNet, ResNeXt, WRN
        taps = {"stem": "maxpool", **{f"stage{i}": f"layer{i}" for i in (1, 2, 3, 4)}}
    elif hasattr(model, "trunk_output"):                                # RegNet
        taps = {"stem": "stem", **_numbered("trunk_output", model.trunk_output)}
    elif hasattr(model, "conv_proj") and hasattr(model, "encoder"):     # ViT
        taps = {"stem": "conv_proj", **_numbered("encoder.layers", model.encoder.layers)}
    elif isinstance(features, nn.Sequential):
        taps = _feature_stages(features)
    else:
        taps = {}
    embedding = _embedding(model, classifier_path)
    return {**taps, "embedding": embedding} if embedding else taps


def _numbered(prefix: str, container: nn.Module) -> dict[str, str]:
    return {f"stage{i + 1}": f"{prefix}.{name}" for i, (name, _) in enumerate(container.named_children())}


def _downsamples(module: nn.Module) -> bool:
    """Whether ``module`` holds a strided convolution or pooling layer."""
    layers = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    return any(max(nn.modules.utils._pair(m.stride)) > 1 for m in module.modules() if isinstance(m, layers))


def _feature_stages(features: nn.Sequential) -> dict[str, str]:
    names = [name for name, _ in features.named_children()]
    down = [_downsamples(child) for child in features.children()]
    taps = {"stem": f"features.{names[0]}"} if down[0] else {}
    ends = [i for i in range(int(down[0]), len(names))
            if (i + 1 < len(names) and down[i + 1]) or (i == len(names) - 1 and not down[i])]
    return {**taps, **{f"stage{k + 1}": f"features.{names[i]}" for k, i in enumerate(ends)}}


def _embedding(model: nn.Module, classifier_path: str) -> str | None:
    parent_path, _, leaf = classifier_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if isinstance(parent, nn.Sequential):
        names = [name for name, _ in parent.named_children()]
        position = names.index(leaf)
        if position > 0:
            return f"{parent_path}.{names[position - 1]}"
        # ViT's heads: the Linear comes first; an identity in front of it sees the CLS token (B, D)
        model.set_submodule(parent_path, nn.Sequential(OrderedDict(
            [("embedding", nn.Identity()), *parent.named_children()])))
        return f"{parent_path}.embedding"
    if isinstance(getattr(model, "avgpool", None), (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        model.avgpool = nn.Sequential(model.avgpool, nn.Flatten(1))  # (B, C, 1, 1) -> (B, C)
        return "avgpool"
    return None
