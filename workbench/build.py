"""Build data, models and a run from a :class:`RunConfig` (the CLI's and the store's path)."""
from __future__ import annotations

import copy
from typing import Any

import torch

from . import data as datasets
from . import models
from .api import build_methods, distill, train
from .engine.config import RunConfig
from .registry import SCHEMES
from .schemes import build_scheme
from .engine.trainer import Run

_RUN_FIELDS = ("task_weight", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
               "grad_clip", "schedule", "seed", "device", "amp", "log_every", "eval_every",
               "checkpoint_every", "channels_last", "compile")


def build_model(spec: dict[str, Any], data: datasets.DataBundle, seed: int):
    """Build the model a spec names, for ``data``'s classes and channels, initialised from ``seed``."""
    if not spec.get("name"):
        raise ValueError(f"a model spec needs a 'name', got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "fingerprint", "num_classes", "in_channels")}
    torch.manual_seed(seed)
    return models.build(spec["name"], num_classes=data.num_classes, in_channels=data.in_channels, **kwargs)


def run_from_config(config: RunConfig, *, teacher_epochs: int | None = None, progress: bool = True,
                    reuse: bool = True) -> Run:
    """A run for ``config``. For distillation the teacher is trained first on the full training
    split (or reused from the store when an equal teacher run finished before)."""
    data = datasets.load(config.dataset, **config.dataset_args)
    options = {name: getattr(config, name) for name in _RUN_FIELDS}
    student = build_model(config.student, data, config.seed)
    if config.kind == "train":
        options.pop("task_weight")
        return train(student, data, progress=progress, reuse=reuse, **options)
    methods = build_methods(config.methods)  # bad names and values fail before any training
    if not SCHEMES.get(config.scheme).factory.uses_teacher:  # online and self schemes teach themselves
        return distill(student, None, data, methods, scheme=config.scheme, scheme_args=config.scheme_args,
                       progress=progress, reuse=reuse, **options)
    teacher_args = {k: v for k, v in config.dataset_args.items() if k != "n_train"}
    teacher_args = build_scheme(config.scheme, **config.scheme_args).teacher_load_args(teacher_args)
    teacher_data = datasets.load(config.dataset, **teacher_args)
    teacher = build_model(config.teacher, teacher_data, config.seed + 1)
    # the distillation run's own checks (shapes, classes, taps, batch size) before the teacher
    # trains: on a copy of the teacher (the check freezes it) and fresh methods (it binds them)
    distill(student, copy.deepcopy(teacher), data, build_methods(config.methods), scheme=config.scheme,
            scheme_args=config.scheme_args, store=None, progress=False, **options)
    teacher_options = {k: v for k, v in options.items() if k != "task_weight"}
    teacher_options["epochs"] = teacher_epochs or config.epochs
    train(teacher, teacher_data, progress=progress, label=f"{config.teacher['name']}:teacher",
          **teacher_options).fit()
    return distill(student, teacher, data, methods, scheme=config.scheme, scheme_args=config.scheme_args,
                   progress=progress, reuse=reuse, **options)
