"""ONE: Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018.

arXiv 1806.04606, https://arxiv.org/abs/1806.04606

One network becomes a multi-branch one: the layers up to its last stage are a shared trunk; m
branches, each a copy of the last stage and the head (pooling, classifier), sit on top of it; a
gate (a linear layer on the trunk's pooled output, softmax over branches) weighs the branches'
logits z_1..z_m into the ensemble teacher (eq. 1):

    z_e = sum_i g_i * z_i,          g = softmax(W_g * pool(trunk(x)))

and every branch learns from the labels and from the ensemble at temperature T = 3 (eq. 3, 5):

    L = sum_i L_CE(z_i, y) + L_CE(z_e, y) + T^2 * sum_i KL(softmax(z_e / T) || softmax(z_i / T))

The ensemble is a fixed target in the KL terms (detached, as in the authors' code); the
distillation term is any logit method (default KD, T = 3, weight 1). The paper's gate has a BN and
a ReLU between the linear layer and the softmax; this one is linear, as in the issue's spec.

Which models: the trunk and the branches are *replayed* from the model's own modules, found from
its taps: the last stage is the module of its deepest stage tap, and everything the model does
before and after it must be a chain of its children (nested ``nn.Sequential`` followed through).
That holds for the zoo's ResNets (``resnet*``), wide ResNets (``wrn_*``) and ``cnn``, the families
this scheme supports and tests; it also holds for ``vgg*``, ``mobilenetv2`` and ``shufflenetv2``.
A model whose forward does more than chain its children (``vit_tiny``) is refused in ``prepare``,
which checks on the first batch that the replay gives the model's own logits.

Branch 0 *is* the student's own last stage and head, so ``run.student`` stays a single-branch
network (the deployable one, as in the paper) and ``test_acc`` is branch 0's accuracy; branches
1..m-1 are fresh copies (re-initialised). ``extra_metrics``: ``branch{k}_acc`` and ``ensemble_acc``
(the gated ensemble).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import SCHEMES
from ..taps import Outputs, expand_taps, resolve_tap
from ._cohort import derived_seed
from .base import Scheme


def split_at(model: nn.Module, path: str) -> tuple[list[nn.Module], nn.Module, list[nn.Module]]:
    """(modules before, the module at ``path``, modules after), as a chain of ``model``'s children
    with ``nn.Sequential`` containers on the way to ``path`` opened up."""
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    container, parts = model, path.split(".")
    for depth, part in enumerate(parts):
        names = list(container._modules)
        if part not in names:
            raise ValueError(f"{path!r} is not a chain of children of {type(model).__name__}")
        i = names.index(part)
        before += [container._modules[n] for n in names[:i]]
        after = [container._modules[n] for n in names[i + 1:]] + after
        container = container._modules[part]
        if depth < len(parts) - 1 and not isinstance(container, nn.Sequential):
            raise ValueError(f"{'.'.join(parts[:depth + 1])!r} of {type(model).__name__} is a "
                             f"{type(container).__name__}, not a chain (nn.Sequential) to open")
    return before, container, after


def chain(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def pooled(x: torch.Tensor) -> torch.Tensor:
    """A feature as a vector: maps (B, C, H, W) averaged over space, tokens (B, N, D) over tokens."""
    return x.flatten(2).mean(2) if x.dim() == 4 else x.mean(1) if x.dim() == 3 else x


def fresh(modules: list[nn.Module], seed: int) -> nn.Sequential:
    """Deep copies of ``modules`` in a chain, re-initialised from ``seed`` (global RNG untouched)."""
    branch = nn.Sequential(*copy.deepcopy(modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in branch.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return branch


@SCHEMES.register("one", category="online", paper="Knowledge Distillation by On-the-Fly Native "
                  "Ensemble", venue="NeurIPS", year=2018, link="https://arxiv.org/abs/1806.04606",
                  notebook="20_schemes")
class ONE(Scheme):
    """On-the-fly native ensemble. ``branches``: m >= 2 (the paper uses 3)."""

    name = "one"
    needs_teacher = False
    uses_teacher = False
    default_methods = {"kd": {"temperature": 3.0, "weight": 1.0}}

    def __init__(self, branches: int = 3):
        super().__init__()
        if isinstance(branches, bool) or not isinstance(branches, int) or branches < 2:
            raise ValueError(f"one: branches must be an int >= 2, got {branches!r}")
        self.num_branches = branches

    def attach(self, run) -> None:
        super().attach(run)
        for name, method in self.methods.items():
            if tuple(method.student_taps) or tuple(method.teacher_taps):
                raise ValueError(f"one: the teacher is the branches' gated ensemble of logits and the "
                                 f"branches offer logits only; method {name!r} needs taps: use logit "
                                 "methods (kd, dkd, ...)")
        student = run.student
        last = expand_taps(student, ["@last"])[0]
        path, _, _ = resolve_tap(student, last)
        self.last_stage_path = path
        trunk, stage, head = split_at(student, path)
        # the student's own modules: kept out of this module's tree (they are saved as `student`)
        self.trunk, self.own_branch = trunk, [stage, *head]
        self.others = nn.ModuleList(fresh(self.own_branch, derived_seed("one", run.config.seed, k))
                                    for k in range(1, self.num_branches))

    def prepare(self, first) -> None:
        refusal = (f"one: {type(self.student).__name__}'s forward is not the chain of its children "
                   f"around its last stage {self.last_stage_path!r}, so it cannot be split into a trunk "
                   "and branches; ONE supports the resnet, wrn and cnn families (and vgg, "
                   "mobilenetv2, shufflenetv2)")
        with torch.no_grad():
            was_training = self.student.training
            self.student.eval()
            try:
                trunk = chain(self.trunk, first.x)
                replayed, own = chain(self.own_branch, trunk), self.student(first.x)
            except RuntimeError as error:
                raise ValueError(f"{refusal} (replaying it failed: {error})") from error
            finally:
                self.student.train(was_training)
            if replayed.shape != own.shape or not torch.allclose(replayed, own, rtol=1e-4, atol=1e-5):
                raise ValueError(refusal)
        self.gate = nn.Linear(pooled(trunk).shape[1], self.num_branches)

    def branch_logits(self, trunk: torch.Tensor) -> list[torch.Tensor]:
        """Every branch's logits (B, K) on the trunk's output; branch 0 is the student's own."""
        return [chain(self.own_branch, trunk), *(branch(trunk) for branch in self.others)]

    def forward_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(branch logits, gated ensemble logits (B, K))."""
        trunk = chain(self.trunk, x)
        logits = self.branch_logits(trunk)
        gate = self.gate(pooled(trunk)).softmax(1)                      # (B, m)
        ensemble = (gate.unsqueeze(2) * torch.stack(logits, 1)).sum(1)  # z_e = sum_i g_i z_i
        return logits, ensemble

    def step(self, batch):
        logits, ensemble = self.forward_all(batch.x)
        teacher = Outputs(ensemble.detach())
        ce_ensemble = F.cross_entropy(ensemble, batch.y)
        loss = self.run.active_task_weight * ce_ensemble
        terms = {"ensemble.ce": ce_ensemble}
        for k, z in enumerate(logits):
            ce = F.cross_entropy(z, batch.y)
            distill, branch_terms = self.method_terms(Outputs(z), teacher, batch, prefix=f"branch{k}.")
            loss = loss + self.run.active_task_weight * ce + distill
            terms.update({f"branch{k}.ce": ce, **branch_terms})
        return loss, terms, logits[0]

    @torch.no_grad()
    def extra_metrics(self, test, batch_size) -> dict[str, float]:
        from .. import probes
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            outs = [self.forward_all(b.x.to(device)) for b in test.batches(batch_size)]
        finally:
            self.train(was_training)
        metrics = {f"branch{k}_acc": probes.accuracy(torch.cat([o[0][k].float().cpu() for o in outs]), test.y)
                   for k in range(self.num_branches)}
        metrics["ensemble_acc"] = probes.accuracy(torch.cat([o[1].float().cpu() for o in outs]), test.y)
        return metrics

    def describe(self) -> dict[str, Any]:
        return {"branches": self.num_branches}
