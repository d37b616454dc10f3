"""Adaptive distillation built from ordinary runs (survey chapter 3.6): teacher assistants,
early-stopped teachers and early-stopped distillation.

These are not per-batch losses (so not registered methods) nor one run's "who teaches whom" (so not
schemes): each is a *sequence* of ordinary ``wb.train`` / ``wb.distill`` runs, or a change to a run
at an epoch boundary. Every run they make is a normal run: it is stored, and reused from the store
when an equal run (same config, same weights of its teacher) finished before.

**TAKD**: Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved Knowledge
Distillation via Teacher Assistant", AAAI 2020, https://arxiv.org/abs/1902.03393. When the
teacher is much larger than the student, the student gains less from it; distilling through
teacher assistants (TAs) of intermediate size closes the gap. Every link of the chain
teacher -> TA_1 -> ... -> TA_k -> student is plain KD (Hinton et al.'s loss, eq. 3 of the paper),

    L_i = (1 - lambda) * L_CE(y, softmax(a_s)) + lambda * tau^2 * KL(softmax(a_t / tau) || softmax(a_s / tau)),

with model i - 1 (already trained) as the teacher of model i. :func:`teacher_assistant_chain`.

**Early-stopped teachers**: Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
https://arxiv.org/abs/1910.01348. Larger, more accurate teachers often teach worse: the student
cannot mimic them. A teacher taken from early in its own training (before it fits the training set)
often teaches better than the fully trained one. The paper's other remedy, **ESKD**, stops the
*distillation* early: the student's KD term is switched off after some epoch and it finishes on
the labels alone. :func:`early_stopped_teachers`, :func:`teacher_at_epoch`,
:func:`stop_distillation_at`.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from .data.bundle import DataBundle
from .engine.checkpoint import CheckpointError, load_checkpoint
from .engine.trainer import Run
from .methods.base import Method


# -- TAKD ---------------------------------------------------------------------------------------
def _model_name(model: nn.Module) -> str:
    spec = getattr(model, "spec", None) or {}
    name = spec.get("name", type(model).__name__)
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "num_classes", "in_channels"))
    return f"{name}({extra})" if extra else name


def _check_outputs(models: list[nn.Module], data: DataBundle, offset: int = 0) -> None:
    """Every model takes ``data``'s inputs and has one output per class; say which does not
    (``models[i]`` is the chain's model ``offset + i``)."""
    probe = data.train.x[:2]
    for position, model in enumerate(models, start=offset):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(probe.to(next(model.parameters()).device))
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"teacher_assistant_chain: models[{position}] ({_model_name(model)}) cannot "
                             f"take {data.name} inputs of shape {tuple(data.input_shape)}: {error}") from None
        finally:
            model.train(was_training)
        if logits.shape[-1] != data.num_classes:
            raise ValueError(f"teacher_assistant_chain: models[{position}] ({_model_name(model)}) has "
                             f"{logits.shape[-1]} outputs but {data.name} has {data.num_classes} classes; "
                             f"every model of the chain must have num_classes={data.num_classes}")


def teacher_assistant_chain(models: list[nn.Module], data: DataBundle | list[DataBundle],
                            methods: Any = None, *, label: str = "takd",
                            link_options: list[dict[str, Any]] | None = None, **run_options: Any) -> list[Run]:
    """Distil ``models[0]`` (a trained teacher) into ``models[-1]`` (the student) through the
    teacher assistants ``models[1:-1]``, one link at a time; return the links' runs, finished.

    Link i (1 <= i < len(models)) is ``wb.distill(models[i], models[i - 1], data, methods,
    **run_options)``: ordinary offline KD, so it is stored and reused like any run. ``data`` is one
    data set for every link, or a list with one per link (e.g. assistants trained on all the images,
    the student on a few labelled ones); every one must have the same classes. ``methods``
    (default: the scheme's, KD) are given as names or hyper-parameter dicts and built afresh for
    every link; ``run_options`` are ``wb.distill``'s arguments (``scheme``, ``store``, ``progress``)
    and RunConfig fields (``epochs``, ``lr``, ``task_weight``, ``seed``...), the same for every link;
    ``link_options``, one dict per link, adds or overrides options link by link (e.g. longer
    training for the assistants than for the student).
    Each trained model is frozen in place when it teaches the next one (the offline scheme does it).

    With two models this is plain KD; with three it is the paper's TAKD; more make the paper's
    multi-step chains (sec. "Multi-step distillation"). The chain is expected to shrink: a model
    with more parameters than its teacher gets a warning (it still runs).
    """
    from .api import distill
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"teacher_assistant_chain: needs at least 2 models (a teacher and a student), "
                         f"got {len(models)}")
    for position, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"teacher_assistant_chain: models[{position}] must be an nn.Module, got "
                            f"{type(model).__name__}")
    for i, a in enumerate(models):
        for j in range(i):
            if a is models[j]:
                raise ValueError(f"teacher_assistant_chain: models[{j}] and models[{i}] are the same "
                                 "model; every link needs its own network")
    if isinstance(methods, Method) or (isinstance(methods, dict)
                                       and any(isinstance(m, Method) for m in methods.values())):
        raise TypeError("teacher_assistant_chain: give methods as names or hyper-parameter dicts "
                        "(e.g. {'kd': {'temperature': 4}}), not built Method objects: every link builds "
                        "its own, so no state (connectors, a learned temperature) leaks between links")
    bundles = list(data) if isinstance(data, (list, tuple)) else [data] * (len(models) - 1)
    if len(bundles) != len(models) - 1:
        raise ValueError(f"teacher_assistant_chain: {len(models)} models make {len(models) - 1} links, but "
                         f"{len(bundles)} data sets were given; give one, or one per link")
    per_link = [{}] * (len(models) - 1) if link_options is None else list(link_options)
    if len(per_link) != len(models) - 1 or not all(isinstance(o, dict) for o in per_link):
        raise ValueError(f"teacher_assistant_chain: link_options must be a list of {len(models) - 1} dicts "
                         f"(one per link), got {link_options!r}")
    for link, bundle in enumerate(bundles, start=1):
        _check_outputs([models[link - 1], models[link]], bundle, offset=link - 1)
    sizes = [sum(p.numel() for p in m.parameters()) for m in models]
    for i in range(1, len(models)):
        if sizes[i] > sizes[i - 1]:
            warnings.warn(f"teacher_assistant_chain: models[{i}] ({_model_name(models[i])}, {sizes[i]:,} "
                          f"parameters) is larger than its teacher models[{i - 1}] ({sizes[i - 1]:,}); "
                          "the chain should go from the teacher down to the student", stacklevel=2)
    runs = []
    for i in range(1, len(models)):
        role = "student" if i == len(models) - 1 else f"TA {i}"
        run = distill(models[i], models[i - 1], bundles[i - 1], copy.deepcopy(methods),
                      label=f"{label}: {_model_name(models[i - 1])} -> {_model_name(models[i])} ({role})",
                      **{**run_options, **per_link[i - 1]})
        runs.append(run.fit())
    return runs


# -- early-stopped teachers ---------------------------------------------------------------------
def teacher_at_epoch(run: Run, epoch: int) -> nn.Module:
    """A copy of ``run``'s model with its weights after ``epoch`` epochs, read from the run's
    checkpoint in the store (runs keep one per ``checkpoint_every`` epochs, by default every one)."""
    if run.store is None or run.run_id is None:
        raise ValueError(f"teacher_at_epoch: run {run.label!r} has no store (store=None) or has not run; "
                         "its checkpoints were never written. Use early_stopped_teachers, which "
                         "snapshots the weights while the run trains")
    artifacts = {a["epoch"]: a for a in run.store.checkpoints(run.run_id)}
    if epoch not in artifacts:
        raise ValueError(f"teacher_at_epoch: run {run.label!r} has no checkpoint of epoch {epoch} "
                         f"(it has {sorted(artifacts)}); train it with checkpoint_every=1, or reuse=False "
                         "so that early_stopped_teachers snapshots the epochs while it trains")
    try:
        state = load_checkpoint(artifacts[epoch]["path"], artifacts[epoch]["sha256"])["scheme"]
    except CheckpointError as error:
        raise ValueError(f"teacher_at_epoch: {error}") from None
    weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    model = copy.deepcopy(run.student)
    model.load_state_dict(weights)
    return model


def early_stopped_teachers(model: nn.Module, data: DataBundle, at_epochs: Iterable[int],
                           **train_options: Any) -> dict[int, nn.Module]:
    """Train ``model`` on ``data``'s labels (``wb.train(model, data, **train_options)``, whose
    ``epochs`` is the whole run's length) and return copies of it after each of ``at_epochs``
    epochs: ``{epoch: model}``, in the order asked.

    The copies are snapshots taken at the end of those epochs by an ``epoch_end`` callback (the
    learning-rate schedule is the whole run's: an early snapshot is a teacher stopped early, not a
    shorter run). When the run is reused from the store, or resumed, the missing epochs are read
    from its checkpoints (:func:`teacher_at_epoch`). ``model`` itself ends fully trained.
    """
    from .api import train
    wanted = list(dict.fromkeys(at_epochs))
    total = train_options.get("epochs", 10)
    for epoch in wanted:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= total:
            raise ValueError(f"early_stopped_teachers: epoch {epoch!r} is not valid; it must be an integer "
                             f"from 1 to epochs={total}")
    if not wanted:
        raise ValueError("early_stopped_teachers: give at least one epoch")
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(run: Run, epoch: int) -> None:
        if epoch in wanted:
            snapshots[epoch] = {k: v.detach().clone() for k, v in run.student.state_dict().items()}

    run = train(model, data, **train_options)
    run.on("epoch_end", snapshot)
    run.fit()
    teachers = {}
    for epoch in wanted:
        if epoch in snapshots:
            teachers[epoch] = copy.deepcopy(model)
            teachers[epoch].load_state_dict(snapshots[epoch])
        else:
            teachers[epoch] = teacher_at_epoch(run, epoch)
    return teachers


# -- ESKD: early-stopped distillation -----------------------------------------------------------
def stop_distillation_at(run: Run, epoch: int, methods: Iterable[str] | None = None,
                         task_weight: float | None = None) -> Run:
    """ESKD: after ``epoch`` epochs, set the weight of ``methods`` (default: all the run's) to 0,
    and the task weight to ``task_weight`` if given; the student finishes on the labels alone.

    It is a live change (queued at the end of that epoch, applied at the next step), recorded in
    ``run.live_changes``; like every live change it keeps the run from being stored as a run of its
    plain config. For the same reason this sets ``run.reuse = False``: a finished run of the plain
    config (full KD) in the store would otherwise be loaded instead of training, and the stop would
    never happen. An ESKD run trains again each time. Returns the run, not started.
    """
    names = list(run.methods) if methods is None else list(methods)
    unknown = sorted(set(names) - set(run.methods))
    if unknown:
        raise ValueError(f"stop_distillation_at: the run has no method {', '.join(map(repr, unknown))}; "
                         f"its methods are {sorted(run.methods)}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch < run.config.epochs:
        raise ValueError(f"stop_distillation_at: epoch={epoch!r} is not valid; it must be an integer from 1 "
                         f"to epochs - 1 = {run.config.epochs - 1} (later, there is nothing left to train)")
    if task_weight is not None:
        from .methods.base import check_hparam
        check_hparam("stop_distillation_at", "task_weight", task_weight, "nonnegative")

    run.reuse = False

    def stop(run: Run, done: int) -> None:
        if done == epoch:
            for name in names:
                run.methods[name].weight = 0.0
            if task_weight is not None:
                run.task_weight = task_weight

    return run.on("epoch_end", stop)
