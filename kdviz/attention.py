"""`AttentionMaps`: where the teacher and the student look, next to the input and its object mask."""
from __future__ import annotations

import threading
from typing import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from workbench.probes.attention import (at_map, attention_rollout, cls_to_patches, mass_inside,
                                        top_q_iou, upsample_to)
from workbench.taps import declared_attention_taps, declared_taps, expand_taps

from ._models import for_view, forward
from ._plot import boxed, clean, to_rgb


def spatial_maps(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layer name -> (N, H, W) attention maps at the input's size, normalised to max 1 per map.

    A model with attention taps (a ViT) gives the attention rollout through each block; any other
    model gives the AT map of each stage whose output is a (C, H, W) feature map.
    """
    size = tuple(inputs.shape[-2:])
    attention_taps = list(declared_attention_taps(model))
    if attention_taps:
        out = forward(model, inputs, attention_taps)
        blocks = [out.attentions[t] for t in attention_taps]
        prefix = getattr(model, "prefix_tokens", 1)  # tokens before the patches (DeiT: CLS + distillation)
        raw = {t: cls_to_patches(attention_rollout(blocks[:i + 1]), prefix) for i, t in enumerate(attention_taps)}
    else:
        taps = (["stem"] if "stem" in declared_taps(model) else []) + expand_taps(model, ["@stages"])
        out = forward(model, inputs, taps)
        raw = {t: at_map(f) for t, f in out.features.items() if f.dim() == 4}
    if not raw:
        raise ValueError(f"{type(model).__name__} has no tap with a spatial (C, H, W) output")
    maps = {}
    for name, value in raw.items():
        value = upsample_to(value, size).clamp_min(0)                     # (N, H, W)
        maps[name] = value / value.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return maps


class AttentionMaps(widgets.VBox):
    """The input image, its ground-truth mask (if given), and the teacher's and student's spatial
    attention at a chosen layer pair (AT map: mean over channels of A^2, upsampled to the input;
    ViT: attention rollout through the chosen block).

    With masks, each map is scored: the fraction of its mass inside the mask and the IoU of its
    top-q region with the mask (``scores``). Controls: ``input_selector``, ``teacher_layer``,
    ``student_layer``, ``q_slider`` (q as a fraction of the pixels). ``mean``/``std`` undo the
    input normalisation for display (``data.meta["mean"]``/``["std"]``).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, inputs: torch.Tensor,
                 masks: torch.Tensor | None = None, teacher_tap: str = "@last",
                 student_tap: str = "@last", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, q: float = 0.2,
                 labels: torch.Tensor | None = None, class_names: Sequence[str] | None = None):
        self._lock = threading.Lock()
        self.teacher, self.student = teacher, student
        self.inputs = inputs
        self.masks = None if masks is None else masks.bool().cpu()
        self.images = [to_rgb(x, mean, std) for x in inputs]
        self.teacher_maps = spatial_maps(teacher, inputs)
        self.student_maps = spatial_maps(student, inputs)
        self.scores: dict[str, dict[str, float]] = {}

        names = [f"#{i}" for i in range(len(inputs))]
        if labels is not None and class_names is not None:
            names = [f"#{i}: {class_names[int(y)]}" for i, y in enumerate(labels)]
        self.input_selector = widgets.Dropdown(options=list(zip(names, range(len(inputs)))),
                                               value=0, description="input")
        self.teacher_layer = widgets.Dropdown(options=list(self.teacher_maps),
                                              value=_pick(teacher_tap, self.teacher_maps, "teacher"),
                                              description="teacher")
        self.student_layer = widgets.Dropdown(options=list(self.student_maps),
                                              value=_pick(student_tap, self.student_maps, "student"),
                                              description="student")
        self.q_slider = widgets.FloatSlider(value=q, min=0.05, max=1.0, step=0.05, description="top q",
                                            disabled=self.masks is None)
        self.readout = widgets.HTML()
        self._state = {"index": 0, "teacher": self.teacher_layer.value,
                       "student": self.student_layer.value, "q": clean(q)}
        self.fig = self._empty_figure()
        for control, key in ((self.input_selector, "index"), (self.teacher_layer, "teacher"),
                             (self.student_layer, "student"), (self.q_slider, "q")):
            control.observe(self._observer(key), names="value")
        self._draw()
        super().__init__([widgets.HBox([self.input_selector, self.q_slider]),
                          widgets.HBox([self.teacher_layer, self.student_layer]),
                          self.readout, boxed(self.fig)])

    @classmethod
    def from_run(cls, run, n: int = 4, **kwargs) -> "AttentionMaps":
        """The run's teacher and current student on its first ``n`` test inputs (with masks, if the
        data has them, e.g. ``shapes``)."""
        if run.teacher is None:
            raise ValueError(f"run {run.label!r} has no teacher; "
                             "AttentionMaps compares a teacher and a student")
        test, meta = run.data.test, run.data.meta
        masks = test.extras.get("mask")
        return cls(for_view(run.teacher, run), for_view(run.student, run), test.x[:n],
                   masks=None if masks is None else masks[:n], mean=meta.get("mean"),
                   std=meta.get("std"), labels=test.y[:n], class_names=run.data.class_names, **kwargs)

    def refresh(self, student: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
        """Recompute the maps (of these models, else the ones given at construction) and redraw."""
        student_maps = spatial_maps(student if student is not None else self.student, self.inputs)
        teacher_maps = spatial_maps(teacher, self.inputs) if teacher is not None else None
        with self._lock:
            self.student_maps = student_maps
            if teacher_maps is not None:
                self.teacher_maps = teacher_maps
            self._draw()

    def figure(self) -> go.Figure:
        """A static copy of the current figure."""
        with self._lock:
            return go.Figure(self.fig)

    # -- drawing ------------------------------------------------------------------------------
    def _panels(self) -> list[str]:
        return ["input"] + (["mask"] if self.masks is not None else []) + ["teacher", "student"]

    def _empty_figure(self) -> go.FigureWidget:
        panels = self._panels()
        fig = make_subplots(1, len(panels), subplot_titles=panels, horizontal_spacing=0.03)
        fig.add_trace(go.Image(), 1, 1)
        for col, panel in enumerate(panels[1:], start=2):
            fig.add_trace(go.Heatmap(zmin=0, zmax=1, showscale=panel == "student",
                                     colorscale="gray" if panel == "mask" else "inferno",
                                     name=panel), 1, col)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col}", row=1, col=col)
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False)
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=60, b=10))
        return go.FigureWidget(fig)

    def _observer(self, key: str):
        def observe(change) -> None:
            with self._lock:
                self._state[key] = clean(change["new"]) if key == "q" else change["new"]
                self._draw()
        return observe

    def _draw(self) -> None:
        """Recompute scores for the current choices and update the panels in place (lock held)."""
        state = self._state
        i = state["index"]
        maps = {"teacher": self.teacher_maps[state["teacher"]][i],
                "student": self.student_maps[state["student"]][i]}             # (H, W) each
        titles = ["input"]
        self.scores = {}
        if self.masks is not None:
            mask = self.masks[i]
            titles.append("mask")
            for role, value in maps.items():
                self.scores[role] = {"mass_inside": float(mass_inside(value, mask)),
                                     "iou": float(top_q_iou(value, mask, state["q"]))}
        for role in maps:
            title = f"{role}: {state[role]}"
            if role in self.scores:
                title += f"<br>mass in {self.scores[role]['mass_inside']:.2f}, IoU@{state['q']:g} " \
                         f"{self.scores[role]['iou']:.2f}"
            titles.append(title)
        heat = ([self.masks[i].float()] if self.masks is not None else []) + list(maps.values())
        with self.fig.batch_update():
            self.fig.data[0].z = self.images[i]
            for trace, value in zip(self.fig.data[1:], heat):
                trace.z = value.numpy()
            for annotation, title in zip(self.fig.layout.annotations, titles):
                annotation.text = title
        self.readout.value = " &nbsp; ".join(
            f"{role}: attention mass inside the mask <b>{s['mass_inside']:.3f}</b>, "
            f"IoU of the top {state['q']:.0%} with the mask <b>{s['iou']:.3f}</b>"
            for role, s in self.scores.items()) or "no ground-truth masks: scores need masks (e.g. shapes)"


def _pick(tap: str, maps: dict[str, torch.Tensor], role: str) -> str:
    if tap == "@last":
        return list(maps)[-1]
    if tap not in maps:
        raise ValueError(f"the {role} has no spatial map {tap!r}; choose one of {', '.join(maps)}")
    return tap
