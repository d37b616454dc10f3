"""Events a run emits, the callback interface, and the tqdm progress bar.

Events, in order: ``run_start``; per step ``step_end`` (``metrics`` is a dict of host floats
only every ``log_every`` steps, else ``None``: the trainer never syncs with the device per step);
per evaluation ``eval_end``; per epoch ``epoch_end``; ``run_end`` (with the final status).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .trainer import Run

EVENTS = ("run_start", "step_end", "eval_end", "epoch_end", "run_end")


class Callback:
    """Override the hooks you need; each receives the run and the event's payload."""

    def on_run_start(self, run: "Run") -> None: ...
    def on_step_end(self, run: "Run", metrics: dict[str, float] | None) -> None: ...
    def on_eval_end(self, run: "Run", metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, run: "Run", epoch: int) -> None: ...
    def on_run_end(self, run: "Run", status: str) -> None: ...


class FunctionCallback(Callback):
    """Adapts a plain function ``fn(run, payload)`` to one event."""

    def __init__(self, event: str, fn: Callable[["Run", Any], None]):
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        setattr(self, f"on_{event}", lambda run, payload=None: fn(run, payload))


class ProgressBar(Callback):
    """A tqdm bar over the run's steps, showing the latest logged loss and test accuracy."""

    def __init__(self, **tqdm_kwargs: Any):
        self.kwargs = tqdm_kwargs
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_run_start(self, run):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=run.total_steps, initial=run.step, desc=run.label, unit="step",
                        leave=True, **self.kwargs)

    def on_step_end(self, run, metrics):
        self.bar.update(1)
        if metrics:
            self.postfix["loss"] = f"{metrics['loss']:.3f}"
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_eval_end(self, run, metrics):
        self.postfix["test_acc"] = f"{metrics['test_acc']:.3f}"
        self.bar.set_postfix(self.postfix)

    def on_run_end(self, run, status):
        if self.bar is not None:
            self.bar.close()
