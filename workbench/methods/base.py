"""`Method`: one KD loss, with hyper-parameters that can be changed while a run is live.

A method is an ``nn.Module`` so that its connectors (regressors, projection heads) are trained by
the trainer's optimiser. Its hyper-parameters are the keyword arguments of its ``__init__`` (with
the paper's defaults); ``weight`` multiplies every term it returns.

Live control: while a trainer runs, ``method.temperature = 8`` from another thread (a widget, the
notebook) is validated at once and queued; the trainer applies queued changes at the next step
boundary, so no step ever sees half of a change.
"""
from __future__ import annotations

import inspect
import math
import threading
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.bundle import Batch
from ..registry import METHODS
from ..taps import Outputs


def check_hparam(owner: str, name: str, value: Any, rule: str) -> float:
    """Validate one numeric hyper-parameter against ``rule`` and return it as a float.

    Rules: ``"finite"``, ``"nonnegative"``, ``"positive"``, ``"unit"`` (in [0, 1]).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    number = float(value)
    valid = {
        "finite": (math.isfinite(number), "a finite number"),
        "nonnegative": (math.isfinite(number) and number >= 0, "a finite number >= 0"),
        "positive": (math.isfinite(number) and number > 0, "a finite number > 0"),
        "unit": (0.0 <= number <= 1.0, "a number in [0, 1]"),
    }
    ok, wanted = valid[rule]
    if not ok:
        raise ValueError(f"{owner}: {name}={value!r} is not valid; it must be {wanted}")
    return number


class Method(nn.Module):
    """Base class of every KD loss.

    Subclasses set the class attributes below, take their hyper-parameters as keyword arguments
    (always including ``weight``) and implement :meth:`forward`, returning a dict of named terms
    (scalars, already scaled as in the paper but not yet multiplied by ``weight``).
    """

    name: ClassVar[str] = ""
    #: hyper-parameter name -> validation rule (see :func:`check_hparam`)
    constraints: ClassVar[dict[str, str]] = {"weight": "nonnegative"}
    #: default taps the method needs from the student and the teacher (names or module paths)
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0):
        super().__init__()
        object.__setattr__(self, "_live", False)
        object.__setattr__(self, "_pending", {})
        object.__setattr__(self, "_lock", threading.Lock())
        self.weight = weight

    # -- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def hparam_names(cls) -> list[str]:
        """Names of the hyper-parameters: the keyword arguments of ``__init__``."""
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.default is not p.empty]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        return {n: params[n].default for n in cls.hparam_names()}

    def hparams(self) -> dict[str, Any]:
        """Current hyper-parameter values (queued live changes included)."""
        with self._lock:
            return {n: self._pending.get(n, getattr(self, n)) for n in self.hparam_names()}

    def __setattr__(self, key: str, value: Any) -> None:
        rule = type(self).constraints.get(key)
        if rule is not None:
            value = check_hparam(type(self).__name__, key, value, rule)
            with self._lock:  # the live flag is read and flipped, and the value set, under one lock
                if self._live:
                    self._pending[key] = value
                else:
                    super().__setattr__(key, value)
            return
        super().__setattr__(key, value)

    def set_live(self, live: bool) -> None:
        """Called by the trainer: while live, hyper-parameter changes wait for a step boundary."""
        with self._lock:
            object.__setattr__(self, "_live", live)
            changes, self._pending = self._pending, {}
        for key, value in changes.items():
            object.__setattr__(self, key, value)

    def apply_pending(self) -> dict[str, Any]:
        """Apply queued hyper-parameter changes; return what changed."""
        if not self._pending:  # every step: no lock and no Module.__setattr__ when nothing waits
            return {}          # (a change queued meanwhile is applied at the next boundary)
        with self._lock:
            changes = self._pending
            object.__setattr__(self, "_pending", {})
        for key, value in changes.items():
            object.__setattr__(self, key, value)
        return changes

    # -- taps and connectors ----------------------------------------------------------------
    def bind(self, student_model: nn.Module, teacher_model: nn.Module | None) -> None:
        """Resolve symbolic tap names (``@last``, ``@stages``, ...) against the two models and
        check that every tap exists; called by the trainer before the first forward pass.
        After this, ``self.student_taps`` / ``self.teacher_taps`` are concrete names, and
        ``student.features[name]`` holds each one's output."""
        from ..taps import expand_taps, resolve_tap
        object.__setattr__(self, "student_taps", tuple(expand_taps(student_model, self.student_taps)))
        for name in self.student_taps:
            resolve_tap(student_model, name)
        if teacher_model is not None:
            object.__setattr__(self, "teacher_taps", tuple(expand_taps(teacher_model, self.teacher_taps)))
            for name in self.teacher_taps:
                resolve_tap(teacher_model, name)

    def tap_pairs(self) -> list[tuple[str, str]]:
        """(student tap, teacher tap) pairs, aligned from the deepest when the counts differ."""
        n = min(len(self.student_taps), len(self.teacher_taps))
        return list(zip(self.student_taps[len(self.student_taps) - n:],
                        self.teacher_taps[len(self.teacher_taps) - n:]))

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build connectors from the tap shapes of a first batch (called once, before training).

        The trainer calls this before it creates the optimiser, so connectors built here train.
        """

    def forward(self, student: Outputs, teacher: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())


def register_method(name: str, *, category: str, paper: str, venue: str, year: int,
                    link: str, notebook: str = "", **meta: Any):
    """Register a :class:`Method` subclass under ``name`` with its survey metadata."""

    def decorate(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.register(name, category=category, paper=paper, venue=venue, year=year,
                         link=link, notebook=notebook, **meta)(cls)
        return cls

    return decorate


def build_method(name: str, **hparams: Any) -> Method:
    """Build a registered method; unknown hyper-parameters raise an error listing valid ones."""
    cls = METHODS.get(name).factory
    valid = cls.hparam_names()
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise TypeError(f"method {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(valid)}")
    return cls(**hparams)
