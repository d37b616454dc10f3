"""`Scheme`: who teaches whom, and who is updated, in one training step.

A scheme owns the trainable parts of a run (the student or a cohort of peers, the methods and
their connectors) as sub-modules, so one ``state_dict`` checkpoints them all, and one
``parameters()`` feeds the optimiser. A frozen teacher is held outside the module tree: it is
neither trained nor saved with the run. The trainer calls, in order: ``attach`` (when the run is
built), ``prepare`` (on a first batch, before the optimiser exists), ``step`` (every training
step) and ``close``.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import torch
from torch import nn

from ..data.bundle import Batch, Split
from ..taps import Outputs, TapRecorder

if TYPE_CHECKING:
    from ..engine.trainer import Run


class Scheme(nn.Module):
    """Base class: the offline loss shape (task loss + weighted method terms) with hooks to vary it."""

    name: ClassVar[str] = ""
    #: does this scheme need a pretrained teacher?
    needs_teacher: ClassVar[bool] = True
    #: does it use one at all? Online and self schemes make their own teachers and refuse one.
    uses_teacher: ClassVar[bool] = True
    #: the methods a run takes when ``wb.distill`` is given none: the paper's loss for the scheme
    default_methods: ClassVar[dict[str, dict[str, Any]]] = {"kd": {}}
    #: does training read the training split? Data-free schemes make their own inputs and say no:
    #: the run then never touches ``data.train`` beyond its length (``wb.data.seal_training_data``)
    reads_training_data: ClassVar[bool] = True

    def attach(self, run: "Run") -> None:
        """Take the run's student and methods; check and resolve the methods' taps."""
        self.student = run.student
        self.methods = nn.ModuleDict(run.methods)
        object.__setattr__(self, "teacher", run.teacher)  # not a sub-module: never trained or saved
        # a weak reference: the run owns its scheme, and a back-reference would make the pair a
        # cycle that only the garbage collector frees (a finished run's models, optimiser state
        # and GPU memory lingering until it runs, and collections during later timed runs)
        object.__setattr__(self, "run", weakref.proxy(run))
        if self.needs_teacher and run.teacher is None:
            raise ValueError(f"the {self.name!r} scheme needs a teacher")
        if not self.uses_teacher and run.teacher is not None:
            raise ValueError(f"the {self.name!r} scheme makes its own teachers and uses no "
                             "pretrained one; pass teacher=None")
        for method in self.methods.values():
            method.bind(self.student, self.teacher)
        self._recorders: list[TapRecorder] = []

    def recorder(self, model: nn.Module, taps) -> TapRecorder:
        recorder = TapRecorder(model, taps)
        self._recorders.append(recorder)
        return recorder

    def first_batch(self, size: int) -> Batch:
        """The batch whose shapes build the connectors: the first ``size`` training samples."""
        train = self.run.data.train
        return train.batch(torch.arange(min(size, len(train))))

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of training batches on the run's device (``generator`` draws the order)."""
        from ..engine import distributed
        return distributed.batches(self.run, self.run.data.train, generator)

    def teacher_input(self, batch: Batch) -> torch.Tensor:
        """What the teacher sees of a batch: its inputs, unless the teacher reads another
        modality of the same samples (cross-modal distillation)."""
        return batch.x

    def teacher_load_args(self, load_args: dict[str, Any]) -> dict[str, Any]:
        """The data-set arguments a teacher for this scheme trains on, given the student's (for
        runs built from a config, whose teacher is trained first): the same, unless the teacher
        reads another modality (cross-modal)."""
        return dict(load_args)

    def prepare(self, first: Batch) -> None:
        """Create tap recorders and let methods build connectors from a first batch's shapes."""
        self.student_taps = self.recorder(self.student, [t for m in self.methods.values() for t in m.student_taps])
        self.teacher_taps = None if self.teacher is None else \
            self.recorder(self.teacher, [t for m in self.methods.values() for t in m.teacher_taps])
        with torch.no_grad():
            student, teacher = self.student_taps(first.x), self.teacher_outputs(first)
        for method in self.methods.values():
            method.setup(student, teacher)

    def teacher_outputs(self, batch: Batch) -> Outputs | None:
        if self.teacher_taps is None:
            return None
        with torch.no_grad():
            return self.teacher_taps(self.teacher_input(batch))

    def method_terms(self, student: Outputs, teacher: Outputs | None, batch: Batch,
                     prefix: str = "") -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """Every method's terms on one (student, teacher) pair: (weighted sum, named terms)."""
        total: torch.Tensor | None = None  # not 0.0 + ...: that adds an op (and its backward)
        terms = {}
        for name, method in self.methods.items():
            for term, value in method(student, teacher, batch).items():
                terms[f"{prefix}{name}.{term}"] = value
                weighted = method.weight * value
                total = weighted if total is None else total + weighted
        return (0.0 if total is None else total), terms

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One step's loss: returns (loss, named terms, the logits whose accuracy is tracked)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Scheme":
        # every epoch starts here; when each module already is as this call would leave it (the
        # usual case) the walk that sets every flag again through Module.__setattr__ is skipped:
        # it took ~0.35 ms an epoch on the cnn -> mlp pair, 1-2% of a small model's epoch
        if self._modes_are(mode):
            return self
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher stays in eval mode whatever the scheme does
        return self

    def _modes_are(self, mode: bool) -> bool:
        """True when every module is in ``mode`` and every teacher module in eval mode: what
        ``train(mode)`` leaves. A module a custom ``train`` keeps otherwise makes this False, so
        such a scheme always takes the full walk."""
        if any(m.training != mode for m in self.modules()):
            return False
        return self.teacher is None or not any(m.training for m in self.teacher.modules())

    def extra_metrics(self, test: Split, batch_size: int) -> dict[str, float]:
        """Metrics beyond the student's own (e.g. each peer's accuracy); none by default."""
        return {}

    def close(self) -> None:
        for recorder in self._recorders:
            recorder.close()
        self._recorders.clear()

    def describe(self) -> dict[str, Any]:
        """The scheme's constructor arguments, recorded in the run config as ``scheme_args``
        (equal settings, equal runs; ``build_scheme(name, **describe())`` rebuilds it)."""
        return {}


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Logits (N, K) of ``model`` on every sample of ``split``, in eval mode, as float on the CPU;
    the model's train/eval mode is restored afterwards."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(b.x.to(device)).float().cpu() for b in split.batches(batch_size)])
    finally:
        model.train(was_training)
