"""`Similarity`: how teacher and student relate the samples of a probe batch, and layer-by-layer CKA."""
from __future__ import annotations

import threading

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from workbench.probes.similarity import (cka_matrix, cosine_similarity_matrix, distance_matrix,
                                         gram_similarity_matrix)
from workbench.taps import declared_taps, expand_taps

from ._models import for_view, forward
from ._plot import boxed

KINDS = {"cosine": cosine_similarity_matrix, "gram": gram_similarity_matrix}
PANELS = ("teacher similarity", "student similarity", "student − teacher",
          "teacher distances (RKD)", "student distances (RKD)", "linear CKA")


def layer_features(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layer name -> (N, ...) features: every stage, the embedding (if tapped) and the logits."""
    taps = expand_taps(model, ["@stages"]) + (["embedding"] if "embedding" in declared_taps(model) else [])
    out = forward(model, inputs, taps)
    return {**{t: out.features[t] for t in taps}, "logits": out.logits}


class Similarity(widgets.VBox):
    """Sample-by-sample matrices of teacher and student on a probe batch, at a chosen layer pair:
    similarity (``kind``: "cosine", or "gram" as in SP), their difference, RKD's normalised
    distance matrices; and the linear CKA of every teacher layer with every student layer.

    Inputs are ordered by label when labels are given, so classes show as blocks. Controls:
    ``kind_selector``, ``teacher_layer``, ``student_layer``. Current numbers: ``summary``.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, inputs: torch.Tensor,
                 kind: str = "cosine", teacher_tap: str = "@last", student_tap: str = "@last",
                 labels: torch.Tensor | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not valid; choose one of {', '.join(KINDS)}")
        self._lock = threading.Lock()
        if labels is not None:
            order = torch.argsort(labels.cpu(), stable=True)
            inputs, labels = inputs[order], labels.cpu()[order]
        self.teacher, self.student, self.inputs, self.labels = teacher, student, inputs, labels
        self.teacher_features = layer_features(teacher, inputs)
        self.student_features = layer_features(student, inputs)
        self.summary: dict[str, float] = {}

        self.kind_selector = widgets.Dropdown(options=list(KINDS), value=kind, description="matrix")
        self.teacher_layer = widgets.Dropdown(
            options=list(self.teacher_features), description="teacher",
            value=_pick(teacher, teacher_tap, self.teacher_features, "teacher"))
        self.student_layer = widgets.Dropdown(
            options=list(self.student_features), description="student",
            value=_pick(student, student_tap, self.student_features, "student"))
        self.readout = widgets.HTML()
        self._state = {"kind": kind, "teacher": self.teacher_layer.value,
                       "student": self.student_layer.value}
        self.fig = self._empty_figure()
        for control, key in ((self.kind_selector, "kind"), (self.teacher_layer, "teacher"),
                             (self.student_layer, "student")):
            control.observe(self._observer(key), names="value")
        self._draw_cka()
        self._draw()
        super().__init__([widgets.HBox([self.kind_selector, self.teacher_layer, self.student_layer]),
                          self.readout, boxed(self.fig)])

    @classmethod
    def from_run(cls, run, n: int = 32, **kwargs) -> "Similarity":
        """The run's teacher and current student on its first ``n`` test inputs."""
        if run.teacher is None:
            raise ValueError(f"run {run.label!r} has no teacher; Similarity compares a teacher and a student")
        test = run.data.test
        return cls(for_view(run.teacher, run), for_view(run.student, run), test.x[:n],
                   labels=test.y[:n], **kwargs)

    def refresh(self, student: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
        """Recompute the features (of these models, else the ones given at construction); redraw."""
        student_features = layer_features(student if student is not None else self.student, self.inputs)
        teacher_features = layer_features(teacher, self.inputs) if teacher is not None else None
        with self._lock:
            self.student_features = student_features
            if teacher_features is not None:
                self.teacher_features = teacher_features
            self._draw_cka()
            self._draw()

    def figure(self) -> go.Figure:
        """A static copy of the current figure."""
        with self._lock:
            return go.Figure(self.fig)

    # -- drawing ------------------------------------------------------------------------------
    def _empty_figure(self) -> go.FigureWidget:
        fig = make_subplots(2, 3, subplot_titles=PANELS, horizontal_spacing=0.06, vertical_spacing=0.12)
        styles = [dict(zmin=-1, zmax=1, colorscale="RdBu_r"), dict(zmin=-1, zmax=1, colorscale="RdBu_r"),
                  dict(zmid=0, colorscale="RdBu_r"), dict(zmin=0, colorscale="Viridis"),
                  dict(zmin=0, colorscale="Viridis"), dict(zmin=0, zmax=1, colorscale="Viridis")]
        for k, style in enumerate(styles):
            row, col = divmod(k, 3)
            fig.add_trace(go.Heatmap(showscale=False, name=PANELS[k], **style), row + 1, col + 1)
            fig.update_yaxes(autorange="reversed", row=row + 1, col=col + 1)
        fig.update_layout(height=560, margin=dict(l=60, r=10, t=50, b=40))
        return go.FigureWidget(fig)

    def _observer(self, key: str):
        def observe(change) -> None:
            with self._lock:
                self._state[key] = change["new"]
                self._draw()
        return observe

    def _draw_cka(self) -> None:
        """The (teacher layers x student layers) CKA heatmap; changes only with the features."""
        teacher, student = list(self.teacher_features), list(self.student_features)
        self.cka = cka_matrix([self.teacher_features[t] for t in teacher],
                              [self.student_features[s] for s in student])   # (Lt, Ls)
        with self.fig.batch_update():
            trace = self.fig.data[5]
            trace.z, trace.x, trace.y = self.cka.numpy(), student, teacher
            trace.hovertemplate = "teacher %{y}<br>student %{x}<br>CKA %{z:.3f}<extra></extra>"

    def _draw(self) -> None:
        """Recompute the matrices of the current layer pair and kind; update in place (lock held)."""
        state = self._state
        similarity = KINDS[state["kind"]]
        t, s = self.teacher_features[state["teacher"]], self.student_features[state["student"]]
        sim_t, sim_s = similarity(t), similarity(s)                        # (N, N)
        dist_t, dist_s = distance_matrix(t), distance_matrix(s)            # (N, N), mean 1 off-diagonal
        teacher_names, student_names = list(self.teacher_features), list(self.student_features)
        self.summary = {
            "mean_abs_difference": float((sim_s - sim_t).abs().mean()),
            "distance_gap": float((dist_s - dist_t).abs().mean()),
            "cka": float(self.cka[teacher_names.index(state["teacher"]),
                                  student_names.index(state["student"])]),
        }
        with self.fig.batch_update():
            for trace, value in zip(self.fig.data[:5], (sim_t, sim_s, sim_s - sim_t, dist_t, dist_s)):
                trace.z = value.numpy()
            self.fig.layout.annotations[0].text = f"teacher {state['kind']} ({state['teacher']})"
            self.fig.layout.annotations[1].text = f"student {state['kind']} ({state['student']})"
        self.readout.value = (
            f"{state['kind']} similarity, teacher <b>{state['teacher']}</b> vs student "
            f"<b>{state['student']}</b>: mean |student − teacher| = "
            f"<b>{self.summary['mean_abs_difference']:.3f}</b>, mean |ΔD| (RKD distances) = "
            f"<b>{self.summary['distance_gap']:.3f}</b>, linear CKA = <b>{self.summary['cka']:.3f}</b>")


def _pick(model: nn.Module, tap: str, features: dict[str, torch.Tensor], role: str) -> str:
    name = expand_taps(model, [tap])[-1] if tap.startswith("@") else tap
    if name not in features:
        raise ValueError(f"the {role} has no layer {tap!r} here; choose one of {', '.join(features)}")
    return name
