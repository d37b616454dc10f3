"""`Leaderboard`: finished runs from the run store, as a table and a bar chart, with filters."""
from __future__ import annotations

import threading

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.store import RunStore

from ._plot import boxed

ALL = "(all)"
COLUMNS = ["label", "dataset", "teacher", "student", "methods", "seed",
           "test_acc", "agreement", "teacher_acc", "ece", "duration_s"]
FILTERS = ("dataset", "teacher", "student", "method")


class Leaderboard(widgets.VBox):
    """Finished runs of a :class:`~workbench.store.RunStore` (default: ``$KDWB_HOME``) side by
    side: a table and a bar chart of ``metric``, best first.

    Dropdown filters (``filters["dataset"]``, ``["teacher"]``, ``["student"]``, ``["method"]``)
    narrow the rows; a run matches a method when the method is one of those it combined. The
    keyword arguments set the filters' first values. :meth:`refresh` re-reads the store.
    ``rows`` is the filtered table shown.
    """

    def __init__(self, store: RunStore | None = None, dataset: str | None = None,
                 teacher: str | None = None, student: str | None = None, method: str | None = None,
                 metric: str = "test_acc"):
        self._lock = threading.Lock()
        self.store = store if store is not None else RunStore()
        self.metric = metric
        self.board = pd.DataFrame()
        self.rows = pd.DataFrame()
        self._quiet = False
        first = {"dataset": dataset, "teacher": teacher, "student": student, "method": method}
        self.filters = {name: widgets.Dropdown(description=name, value=first[name] or ALL,
                                               options=[ALL, *([first[name]] if first[name] else [])])
                        for name in FILTERS}
        self.readout = widgets.HTML()
        fig = make_subplots(2, 1, specs=[[{"type": "table"}], [{"type": "xy"}]],
                            row_heights=[0.45, 0.55], vertical_spacing=0.06)
        fig.add_trace(go.Table(header=dict(values=[]), cells=dict(values=[])), 1, 1)
        fig.add_trace(go.Bar(name=metric, texttemplate="%{y:.3f}", textposition="outside"), 2, 1)
        fig.update_yaxes(title=metric, rangemode="tozero", row=2, col=1)
        fig.update_layout(height=620, margin=dict(l=50, r=10, t=30, b=10))
        self.fig = go.FigureWidget(fig)
        self.refresh()
        for dropdown in self.filters.values():
            dropdown.observe(lambda _: self._quiet or self._draw(), names="value")
        super().__init__([widgets.HBox(list(self.filters.values()),
                                       layout=widgets.Layout(flex_flow="row wrap")),
                          self.readout, boxed(self.fig)])

    def refresh(self) -> None:
        """Re-read the store, update the filters' choices (keeping the selections) and redraw."""
        board = self.store.leaderboard()
        with self._lock:
            self.board = board
        self._quiet = True  # one redraw below, not one per changed dropdown
        try:
            for name, dropdown in self.filters.items():
                choices = sorted(set(self._values(board, name)))
                keep = dropdown.value
                dropdown.options = [ALL, *choices, *([keep] if keep != ALL and keep not in choices else [])]
                dropdown.value = keep
        finally:
            self._quiet = False
        self._draw()

    def figure(self) -> go.Figure:
        """A static copy of the current figure."""
        with self._lock:
            return go.Figure(self.fig)

    @staticmethod
    def _values(board: pd.DataFrame, name: str) -> list[str]:
        if board.empty:
            return []
        if name == "method":
            return [m for methods in board["methods"].dropna() for m in methods.split("+")]
        return [v for v in board[name].dropna() if v != ""]

    def _draw(self) -> None:
        with self._lock:
            rows = self.board
            for name, dropdown in self.filters.items():
                value = dropdown.value
                if value == ALL or rows.empty:
                    continue
                column = "methods" if name == "method" else name
                match = rows[column].map(lambda v: value in str(v).split("+")) if name == "method" \
                    else rows[column] == value
                rows = rows[match]
            if not rows.empty and self.metric in rows:
                rows = rows.sort_values(self.metric, ascending=False, ignore_index=True)
            self.rows = rows
            columns = [c for c in COLUMNS if c in rows]
            names = [f"{label} · {run_id[:6]}"
                     for label, run_id in zip(rows.get("label", []), rows.get("id", []))]
            with self.fig.batch_update():
                table, bars = self.fig.data
                table.header.values = columns
                table.cells.values = [[_fmt(v) for v in rows[c]] for c in columns]
                bars.x = names
                bars.y = rows[self.metric].to_numpy(dtype=float) if self.metric in rows else []
                bars.hovertext = [f"{r.get('student')} ← {r.get('teacher') or '—'}<br>"
                                  f"{r.get('methods')}, seed {r.get('seed')}" for r in rows.to_dict("records")]
            total = len(self.board)
            self.readout.value = (f"{len(rows)} of {total} finished runs in {self.store.path}" if total
                                  else f"no finished runs yet in {self.store.path}")


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: the run did not record this metric
            return ""
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)
