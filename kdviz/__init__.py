"""kdviz: live widgets for KD Workbench (ipywidgets + plotly ``FigureWidget``).

    import workbench as wb, kdviz
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 4}})
    dash = kdviz.Dashboard(run, probe_every=200)   # return it from a cell to show it
    run.start()                                    # train in the background; the sliders act live
    dash.figure()                                  # a static plotly Figure of the current state

Every widget is an ``ipywidgets.VBox`` (a cell shows it by returning it; nothing is displayed by
the constructor) and works headless: set a control's ``.value`` from Python and the figure
updates. Each has ``.figure()``, a static ``plotly.graph_objects.Figure`` of what it shows now.
The numbers come from :mod:`workbench.probes`.
"""
from .attention import AttentionMaps
from .dashboard import Dashboard
from .leaderboard import Leaderboard
from .similarity import Similarity
from .soft_labels import SoftLabels
from .survey_map import SurveyMap

__all__ = ["AttentionMaps", "Dashboard", "Leaderboard", "Similarity", "SoftLabels", "SurveyMap"]
