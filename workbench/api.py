"""`train` and `distill`: build a :class:`~workbench.engine.trainer.Run` from models and data."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch
from torch import nn

from .data.bundle import DataBundle
from .engine.config import RunConfig
from .engine.events import Callback
from .engine.trainer import Run
from .methods.base import Method, build_method
from .registry import METHODS
from .schemes import Scheme, build_scheme


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers: equal weights, equal fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_spec(model: nn.Module) -> dict[str, Any]:
    """How a config names a model: its registry spec (if built by name) plus a weight fingerprint."""
    spec = dict(getattr(model, "spec", None) or {"name": type(model).__name__})
    spec["fingerprint"] = fingerprint(model)
    return spec


def build_methods(methods: dict[str, Any] | Iterable[str] | None) -> dict[str, Method]:
    """Methods by name: a dict of name -> hyper-parameters (or a built Method), or a list of names."""
    if methods is None:
        return {}
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, dict):
        methods = {name: {} for name in methods}
    built = {}
    for name, spec in methods.items():
        if isinstance(spec, Method):
            built[name] = spec
        elif isinstance(spec, dict):
            built[name] = build_method(METHODS.get(name).name, **spec)
        else:
            raise TypeError(f"methods[{name!r}] must be a dict of hyper-parameters or a Method, "
                            f"got {spec!r}")
    return built


def _run_config(kind: str, student: nn.Module, teacher: nn.Module | None, data: DataBundle,
                methods: dict[str, Method], options: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict({
        "kind": kind, "dataset": data.name, "dataset_args": dict(data.meta.get("load_args", {})),
        "student": model_spec(student), "teacher": model_spec(teacher) if teacher is not None else {},
        "methods": {name: m.hparams() for name, m in methods.items()}, **options})


def train(model: nn.Module, data: DataBundle, *, callbacks: Iterable[Callback] = (),
          store: Any = "default", reuse: bool = True, resume: bool = True, progress: bool = True,
          label: str | None = None, **options: Any) -> Run:
    """A run that trains ``model`` on ``data``'s labels alone (a teacher, or the baseline).

    ``options`` are :class:`~workbench.engine.config.RunConfig` fields (epochs, lr, seed, ...).
    Nothing runs until ``fit()`` or ``start()``; a finished run with the same config is reused.
    """
    config = _run_config("train", model, None, data, {}, options)
    return Run(model, data, config, callbacks=callbacks, store=store, reuse=reuse, resume=resume,
               progress=progress, label=label)


def distill(student: nn.Module, teacher: nn.Module | None, data: DataBundle,
            methods: dict[str, Any] | Iterable[str] | None = None, *, scheme: str | Scheme = "offline",
            scheme_args: dict[str, Any] | None = None, callbacks: Iterable[Callback] = (), store: Any = "default", reuse: bool = True,
            resume: bool = True, progress: bool = True, label: str | None = None,
            **options: Any) -> Run:
    """A run that distils ``teacher`` into ``student`` with the given KD ``methods``.

    ``methods`` maps registered method names to hyper-parameters, e.g.
    ``{"kd": {"temperature": 4, "weight": 0.9}}``; a list of names takes the paper defaults;
    ``None`` takes the scheme's own (``Scheme.default_methods``: KD for offline).
    The teacher is frozen (eval mode, no gradients) in the offline scheme. ``scheme`` is a
    registered scheme name (with ``scheme_args``) or a built :class:`~workbench.schemes.Scheme`.
    """
    built_scheme = build_scheme(scheme, **(scheme_args or {}))
    built = build_methods(built_scheme.default_methods if methods is None else methods)
    config = _run_config("distill", student, teacher, data, built,
                         {"scheme": built_scheme.name, "scheme_args": built_scheme.describe(), **options})
    return Run(student, data, config, teacher=teacher, methods=built, scheme=built_scheme, callbacks=callbacks,
               store=store, reuse=reuse, resume=resume, progress=progress, label=label)
