"""ARD: Goldblum, Fowl, Feizi & Goldstein, "Adversarially Robust Distillation", AAAI 2020.

arXiv 1905.09747, https://arxiv.org/abs/1905.09747 (code: github.com/goldblum/AdversariallyRobustDistillation)

Distillation as adversarial training: a (robust) teacher T, frozen, and a student S that learns to
give, on an adversarial example crafted against *itself*, the teacher's answer on the clean image:

    L_ARD = alpha * t^2 * KL( S^t(x + delta) || T^t(x) ) + (1 - alpha) * CE( S(x), y ),
    delta = argmax_{||delta||_inf <= eps} CE( S(x + delta), y )

where S^t, T^t are the softmax outputs at temperature t (KL(q || p) with the teacher's q, as in KD).
delta comes from PGD (:func:`workbench.robust.pgd_attack`): a uniform random start in the ball,
then ``steps`` signed-gradient steps on the student's cross-entropy with the true labels, each
projected back onto the ball and the valid pixel range. The authors' code attacks with
epsilon = 8/255, step 2/255, 10 steps (CIFAR-10, pixels in [0, 1]); its defaults are alpha = 1
and t = 30 (``--alpha 1.0 --temp 30.0``); the paper evaluates robustness with PGD-20.

In the workbench the KD term is the run's methods, applied to (student outputs on x + delta,
teacher outputs on x): the default is KD at T = 30 with weight 1, so with the scheme's ``alpha``
the loss is exactly the equation above (with ``task_weight`` 1):

    loss = (1 - alpha) * task_weight * CE(S(x), y) + alpha * sum_m weight_m * term_m(S(x + delta), T(x))

Any method of the sources chapter can stand in for KD (features are then those of the adversarial
forward pass). With ``epsilon=0`` no attack runs and the step is the offline scheme's KD + CE
with KD weight alpha and task weight 1 - alpha, step for step (a test checks it).

Units: ``epsilon`` and ``step_size`` are in pixel units of [0, 1] and are converted per channel
with the data's normalisation (``data.meta["mean"]``, ``["std"]``; see
:class:`workbench.robust.InputSpace`); data without those statistics is attacked in its own input
units with no range clamp.

Details that follow the authors' code: the student crafts in eval mode in the workbench (the
authors' code crafts in train mode; :func:`pgd_attack` never updates batch-norm statistics), then
runs two train-mode forward passes, on x + delta and on x (each updates batch-norm statistics);
the teacher sees the clean x only. Their KL is ``nn.KLDivLoss()`` with its default element-wise
mean, i.e. the batch mean divided by the number of classes K, so their effective KD factor is
t^2 / K; here KD uses the batch mean of the paper's equation (for the authors' scale, set the KD
weight to 1/K). ``extra_metrics`` adds PGD robust accuracy on the test split with the scheme's
budget and ``eval_steps`` steps (``robust_acc``; 0 turns it off).

Adversarial training (the paper's baseline and how its robust teachers are made): with no teacher,
no methods, ``alpha=0`` and ``task_input="adversarial"`` the loss is CE(S(x + delta), y), the
PGD adversarial training of Madry et al. (ICLR 2018, arXiv 1706.06083):
``wb.distill(model, None, data, methods={}, scheme="ard", scheme_args={"alpha": 0,
"task_input": "adversarial"})``.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from ..registry import SCHEMES
from ..robust import InputSpace, check_budget, pgd_attack, robust_accuracy
from .base import Scheme
from .offline import freeze


@SCHEMES.register("ard", category="adversarial", paper="Adversarially Robust Distillation", venue="AAAI",
                  year=2020, link="https://arxiv.org/abs/1905.09747", notebook="31_adversarial")
class ARD(Scheme):
    """Adversarially robust distillation. ``epsilon``, ``step_size``: the L-infinity budget and PGD
    step in pixel units; ``steps``: PGD steps while training; ``alpha``: the weight of the methods'
    terms against the task loss's 1 - alpha; ``random_start``: start PGD at a random point of the
    ball; ``eval_steps``: PGD steps of the robust accuracy in ``extra_metrics`` (0: off);
    ``task_input``: the task loss's input, ``"clean"`` (the paper) or ``"adversarial"``."""

    name = "ard"
    needs_teacher = False   # without one (and without methods) it is adversarial training
    default_methods = {"kd": {"temperature": 30.0, "weight": 1.0}}

    def __init__(self, epsilon: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
                 alpha: float = 1.0, random_start: bool = True, eval_steps: int = 20,
                 task_input: str = "clean"):
        super().__init__()
        self.epsilon, self.step_size, self.steps = check_budget("ard", epsilon, step_size, steps)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ard: alpha={alpha!r} is not valid; it must be a number in [0, 1]")
        if not isinstance(random_start, bool):
            raise TypeError(f"ard: random_start must be True or False, got {random_start!r}")
        if isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 0:
            raise ValueError(f"ard: eval_steps={eval_steps!r} is not valid; it must be an integer >= 0")
        if task_input not in ("clean", "adversarial"):
            raise ValueError(f"ard: task_input={task_input!r} is not valid; choose 'clean' (the paper's "
                             "CE(S(x), y)) or 'adversarial' (CE(S(x + delta), y), adversarial training)")
        self.alpha, self.random_start, self.eval_steps = float(alpha), random_start, eval_steps
        self.task_input = task_input
        self.space: InputSpace | None = None

    @property
    def attacks(self) -> bool:
        """Does a training step perturb its inputs at all? (epsilon = 0 is natural distillation)"""
        return self.epsilon > 0 and (self.steps > 0 or self.random_start)

    def attach(self, run) -> None:
        if run.teacher is not None:
            freeze(run.teacher)
        super().attach(run)
        if run.teacher is None and self.methods:
            raise ValueError(f"ard: methods {sorted(self.methods)} need a teacher, and the run has none; "
                             "pass a teacher, or methods={} for adversarial training")
        self.space = InputSpace.of(run.data)

    def adversarial(self, x, y):
        """PGD examples against the student for (B, ...) inputs and (B,) labels, detached."""
        return pgd_attack(self.student, x, y, self.space.budget(self.epsilon, x),
                          self.space.budget(self.step_size, x), self.steps,
                          random_start=self.random_start, clamp=self.space.clamp_bounds(x))

    def step(self, batch):
        teacher = self.teacher_outputs(batch)                     # T(x): the clean input
        if self.attacks:
            adversarial = self.student_taps(self.adversarial(batch.x, batch.y))   # S(x + delta)
            if self.task_input == "adversarial":
                task_logits = adversarial.logits       # CE on S(x + delta): adversarial training
            else:
                task_logits = self.student(batch.x)                                # S(x)
                if isinstance(task_logits, (tuple, list)):
                    task_logits = task_logits[0]
        else:  # no attack: one forward pass, as the offline scheme's
            adversarial = self.student_taps(batch.x)
            task_logits = adversarial.logits
        ce = F.cross_entropy(task_logits, batch.y)
        distill, terms = self.method_terms(adversarial, teacher, batch)
        loss = (1 - self.alpha) * self.run.active_task_weight * ce + self.alpha * distill
        return loss, {"ce": ce, **terms}, task_logits

    def extra_metrics(self, test, batch_size):
        if not self.eval_steps or not self.attacks:
            return {}
        result = robust_accuracy(self.student, test, self.space, epsilon=self.epsilon,
                                 step_size=self.step_size, steps=self.eval_steps, batch_size=batch_size,
                                 random_start=self.random_start, seed=0)
        return {"robust_acc": result["robust_acc"]}

    def describe(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "step_size": self.step_size, "steps": self.steps,
                "alpha": self.alpha, "random_start": self.random_start, "eval_steps": self.eval_steps,
                "task_input": self.task_input}
