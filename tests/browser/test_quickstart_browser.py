"""The quickstart notebook in a real browser: JupyterLab (run all, a live KD run steered from the page)
and the Voila app of `kdwb app` (the whole notebook, the soft-label temperature slider).

What a headless test of the widgets cannot see, and these check: the widgets and plotly figures
render in the page, inside their widgets and without overlapping; a slider moved with the keyboard
reaches the kernel and the figure changes in the page; the Dashboard's temperature slider reaches the
*running* trainer (its status line shows the values the trainer's steps use); Stop ends the run; no
uncaught error in the page (e.g. a plotly widget that failed to load).
"""
from __future__ import annotations

import re
import shutil

import nbformat
import pytest
from browser_harness import ARTIFACTS, REPO, free_port, jupyter_home, lab_command, new_token

pytestmark = pytest.mark.browser

QUICKSTART = REPO / "notebooks" / "00_quickstart.ipynb"
# JupyterLab test: the quick-mode notebook, except that no cell waits for the KD run (as in
# interactive use) and the KD run is long enough to be steered from the page; the test ends it with
# the Dashboard's Stop button. (cell marker, code injected before it; None: after the parameters)
LIVE_INJECTIONS = [
    (None, "HEADLESS = False   # injected by tests/browser: interactive, cells never wait for runs"),
    ("kdviz.Dashboard(", "# injected by tests/browser: a KD run that outlives the test\n"
                         "student_options.update(epochs=50_000, eval_every=50_000, checkpoint_every=50_000)"),
]
RUN_ALL = "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
NOTEBOOK_READY = """(path) => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  return !!(panel && panel.context && panel.context.path === path && kernel
            && kernel.status === 'idle' && panel.content && panel.content.widgets.length > 0
            && document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']"));
}"""
# a plot's traces and title, as plain numbers and text (typed arrays included)
PLOT_STATE = """(el) => JSON.stringify({
  title: el.layout && el.layout.title ? (el.layout.title.text || '') : '',
  traces: (el.data || []).map(t => ({
    name: t.name,
    x: t.x ? Array.from(t.x, String) : [],
    y: t.y ? Array.from(t.y, Number) : [] }))
})"""


def copy_notebook(destination, injections=()):
    """A copy of the quickstart with code cells injected (papermill-style): ``(marker, code)`` puts
    ``code`` before the first cell whose source contains ``marker``, or after the parameters cell
    when ``marker`` is None. The tests never open the committed notebook, so JupyterLab's autosave
    cannot write outputs into it."""
    notebook = nbformat.read(QUICKSTART, as_version=4)
    for marker, code in injections:
        if marker is None:
            index = 1 + next(i for i, cell in enumerate(notebook.cells)
                             if "parameters" in cell.metadata.get("tags", []))
        else:
            index = next((i for i, cell in enumerate(notebook.cells)
                          if cell.cell_type == "code" and marker in cell.source), None)
            assert index is not None, f"no code cell of {QUICKSTART.name} contains {marker!r}"
        notebook.cells.insert(index, nbformat.v4.new_code_cell(
            code, metadata={"tags": ["injected-parameters"]}))
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, destination)
    return destination


@pytest.fixture(scope="module")
def lab(start, server_root):
    root = server_root / "lab"
    copy_notebook(root / "quickstart_live.ipynb", LIVE_INJECTIONS)
    env = jupyter_home(server_root / "lab-home")
    token = new_token()
    env["JUPYTER_TOKEN"] = token             # not on the command line
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return start("jupyterlab", lab_command(root, port), env, root, url, token,
                 f"/api/status?token={token}")


@pytest.fixture(scope="module")
def voila(start, server_root):
    """The app as `kdwb app NOTEBOOK --port P --token T --no-browser` runs it, in quick mode."""
    from workbench.app import READY_PATH, plan
    root = server_root / "voila"
    root.mkdir()
    notebook = shutil.copy(QUICKSTART, root / QUICKSTART.name)
    port, token = free_port(), new_token()
    app = plan(notebook, host="127.0.0.1", port=port, token=token,
               base_env=jupyter_home(server_root / "voila-home"))
    assert token not in " ".join(app.command)
    return start("voila", app.command, app.env, root, app.url.split("?")[0].rstrip("/"), token,
                 READY_PATH)


# -- page helpers ----------------------------------------------------------------------------------
def slider(scope, label: str):
    """The ipywidgets slider whose description is exactly ``label``."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return scope.locator(".widget-slider").filter(
        has=scope.page.locator(".widget-label", has_text=exact) if hasattr(scope, "page")
        else scope.locator(".widget-label", has_text=exact))


def press_right(page, control) -> None:
    """One keyboard step to the right (focus the noUiSlider handle, press ArrowRight)."""
    control.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")


def enclosing_box(locator):
    """The nearest ipywidgets VBox around ``locator``."""
    return locator.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
                           " ' widget-vbox ')][1]")


def plot_state(plot) -> dict:
    import json
    return json.loads(plot.evaluate(PLOT_STATE))


def wait_for_plot(page, plot, predicate: str, timeout: float = 60_000):
    """Wait until ``predicate`` (JS, of the parsed plot state ``s``) holds for ``plot``; fail with
    the plot's last state and the page's errors (a plotly widget that never loaded shows there)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(f"(el) => {{ const s = JSON.parse(({PLOT_STATE})(el)); return {predicate}; }}",
                               arg=plot.element_handle(), timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"the figure never showed {predicate!r} (waited {timeout / 1000:g} s); it "
                             f"shows {plot_state(plot)}; errors in the page: {page.errors}") from None


def assert_plots_laid_out(scope) -> list[dict]:
    """Every visible plotly figure in ``scope`` (one element) is drawn at a usable size and inside
    it (plotly 6+/7 figures placed in an HBox can render broken). Returns the figures' boxes."""
    boxes = scope.evaluate("""scope => {
        const outer = scope.getBoundingClientRect();
        return [...scope.querySelectorAll('.js-plotly-plot')]
          .filter(el => el.checkVisibility())   // a figure in a hidden tab has no size
          .map(el => { const svg = el.querySelector('.main-svg');
            const r = (svg || el).getBoundingClientRect();   // the drawing, not its container
            return {top: r.top, left: r.left, right: r.right, width: r.width, height: r.height,
                    svg: !!svg, outer_left: outer.left, outer_right: outer.right}; });
    }""")
    assert boxes, "no plotly figure in the page"
    for box in boxes:
        assert box["svg"] and box["width"] > 200 and box["height"] > 150, f"a figure rendered broken: {box}"
        assert box["outer_left"] - 1 <= box["left"] and box["right"] <= box["outer_right"] + 1, \
            f"a figure is drawn beyond its widget's edge (clipped): {box}"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_x = min(a["right"], b["right"]) - max(a["left"], b["left"])
            overlap_y = min(a["top"] + a["height"], b["top"] + b["height"]) - max(a["top"], b["top"])
            assert overlap_x <= 1 or overlap_y <= 1, f"two figures overlap: {a}, {b}"
    return boxes


def check_soft_labels_slider(page, view, shot: str) -> None:
    """Move the view's temperature one step (4 -> 4.5); the bars and title change in the page."""
    control, plot = slider(view, "T"), view.locator(".js-plotly-plot")
    control.scroll_into_view_if_needed()
    assert control.locator(".widget-readout").inner_text().strip() == "4.00"
    wait_for_plot(page, plot, "s.traces.length === 2 && s.traces.every(t => t.y.length === 10)")
    before = plot_state(plot)
    press_right(page, control)
    wait_for_plot(page, plot, "s.title.includes('T=4.5')")
    after = plot_state(plot)
    assert control.locator(".widget-readout").inner_text().strip() == "4.50"
    assert [t["y"] for t in after["traces"]] != [t["y"] for t in before["traces"]]
    for trace in after["traces"]:   # still probability distributions over the 10 digits
        assert len(trace["y"]) == 10 and abs(sum(trace["y"]) - 1) < 1e-3, trace
    page.wait_for_timeout(500)   # plotly's transition, before the picture
    view.screenshot(path=str(ARTIFACTS / shot))


# -- the tests ---------------------------------------------------------------------------------------
def test_live_run_in_jupyterlab_is_steered_from_the_page(page, lab):
    page.goto(f"{lab.url}/lab/tree/quickstart_live.ipynb?token={lab.token}")
    page.wait_for_function(NOTEBOOK_READY, arg="quickstart_live.ipynb")
    page.evaluate(RUN_ALL)

    dashboard = page.locator(".widget-vbox").filter(
        has=page.get_by_role("button", name="Pause")).first
    status = dashboard.locator(".widget-html").filter(has_text=re.compile(r"step \d+/\d+")).first
    page.wait_for_function("el => /in use: .*kd\\.temperature 4\\b/"
                           ".test(el.textContent)", arg=status.element_handle())

    # the loss figure keeps growing while the run trains (pushed by the training thread)
    loss = dashboard.locator(".js-plotly-plot").first
    wait_for_plot(page, loss, "s.title === 'loss terms' && s.traces.length > 0 && s.traces[0].x.length > 0")
    points = len(plot_state(loss)["traces"][0]["x"])
    wait_for_plot(page, loss, f"s.traces[0].x.length > {points}")

    # the temperature slider reaches the running trainer: 4 -> 4.2 (steps of 0.2 on 0.2..20)
    temperature = slider(dashboard, "kd.temperature")
    assert temperature.locator(".widget-readout").inner_text().strip() == "4.00"
    press_right(page, temperature)
    page.wait_for_function("el => /kd\\.temperature 4\\.2\\b/.test(el.textContent)",
                           arg=status.element_handle(), timeout=30_000)
    assert temperature.locator(".widget-readout").inner_text().strip() == "4.20"
    step = int(re.search(r"step (\d+)/", status.inner_text()).group(1))
    page.wait_for_function(f"el => +/step (\\d+)\\//.exec(el.textContent)[1] > {step}",
                           arg=status.element_handle(), timeout=30_000)   # and trains on with it

    # the soft-label view of the Dashboard (first tab) answers its own temperature slider
    views = dashboard.locator(".widget-tab")
    check_soft_labels_slider(page, enclosing_box(slider(views, "T")), "lab-dashboard-soft-labels.png")

    assert_plots_laid_out(dashboard)
    dashboard.screenshot(path=str(ARTIFACTS / "lab-dashboard-live.png"))

    dashboard.get_by_role("button", name="Stop").click()
    page.wait_for_function("el => /interrupted/.test(el.textContent)", arg=status.element_handle(),
                           timeout=30_000)
    assert dashboard.get_by_role("button", name="Stop").is_disabled()
    page.screenshot(path=str(ARTIFACTS / "lab-after-stop.png"))
    assert not page.errors, "errors in the page:\n" + "\n".join(page.errors)


def test_voila_app_renders_the_quickstart_and_its_temperature_slider(page, voila):
    page.goto(f"{voila.url}/?token={voila.token}")
    # the notebook's own SoftLabels view near the end (not the one in the Dashboard's tabs)
    standalone = page.locator(
        "xpath=//div[contains(@class, 'widget-slider')][.//label[normalize-space() = 'T']]"
        "[not(ancestor::div[contains(@class, 'widget-tab')])]")
    view = enclosing_box(standalone)
    view.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=180_000)

    check_soft_labels_slider(page, view, "voila-soft-labels.png")

    # the Dashboard of the (quick, waited-for) KD run shows the run's curves
    dashboard = page.locator(".widget-vbox").filter(
        has=page.get_by_role("button", name="Pause")).first
    assert re.search(r"\bfinished\b", dashboard.locator(".widget-html").first.inner_text())
    for plot in dashboard.locator(".js-plotly-plot").all()[:2]:   # loss terms, accuracies
        wait_for_plot(page, plot, "s.traces.length > 0 && s.traces.some(t => t.x.length > 1)")
    assert_plots_laid_out(dashboard)
    assert_plots_laid_out(page.locator("body"))
    page.wait_for_timeout(500)
    dashboard.screenshot(path=str(ARTIFACTS / "voila-dashboard.png"))
    assert not page.errors, "errors in the page:\n" + "\n".join(page.errors)
