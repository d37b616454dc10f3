"""`Dashboard`: a live view of a run and its controls.

How it stays fast and responsive (see ``BROWSER_TESTING.md``, "Live runs in a notebook"): the run
trains in its own thread (``run.start()``); the dashboard is one of the run's callbacks, so that
thread itself pushes new points to the figures, at most every ``push_every`` seconds, as numpy
arrays in one update message per figure (what ``batch_update()`` sends), plus a final flush at
``run_end``. Controls only set values:
a slider sets the method's hyper-parameter, which the trainer applies at its next step boundary;
the buttons call ``pause``/``resume``/``stop``. Traces are thinned to a bounded length, so every
push stays small.
"""
from __future__ import annotations

import math
import threading
import time

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.engine.events import Callback

from ._plot import boxed, clean
from .attention import AttentionMaps
from .similarity import Similarity
from .soft_labels import SoftLabels

NOT_LOSSES = ("step", "epoch", "lr", "train_acc")
PROBE_SECONDS = 1.0   # the probe views refresh at most this often, whatever probe_every says
ACCURACIES = ("train_acc", "test_acc", "agreement", "teacher_acc")


class Curve:
    """The points of one trace, thinned to at most ``2 * limit + 1``: whenever it passes
    ``2 * limit`` points every other one is dropped and from then on only every ``stride``-th new
    point is kept, so the points stay evenly spread. The latest point is always shown."""

    def __init__(self, limit: int = 500):
        self.limit, self.stride, self.count = limit, 1, 0
        self.x: list[float] = []
        self.y: list[float] = []
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        self.last = (x, y)
        self.count += 1
        if (self.count - 1) % self.stride:
            return
        self.x.append(x)
        self.y.append(y)
        if len(self.x) > 2 * self.limit:
            self.x, self.y, self.stride = self.x[::2], self.y[::2], self.stride * 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        kept = self.x and self.last == (self.x[-1], self.y[-1])
        tail = [] if kept or self.last is None else [self.last]
        return (np.asarray(self.x + [p[0] for p in tail], dtype=float),
                np.asarray(self.y + [p[1] for p in tail], dtype=float))


def slider_range(value: float, rule: str) -> tuple[float, float, float]:
    """(min, max, step) for a hyper-parameter slider: [0, 1] for ``unit``; otherwise up to a round
    number >= 4x the current value, in 100 steps, starting above 0 for ``positive``."""
    if rule == "unit":
        return 0.0, 1.0, 0.01
    wanted = max(1.0, 4 * abs(value))
    scale = 10 ** math.floor(math.log10(wanted))
    top = next(m * scale for m in (1, 2, 5, 10) if m * scale >= wanted)
    step = top / 100
    low = {"positive": step, "nonnegative": 0.0}.get(rule, -top)
    return low, top, step


class Dashboard(widgets.VBox, Callback):
    """Live loss terms, accuracies and teacher-student agreement of a run, with its controls.

    - Loss figure (``loss_fig``): one trace per logged term (``loss``, ``ce``, ``kd.kl``, ...).
    - Accuracy figure (``accuracy_fig``): train accuracy (per telemetry row), test accuracy,
      agreement with the teacher and the teacher's accuracy (per evaluation).
    - ``controls``: a slider per numeric hyper-parameter of each method (``"kd.temperature"``,
      ``"kd.weight"``) and for ``"task_weight"``; changes reach the run at its next step.
    - ``pause_button``, ``resume_button``, ``stop_button``.
    - ``probe_every`` (steps): also show :class:`SoftLabels`, :class:`AttentionMaps` and
      :class:`Similarity` on a probe batch of the test set (``views``), refreshed by the run's
      thread every ``probe_every`` steps but at most once a second, and at the end. ``None``:
      no views.

    Construct it before or after ``run.start()``; it adds itself to ``run.callbacks``. Nothing is
    displayed until a cell returns it. :meth:`figure` gives a static figure for headless notebooks.
    """

    def __init__(self, run, probe_every: int | None = None, probe_n: int = 8,
                 push_every: float = 0.25, max_points: int = 500):
        self.run = run
        self.push_every, self.probe_every = push_every, probe_every
        self._lock = threading.Lock()
        self._max_points = max_points
        self._curves: dict[str, Curve] = {}
        self._accuracy: dict[str, Curve] = {}
        self._order = {"loss": [], "accuracy": list(ACCURACIES)}  # trace names, in figure order
        self._sent: dict[str, int] = {}                  # "figure/trace" -> curve.count pushed
        self._seen = self._evals_seen = 0
        self._last_push = 0.0
        self._last_probe = (run.step, time.monotonic())  # (step, time) of the last view refresh
        self._rate = (time.monotonic(), run.step, 0.0)   # (time, step, steps/s) at the last push
        self._note = ""

        self.loss_fig = go.FigureWidget(layout=go.Layout(
            title="loss terms", height=320, margin=dict(l=50, r=10, t=40, b=40),
            xaxis=dict(title="step"), legend=dict(orientation="h", y=-0.25)))
        self.accuracy_fig = go.FigureWidget(
            data=[go.Scatter(name=name, mode="lines" if name == "train_acc" else "lines+markers")
                  for name in ACCURACIES],
            layout=go.Layout(title="accuracy and agreement", height=320,
                             margin=dict(l=50, r=10, t=40, b=40), xaxis=dict(title="step"),
                             yaxis=dict(range=[0, 1.02]), legend=dict(orientation="h", y=-0.25)))
        self.controls = self._make_controls()
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.resume_button = widgets.Button(description="Resume", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger")
        self.pause_button.on_click(lambda _: self._control(run.pause, "paused"))
        self.resume_button.on_click(lambda _: self._control(run.resume, ""))
        self.stop_button.on_click(lambda _: self._control(run.stop, "stopping"))
        self.status = widgets.HTML()
        self.views = self._make_views(probe_n) if probe_every else {}

        children = [widgets.HBox([self.pause_button, self.resume_button, self.stop_button, self.status]),
                    widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
                    # plotly 7 FigureWidgets keep their first width (700 px): wrap, do not clip
                    widgets.HBox([boxed(self.loss_fig), boxed(self.accuracy_fig)],
                                 layout=widgets.Layout(flex_flow="row wrap"))]
        if self.views:
            children.append(widgets.Tab(children=list(self.views.values()), titles=list(self.views)))
        super().__init__(children)
        self._flush()
        run.callbacks.append(self)

    # -- construction ---------------------------------------------------------------------------
    def _make_controls(self) -> dict[str, widgets.FloatSlider]:
        controls = {}
        targets = [(f"{name}.{key}", method, key, rule)
                   for name, method in self.run.methods.items()
                   for key, rule in type(method).constraints.items()]
        targets.append(("task_weight", self.run, "task_weight", "nonnegative"))
        for label, owner, key, rule in targets:
            value = owner.task_weight if owner is self.run else owner.hparams().get(key, getattr(owner, key))
            low, high, step = slider_range(value, rule)
            slider = widgets.FloatSlider(value=value, min=low, max=high, step=step, description=label,
                                         style={"description_width": "initial"})
            slider.observe(self._setter(owner, key), names="value")
            controls[label] = slider
        return controls

    @staticmethod
    def _setter(owner, key: str):
        def observe(change) -> None:  # only stores: the trainer applies it at its next step
            setattr(owner, key, clean(change["new"]))
        return observe

    def _make_views(self, n: int) -> dict[str, widgets.Widget]:
        run = self.run
        if run.teacher is None:
            return {}
        views: dict[str, widgets.Widget] = {"soft labels": SoftLabels.from_run(run, n=n)}
        if len(run.data.input_shape) == 3:  # images
            try:
                views["attention"] = AttentionMaps.from_run(run, n=n)
            except ValueError as error:  # e.g. an MLP has no spatial feature map
                views["attention"] = widgets.HTML(f"no attention maps: {error}")
        views["similarity"] = Similarity.from_run(run, n=max(n, 32))
        return views

    # -- the run's events (its own thread) ---------------------------------------------------------
    def on_run_start(self, run) -> None:
        self._rate = (time.monotonic(), run.step, 0.0)

    def on_step_end(self, run, metrics) -> None:
        now = time.monotonic()
        if self.probe_every and run.step - self._last_probe[0] >= self.probe_every \
                and now - self._last_probe[1] >= PROBE_SECONDS:
            self._refresh_views()
        if now - self._last_push >= self.push_every:  # evaluations go out with the next push
            self._flush()

    def on_run_end(self, run, status) -> None:
        if self.probe_every:
            self._refresh_views()
        with self._lock:
            self._note = ""
        self._flush()
        for button in (self.pause_button, self.resume_button, self.stop_button):
            button.disabled = True

    # -- updates ----------------------------------------------------------------------------------
    def _refresh_views(self) -> None:
        self._last_probe = (self.run.step, time.monotonic())
        for view in self.views.values():
            if hasattr(view, "refresh"):
                view.refresh(student=self.run.student)

    def _control(self, action, note: str) -> None:
        action()
        with self._lock:
            self._note = note
            self._write_status()

    def _flush(self) -> None:
        """Move new history rows and evaluations into the curves; push them to the figures."""
        run = self.run
        with self._lock:
            if len(run.history) < self._seen:     # the run restored an older history on resume
                self._curves, self._accuracy, self._sent = {}, {}, {}
                self._seen = self._evals_seen = 0
            for row in run.history[self._seen:]:
                for name, value in row.items():
                    if name not in NOT_LOSSES:
                        self._curve(self._curves, name).add(row["step"], value)
                self._curve(self._accuracy, "train_acc").add(row["step"], row["train_acc"])
            for row in run.evals[self._evals_seen:]:
                for name in ACCURACIES[1:]:
                    if name in row:
                        self._curve(self._accuracy, name).add(row["step"], row[name])
            self._seen, self._evals_seen = len(run.history), len(run.evals)
            for name in self._curves:
                if name not in self._order["loss"]:
                    self.loss_fig.add_scatter(name=name, mode="lines")
                    self._order["loss"].append(name)
            self._push("loss", self.loss_fig, self._curves)
            self._push("accuracy", self.accuracy_fig, self._accuracy)
            self._write_status()
            self._last_push = time.monotonic()

    def _push(self, panel: str, fig: go.FigureWidget, curves: dict[str, Curve]) -> None:
        """Send the curves that changed since the last push, as one update message.

        ``plotly_update`` is what ``batch_update()`` calls on exit, with the same message; called
        directly it skips plotly's per-array validation (about 0.6 ms per push instead of 4 ms).
        """
        changed = [(i, name) for i, name in enumerate(self._order[panel])
                   if name in curves and self._sent.get(f"{panel}/{name}") != curves[name].count]
        if not changed:
            return
        arrays = [curves[name].arrays() for _, name in changed]
        fig.plotly_update(restyle_data={"x": [x for x, _ in arrays], "y": [y for _, y in arrays]},
                          trace_indexes=[i for i, _ in changed])
        for _, name in changed:
            self._sent[f"{panel}/{name}"] = curves[name].count

    def _curve(self, curves: dict[str, Curve], name: str) -> Curve:
        if name not in curves:
            curves[name] = Curve(self._max_points)
        return curves[name]

    def _write_status(self) -> None:
        run = self.run
        now = time.monotonic()
        then, step, rate = self._rate
        if now - then >= 1.0:
            rate = (run.step - step) / (now - then)
            self._rate = (now, run.step, rate)
        status = self._note or run.status
        last = run.evals[-1] if run.evals else {}
        acc = f", test acc {last['test_acc']:.3f}" if "test_acc" in last else ""
        speed = f", {rate:.0f} steps/s" if rate else ""
        # the values the trainer's steps use now: a slider's new value waits for the next step
        in_use = [f"{name}.{key} {getattr(method, key):g}" for name, method in run.methods.items()
                  for key in type(method).constraints] + [f"task_weight {run.active_task_weight:g}"]
        self.status.value = (f"<b>{status}</b> &nbsp; step {run.step}/{run.total_steps}, epoch "
                             f"{run.epoch}/{run.config.epochs}{speed}{acc}<br>in use: {', '.join(in_use)}")

    def figure(self) -> go.Figure:
        """A static figure of the run's curves so far: loss terms (left), accuracies (right)."""
        self._flush()  # also catches up a run that was reused from the store without events
        with self._lock:
            fig = make_subplots(1, 2, subplot_titles=("loss terms", "accuracy and agreement"))
            for col, source in ((1, self.loss_fig), (2, self.accuracy_fig)):
                for trace in source.data:
                    if trace.x is not None:
                        fig.add_trace(go.Scatter(trace), 1, col)
            fig.update_xaxes(title="step")
            fig.update_yaxes(range=[0, 1.02], col=2)
            fig.update_layout(height=360, title=f"{self.run.label}: {self.run.status}, "
                                                f"step {self.run.step}")
            return fig
