"""CTKD: Li, Li, Yang, Zhang, Wang, Yang & Zhang, "Curriculum Temperature for Knowledge
Distillation", AAAI 2023.

arXiv 2211.16231, https://arxiv.org/abs/2211.16231 (code: github.com/zhengli97/CTKD)

KD's temperature tau is not fixed but learned, and learned *adversarially*: the student minimises
the distillation loss while the temperature module theta_temp maximises it (eq. 5-6),

    min_{theta_stu} max_{theta_temp}  L(theta_stu, theta_temp)
        = T^2 * KL( softmax(v / tau) || softmax(z / tau) ),   tau = tau(theta_temp)

with z the student's and v the teacher's logits. One optimiser step does both: the temperature
reaches the loss through a gradient reversal layer (GRL, Ganin & Lempitsky 2015), the identity
forward whose backward multiplies the gradient by -lambda, so descending on theta_temp ascends
the loss. lambda grows from lambda_min to lambda_max by a cosine curriculum over the first E
loops (eq. 8), from an easy task (the temperature barely resists) to a hard one:

    lambda_n = lambda_min + 1/2 (lambda_max - lambda_min) (1 + cos((1 + min(n, E) / E) * pi))

The global temperature (the paper's "Global-T") is one learnable scalar theta mapped into a valid
range as in the authors' code: tau = tau_min + tau_range * sigmoid(theta), with tau_min = 1 and
tau_range = 20 (``--t_start 1 --t_end 20``) and theta initialised to 1 (``nn.Parameter(torch.ones(1))``),
so tau starts at 1 + 20 * sigmoid(1) ~= 15.62. The authors' script uses lambda from 0 to 1 over
E = 10 epochs (``--decay_min -1 --decay_max 0 --decay_loops 10``: their GRL multiplies by the
negative cosine value), the loss weights 0.9 (KD) and 0.1 (cross-entropy: ``task_weight=0.1`` of
the run), and trains the temperature with the student's SGD optimiser (weight decay included).

Here the curriculum counts *training steps* (a method does not see epochs): ``curriculum_steps``
defaults to 10 epochs of CIFAR-100 at batch 64 (10 x 781 steps); set it to 10 epochs of your own
data. The step counter is a buffer, saved in checkpoints, so a resumed run continues the
curriculum exactly. The paper's instance-wise temperature (an MLP on the logits) is not
implemented; the global one is the variant of the paper's main tables.

The current temperature is not returned as a loss term (every term is multiplied by ``weight`` and
added to the loss): read it with :meth:`CTKD.current_temperature`, or attach
:class:`TemperatureTrace` to a run, which records it at every telemetry read and adds
``"<name>.temperature"`` to the run's history rows.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...engine.events import Callback
from ..base import Method, register_method
from ..logit.kd import kd_loss


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by -lambda."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(strength)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (strength,) = ctx.saved_tensors
        return -strength.to(grad.dtype) * grad, None


def reverse_gradient(x: torch.Tensor, strength: torch.Tensor | float) -> torch.Tensor:
    """GRL(x): x forward, -strength * grad backward (``strength`` a float or a 0-d tensor)."""
    return GradientReversal.apply(x, torch.as_tensor(strength, dtype=x.dtype, device=x.device))


def curriculum_lambda(step, lambda_min: float, lambda_max: float, steps: float):
    """Eq. 8: cosine from lambda_min (step 0) to lambda_max (step >= ``steps``), then constant.

    ``step`` may be a number or a tensor (then the result is a tensor on its device, no host sync).
    """
    if isinstance(step, torch.Tensor):
        progress = step.to(torch.float32).clamp(max=steps) / steps
        return lambda_min + 0.5 * (lambda_max - lambda_min) * (1 + torch.cos((1 + progress) * math.pi))
    progress = min(step, steps) / steps
    return lambda_min + 0.5 * (lambda_max - lambda_min) * (1 + math.cos((1 + progress) * math.pi))


def bounded_temperature(theta: torch.Tensor, min_temperature: float, temperature_range: float) -> torch.Tensor:
    """tau = tau_min + tau_range * sigmoid(theta): always in (tau_min, tau_min + tau_range)."""
    return min_temperature + temperature_range * torch.sigmoid(theta)


def ctkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, theta: torch.Tensor,
              strength: torch.Tensor | float, min_temperature: float = 1.0,
              temperature_range: float = 20.0) -> torch.Tensor:
    """T^2 KL(softmax(v/tau) || softmax(z/tau)) with tau = tau(GRL(theta)): the KD loss at the
    learned temperature; theta's gradient is reversed and scaled by ``strength`` (lambda).
    Logits: (B, K); theta: a 0-d parameter."""
    temperature = bounded_temperature(reverse_gradient(theta, strength), min_temperature, temperature_range)
    return kd_loss(student_logits, teacher_logits, temperature)


#: the authors' initial temperature: theta = 1 mapped by 1 + 20 * sigmoid(theta)
OFFICIAL_INITIAL_TEMPERATURE = 1.0 + 20.0 / (1.0 + math.exp(-1.0))


@register_method("ctkd", category="adaptive", paper="Curriculum Temperature for Knowledge Distillation",
                 venue="AAAI", year=2023, link="https://arxiv.org/abs/2211.16231", notebook="35_adaptive")
class CTKD(Method):
    """KD at a global temperature learned adversarially through a gradient reversal layer.

    ``initial_temperature`` is used once, at construction (theta = logit of its place in the
    range); ``min_temperature`` / ``temperature_range`` bound tau; ``lambda_min`` / ``lambda_max`` /
    ``curriculum_steps`` set the reversal strength's cosine curriculum; ``weight`` is the KD weight
    (0.9 in the paper, with the run's ``task_weight=0.1`` on the cross-entropy).
    """

    constraints = {"weight": "nonnegative", "initial_temperature": "positive",
                   "min_temperature": "positive", "temperature_range": "positive",
                   "lambda_min": "nonnegative", "lambda_max": "nonnegative", "curriculum_steps": "positive"}

    def __init__(self, initial_temperature: float = OFFICIAL_INITIAL_TEMPERATURE,
                 min_temperature: float = 1.0, temperature_range: float = 20.0,
                 lambda_min: float = 0.0, lambda_max: float = 1.0, curriculum_steps: float = 7810,
                 weight: float = 0.9):
        super().__init__(weight=weight)
        self.initial_temperature, self.min_temperature = initial_temperature, min_temperature
        self.temperature_range = temperature_range
        self.lambda_min, self.lambda_max, self.curriculum_steps = lambda_min, lambda_max, curriculum_steps
        if lambda_min > lambda_max:
            raise ValueError(f"CTKD: lambda_min={lambda_min!r} is above lambda_max={lambda_max!r}; "
                             "the curriculum goes from lambda_min up to lambda_max")
        share = (self.initial_temperature - self.min_temperature) / self.temperature_range
        if not 0.0 < share < 1.0:
            raise ValueError(f"CTKD: initial_temperature={initial_temperature!r} is outside the open range "
                             f"({self.min_temperature:g}, {self.min_temperature + self.temperature_range:g}) "
                             "set by min_temperature and temperature_range")
        # theta such that tau(theta) = initial_temperature; trained by the run's optimiser
        self.theta = nn.Parameter(torch.tensor(math.log(share / (1.0 - share))))
        # training steps seen: drives the curriculum; a buffer, so checkpoints and resume keep it
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> torch.Tensor:
        """The reversal strength of the next training step (a 0-d tensor on the method's device)."""
        return curriculum_lambda(self.steps_done, self.lambda_min, self.lambda_max, self.curriculum_steps)

    def current_temperature(self) -> torch.Tensor:
        """The temperature the next step uses (detached, 0-d)."""
        return bounded_temperature(self.theta.detach(), self.min_temperature, self.temperature_range)

    def forward(self, student, teacher, batch):
        strength = self.current_lambda()
        if self.training and torch.is_grad_enabled():  # a training step (not a probe, not setup)
            self.steps_done.add_(1)
        return {"kl": ctkd_loss(student.logits, teacher.logits, self.theta, strength,
                                self.min_temperature, self.temperature_range)}


class TemperatureTrace(Callback):
    """Records a CTKD method's temperature and lambda at every telemetry read of a run.

    ``steps``, ``temperatures``, ``lambdas``: host lists, one entry per read (every ``log_every``
    steps: the same rate as the loss terms, so no extra host syncs). Each read's row in
    ``run.history`` also gets ``"<name>.temperature"`` and ``"<name>.lambda"``, so a run reused from
    the store (whose history comes from its checkpoint) still has them; for such a run the trace
    fills itself from that history at ``run_end``.
    """

    def __init__(self, name: str = "ctkd"):
        self.name = name
        self.steps: list[int] = []
        self.temperatures: list[float] = []
        self.lambdas: list[float] = []

    def _method(self, run) -> CTKD:
        method = run.methods.get(self.name)
        if not isinstance(method, CTKD):
            raise ValueError(f"TemperatureTrace: the run has no CTKD method named {self.name!r}; "
                             f"its methods are {sorted(run.methods)}")
        return method

    def on_run_start(self, run):
        self._method(run)

    def on_step_end(self, run, metrics):
        if metrics is None:
            return
        method = self._method(run)
        # lambda of the step just taken: the counter has moved on by one
        temperature, strength = torch.stack([
            method.current_temperature().float(),
            curriculum_lambda(method.steps_done - 1, method.lambda_min, method.lambda_max,
                              method.curriculum_steps).float()]).tolist()
        metrics[f"{self.name}.temperature"], metrics[f"{self.name}.lambda"] = temperature, strength
        self.steps.append(run.step)
        self.temperatures.append(temperature)
        self.lambdas.append(strength)

    def on_run_end(self, run, status):
        if self.steps:
            return
        key = f"{self.name}.temperature"
        rows = [row for row in run.history if key in row]
        self.steps = [int(row["step"]) for row in rows]
        self.temperatures = [row[key] for row in rows]
        self.lambdas = [row[f"{self.name}.lambda"] for row in rows]
