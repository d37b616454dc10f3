"""BYOT: Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation", ICCV 2019.

arXiv 1905.08094, https://arxiv.org/abs/1905.08094

The network is cut into sections at its stage outputs; each shallow section gets an auxiliary exit
(a bottleneck that brings its features to the depth of the last one, then a pooled linear
classifier), and the deepest classifier teaches every shallow exit i (eq. 1-3 of the paper):

    L = L_CE(q_C, y) + sum_{i < C} [ (1 - alpha) * L_CE(q_i, y)
                                     + alpha * T^2 * KL(q_C^T || q_i^T)
                                     + lambda * || F_i - F_C ||_2^2 ]

q_i are exit i's predictions, q_C the deepest's, F the pooled features (the deepest: the model's
``embedding`` tap); the deepest outputs are detached in the shallow exits' terms, so the shallow
terms train the exits and the shallow layers, not the deep ones. ``exit_task_weight`` is (1 - alpha)
and ``hint_weight`` lambda (0.03, the authors' code's feature_loss_coefficient; we square the
distance per sample and average over the batch). The KD term is the run's methods, applied to
(exit outputs, deepest outputs): default KD at T = 3 with weight alpha = 0.3 (the authors' code),
any logit method, or a method on the ``embedding`` tap (e.g. ``{"rkd": {}}``, the relations
between the samples' pooled features) beside or instead of the built-in hint.

Any zoo model works: exits attach to its stage taps (default: every stage but the last). A stage
that is a map (B, C, H, W) gets a bottleneck: conv1x1-BN-ReLU to D/4 channels, average pooling
to the last stage's spatial size, conv3x3-BN-ReLU, conv1x1-BN(-ReLU) to the embedding's width D,
global average pooling (the paper's bottlenecks downsample with strided convolutions; pooling
keeps a shallow exit cheaper than the rest of the network, which is the point of an early exit);
ViT tokens (B, N, D') and MLP vectors (B, D') get Linear-ReLU-Linear (then the token mean). The
final ReLU is there when the deepest embedding is non-negative (post-ReLU).

``extra_metrics``: ``exit_<tap>_acc`` and ``exit_<tap>_macs`` for every shallow exit (MACs of one
input through the backbone up to that stage plus its exit head, counted as ``wb.models.summary``
counts), ``exit_final_acc`` / ``exit_final_macs`` for the model itself, and ``ensemble_acc`` (the
average of every exit's probabilities, the paper's "ensemble").
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.summary import _macs
from ..models.vit import Attention
from ..registry import SCHEMES
from ..taps import Outputs, expand_taps, resolve_tap
from .base import Scheme

_COUNTED = (nn.modules.conv._ConvNd, nn.Linear, Attention, nn.MultiheadAttention)  # as summary counts


class ExitHead(nn.Module):
    """An auxiliary exit: features of one stage -> (pooled feature (B, D), logits (B, K))."""

    def __init__(self, feature: torch.Tensor, last: torch.Tensor, width: int, num_classes: int,
                 relu: bool):
        super().__init__()
        channels, mid = feature.shape[1] if feature.dim() == 4 else feature.shape[-1], max(width // 4, 8)
        end = [nn.ReLU()] if relu else []
        if feature.dim() == 4:
            size = tuple(last.shape[-2:]) if last.dim() == 4 else (1, 1)
            self.bottleneck = nn.Sequential(
                nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),  # (B, mid, H, W)
                nn.AdaptiveAvgPool2d(size),                             # to the last stage's size
                nn.Conv2d(mid, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, width, 1, bias=False), nn.BatchNorm2d(width), *end,
                nn.AdaptiveAvgPool2d(1), nn.Flatten())                  # (B, D)
        else:
            self.bottleneck = nn.Sequential(nn.Linear(channels, mid), nn.ReLU(), nn.Linear(mid, width), *end)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.bottleneck(feature)
        if pooled.dim() == 3:  # tokens: mean over them
            pooled = pooled.mean(1)
        return pooled, self.classifier(pooled)


@SCHEMES.register("byot", category="self", paper="Be Your Own Teacher: Improve the Performance of "
                  "Convolutional Neural Networks via Self Distillation", venue="ICCV", year=2019,
                  link="https://arxiv.org/abs/1905.08094", notebook="20_schemes")
class BYOT(Scheme):
    """Self-distillation from the deepest classifier into auxiliary exits on shallow stages.

    ``exits``: stage tap names to attach exits to (default: every stage but the last);
    ``hint_weight``: lambda of the feature hint; ``exit_task_weight``: (1 - alpha), the weight of a
    shallow exit's cross-entropy (the deepest one's is the run's ``task_weight``).
    """

    name = "byot"
    needs_teacher = False
    uses_teacher = False
    default_methods = {"kd": {"temperature": 3.0, "weight": 0.3}}

    def __init__(self, exits: "list[str] | None" = None, hint_weight: float = 0.03,
                 exit_task_weight: float = 0.7):
        super().__init__()
        if hint_weight < 0 or exit_task_weight < 0:
            raise ValueError("byot: hint_weight and exit_task_weight must be >= 0")
        self.exit_taps = None if exits is None else [exits] if isinstance(exits, str) else list(exits)
        self.hint_weight, self.exit_task_weight = float(hint_weight), float(exit_task_weight)
        self._macs: dict[str, float] | None = None

    def attach(self, run) -> None:
        super().attach(run)
        student = run.student
        stages = expand_taps(student, ["@stages"])
        self.exits = self.exit_taps or stages[:-1]
        self.last_stage = stages[-1]
        if not self.exits:
            raise ValueError(f"byot: {type(student).__name__} has a single stage; there is no shallow "
                             "stage to attach an exit to (name taps with exits=[...])")
        if self.last_stage in self.exits:
            raise ValueError(f"byot: {self.last_stage!r} is the deepest stage; exits go on shallower ones")
        for name, method in self.methods.items():
            method.bind(student, student)  # symbols such as @embedding resolve on the model
            extra = set(method.student_taps) | set(method.teacher_taps)
            if extra - {"embedding"}:
                raise ValueError(f"byot: an exit offers its logits and its pooled feature as tap "
                                 f"'embedding'; method {name!r} needs taps {sorted(extra)}")

    def prepare(self, first) -> None:
        self.recorder_ = self.recorder(self.student, [*self.exits, self.last_stage, "embedding"])
        with torch.no_grad():
            out = self.recorder_(first.x)
        width, last = out.embedding.shape[1], out.features[self.last_stage]
        relu = bool((out.embedding >= 0).all())
        self.heads = nn.ModuleDict({tap.replace(".", "_"): ExitHead(out.features[tap], last, width,
                                                                    out.logits.shape[1], relu)
                                    for tap in self.exits})
        deepest = self.deepest(out)
        with torch.no_grad():
            for method in self.methods.values():
                method.setup(self.exit_outputs(out, self.exits[0]), deepest)

    @staticmethod
    def deepest(out: Outputs) -> Outputs:
        return Outputs(out.logits, {"embedding": out.embedding}, embedding=out.embedding)

    def exit_outputs(self, out: Outputs, tap: str) -> Outputs:
        pooled, logits = self.heads[tap.replace(".", "_")](out.features[tap])
        return Outputs(logits, {"embedding": pooled}, embedding=pooled)

    def step(self, batch):
        out = self.recorder_(batch.x)
        teacher = self.deepest(out).detach()
        ce = F.cross_entropy(out.logits, batch.y)
        loss, terms = self.run.active_task_weight * ce, {"final.ce": ce}
        for tap in self.exits:
            exit_ = self.exit_outputs(out, tap)
            ce_exit = F.cross_entropy(exit_.logits, batch.y)
            hint = (exit_.embedding - teacher.embedding).pow(2).sum(1).mean()   # ||F_i - F_C||^2
            distill, exit_terms = self.method_terms(exit_, teacher, batch, prefix=f"{tap}.")
            loss = loss + self.run.active_task_weight * self.exit_task_weight * ce_exit \
                + self.hint_weight * hint + distill
            terms.update({f"{tap}.ce": ce_exit, f"{tap}.hint": hint, **exit_terms})
        return loss, terms, out.logits

    def exit_macs(self, input_shape: tuple[int, ...]) -> dict[str, float]:
        """MACs of one input through the backbone up to each exit's stage plus the exit's head
        (``final``: the whole model), counted by forward hooks as ``wb.models.summary`` counts."""
        total, reached = [0], {}

        def count(module, inputs, output):
            total[0] += _macs(module, inputs, output)

        def mark(tap):  # the running count when the stage's module has finished
            def hook(module, inputs, output):
                reached.setdefault(tap, total[0])
            return hook

        counted = [*self.student.modules(), *self.heads.modules()]
        handles = [m.register_forward_hook(count) for m in counted if isinstance(m, _COUNTED)]
        handles += [resolve_tap(self.student, tap)[1].register_forward_hook(mark(tap)) for tap in self.exits]
        was_training = self.training
        self.eval()
        try:
            param = next(self.student.parameters())
            with torch.no_grad():
                out = self.recorder_(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
                macs = {"final": float(total[0])}
                for tap in self.exits:
                    total[0] = 0
                    self.exit_outputs(out, tap)
                    macs[tap] = float(reached[tap] + total[0])
        finally:
            for handle in handles:
                handle.remove()
            self.train(was_training)
        return macs

    @torch.no_grad()
    def extra_metrics(self, test, batch_size) -> dict[str, float]:
        from .. import probes
        if self._macs is None:
            self._macs = self.exit_macs(tuple(test.x.shape[1:]))
        was_training = self.training
        self.eval()
        device = next(self.student.parameters()).device
        logits: dict[str, list[torch.Tensor]] = {tap: [] for tap in [*self.exits, "final"]}
        try:
            for b in test.batches(batch_size):
                out = self.recorder_(b.x.to(device))
                logits["final"].append(out.logits.float().cpu())
                for tap in self.exits:
                    logits[tap].append(self.exit_outputs(out, tap).logits.float().cpu())
        finally:
            self.train(was_training)
        logits = {tap: torch.cat(parts) for tap, parts in logits.items()}
        metrics = {}
        for tap, z in logits.items():
            metrics[f"exit_{tap}_acc"] = probes.accuracy(z, test.y)
            metrics[f"exit_{tap}_macs"] = self._macs[tap]
        ensemble = torch.stack([z.softmax(1) for z in logits.values()]).mean(0)
        metrics["ensemble_acc"] = probes.accuracy(ensemble, test.y)
        return metrics

    def describe(self) -> dict[str, Any]:
        return {"exits": self.exit_taps, "hint_weight": self.hint_weight,
                "exit_task_weight": self.exit_task_weight}
