"""`SurveyMap`: the survey's chapters as a sunburst (or treemap), coloured by what is implemented."""
from __future__ import annotations

import threading

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.probes.survey import SurveyNode, survey_tree
from workbench.registry import METHODS, Registry

from ._plot import boxed

PLANNED = "#d9d9d9"
CHAPTER_COLOURS = {"sources": "#1f77b4", "schemes": "#2ca02c", "algorithms": "#ff7f0e",
                   "modalities": "#9467bd", "applications": "#d62728", "other": "#8c564b"}


class SurveyMap(widgets.VBox):
    """The survey's map (sources, schemes, algorithms, modalities, applications) built from the
    method registry: a section is coloured when methods of its ``category`` are registered and
    grey, marked "planned", when none are. Hovering a section lists its methods, papers and
    notebook; clicking a chapter zooms into it. ``kind_selector`` switches sunburst / treemap.
    """

    def __init__(self, methods: Registry = METHODS, kind: str = "sunburst"):
        self._lock = threading.Lock()
        self.nodes: list[SurveyNode] = survey_tree(methods)
        self.kind_selector = widgets.ToggleButtons(options=["sunburst", "treemap"], value=kind)
        leaves = [n for n in self.nodes if n.sections == 1 and n.parent != ""]
        done = [n for n in leaves if not n.planned]
        self.readout = widgets.HTML(
            f"{len(methods)} registered methods; {len(done)} of {len(leaves)} sections of the survey "
            "implemented (grey: planned)")
        self.fig = go.FigureWidget(layout=go.Layout(height=560, margin=dict(l=0, r=0, t=30, b=0)))
        self._draw(kind)
        self.kind_selector.observe(lambda change: self._draw(change["new"]), names="value")
        super().__init__([self.kind_selector, self.readout, boxed(self.fig)])

    def figure(self) -> go.Figure:
        """A static copy of the current figure."""
        with self._lock:
            return go.Figure(self.fig)

    def _draw(self, kind: str) -> None:
        trace_type = {"sunburst": go.Sunburst, "treemap": go.Treemap}[kind]
        chapter_of = {n.id: n.id.split("/")[0] for n in self.nodes}
        trace = trace_type(
            ids=[n.id for n in self.nodes], parents=[n.parent for n in self.nodes],
            labels=[n.label + (" (planned)" if n.planned and n.sections == 1 else "") for n in self.nodes],
            hovertext=[_hover(n) for n in self.nodes], hoverinfo="text",
            marker=dict(colors=["white" if not n.parent else PLANNED if n.planned
                                else CHAPTER_COLOURS.get(chapter_of[n.id], "#17becf") for n in self.nodes]),
            maxdepth=3)
        with self._lock:
            self.fig.data = []
            self.fig.add_trace(trace)


def _hover(node: SurveyNode) -> str:
    lines = [f"<b>{node.label}</b>"]
    if node.sections > 1 or not node.parent:
        lines.append(f"{node.implemented} implemented in {node.sections} sections")
        return "<br>".join(lines)
    if node.planned:
        lines.append("planned")
    if node.methods:
        lines.append("methods: " + ", ".join(node.methods))
        lines += [f"· {paper}" for paper in node.papers]
    if node.schemes:
        lines.append("schemes: " + ", ".join(node.schemes))
    if node.notebooks:
        lines.append("notebook: " + ", ".join(node.notebooks))
    return "<br>".join(lines)
