"""`SoftLabels`: the teacher's and the student's class distributions at temperature T, side by side."""
from __future__ import annotations

import threading
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn

from workbench.probes.soft_labels import entropy, kl_divergence, soft_labels, top_k_with_rest

from ._models import for_view, forward
from ._plot import boxed, clean


class SoftLabels(widgets.VBox):
    """Grouped bars of softmax(z / T) for teacher and student on one input, with a temperature
    slider and an input selector.

    Shows each distribution's entropy, KL(teacher || student) and its T^2-scaled value (KD's soft
    loss) and the target class. With more classes than ``top_k``, the teacher's ``top_k`` classes are
    drawn plus a "rest" bar holding the remaining mass. Logits are computed once (and again by
    :meth:`refresh`); the controls only redo the softmax.

    Controls: ``temperature_slider``, ``input_selector``. Figure: ``fig`` (live), :meth:`figure`
    (static). Current numbers: ``stats``.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, inputs: torch.Tensor,
                 labels: torch.Tensor | None = None, class_names: Sequence[str] | None = None,
                 temperature: float = 4.0, top_k: int = 10):
        self._lock = threading.Lock()
        self.teacher, self.student, self.inputs = teacher, student, inputs
        self.labels = None if labels is None else labels.cpu()
        self.top_k = top_k
        self.teacher_logits = forward(teacher, inputs).logits      # (N, K)
        self.student_logits = forward(student, inputs).logits      # (N, K)
        classes = self.teacher_logits.shape[1]
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(classes)]
        self.stats: dict[str, float | int | str | None] = {}

        self.temperature_slider = widgets.FloatSlider(
            value=temperature, min=0.5, max=max(20.0, temperature), step=0.5, description="T",
            tooltip="temperature of the softmax")
        self.input_selector = widgets.Dropdown(options=self._input_options(), value=0,
                                               description="input")
        self.readout = widgets.HTML()
        self.fig = go.FigureWidget(
            data=[go.Bar(name="teacher", marker_color="#1f77b4"),
                  go.Bar(name="student", marker_color="#ff7f0e")],
            layout=go.Layout(barmode="group", height=340, margin=dict(l=50, r=20, t=60, b=60),
                             yaxis=dict(title="probability", rangemode="tozero"),
                             legend=dict(orientation="h", y=1.12)))
        self._temperature = clean(temperature)
        self._index = 0
        self.temperature_slider.observe(self._on_temperature, names="value")
        self.input_selector.observe(self._on_input, names="value")
        self._draw()
        super().__init__([widgets.HBox([self.temperature_slider, self.input_selector]),
                          self.readout, boxed(self.fig)])

    @classmethod
    def from_run(cls, run, n: int = 4, **kwargs) -> "SoftLabels":
        """The run's teacher and current student on its first ``n`` test inputs."""
        if run.teacher is None:
            raise ValueError(f"run {run.label!r} has no teacher; SoftLabels compares a teacher and a student")
        test = run.data.test
        return cls(for_view(run.teacher, run), for_view(run.student, run), test.x[:n],
                   labels=test.y[:n], class_names=run.data.class_names, **kwargs)

    def refresh(self, student: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
        """Recompute the logits (of these models, else the ones given at construction) and redraw."""
        student_logits = forward(student if student is not None else self.student, self.inputs).logits
        teacher_logits = forward(teacher, self.inputs).logits if teacher is not None else None
        with self._lock:
            self.student_logits = student_logits
            if teacher_logits is not None:
                self.teacher_logits = teacher_logits
            self._draw()

    def figure(self) -> go.Figure:
        """A static copy of the current figure."""
        with self._lock:
            return go.Figure(self.fig)

    # -- drawing ------------------------------------------------------------------------------
    def _input_options(self) -> list[tuple[str, int]]:
        if self.labels is None:
            return [(f"#{i}", i) for i in range(len(self.teacher_logits))]
        return [(f"#{i}: {self.class_names[int(y)]}", i) for i, y in enumerate(self.labels)]

    def _on_temperature(self, change) -> None:
        with self._lock:
            self._temperature = clean(change["new"])
            self._draw()

    def _on_input(self, change) -> None:
        with self._lock:
            self._index = int(change["new"])
            self._draw()

    def _draw(self) -> None:
        """Recompute the numbers for the current input and temperature; update bars in place.
        Called with the lock held (or before the widget is shown)."""
        i, temperature = self._index, self._temperature
        p_teacher = soft_labels(self.teacher_logits[i], temperature)   # (K,)
        p_student = soft_labels(self.student_logits[i], temperature)   # (K,)
        index, teacher_top, rest = top_k_with_rest(p_teacher, self.top_k)
        student_top = p_student[index]
        names = [self.class_names[int(c)] for c in index]
        teacher_y, student_y = teacher_top.numpy(), student_top.numpy()
        if index.numel() < p_teacher.numel():
            names.append("rest")
            teacher_y = np.append(teacher_y, rest)
            student_y = np.append(student_y, max(0.0, 1.0 - float(student_top.sum())))
        kl = float(kl_divergence(p_teacher, p_student))
        target = None if self.labels is None else int(self.labels[i])
        self.stats = {
            "input": i, "temperature": temperature,
            "target": None if target is None else self.class_names[target],
            "teacher_entropy": float(entropy(p_teacher)), "student_entropy": float(entropy(p_student)),
            "kl": kl, "kl_t2": kl * temperature ** 2,
        }
        outline = [3 if target is not None and n == self.class_names[target] else 0 for n in names]
        title = (f"input #{i}" + (f", target <b>{self.stats['target']}</b>" if target is not None else "")
                 + f", T={temperature:g}: H(teacher)={self.stats['teacher_entropy']:.3f}, "
                 f"H(student)={self.stats['student_entropy']:.3f}, KL={kl:.4f}, "
                 f"T²·KL={self.stats['kl_t2']:.4f}")
        with self.fig.batch_update():
            for trace, y in zip(self.fig.data, (teacher_y, student_y)):
                trace.x = names
                trace.y = y
                trace.marker.line = dict(width=outline, color="black")
            self.fig.layout.title.text = title
        self.readout.value = (
            f"target: <b>{self.stats['target'] or '?'}</b> &nbsp; entropy (nats): teacher "
            f"{self.stats['teacher_entropy']:.3f}, student {self.stats['student_entropy']:.3f}, "
            f"max log K = {np.log(p_teacher.numel()):.3f} &nbsp; KL(teacher‖student) = {kl:.4f}, "
            f"T²·KL = {self.stats['kl_t2']:.4f}")
