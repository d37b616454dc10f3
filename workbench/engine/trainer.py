"""The training loop: ``Run``. Loss = task_weight * CE + sum of each method's weight * its terms.

A ``Run`` is built by :func:`workbench.train` or :func:`workbench.distill` and does nothing until
``fit()`` (blocking) or ``start()`` (a background thread, so widgets stay responsive). ``pause()``,
``resume()`` and ``stop()`` act at step boundaries; so do changes to hyper-parameters.

Speed: loss terms are summed on the device and read to the host once every ``log_every`` steps;
nothing in the step calls ``.item()``.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import probes
from ..data.bundle import Batch, DataBundle
from ..methods.base import Method, check_hparam
from ..schemes.base import Scheme
from .persistence import Persistence
from . import distributed
from .config import RunConfig
from .events import Callback, FunctionCallback, ProgressBar


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, then Apple MPS, then CPU; otherwise the named device."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} was asked for but CUDA is not available here; "
                               "use device='auto' or 'cpu'")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Run(Persistence):
    """One training or distillation run: models, data, methods, config, state and controls."""

    def __init__(self, student: nn.Module, data: DataBundle, config: RunConfig, *,
                 teacher: nn.Module | None = None, methods: dict[str, Method] | None = None,
                 scheme: Scheme | None = None,
                 callbacks: Iterable[Callback] = (), store: Any = "default", reuse: bool = True,
                 resume: bool = True, progress: bool = True, label: str | None = None):
        self.student, self.teacher, self.data, self.config = student, teacher, data, config
        self.methods: dict[str, Method] = dict(methods or {})
        self.callbacks: list[Callback] = list(callbacks)
        if progress:
            self.callbacks.append(ProgressBar())
        if store == "default":
            from ..store import RunStore
            store = RunStore()
        self.store = store
        self.reuse, self.resume_ok = reuse, resume
        self.label = label or _default_label(config)
        self.device = pick_device(config.device)
        self.run_id: str | None = None
        self.status = "created"
        self.step = self.epoch = 0
        self.history: list[dict[str, float]] = []     # telemetry rows, appended every log_every
        self.evals: list[dict[str, float]] = []       # one row per evaluation
        self.result: dict[str, float] = {}            # the last evaluation
        self.error: BaseException | None = None
        self.live_changes: list[dict[str, float]] = []  # hyper-parameters changed while running
        self._task_weight = config.task_weight
        self._pending_task_weight: float | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread: threading.Thread | None = None
        self._rows: list[tuple[int, int, str, float]] = []
        self._teacher_test_logits: torch.Tensor | None = None
        n_train = len(data.train)
        if n_train == 0:
            raise ValueError(f"the training split of {data.name!r} is empty; nothing to train on")
        if config.batch_size > n_train:
            raise ValueError(f"batch_size={config.batch_size} is larger than the {n_train} training "
                             f"samples of {data.name!r}; use batch_size <= {n_train}")
        for name, method in self.methods.items():  # e.g. in-batch relations need several samples
            least = getattr(method, "min_batch_size", 1)
            if config.batch_size < least:
                raise ValueError(f"method {name!r} needs batches of at least {least} samples, got "
                                 f"batch_size={config.batch_size}; use batch_size >= {least}")
        if scheme is None:
            from ..schemes.offline import Offline
            scheme = Offline()
        _check_compatible(student, teacher, data, scheme)
        self.scheme = scheme
        scheme.attach(self)  # freezes an offline teacher; checks every method's taps

    # -- controls ----------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.config.batch_size

    @property
    def active_task_weight(self) -> float:
        """The task weight the current step uses (a live change waits for the next step)."""
        return self._task_weight

    @property
    def task_weight(self) -> float:
        return self._task_weight if self._pending_task_weight is None else self._pending_task_weight

    @task_weight.setter
    def task_weight(self, value: float) -> None:
        self._pending_task_weight = check_hparam("Run", "task_weight", value, "nonnegative")

    def on(self, event: str, fn) -> "Run":
        """Call ``fn(run, payload)`` on ``event``; returns the run for chaining."""
        self.callbacks.append(FunctionCallback(event, fn))
        return self

    def start(self) -> "Run":
        """Train in a background thread; the kernel stays free for widgets. See :meth:`join`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"run {self.label!r} is already running")
        self._thread = threading.Thread(target=self._fit_in_thread, name=f"kdwb-{self.label}",
                                        daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> "Run":
        """Wait for a background run; re-raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        """Ask the run to end at the next step boundary (a paused run ends too)."""
        self._stop.set()
        self._running.set()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- running -----------------------------------------------------------------------------
    def _fit_in_thread(self) -> None:
        try:
            self.fit()
        except BaseException as error:  # kept for join(); fit() already marked the store
            self.error = error

    def fit(self) -> "Run":
        """Train until the last epoch, a stop request, or an error; return the run."""
        self._stop.clear()
        if self._reuse_finished():
            self._emit("run_end", self.status)  # views attached to the run draw its stored history
            return self
        self._prepare()
        try:
            self._emit("run_start")
            self._loop()
            self.status = "interrupted" if self._stop.is_set() and self.epoch < self.config.epochs \
                else "finished"
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        except BaseException as error:
            self.status, self.error = "failed", error
            raise
        finally:
            self._finish()
        return self

    def _prepare(self) -> None:
        """Place models, build connectors on a first batch, the optimiser, and resume if asked."""
        torch.manual_seed(self.config.seed)
        distributed.setup(self)  # device, GPU settings, ranks (rank 0 alone writes the store)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.scheme.to(self.device)
        self._autocast = self.config.amp and self.device.type == "cuda"  # bf16 on GPUs only
        first = self.scheme.first_batch(self.config.batch_size)
        with self._precision():  # as in training: a first forward needs no more memory than a step
            self.scheme.prepare(first.to(self.device))
        self.scheme.to(self.device)  # connectors built from the first batch
        self._params = list(self.scheme.parameters())
        self.optimizer = _optimizer(self.config, self._params)
        total = max(self.total_steps, 1)
        schedule = (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))) \
            if self.config.schedule == "cosine" else (lambda s: 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self._open_store_run()
        self._step_fn = distributed.finish_setup(self)  # compile, rank 0's state on all ranks, DDP

    def _loop(self) -> None:
        cfg = self.config
        self._start_telemetry()
        for method in self.methods.values():
            method.set_live(True)
        while self.epoch < cfg.epochs:
            self.scheme.train()
            order = torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch)
            for batch in self.scheme.batches(order):  # this rank's shard, on the device
                if not self._running.is_set():
                    self._running.wait()
                if self._stop.is_set():
                    return
                self._apply_pending()
                self._train_step(batch)
                self.step += 1
                metrics = self._read_telemetry() if self.step % cfg.log_every == 0 else None
                self._emit("step_end", metrics)
            self.epoch += 1
            last = self.epoch == cfg.epochs
            evaluate = last or self.epoch % cfg.eval_every == 0
            checkpoint = last or self.epoch % cfg.checkpoint_every == 0
            if self._pending_rows and (evaluate or checkpoint):
                self._read_telemetry()  # also the non-finite check: never save a NaN checkpoint
            if evaluate:
                self.evaluate()
            if checkpoint:
                self._checkpoint()
            self._emit("epoch_end", self.epoch)

    def _apply_pending(self) -> None:
        """Apply live hyper-parameter changes at this step boundary, and record them."""
        changes = {f"{name}.{key}": value for name, method in self.methods.items()
                   for key, value in method.apply_pending().items()}
        if self._pending_task_weight is not None:
            self._task_weight, self._pending_task_weight = self._pending_task_weight, None
            changes["task_weight"] = self._task_weight
        if changes:
            self.live_changes.append({"step": self.step, **changes})
            self._log_rows({f"live.{key}": value for key, value in changes.items()})

    def _precision(self):
        """bf16 autocast on a GPU when ``amp`` (training, the first batch and evaluation alike),
        else nothing. On the run's device type, so a benchmark can switch it on for the CPU."""
        if getattr(self, "_autocast", False):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self, batch: Batch) -> None:
        with self._precision():
            loss, terms, logits = self._step_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:  # the norm stays on the device: no host sync
            torch.nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self._record_telemetry(loss, terms, logits, batch)

    def _start_telemetry(self) -> None:
        """No rows yet: each step adds (loss, each term, predictions, labels) on the device; the
        next read stacks, sums and checks them for non-finite values."""
        self._pending_rows: list[tuple[torch.Tensor, ...]] = []
        self._names: list[str] = []

    def _record_telemetry(self, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                          logits: torch.Tensor, batch: Batch) -> None:
        if not self._names:
            self._names = ["loss", *terms, "train_acc"]
        # one device op (the predictions; an argmax keeps no graph): the row is compared,
        # stacked and checked at the next read, so the first step at which each term went bad
        # is still known then, and nothing here waits for the device
        self._pending_rows.append((loss.detach(), *(v.detach() for v in terms.values()),
                                   logits.argmax(1), batch.y))

    def _read_telemetry(self) -> dict[str, float]:
        """One host read of the rows since the last read; raise on a non-finite term."""
        pending, self._pending_rows = self._pending_rows, []
        count = len(pending)
        # one stack for all terms (bf16 terms promote); the correct predictions of every step in
        # one comparison, summed per step (batches may differ in size: shapes are known here)
        terms = torch.stack([value for row in pending for value in row[:-2]]).float().view(count, -1)
        hits = (torch.cat([row[-2] for row in pending]) == torch.cat([row[-1] for row in pending])).float()
        sizes = [len(row[-1]) for row in pending]
        if len(set(sizes)) == 1:  # the usual case (drop_last): one sum, no index copied to the device
            correct = hits.view(count, sizes[0]).sum(1)
        else:
            step_of = torch.repeat_interleave(torch.arange(count, device=hits.device),
                                              torch.tensor(sizes, device=hits.device))
            correct = hits.new_zeros(count).index_add_(0, step_of, hits)
        rows = torch.cat([terms, correct[:, None]], dim=1)  # (count, terms + 1)
        distributed.all_reduce_telemetry(self, rows)  # averaged over ranks under torchrun
        finite = torch.isfinite(rows)
        first_row = torch.where(finite.all(0), -1.0, (~finite).float().argmax(0).float())
        values = torch.cat([rows.sum(0), first_row]).tolist()
        sums, first_rows = values[:len(self._names)], values[len(self._names):]
        bad = [(self.step - count + row, name) for name, row in zip(self._names, first_rows) if row >= 0]
        # name the term that went bad (not the total it poisoned), the earliest first
        bad.sort(key=lambda item: (item[0], item[1] == "loss"))
        if bad:
            step, name = bad[0]
            raise NonFiniteLossError(
                f"loss term {name!r} became non-finite at step {int(step)} (in epoch "
                f"{int(step) // max(self.steps_per_epoch, 1) + 1}, counting from 1); "
                "the run stopped and its last good checkpoint is kept. Lower the learning rate, "
                "check the method's hyper-parameters, or clip gradients (grad_clip=...).")
        row = {name: value / count for name, value in zip(self._names, sums)}
        row["train_acc"] = sums[-1] / (count * self.config.batch_size)
        row.update(step=self.step, epoch=self.epoch, lr=self.optimizer.param_groups[0]["lr"])
        self.history.append(row)
        self._log_rows(row)
        return row

    @torch.no_grad()
    def evaluate(self, batch_size: int | None = None) -> dict[str, float]:
        """Test accuracy, loss and calibration of the student; agreement with the teacher.

        ``batch_size`` defaults to the training batch size, so that evaluating never needs more
        memory than a training step (its forward passes keep no activations for a backward)."""
        batch_size = batch_size or self.config.batch_size
        test = self.data.test
        was_training = self.student.training
        self.student.eval()
        with self._precision():  # in the training's precision: no more memory than a step needs
            logits = torch.cat([self.student(b.x.to(self.device)).float().cpu()
                                for b in test.batches(batch_size)])
        self.student.train(was_training)
        metrics = {"step": self.step, "epoch": self.epoch,
                   "test_acc": probes.accuracy(logits, test.y),
                   "test_loss": F.cross_entropy(logits, test.y).item(),
                   "ece": probes.expected_calibration_error(logits, test.y)}
        if self.teacher is not None:
            if self._teacher_test_logits is None:  # the frozen teacher's answers never change
                with self._precision():
                    self._teacher_test_logits = torch.cat(
                        [self.teacher(self.scheme.teacher_input(b.to(self.device))).float().cpu()
                         for b in test.batches(batch_size)])
            metrics["teacher_acc"] = probes.accuracy(self._teacher_test_logits, test.y)
            metrics["agreement"] = probes.agreement(logits, self._teacher_test_logits)
        metrics.update(self.scheme.extra_metrics(test, batch_size))
        self.evals.append(metrics)
        self.result = {k: v for k, v in metrics.items() if k not in ("step", "epoch")}
        self._log_rows(metrics)
        self._emit("eval_end", metrics)
        return metrics

    def _emit(self, event: str, payload: Any = None) -> None:
        for callback in self.callbacks:
            hook = getattr(callback, f"on_{event}")
            hook(self) if event == "run_start" else hook(self, payload)

    def _finish(self) -> None:
        for method in self.methods.values():
            method.set_live(False)
        self.scheme.close()
        distributed.teardown(self)
        if self.store is not None:
            self._flush_rows()
            self.store.update_run(self.run_id, status=self.status, finished=time.time(),
                                  duration_s=time.time() - self._started, steps=self.step,
                                  result=self.result, error=None if self.error is None else str(self.error))
            if self.live_changes and self.status == "finished":
                # its numbers no longer follow from its config: never reuse it for that config
                self.store.update_run(self.run_id, config_hash=f"{self.config.hash()}+live")
        self._emit("run_end", self.status)

    def __repr__(self) -> str:
        return f"Run({self.label!r}, status={self.status}, epoch={self.epoch}/{self.config.epochs}, step={self.step})"


def _optimizer(config: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The configured optimiser, with PyTorch's fused kernel where this PyTorch has one.

    A fused step updates every parameter in one kernel instead of several operations per parameter
    (PyTorch's default on the CPU). ``benchmarks/optimizer_step.py`` measured SGD's step on the
    mlp student at 102 instead of 226 µs, about a twentieth of its whole training step, and
    ``benchmarks/step_ab.py`` a step dispatching 283 instead of 336 operators. It computes the same
    update; the results differ from the per-parameter loop by float rounding only.
    """
    if config.optimizer == "sgd":
        cls, options = torch.optim.SGD, dict(lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    else:
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        options = dict(lr=config.lr, weight_decay=config.weight_decay)
    if all(p.dtype.is_floating_point and not p.is_sparse for p in params):
        try:
            return cls(params, fused=True, **options)
        except (TypeError, RuntimeError):  # a PyTorch without the argument, or without the kernel here
            pass
    return cls(params, **options)


def _check_compatible(student: nn.Module, teacher: nn.Module | None, data: DataBundle,
                      scheme: Scheme) -> None:
    """Catch model/data mismatches before training, with one clear message each."""
    # data-free schemes never read the training split: probe with test samples instead
    split = data.train if scheme.reads_training_data else data.test
    probe = split.batch(torch.arange(min(2, len(split))))
    for role, model in (("student", student), ("teacher", teacher)):
        if model is None:
            continue
        was_training = model.training
        model.eval()
        inputs = probe.x if role == "student" else scheme.teacher_input(probe)
        try:
            with torch.no_grad():
                logits = model(inputs.to(next(model.parameters()).device))
        except RuntimeError as error:
            raise ValueError(f"the {role} {type(model).__name__} cannot take {data.name} inputs of "
                             f"shape {tuple(inputs.shape[1:])}: {error}") from None
        finally:
            model.train(was_training)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.shape[-1] != data.num_classes:
            raise ValueError(f"the {role} {type(model).__name__} has {logits.shape[-1]} outputs but "
                             f"{data.name} has {data.num_classes} classes; build it with "
                             f"num_classes={data.num_classes}")


def _default_label(config: RunConfig) -> str:
    name = config.student.get("name", "model")
    return f"{name}:{'+'.join(config.methods) or 'ce'}" if config.kind == "distill" else f"{name}:train"
