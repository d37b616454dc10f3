"""Cross-modal distillation: a teacher of one modality teaches a student of another, on pairs.

Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision Transfer", CVPR 2016,
https://arxiv.org/abs/1507.00448. A teacher trained with labels on a source modality (RGB) is
frozen; the student reads another modality (depth) of the *same* scenes and learns from the
teacher's outputs on the paired source images, with few or no labels of its own:

    L = task_weight * CE_labelled(y, S(x_d)) + sum over methods m of weight_m * term_m(S(x_d), T(x_s))

The data carry the pairs: ``batch.x`` is the student's modality and
``batch.extras[teacher_modality]`` the teacher's (``wb.data.load("shapes_paired")``), and
:meth:`CrossModal.teacher_input` hands the teacher the latter, so the compatibility probe, the
teacher-output cache and ``run.evaluate``'s teacher metrics all see the teacher's modality.

``labels_per_class``: how many labelled samples per class the task loss may use. 0 (default) is
the paper's setting: no target-modality labels, no cross-entropy at all (the term is absent, and
``batch.y`` reaches no loss); k > 0 makes a fixed subset of k training samples per class
(:func:`workbench.data.shapes_paired.labelled_index` with ``label_seed``, the same samples as
``load("shapes_paired", keep_per_class=k, label_seed=...)``) labelled, and the cross-entropy is
averaged over the labelled samples of each batch (0 for a batch without one); ``None`` uses every
label. The default method is ``supervision_transfer`` (the paper's L2 on mid-level features); any
method of the workbench works across modalities (``kd`` on logits is the other classic).
The teacher is frozen as in ``offline``, whose cache and label smoothing are available too.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data.bundle import Batch
from ..data.common import check_int
from ..data.shapes_paired import labelled_index
from ..registry import SCHEMES
from .base import Scheme
from .offline import Offline


@SCHEMES.register("cross_modal", category="cross_modal",
                  paper="Cross Modal Distillation for Supervision Transfer", venue="CVPR", year=2016,
                  link="https://arxiv.org/abs/1507.00448", notebook="33_cross_modal")
class CrossModal(Offline):
    """A frozen teacher reads ``batch.extras[teacher_modality]``; the student reads ``batch.x``.

    ``self.labelled`` is the (N,) bool mask of training samples whose labels the task loss uses
    (set when the run is built); ``extra_metrics`` reports their number as ``labelled_samples``.
    """

    name = "cross_modal"
    needs_teacher = True
    default_methods = {"supervision_transfer": {}}

    def __init__(self, teacher_modality: str = "rgb", labels_per_class: int | None = 0,
                 label_seed: int = 0, cache: bool = False, cache_views: int = 1,
                 cache_max_mb: float = 2048.0, label_smoothing: float = 0.0):
        super().__init__(cache=cache, cache_views=cache_views, cache_max_mb=cache_max_mb,
                         label_smoothing=label_smoothing)
        if not isinstance(teacher_modality, str) or not teacher_modality:
            raise ValueError(f"cross_modal: teacher_modality={teacher_modality!r} must name an extra "
                             "of the data (e.g. 'rgb')")
        self.teacher_modality = teacher_modality
        self.labels_per_class = None if labels_per_class is None else \
            check_int("cross_modal: labels_per_class", labels_per_class, low=0)
        self.label_seed = check_int("cross_modal: label_seed", label_seed, low=0)
        self.labelled: torch.Tensor | None = None

    def teacher_input(self, batch: Batch) -> torch.Tensor:
        try:
            return batch.extras[self.teacher_modality]
        except KeyError:
            raise ValueError(
                f"cross_modal: the teacher reads batch.extras[{self.teacher_modality!r}], but this "
                f"data's extras are {sorted(batch.extras) or 'none'}; load paired data whose teacher "
                f"modality is {self.teacher_modality!r} (e.g. wb.data.load('shapes_paired', "
                f"teacher_modality={self.teacher_modality!r})) or pass scheme_args="
                "{'teacher_modality': <one of the extras>}") from None

    def attach(self, run) -> None:
        super().attach(run)
        if self.labels_per_class == 0 and not len(self.methods):
            raise ValueError("cross_modal: labels_per_class=0 and no methods leave the student "
                             "nothing to learn from; give methods (e.g. supervision_transfer) or labels")
        y = run.data.train.y
        if self.labels_per_class is None:
            labelled = torch.ones(len(y), dtype=torch.bool)
        else:
            labelled = torch.zeros(len(y), dtype=torch.bool)
            labelled[torch.from_numpy(labelled_index(y, self.labels_per_class, self.label_seed))] = True
        self.labelled = labelled  # on the CPU, indexed by batch.index (which stays on the CPU)

    def teacher_outputs(self, batch):
        if self.cache is None:
            return Scheme.teacher_outputs(self, batch)
        # the cache checks that a sample's input is the one it stored outputs for: show it the
        # teacher's input, not the student's
        seen = Batch(self.teacher_input(batch), batch.y, batch.index, batch.extras)
        return self.cache.outputs(seen, self.teacher, lambda b: Scheme.teacher_outputs(self, b),
                                  epoch=self.run.epoch)

    def step(self, batch):
        teacher = self.teacher_outputs(batch)
        student = self.student_taps(batch.x)
        distill, terms = self.method_terms(student, teacher, batch)
        if self.labels_per_class == 0:  # no labels: the task loss is not even computed
            return distill, terms, student.logits
        weight = self.labelled[batch.index.cpu()].to(student.logits.device, non_blocking=True).float()
        losses = F.cross_entropy(student.logits, batch.y, reduction="none",
                                 label_smoothing=self.label_smoothing)        # (B,)
        ce = (losses * weight).sum() / weight.sum().clamp_min(1.0)            # mean over the labelled
        return self.run.active_task_weight * ce + distill, {"ce": ce, **terms}, student.logits

    def teacher_load_args(self, load_args: dict[str, Any]) -> dict[str, Any]:
        """The load arguments of the data a teacher for this scheme trains on, from the student's:
        the same data set with the teacher's modality as ``x`` and every training scene labelled
        (for building a run from a config, where the teacher is trained first)."""
        args = {k: v for k, v in load_args.items() if k not in ("keep_per_class", "label_seed")}
        return {**args, "student_modality": self.teacher_modality}

    def extra_metrics(self, test, batch_size):
        labelled = {} if self.labelled is None else {"labelled_samples": float(self.labelled.sum())}
        return {**super().extra_metrics(test, batch_size), **labelled}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "teacher_modality": self.teacher_modality,
                "labels_per_class": self.labels_per_class, "label_seed": self.label_seed}
