"""PS-KD: Kim, Ji, Yoon & Hwang, "Self-Knowledge Distillation with Progressive Refinement of
Targets", ICCV 2021.

arXiv 2006.12000, https://arxiv.org/abs/2006.12000

The model is its own teacher: at epoch t its target for sample x mixes the label with the model's
own prediction for that same sample at the previous epoch (eq. 6-7):

    y_t^soft(x) = (1 - alpha_t) * y + alpha_t * P_{t-1}(x),      alpha_t = alpha_T * t / (T - 1)
    L = H(y_t^soft(x), P_t(x)) = (1 - alpha_t) * H(y, P_t) + alpha_t * H(P_{t-1}, P_t)

for epochs t = 0 .. T-1 (alpha is 0 at the first epoch and alpha_T = 0.8 at the last). Since
H(P_{t-1}, P_t) = KL(P_{t-1} || P_t) + H(P_{t-1}) and the entropy term has no gradient, the KD loss
at T = 1 with weight 1 (the default method) gives exactly PS-KD's gradients; the logged loss differs
from the paper's by alpha_t * H(P_{t-1}). Any logit method can take KD's place: the scheme weighs the
task loss by (1 - alpha_t) and the methods by alpha_t, with the past predictions as the teacher.

The past predictions are the logits of the training forward pass (as in the authors' code, which
keeps them from the training loop), stored per sample index (``batch.index``) in buffers of
N x K floats, saved in checkpoints, so a resumed run uses the same targets. A sample the previous
epochs never saw (``drop_last`` leaves a few out) teaches itself nothing: its own current logits,
detached, stand in. ``alpha`` is logged as a term.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from ..taps import Outputs
from .base import Scheme


def pskd_alpha(alpha_T: float, epoch: int, epochs: int) -> float:
    """alpha_t = alpha_T * t / (T - 1): 0 at the first epoch, alpha_T at the last."""
    return alpha_T * epoch / max(epochs - 1, 1)


@SCHEMES.register("pskd", category="self", paper="Self-Knowledge Distillation with Progressive "
                  "Refinement of Targets", venue="ICCV", year=2021, link="https://arxiv.org/abs/2006.12000",
                  notebook="20_schemes")
class PSKD(Scheme):
    """Progressive self-KD. ``alpha_T``: the weight of the past predictions at the last epoch."""

    name = "pskd"
    needs_teacher = False
    uses_teacher = False
    default_methods = {"kd": {"temperature": 1.0, "weight": 1.0}}

    def __init__(self, alpha_T: float = 0.8):
        super().__init__()
        if not 0.0 <= alpha_T <= 1.0:
            raise ValueError(f"pskd: alpha_T={alpha_T!r} must be in [0, 1]")
        self.alpha_T = float(alpha_T)
        self._epoch_checked = 0     # the run's epoch when the buffers were last brought up to date

    def attach(self, run) -> None:
        super().attach(run)
        for name, method in self.methods.items():
            if tuple(method.teacher_taps):
                raise ValueError(f"pskd: the teacher is the model's past logits, with no features; "
                                 f"method {name!r} needs teacher taps: use logit methods (kd, dkd, ...)")
        n, k = len(run.data.train), run.data.num_classes
        self.register_buffer("past_logits", torch.zeros(n, k))            # P_{t-1}, as logits
        self.register_buffer("past_seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("current_logits", torch.zeros(n, k))         # P_t, filled this epoch
        self.register_buffer("current_seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("epoch_of_current", torch.zeros((), dtype=torch.int64))  # whose P_t

    def alpha(self, epoch: int) -> float:
        return pskd_alpha(self.alpha_T, epoch, self.run.config.epochs)

    def _roll(self, epoch: int) -> None:
        """A new epoch: this epoch's predictions become the past ones."""
        seen = self.current_seen.unsqueeze(1)
        self.past_logits.copy_(torch.where(seen, self.current_logits, self.past_logits))
        self.past_seen |= self.current_seen
        self.current_seen.zero_()
        self.epoch_of_current.fill_(epoch)

    def past_outputs(self, index: torch.Tensor, logits: torch.Tensor) -> Outputs:
        """P_{t-1} for the samples at ``index`` (their own current logits, detached, if never seen)."""
        seen = self.past_seen[index].unsqueeze(1)                                     # (B, 1)
        return Outputs(torch.where(seen, self.past_logits[index], logits.detach().float()).to(logits.dtype))

    def step(self, batch):
        epoch = self.run.epoch
        if epoch != self._epoch_checked:  # once an epoch (and after a resume): one host read
            if int(self.epoch_of_current) != epoch:
                self._roll(epoch)
            self._epoch_checked = epoch
        out = self.student_taps(batch.x)
        index = batch.index.to(out.logits.device)
        alpha = self.alpha(epoch)
        ce = F.cross_entropy(out.logits, batch.y)
        distill, terms = self.method_terms(out, self.past_outputs(index, out.logits), batch)
        loss = (1 - alpha) * self.run.active_task_weight * ce + alpha * distill
        self.current_logits[index] = out.logits.detach().float()
        self.current_seen[index] = True
        return loss, {"ce": ce, **terms, "alpha": torch.full((), alpha, device=ce.device)}, out.logits

    def describe(self) -> dict[str, Any]:
        return {"alpha_T": self.alpha_T}
