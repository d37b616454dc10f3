"""DeiT: Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, "Training data-efficient image
transformers & distillation through attention", ICML 2021.

arXiv 2012.12877, https://arxiv.org/abs/2012.12877

A student ViT gets a second learned token beside the class token: the distillation token. It goes
through every block with the class and patch tokens, so it interacts with them by attention, and
its output feeds its own linear head. The class head learns from the labels, the distillation head
from the teacher (any classifier: the paper's best teachers are convnets). With Z_s the class
head's logits, Z_d the distillation head's, Z_t the teacher's, psi the softmax:

    hard:  L = 1/2 CE(psi(Z_s), y) + 1/2 CE(psi(Z_d), y_t),   y_t = argmax_c Z_t(c)
    soft:  L = (1 - lambda) CE(psi(Z_s), y) + lambda tau^2 KL(psi(Z_t / tau) || psi(Z_d / tau))

At test time the two heads' logits are averaged. The paper's defaults: hard distillation (its best
results); soft with tau = 3, lambda = 0.1.

Design: the zoo's ``vit_tiny`` has no distillation token, so DeiT is a model wrapper plus a method.
:class:`DistilledViT` wraps a ``vit_tiny`` and adds the token, its position embedding and its head;
in training mode its forward returns the class head's logits (what the trainer's cross-entropy and
train accuracy use), in eval mode the average of both heads (what ``run.evaluate`` measures). The
distillation head is the module ``dist_head``, tapped by the method, so the ordinary offline scheme
runs DeiT unchanged: the teacher stays frozen and cacheable and ``distillation``/``temperature``/
``weight`` can change while a run is live. The trainer's ``task_weight`` weighs the class head's
cross-entropy and ``weight`` the distillation term: ``weight=1`` with ``task_weight=1`` keeps the
paper's 1:1 hard balance (twice the paper's scale); for the soft variant use ``weight=0.1`` with
``task_weight=0.9``. The KL is averaged over samples (the paper's equation; the authors' code
divides its sum by B x classes instead).

    vit = wb.models.build("vit_tiny", num_classes=10, in_channels=3)
    student = DistilledViT(vit)
    wb.distill(student, convnet_teacher, data, methods={"deit": {"distillation": "hard"}})
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import TapError, resolve_tap
from ..base import Method, register_method
from ..feature._maps import tap_tuple

DISTILLATIONS = ("hard", "soft")


class DistToken(nn.Module):
    """(B, 2 + N, dim) -> (B, dim): the distillation token (second position)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1]


class DistilledViT(nn.Module):
    """A ``vit_tiny`` with DeiT's distillation token and head (the ViT's weights are shared, not
    copied: training the wrapper trains the ViT).

    Taps: the ViT's, under ``vit.`` (``stem``, ``stage1..``, ``embedding`` = the class token), its
    attention taps ``block0..`` ((B, heads, N + 2, N + 2)), and the module ``dist_head`` whose
    output is the distillation head's logits (B, num_classes).
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        needed = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "cls", "classifier")
        missing = [name for name in needed if not hasattr(vit, name)]
        if missing:
            raise TypeError(f"DistilledViT wraps the zoo's vit_tiny; {type(vit).__name__} lacks "
                            f"{', '.join(missing)}")
        self.vit = vit
        dim = vit.cls_token.shape[-1]
        self.num_classes, self.in_channels = vit.num_classes, vit.in_channels
        # DeiT initialises the token and the position embeddings with a truncated normal, std 0.02
        self.dist_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
        self.dist_pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
        self.dist = DistToken()
        self.dist_head = nn.Linear(dim, vit.num_classes)
        self.classifier = vit.classifier
        self.taps = {name: f"vit.{path}" for name, path in vit.taps.items()}
        self.preact_taps: dict[str, str] = {}
        self.attention_taps = {name: f"vit.{path}" for name, path in vit.attention_taps.items()}
        self.spec = {"name": "deit", "vit": dict(getattr(vit, "spec", {"name": type(vit).__name__}))}

    #: tokens before the patches: CLS, then the distillation token (attention maps skip both)
    prefix_tokens = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        if tuple(x.shape[-2:]) != (vit.image_size, vit.image_size):
            raise ValueError(f"vit was built for {vit.image_size}x{vit.image_size} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        patches = vit.patch_embed(x).flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:]  # (B, N, dim)
        batch = patches.shape[0]
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(batch, -1, -1)             # (B, 1, dim)
        dist = (self.dist_token + self.dist_pos_embed).expand(batch, -1, -1)           # (B, 1, dim)
        tokens = vit.norm(vit.blocks(torch.cat([cls, dist, patches], 1)))              # (B, 2 + N, dim)
        class_logits = vit.classifier(vit.cls(tokens))                                 # (B, K)
        dist_logits = self.dist_head(self.dist(tokens))                                # (B, K)
        if self.training:
            return class_logits  # the distillation head is read through its tap
        return (class_logits + dist_logits) / 2


def deit_loss(dist_logits: torch.Tensor, teacher_logits: torch.Tensor, distillation: str,
              temperature: float) -> torch.Tensor:
    """The distillation head's term: CE(Z_d, argmax Z_t) (hard) or tau^2 KL(psi(Z_t/tau) ||
    psi(Z_d/tau)) averaged over samples (soft). Logits (B, K)."""
    if distillation == "hard":
        return F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=1))
    if distillation == "soft":
        log_p = F.log_softmax(dist_logits.float() / temperature, dim=1)
        log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature ** 2
    raise ValueError(f"deit: distillation={distillation!r} is not valid; choose 'hard' or 'soft'")


@register_method("deit", category="attention", paper="Training data-efficient image transformers & "
                 "distillation through attention", venue="ICML", year=2021,
                 link="https://arxiv.org/abs/2012.12877", notebook="30_attention",
                 needs="distillation_token")
class DeiT(Method):
    """Distillation through the distillation token; term ``distillation``.

    The student must be a :class:`DistilledViT` (or any model with a ``dist_head`` module giving
    logits); ``distillation``: ``"hard"`` (teacher's argmax) or ``"soft"`` (KL at ``temperature``).
    """

    constraints = {"weight": "nonnegative", "temperature": "positive"}
    student_taps = ("dist_head",)

    def __init__(self, distillation: str = "hard", temperature: float = 3.0, weight: float = 1.0,
                 student_taps=student_taps):
        super().__init__(weight=weight)
        if distillation not in DISTILLATIONS:
            raise ValueError(f"deit: distillation={distillation!r} is not valid; choose 'hard' or 'soft'")
        self.distillation = distillation
        self.temperature = temperature
        self.student_taps = tap_tuple(student_taps)

    def bind(self, student_model, teacher_model):
        if self.student_taps == ("dist_head",):
            try:
                resolve_tap(student_model, "dist_head")
            except TapError:
                raise TapError(
                    f"deit: the student {type(student_model).__name__} has no distillation token and "
                    "head ('dist_head'); wrap a vit_tiny as DistilledViT(vit) "
                    "(workbench.methods.attention.deit) and distil into the wrapper") from None
        super().bind(student_model, teacher_model)

    def forward(self, student, teacher, batch):
        dist_logits = student.features[self.student_taps[0]]                  # (B, K)
        return {"distillation": deit_loss(dist_logits, teacher.logits.detach(), self.distillation,
                                          self.temperature)}
