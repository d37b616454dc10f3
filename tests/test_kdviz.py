"""kdviz widgets, headless: set a control's value from Python, assert the figure follows the math."""
import time

import ipywidgets
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import kdviz
import workbench as wb
from kdviz.dashboard import Curve, slider_range
from workbench.probes.attention import at_map, mass_inside, top_q_iou, upsample_to
from workbench.probes.similarity import cosine_similarity_matrix, gram_similarity_matrix
from workbench.probes.soft_labels import entropy, soft_labels
from workbench.probes.survey import normalise_category
from workbench.store import RunStore
from workbench.taps import capture


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits")


@pytest.fixture(scope="module")
def shapes():
    return wb.data.load("shapes", n_train=64, n_test=8)


def cnn(width, channels=1, seed=0, sharp=1.0):
    torch.manual_seed(seed)
    model = wb.models.build("cnn", num_classes=10, in_channels=channels, width=width).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(sharp)  # confident logits, so temperature visibly matters
    return model


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def static_ok(widget):
    fig = widget.figure()
    assert type(fig) is go.Figure and len(fig.data) > 0
    return fig


# -- SoftLabels ----------------------------------------------------------------------------------
def test_soft_labels_temperature_flattens_the_bars(digits):
    view = kdviz.SoftLabels(cnn(16, sharp=30), cnn(4, seed=1), digits.test.x[:4], digits.test.y[:4],
                            digits.class_names, temperature=1.0, top_k=10)
    assert isinstance(view, ipywidgets.VBox)
    teacher_bars = np.array(view.fig.data[0].y)
    before = view.stats["teacher_entropy"]
    view.temperature_slider.value = 7.999999999999999
    assert view.stats["temperature"] == 8.0
    assert view.stats["teacher_entropy"] > before
    flatter = np.array(view.fig.data[0].y)
    assert flatter.max() < teacher_bars.max() and flatter.std() < teacher_bars.std()
    # the bars are the probe's numbers
    expected = soft_labels(view.teacher_logits[0], 8.0)
    assert sorted(flatter, reverse=True) == pytest.approx(sorted(expected.tolist(), reverse=True))
    assert view.stats["teacher_entropy"] == pytest.approx(float(entropy(expected)))
    assert view.stats["kl_t2"] == pytest.approx(64 * view.stats["kl"])
    static_ok(view)


def test_soft_labels_input_selector_and_rest_bar(digits):
    view = kdviz.SoftLabels(cnn(16, sharp=30), cnn(4, seed=1), digits.test.x[:4], digits.test.y[:4],
                            digits.class_names, top_k=3)
    assert view.fig.data[0].x[-1] == "rest" and len(view.fig.data[0].x) == 4
    for trace in view.fig.data:
        assert float(np.sum(trace.y)) == pytest.approx(1.0)
    first = np.array(view.fig.data[1].y)
    view.input_selector.value = 2
    assert view.stats["input"] == 2 and view.stats["target"] == digits.class_names[int(digits.test.y[2])]
    assert not np.allclose(np.array(view.fig.data[1].y), first)
    assert "input #2" in view.fig.layout.title.text


# -- AttentionMaps -------------------------------------------------------------------------------
def test_attention_maps_scores_follow_q_and_layers(shapes):
    teacher, student = cnn(16, channels=3), cnn(8, channels=3, seed=1)
    view = kdviz.AttentionMaps(teacher, student, shapes.test.x[:4], shapes.test.extras["mask"][:4],
                               mean=shapes.meta["mean"], std=shapes.meta["std"], q=0.2)
    assert view.teacher_layer.value == "stage3" and view.fig.data[0].z.shape == (32, 32, 3)
    # the drawn teacher map is the probe's AT map, upsampled and scaled to max 1
    with torch.no_grad():
        out = capture(teacher, shapes.test.x[:4], ["stage3"])
    expected = upsample_to(at_map(out.features["stage3"]), (32, 32))[0]
    expected = expected / expected.max()
    assert np.allclose(view.fig.data[2].z, expected.numpy(), atol=1e-5)
    mask = shapes.test.extras["mask"][0]
    assert view.scores["teacher"]["mass_inside"] == pytest.approx(float(mass_inside(expected, mask)), abs=1e-5)
    iou = view.scores["teacher"]["iou"]
    view.q_slider.value = 0.6000000000000001
    assert view.scores["teacher"]["iou"] == pytest.approx(float(top_q_iou(expected, mask, 0.6)), abs=1e-6)
    assert view.scores["teacher"]["iou"] != iou
    assert "IoU@0.6" in view.fig.layout.annotations[2].text
    before = np.array(view.fig.data[2].z)
    view.teacher_layer.value = "stage1"
    assert not np.allclose(np.array(view.fig.data[2].z), before)
    view.input_selector.value = 3
    assert np.array_equal(view.fig.data[1].z, shapes.test.extras["mask"][3].float().numpy())
    static_ok(view)


def test_attention_maps_vit_rollout(shapes):
    vit = wb.models.build("vit_tiny", num_classes=10, in_channels=3, depth=2, dim=32, heads=2)
    view = kdviz.AttentionMaps(cnn(8, channels=3), vit, shapes.test.x[:2])
    assert list(view.student_maps) == ["block0", "block1"] and view.student_layer.value == "block1"
    assert view.scores == {} and view.q_slider.disabled and len(view.fig.data) == 3
    assert view.student_maps["block1"].shape == (2, 32, 32)


# -- Similarity ----------------------------------------------------------------------------------
def test_similarity_kind_and_layers(digits):
    teacher, student = cnn(16), cnn(4, seed=1)
    view = kdviz.Similarity(teacher, student, digits.test.x[:16], labels=digits.test.y[:16])
    assert view.teacher_layer.value == "stage3"
    assert np.allclose(np.diag(view.fig.data[0].z), 1.0, atol=1e-5)      # cosine: cos(x, x) = 1
    assert view.fig.data[5].z.shape == (5, 5)                            # stages, embedding, logits
    view.kind_selector.value = "gram"
    expected = gram_similarity_matrix(view.teacher_features["stage3"])
    assert np.allclose(view.fig.data[0].z, expected.numpy(), atol=1e-6)
    view.student_layer.value = "logits"
    s = view.student_features["logits"]
    assert np.allclose(view.fig.data[1].z, gram_similarity_matrix(s).numpy(), atol=1e-6)
    assert np.allclose(view.fig.data[2].z, (gram_similarity_matrix(s) - expected).numpy(), atol=1e-6)
    assert view.summary["cka"] == pytest.approx(float(view.cka[2, 4]))
    view.kind_selector.value = "cosine"
    assert np.allclose(view.fig.data[1].z, cosine_similarity_matrix(s).numpy(), atol=1e-6)
    static_ok(view)


# -- Dashboard -----------------------------------------------------------------------------------
def test_curve_thins_evenly_and_keeps_the_last_point():
    curve = Curve(limit=50)
    for step in range(10_001):
        curve.add(step, float(step))
    x, y = curve.arrays()
    assert len(x) <= 101 and x[-1] == 10_000 and np.array_equal(x, y)
    assert len(set(np.diff(x[:-1]))) == 1                                # evenly spaced


def test_slider_range():
    assert slider_range(4.0, "positive") == (0.2, 20, 0.2)
    assert slider_range(0.9, "nonnegative") == (0.0, 5, 0.05)
    assert slider_range(0.3, "unit") == (0.0, 1.0, 0.01)


def test_dashboard_controls_a_live_run(digits):
    teacher, student = cnn(16), cnn(4, seed=1)
    run = wb.distill(student, teacher, digits, methods={"kd": {"temperature": 4.0, "weight": 0.9}},
                     store=None, progress=False, epochs=40, log_every=5, seed=0)
    dash = kdviz.Dashboard(run, probe_every=10, probe_n=4)
    assert dash in run.callbacks and set(dash.controls) == {"kd.weight", "kd.temperature", "task_weight"}
    assert set(dash.views) == {"soft labels", "attention", "similarity"}
    flushes = []
    flush = dash._flush
    dash._flush = lambda: (flushes.append(time.monotonic()), flush())[1]
    logits_before = dash.views["soft labels"].student_logits.clone()
    started = time.monotonic()
    run.start()
    try:
        wait_for(lambda: run.step >= 5)
        dash.controls["kd.temperature"].value = 7.999999999999999
        dash.controls["kd.weight"].value = 0.5
        dash.controls["task_weight"].value = 0.25
        set_by = run.step  # the worker may run on while this thread is descheduled
        wait_for(lambda: run.methods["kd"].temperature == 8.0 and run.methods["kd"].weight == 0.5, 10)
        applied = next(c["step"] for c in run.live_changes if "kd.temperature" in c)
        assert applied <= set_by + 1                                      # applied at the next step
        wait_for(lambda: run.active_task_weight == 0.25, 10)              # the applied value
        dash.pause_button.click()
        time.sleep(0.3)
        paused_at = run.step
        time.sleep(0.4)
        assert run.step == paused_at and run.is_alive and "paused" in dash.status.value
        dash.resume_button.click()
        wait_for(lambda: run.step > paused_at + 20, 30)
    finally:
        dash.stop_button.click()
        run.join(30)
    elapsed = time.monotonic() - started
    assert not run.is_alive and run.status == "interrupted" and "interrupted" in dash.status.value
    traces = {t.name: t for t in dash.loss_fig.data}
    assert {"loss", "ce", "kd.kl"} <= set(traces)
    assert len(traces["loss"].x) > 3 and traces["loss"].x[-1] == run.history[-1]["step"]
    assert np.allclose(traces["kd.kl"].y[-1], run.history[-1]["kd.kl"])
    accuracy = {t.name: t for t in dash.accuracy_fig.data}
    assert len(accuracy["test_acc"].x) == len(run.evals) > 0
    # throttled: at most one push per push_every, plus the final one
    assert 2 <= len(flushes) <= elapsed / dash.push_every + 2
    assert min(np.diff(flushes[:-1]), default=1.0) >= dash.push_every * 0.99
    assert not torch.equal(dash.views["soft labels"].student_logits, logits_before)
    assert dash.pause_button.disabled
    fig = static_ok(dash)
    assert {"loss", "kd.kl", "test_acc"} <= {t.name for t in fig.data}


# -- SurveyMap and Leaderboard -------------------------------------------------------------------
def test_survey_map_shows_every_registered_category():
    view = kdviz.SurveyMap()
    trace = view.fig.data[0]
    ids = list(trace.ids)
    hover = dict(zip(ids, trace.hovertext))
    colours = dict(zip(ids, trace.marker.colors))
    for entry in wb.METHODS:
        key = normalise_category(entry.meta["category"])
        leaf = next(i for i in ids if i.split("/")[-1] == key)
        assert entry.name in hover[leaf] and colours[leaf] != "#d9d9d9"
    planned = [i for i, label in zip(ids, trace.labels) if label.endswith("(planned)")]
    assert planned and all(colours[i] == "#d9d9d9" for i in planned)
    view.kind_selector.value = "treemap"
    assert isinstance(view.fig.data[0], go.Treemap) and list(view.fig.data[0].ids) == ids
    static_ok(view)


def add_run(store, dataset, teacher, student, methods, test_acc, status="finished"):
    config = {"kind": "distill", "dataset": dataset, "seed": 0, "methods": {m: {} for m in methods},
              "teacher": {"name": "cnn", "width": teacher}, "student": {"name": "cnn", "width": student}}
    run_id = store.create_run(config, f"hash-{dataset}-{methods}-{test_acc}", label=f"{'+'.join(methods)}")
    store.update_run(run_id, status=status, result={"test_acc": test_acc, "agreement": 0.9})
    return run_id


def test_leaderboard_filters_runs_from_the_store():
    store = RunStore()                                        # $KDWB_HOME: a temp dir per test
    add_run(store, "digits", 32, 8, ["kd"], 0.91)
    add_run(store, "digits", 32, 4, ["at", "kd"], 0.95)
    add_run(store, "shapes", 16, 8, ["dkd"], 0.70)
    add_run(store, "digits", 32, 8, ["kd"], 0.99, status="running")   # not finished: not shown
    view = kdviz.Leaderboard()
    assert list(view.fig.data[1].y) == pytest.approx([0.95, 0.91, 0.70])
    assert set(view.filters["method"].options) == {"(all)", "at", "dkd", "kd"}
    view.filters["dataset"].value = "shapes"
    assert list(view.rows["methods"]) == ["dkd"] and len(view.fig.data[1].x) == 1
    view.filters["dataset"].value = "(all)"
    view.filters["method"].value = "kd"
    assert list(view.rows["methods"]) == ["at+kd", "kd"]
    view.filters["student"].value = "cnn(width=8)"
    assert list(view.fig.data[1].y) == pytest.approx([0.91])
    assert "test_acc" in view.fig.data[0].header.values
    add_run(store, "digits", 32, 8, ["kd"], 0.93)
    view.refresh()                                           # filters kept, the new run shows
    assert list(view.fig.data[1].y) == pytest.approx([0.93, 0.91])
    static_ok(view)


def test_leaderboard_of_an_empty_store():
    view = kdviz.Leaderboard(dataset="digits")
    assert view.rows.empty and "no finished runs" in view.readout.value
    assert view.filters["dataset"].value == "digits"
