"""Taps: forward hooks by module path, so any `nn.Module` can be a teacher or a student.

A model may declare named taps as ``model.taps = {"stage1": "layer1", ..., "embedding": "pool"}``
(ordered shallow to deep) and attention taps as ``model.attention_taps = {"block0": "blocks.0.attn.probs"}``.
A tap name can also be any module path of the model (``"layer2.0.conv1"``), so torchvision or timm
models work unchanged. A :class:`TapRecorder` registers hooks only for the taps asked for, runs the
model's own ``forward`` and returns :class:`Outputs`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn


@dataclass
class Outputs:
    """What one forward pass yields."""

    logits: torch.Tensor                                   # (B, num_classes)
    features: dict[str, torch.Tensor] = field(default_factory=dict)    # tap name -> tensor
    attentions: dict[str, torch.Tensor] = field(default_factory=dict)  # tap -> (B, heads, N, N)
    embedding: torch.Tensor | None = None                  # (B, D) penultimate feature, if tapped

    def detach(self) -> "Outputs":
        return Outputs(self.logits.detach(), {k: v.detach() for k, v in self.features.items()},
                       {k: v.detach() for k, v in self.attentions.items()},
                       None if self.embedding is None else self.embedding.detach())


def declared_taps(model: nn.Module) -> dict[str, str]:
    """The model's named feature taps (name -> module path), shallow to deep; empty if none."""
    return dict(getattr(model, "taps", {}) or {})


def declared_preact_taps(model: nn.Module) -> dict[str, str]:
    """Pre-activation taps (``"stage2_pre"`` -> path of an identity before the stage's last ReLU)."""
    return dict(getattr(model, "preact_taps", {}) or {})


def declared_attention_taps(model: nn.Module) -> dict[str, str]:
    return dict(getattr(model, "attention_taps", {}) or {})


class TapError(ValueError):
    """A tap name that the model does not have."""


#: symbolic tap names a method can ask for; each model resolves them to its own taps
SYMBOLS = ("@last", "@stages", "@last_pre", "@stages_pre", "@embedding")


def expand_taps(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace symbolic names by the model's own taps, keeping order; other names pass through.

    ``@stages``: every stage output, shallow to deep (the declared taps but ``stem`` and
    ``embedding``); ``@last``: the deepest of those; ``@stages_pre`` / ``@last_pre``: the same for
    pre-activation taps; ``@embedding``: the pooled penultimate vector.
    """
    stages = [n for n in declared_taps(model) if n not in ("stem", "embedding")]
    pre = list(declared_preact_taps(model))
    table = {"@stages": stages, "@last": stages[-1:], "@stages_pre": pre, "@last_pre": pre[-1:],
             "@embedding": ["embedding"] if "embedding" in declared_taps(model) else []}
    out: list[str] = []
    for name in names:
        if name.startswith("@"):
            if name not in table:
                raise TapError(f"unknown symbolic tap {name!r}; symbols: {', '.join(SYMBOLS)}")
            if not table[name]:
                raise TapError(f"model {type(model).__name__} declares no taps for {name!r}; "
                               "name its module paths instead (e.g. 'layer3')")
            out.extend(table[name])
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def resolve_tap(model: nn.Module, name: str) -> tuple[str, nn.Module, bool]:
    """Map a tap name to (module path, module, is_attention); raise :class:`TapError` if unknown."""
    feats = {**declared_taps(model), **declared_preact_taps(model)}
    attns = declared_attention_taps(model)
    is_attention = name in attns
    path = attns.get(name, feats.get(name, name))
    modules = dict(model.named_modules())
    if path in modules and (path or name == ""):
        return path, modules[path], is_attention
    known = list(feats) + list(attns)
    close = difflib.get_close_matches(name, known + [p for p in modules if p], n=3, cutoff=0.5)
    raise TapError(
        f"model {type(model).__name__} has no tap {name!r}. "
        f"Named taps: {', '.join(known) or '(none declared)'}; any module path also works"
        + (f"; closest: {', '.join(close)}" if close else "") + "."
    )


class TapRecorder:
    """Runs a model and records the outputs of the requested taps.

    Hooks are registered once, here, for only the taps asked for; call :meth:`close` (or use the
    recorder as a context manager) to remove them. Nothing about the model is changed.
    """

    def __init__(self, model: nn.Module, taps: Iterable[str] = ()):
        self.model = model
        self.names = list(dict.fromkeys(taps))
        self._store: dict[str, torch.Tensor] = {}
        self._attention: set[str] = set()
        self._handles = []
        for name in self.names:
            _, module, is_attention = resolve_tap(model, name)
            if is_attention:
                self._attention.add(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        store = self._store

        def hook(module, inputs, output):
            store[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def __call__(self, x: torch.Tensor) -> Outputs:
        self._store.clear()
        logits = self.model(x)
        if isinstance(logits, (tuple, list)):  # models that also return auxiliary heads
            logits = logits[0]
        out = Outputs(logits)
        for name in self.names:
            value = self._store.get(name)
            if value is None:
                raise TapError(f"tap {name!r} of {type(self.model).__name__} did not fire during forward")
            if name in self._attention:
                out.attentions[name] = value
            else:
                out.features[name] = value
        if "embedding" in out.features:
            out.embedding = out.features["embedding"].flatten(1)
        self._store.clear()
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "TapRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def capture(model: nn.Module, x: torch.Tensor, taps: Iterable[str] = ()) -> Outputs:
    """One forward pass of ``model`` on ``x`` recording ``taps``; hooks are removed afterwards."""
    with TapRecorder(model, taps) as recorder:
        return recorder(x)
