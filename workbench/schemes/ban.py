"""BAN: Furlanello, Lipton, Tschannen, Itti & Anandkumar, "Born-Again Neural Networks", ICML 2018.

arXiv 1805.04770, https://arxiv.org/abs/1805.04770

A student of the *same* architecture as its teacher, trained from scratch on the teacher's outputs,
can beat it; repeating the procedure gives a sequence of generations f_1, f_2, ..., each taught by
the one before (eq. 1 and section 3), and averaging their predictions (BANE) beats every one:

    theta_{k+1} = argmin_theta  L(y, f(x; theta)) + L(f(x; theta_k), f(x; theta))
    f_BANE(x) = 1/m * sum_k f(x; theta_k)

Every generation starts from a fresh random initialisation, never from its teacher's weights.
:func:`born_again` trains generation 0 on the labels and each next generation with the ``ban``
scheme: offline distillation (the teacher frozen; the teacher-output cache and label smoothing of
``offline`` available) that checks that the teacher has the student's architecture and shares no
tensor with it. Its default loss is the labels' cross-entropy plus KD at T = 1 with weight 1 (the
paper's teacher-output cross-entropy, up to the teacher's entropy, a constant); pass
``methods={"kd": {...}}`` or ``task_weight=0`` for the paper's variants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data.bundle import DataBundle
from ..registry import SCHEMES
from .base import predict
from .offline import Offline


def shares_tensors(a: nn.Module, b: nn.Module) -> bool:
    """Do two models share any parameter or buffer storage?"""
    pointers = {t.data_ptr() for t in [*a.parameters(), *a.buffers()] if t.numel()}
    return any(t.data_ptr() in pointers for t in [*b.parameters(), *b.buffers()] if t.numel())


@SCHEMES.register("ban", category="self", paper="Born-Again Neural Networks", venue="ICML", year=2018,
                  link="https://arxiv.org/abs/1805.04770", notebook="20_schemes")
class BornAgain(Offline):
    """One born-again generation: offline KD from a teacher of the student's own architecture."""

    name = "ban"
    needs_teacher = True
    default_methods = {"kd": {"temperature": 1.0, "weight": 1.0}}

    def attach(self, run) -> None:
        student, teacher = run.student, run.teacher
        if teacher is not None:
            shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]  # noqa: E731
            if type(student) is not type(teacher) or shapes(student) != shapes(teacher):
                raise ValueError(f"ban: a born-again student has its teacher's architecture; got "
                                 f"{type(student).__name__} taught by {type(teacher).__name__} with "
                                 "other shapes (use the offline scheme for a different student)")
            if student is teacher or shares_tensors(student, teacher):
                raise ValueError("ban: the student shares weights with its teacher; every generation "
                                 "must be a freshly initialised model (call the factory again)")
        super().attach(run)


@dataclass
class Generations:
    """What :func:`born_again` made: generation k's model, run and test accuracy, and the
    accuracy of the ensemble of generations 0..k (the average of their probabilities)."""

    models: list[nn.Module] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)
    initial_fingerprints: list[str] = field(default_factory=list)  # each generation before training
    accuracies: list[float] = field(default_factory=list)
    ensemble_accuracies: list[float] = field(default_factory=list)

    @property
    def ensemble_acc(self) -> float:
        """Accuracy of the ensemble of every generation."""
        return self.ensemble_accuracies[-1]

    def table(self):
        import pandas as pd
        return pd.DataFrame({"generation": range(len(self.models)), "test_acc": self.accuracies,
                             "ensemble_of_0_to_k_acc": self.ensemble_accuracies})


def born_again(model_factory: Callable[[], nn.Module], data: DataBundle, generations: int = 2, *,
               methods: dict[str, Any] | None = None, scheme_args: dict[str, Any] | None = None,
               seed: int = 0, label: str = "ban", eval_batch_size: int = 1024,
               **options: Any) -> Generations:
    """Train generation 0 on the labels, then ``generations`` born-again generations, each taught
    by the one before; return the models, runs and accuracies (:class:`Generations`).

    ``model_factory()`` builds a new model; it is called once per generation right after the global
    RNG is seeded with ``1000 * seed + k``, so generation k starts from its own random weights
    (a factory that seeds itself gives every generation the same initial weights: still fresh,
    never the teacher's). ``methods`` / ``scheme_args``: the born-again runs' (default: KD at T = 1);
    ``options``: RunConfig fields (epochs, lr, batch_size, ...) and run arguments (store, progress,
    reuse), the same for every generation.
    """
    from ..api import distill, fingerprint, train
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"born_again: generations must be an int >= 1, got {generations!r}")
    result = Generations()
    for k in range(generations + 1):
        torch.manual_seed(1000 * seed + k)
        model = model_factory()
        for earlier in result.models:
            if model is earlier or shares_tensors(model, earlier):
                raise ValueError(f"born_again: the factory returned generation {len(result.models) - 1}'s "
                                 "model (or one sharing its weights); it must build a new one")
        result.initial_fingerprints.append(fingerprint(model))
        name = f"{label} generation {k}"
        if k == 0:
            run = train(model, data, seed=seed, label=name, **options)
        else:
            run = distill(model, result.models[-1], data, methods, scheme="ban", scheme_args=scheme_args,
                          seed=seed, label=name, **options)
        run.fit()
        result.models.append(model)
        result.runs.append(run)
        probs = [predict(m, data.test, eval_batch_size).softmax(1) for m in result.models]
        result.accuracies.append(_accuracy(probs[-1], data.test.y))
        result.ensemble_accuracies.append(_accuracy(torch.stack(probs).mean(0), data.test.y))
    return result


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(1) == labels).float().mean().item()
