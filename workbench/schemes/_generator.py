"""What the data-free schemes share: the image generator and the scheme that trains it.

Data-free distillation (survey chapter 3.2, "adversarial") replaces the training images by the
samples of a generator G that is trained *against the frozen teacher* while the student learns
from the teacher on G's samples. Two schemes build on this module:

- ``dafl`` (Chen et al., ICCV 2019): G makes images the teacher classifies confidently, with
  strong features and balanced classes (:mod:`workbench.schemes.dafl`);
- ``zskt`` (Micaelli & Storkey, NeurIPS 2019): G makes images on which student and teacher
  disagree most (:mod:`workbench.schemes.zskt`).

**The generator** (:class:`Generator`) is the DCGAN-style network both papers use (the same layers
in both official repositories): z (B, latent) -> Linear -> (128, H/4, W/4) -> BN -> upsample x2
-> conv3x3 128 -> BN -> LeakyReLU(0.2) -> upsample x2 -> conv3x3 64 -> BN -> LeakyReLU(0.2)
-> conv3x3 C -> [tanh] -> BN(affine=False). The last batch norm standardises every batch of
images per channel, as the teachers' (normalised) training images were. Any (C, H, W) works: the
first map is ceil(H/4) x ceil(W/4) and the second upsampling lands on (H, W) exactly.

**The scheme** (:class:`DataFreeScheme`) never reads the training split
(``reads_training_data = False``; ``wb.data.seal_training_data`` proves it): an epoch is
``len(data.train) // batch_size`` batches of latent codes z ~ N(0, I) drawn from the epoch's
seeded generator (``Batch.x`` is z (B, latent_dim); the images are made inside ``step``, where G
needs gradients). ``step`` fills ``batch.y`` with the teacher's answers on the generated images,
so the run's ``train_acc`` is the student's agreement with the teacher on them; there are no
labels, so the run's ``task_weight`` is not used.

G has its **own Adam optimiser** (the papers' learning rates for G differ from the student's),
stepped inside ``step``: the loss ``step`` returns reaches only the student and the methods'
connectors (G's images are detached there), so the run's optimiser never moves G (PyTorch's
optimisers skip parameters without a gradient). G's learning rate follows the run's schedule
(``generator_lr`` times the run's current lr / its base lr: the cosine decay of ZSKT's code by
default). G's weights and batch-norm statistics are in the scheme's ``state_dict``, its
optimiser's state in the module's extra state (``get_extra_state``), so a resumed run equals an
uninterrupted one. Gradients of G's loss flow *through* the frozen teacher into the images: the
teacher runs with autograd on there (its parameters still require no gradient and get none).
Distributed (torchrun) runs are not supported: each rank would train its own G.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data.bundle import Batch
from ..taps import Outputs, expand_taps
from ._cohort import derived_seed
from .base import Scheme
from .offline import freeze


class Generator(nn.Module):
    """DCGAN-style generator of DAFL and ZSKT: z (B, latent_dim) -> images (B, C, H, W).

    ``width``: channels of the first map (128 in both papers; the second conv has width / 2);
    ``bn_eps``: eps of the two inner batch norms (DAFL's code passes 0.8 there, ZSKT's the default
    1e-5); ``tanh``: a tanh before the last, non-affine batch norm (DAFL: yes, ZSKT: no).
    """

    def __init__(self, latent_dim: int = 100, out_shape: tuple[int, int, int] = (1, 8, 8),
                 width: int = 128, bn_eps: float = 1e-5, tanh: bool = False):
        super().__init__()
        if len(tuple(out_shape)) != 3:
            raise ValueError(f"the generator makes images (C, H, W); got out_shape={tuple(out_shape)!r}")
        channels, height, width_px = (int(v) for v in out_shape)
        self.latent_dim, self.out_shape = int(latent_dim), (channels, height, width_px)
        self.mid = (math.ceil(height / 2), math.ceil(width_px / 2))     # after the first upsampling
        self.init = (math.ceil(height / 4), math.ceil(width_px / 4))    # the first map
        self.width = int(width)
        self.project = nn.Linear(self.latent_dim, self.width * self.init[0] * self.init[1])
        self.bn0 = nn.BatchNorm2d(self.width)
        self.block1 = nn.Sequential(nn.Conv2d(self.width, self.width, 3, padding=1),
                                    nn.BatchNorm2d(self.width, eps=bn_eps), nn.LeakyReLU(0.2))
        half = max(self.width // 2, 1)
        self.block2 = nn.Sequential(nn.Conv2d(self.width, half, 3, padding=1),
                                    nn.BatchNorm2d(half, eps=bn_eps), nn.LeakyReLU(0.2),
                                    nn.Conv2d(half, channels, 3, padding=1))
        self.squash = nn.Tanh() if tanh else nn.Identity()
        self.out_norm = nn.BatchNorm2d(channels, affine=False)   # standardised images

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z.flatten(1)).view(-1, self.width, *self.init)     # (B, width, H/4, W/4)
        x = F.interpolate(self.bn0(x), size=self.mid)                       # (B, width, H/2, W/2)
        x = F.interpolate(self.block1(x), size=self.out_shape[1:])          # (B, width, H, W)
        return self.out_norm(self.squash(self.block2(x)))                   # (B, C, H, W)


def check_number(owner: str, name: str, value: Any, rule: str) -> float:
    """A scheme argument as a float, or a ValueError/TypeError naming it and its value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    number = float(value)
    ok = math.isfinite(number) and (number > 0 if rule == "positive" else number >= 0)
    if not ok:
        raise ValueError(f"{owner}: {name}={value!r} is not valid; it must be a finite number "
                         + ("> 0" if rule == "positive" else ">= 0"))
    return number


def check_count(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name}={value!r} is not valid; it must be a positive integer")
    return int(value)


class DataFreeScheme(Scheme):
    """Base of the data-free schemes: a generator G trained against a frozen teacher.

    Subclasses implement ``step`` with :meth:`generate`, :meth:`teacher_with_grad` and
    :meth:`generator_step`, and list their constructor arguments in ``describe``.
    """

    needs_teacher = True
    reads_training_data = False
    #: the generator's architecture knobs (set by subclasses)
    generator_bn_eps: float = 1e-5
    generator_tanh: bool = False

    def __init__(self, latent_dim: int = 100, generator_lr: float = 1e-3, generator_width: int = 128,
                 generator_clip: float | None = None):
        super().__init__()
        self.latent_dim = check_count(self.name, "latent_dim", latent_dim)
        self.generator_lr = check_number(self.name, "generator_lr", generator_lr, "positive")
        self.generator_width = check_count(self.name, "generator_width", generator_width)
        self.generator_clip = None if generator_clip is None else \
            check_number(self.name, "generator_clip", generator_clip, "positive")
        self.generator_optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict | None = None

    # -- set-up --------------------------------------------------------------------------------
    def attach(self, run) -> None:
        if run.teacher is not None:
            freeze(run.teacher)   # eval mode, no gradients: G's losses cannot change the teacher
        super().attach(run)
        shape = tuple(run.data.input_shape)
        if len(shape) != 3:
            raise ValueError(f"{self.name}: the generator makes images (C, H, W), but {run.data.name!r} "
                             f"has inputs of shape {shape}")
        # G's initial weights: seeded from (scheme, run seed), the global RNG untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.name, "generator", run.config.seed))
            self.generator = Generator(self.latent_dim, shape, self.generator_width,
                                       bn_eps=self.generator_bn_eps, tanh=self.generator_tanh)

    def extra_teacher_taps(self) -> list[str]:
        """Teacher taps the generator's loss needs beyond the methods' (DAFL: the embedding)."""
        return []

    def prepare(self, first: Batch) -> None:
        settings = getattr(self.run, "settings", None)
        if settings is not None and settings.world > 1:
            raise NotImplementedError(f"{self.name}: data-free schemes do not run under torchrun "
                                      "(each rank would train its own generator); use one process")
        student_taps = [t for m in self.methods.values() for t in m.student_taps]
        teacher_taps = [t for m in self.methods.values() for t in m.teacher_taps]
        self.student_taps = self.recorder(self.student, student_taps)
        self.teacher_taps = self.recorder(self.teacher, [*teacher_taps, *self.extra_teacher_taps()])
        with torch.no_grad():
            student, teacher = self.student_taps(first.x), self.teacher_taps(first.x)
        for method in self.methods.values():
            method.setup(student, teacher)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.generator_lr)
        if self._pending_optimizer_state is not None:
            self.generator_optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None
        self._cycle: tuple[torch.Tensor, Outputs, torch.Tensor] | None = None   # ZSKT's cycle

    def first_batch(self, size: int) -> Batch:
        """Generated images (G in eval mode, its statistics untouched, z from a seeded generator)
        labelled with the teacher's answers: the shapes connectors are built from."""
        device = next(self.generator.parameters()).device
        seed = derived_seed(self.name, "first", self.run.config.seed)
        z = torch.randn(size, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                images = self.generate(z.to(device))
                teacher_device = next(self.teacher.parameters()).device
                labels = self.teacher(images.to(teacher_device)).argmax(1).to(device)
        finally:
            self.generator.train(was_training)
        return Batch(images, labels, torch.arange(size))

    def latent_batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(size, self.latent_dim, generator=generator)

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch: ``len(data.train) // batch_size`` batches of latent codes z (B, latent_dim),
        drawn from ``generator`` (seeded per epoch by the run), on the run's device. ``y`` is a
        placeholder that ``step`` replaces by the teacher's answers."""
        size = self.run.config.batch_size
        device = self.run.device
        for i in range(self.run.steps_per_epoch):
            z = self.latent_batch(size, generator)
            yield Batch(z.to(device), torch.zeros(size, dtype=torch.long, device=device),
                        torch.arange(i * size, (i + 1) * size))

    # -- the pieces of a step ------------------------------------------------------------------
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G's images for latent codes z (B, latent_dim): (B, C, H, W), with gradients to G."""
        return self.generator(z)

    def teacher_with_grad(self, images: torch.Tensor) -> Outputs:
        """The frozen teacher's outputs on ``images`` with autograd on, so a loss on them sends
        gradients into the images (and G); the teacher's own parameters require none."""
        with torch.enable_grad():
            return self.teacher_taps(images)

    def generator_lr_now(self) -> float:
        """``generator_lr`` scaled as the run's schedule scales the student's lr at this step."""
        base = self.run.config.lr
        return self.generator_lr * self.run.optimizer.param_groups[0]["lr"] / base

    def generator_step(self, loss: torch.Tensor) -> None:
        """One update of G on ``loss`` with its own optimiser; nothing else gets a gradient."""
        params = list(self.generator.parameters())
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        if self.generator_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.generator_clip)
        for group in self.generator_optimizer.param_groups:
            group["lr"] = self.generator_lr_now()
        self.generator_optimizer.step()
        self.generator_optimizer.zero_grad(set_to_none=True)

    def label(self, batch: Batch, teacher_logits: torch.Tensor) -> None:
        """The batch's labels become the teacher's answers (the run's train_acc = agreement)."""
        batch.y = teacher_logits.detach().argmax(1)

    # -- sampling, state -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` images of G (B, C, H, W) on the CPU, made as in training (batch statistics) but
        leaving G's running statistics untouched; for figures."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        device = next(self.generator.parameters()).device
        buffers = {k: v.clone() for k, v in self.generator.state_dict().items()
                   if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        was_training = self.generator.training
        self.generator.train()
        try:
            images = self.generate(z.to(device)).float().cpu()
        finally:
            self.generator.load_state_dict(buffers, strict=False)
            self.generator.train(was_training)
        return images

    def get_extra_state(self) -> dict[str, Any]:
        if self.generator_optimizer is None:
            return {"generator_optimizer": self._pending_optimizer_state}
        return {"generator_optimizer": self.generator_optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("generator_optimizer")
        if saved is None:
            return
        if self.generator_optimizer is None:
            self._pending_optimizer_state = saved      # loaded when prepare builds the optimiser
        else:
            self.generator_optimizer.load_state_dict(saved)

    def generator_describe(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "generator_lr": self.generator_lr,
                "generator_width": self.generator_width, "generator_clip": self.generator_clip}


def expand_teacher_tap(teacher: nn.Module, tap: str) -> str:
    """One concrete tap name of ``teacher`` for ``tap`` (a symbolic name must give exactly one)."""
    names = expand_taps(teacher, [tap])
    if len(names) != 1:
        raise ValueError(f"tap {tap!r} names {len(names)} taps of {type(teacher).__name__} "
                         f"({', '.join(names)}); give one")
    return names[0]
