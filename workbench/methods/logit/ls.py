"""LS: Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024.

arXiv 2403.01427, https://arxiv.org/abs/2403.01427

A shared temperature asks the student to match the teacher's logits in range and spread, not only
in their relations, although a small student may not be able to produce logits as large. LS
standardises each sample's logits before the softmax (a Z-score with a base temperature tau):

    Z(x; tau) = (x - mean(x)) / (tau * sigma(x))      sigma: the std over the K classes

so that any loss on softmax(Z(z; tau)) and softmax(Z(v; tau)) sees only the logits' relations:
it does not change when a sample's logits are shifted or scaled by a positive factor.

LS is a pre-process, not a loss: this method wraps another registered logit method (``base``,
KD by default) and computes that method's loss on the standardised logits; the base's own
temperature plays tau. The paper's setting for KD, DKD and MLKD on CIFAR-100: tau = 2 and the
distillation weight 9 (for DKD, alpha and beta both multiplied by 9), with cross-entropy weight 1.
sigma is the sample standard deviation (``torch.std``) plus 1e-7, as in the authors' code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ...registry import METHODS
from ..base import Method, build_method, register_method
from .kd import kd_loss

EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row: (x - mean(x)) / sigma(x). (B, K) -> (B, K); tau is applied by the loss."""
    logits = logits.float()                      # a bf16 mean and std are too coarse
    mean = logits.mean(dim=1, keepdim=True)
    sigma = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (sigma + EPS)


def ls_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """KD on standardised logits: tau^2 KL(softmax(Z(v; tau)) || softmax(Z(z; tau))), batch mean."""
    return kd_loss(standardize(student_logits), standardize(teacher_logits), temperature)


def _build_base(base: str, base_hparams: dict[str, Any] | None) -> Method:
    entry = METHODS.get(base)                   # unknown names raise with suggestions
    cls = entry.factory
    if entry.meta.get("category") != "logit" or cls is LogitStandardization:
        logit = [e.name for e in METHODS if e.meta.get("category") == "logit" and e.name != "ls"]
        raise ValueError(f"ls: base={base!r} is not a logit method it can wrap; "
                         f"choose one of {', '.join(logit)}")
    if "temperature" not in cls.hparam_names():
        raise ValueError(f"ls: base={base!r} has no 'temperature' to serve as the base temperature "
                         "tau; wrap a method that has one (kd, dkd, dist, ...)")
    base_hparams = dict(base_hparams or {})
    for name in ("temperature", "weight"):
        if name in base_hparams:
            raise ValueError(f"ls: set {name!r} on ls itself, not in base_hparams; ls's {name} "
                             f"is the base's {name}" + (" (tau)" if name == "temperature" else ""))
    return build_method(base, **base_hparams)


@register_method("ls", category="logit", paper="Logit Standardization in Knowledge Distillation",
                 venue="CVPR", year=2024, link="https://arxiv.org/abs/2403.01427",
                 notebook="10_sources_logit", wrapper=True)
class LogitStandardization(Method):
    """Logit standardisation around another logit method; returns that method's terms.

    ``base``: the registered logit method to wrap (``kd``, ``dkd``, ``dist``, ``ttm``, ...).
    ``temperature``: the base temperature tau, passed to the base method.
    ``base_hparams``: the base method's other hyper-parameters, e.g. ``{"beta": 8}`` for DKD.
    ``weight``: multiplies the base's terms; the base method's own ``weight`` is not used.

    The wrapped method is ``self.base_method``; its state (DKD's warm-up counter) is saved with
    this one, and changes to its hyper-parameters wait for the step boundary like this method's.
    """

    constraints = {"weight": "nonnegative", "temperature": "positive"}

    def __init__(self, base: str = "kd", temperature: float = 2.0,
                 base_hparams: dict[str, Any] | None = None, weight: float = 9.0):
        super().__init__(weight=weight)
        self.base_method = _build_base(base, base_hparams)
        self.temperature = temperature

    # The hyper-parameters below live on the wrapped method; these properties let the trainer,
    # the config and checkpoints read and write them through this one.
    @property
    def base(self) -> str:
        return self.base_method.name

    @base.setter
    def base(self, value: str) -> None:
        if value != self.base:
            raise ValueError(f"ls: the base method of a built ls cannot change ({self.base!r} -> "
                             f"{value!r}); build a new one with base={value!r}")

    @property
    def temperature(self) -> float:
        return self.base_method.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.base_method.temperature = value

    @property
    def base_hparams(self) -> dict[str, Any]:
        return {k: v for k, v in self.base_method.hparams().items() if k not in ("temperature", "weight")}

    @base_hparams.setter
    def base_hparams(self, values: dict[str, Any] | None) -> None:
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.base_hparams))
        if unknown:
            raise TypeError(f"ls: base {self.base!r} has no hyper-parameter "
                            f"{', '.join(map(repr, unknown))} settable here; valid: "
                            f"{', '.join(self.base_hparams)}")
        for key, value in values.items():
            setattr(self.base_method, key, value)

    # -- live control and taps reach the wrapped method too -----------------------------------
    def set_live(self, live: bool) -> None:
        super().set_live(live)
        self.base_method.set_live(live)

    def apply_pending(self) -> dict[str, Any]:
        changes = super().apply_pending()          # a new temperature is queued on the base here
        base_changes = self.base_method.apply_pending()
        base_changes.pop("temperature", None)      # already reported as this method's own
        if base_changes:
            changes["base_hparams"] = base_changes
        return changes

    def bind(self, student_model, teacher_model) -> None:
        super().bind(student_model, teacher_model)
        self.base_method.bind(student_model, teacher_model)

    def setup(self, student, teacher) -> None:
        self.base_method.setup(*(dataclasses.replace(o, logits=standardize(o.logits))
                                 for o in (student, teacher)))

    def forward(self, student, teacher, batch):
        student = dataclasses.replace(student, logits=standardize(student.logits))
        teacher = dataclasses.replace(teacher, logits=standardize(teacher.logits))
        return self.base_method(student, teacher, batch)
