"""Interruptions: a stopped cell (KeyboardInterrupt inside fit), `run.stop()`, and a killed process
(SIGKILL). Afterwards the store shows the run as interrupted, and a resumed run continues from its
last checkpoint and ends with the same weights as a run that was never interrupted (CPU)."""
import os
import signal
import sqlite3
import subprocess
import textwrap
import time

import pytest
import torch

import workbench as wb
from fault_helpers import PYTHON, ROOT, child_env, weights
from workbench.cli import main
from workbench.store import RunStore

# 256 images in batches of 32: 8 steps an epoch
OPTIONS = dict(methods={"kd": {"temperature": 3.0}}, epochs=3, batch_size=32, seed=7, progress=False)


@pytest.fixture
def uninterrupted(digits, make_student, make_teacher):
    return wb.distill(make_student(), make_teacher(), digits, store=None, **OPTIONS).fit()


def metric_rows(store, run_id):
    table = store.metrics(run_id)
    return sorted(map(tuple, table[["step", "epoch", "name", "value"]].itertuples(index=False)))


def assert_resumes_to_the_same_weights(store, interrupted, uninterrupted, digits, make_student, make_teacher):
    resumed = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS).fit()
    assert resumed.run_id == interrupted.run_id and resumed.status == "finished"
    assert store.get(resumed.run_id)["status"] == "finished"
    assert torch.equal(weights(resumed.student), weights(uninterrupted.student))
    assert resumed.history == uninterrupted.history
    rows = metric_rows(store, resumed.run_id)
    keys = [(step, name) for step, _, name, _ in rows]
    assert len(keys) == len(set(keys)), "a resumed run logged some steps twice"
    return resumed


def test_keyboard_interrupt_mid_epoch_marks_interrupted_and_resume_equals_uninterrupted(
        digits, make_student, make_teacher, uninterrupted):
    store = RunStore()
    run = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)

    def press_stop(run, metrics):  # what Jupyter's "interrupt kernel" does to a blocking cell
        if run.step == 11:
            raise KeyboardInterrupt

    run.on("step_end", press_stop)
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert run.status == "interrupted" and run.step == 11 and run.epoch == 1
    assert store.get(run.run_id)["status"] == "interrupted"
    assert [a["epoch"] for a in store.checkpoints(run.run_id)] == [1]
    assert_resumes_to_the_same_weights(store, run, uninterrupted, digits, make_student, make_teacher)


def test_run_stop_from_another_thread_mid_epoch_then_resume(digits, make_student, make_teacher, uninterrupted):
    store = RunStore()
    run = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)
    run.on("step_end", lambda r, m: time.sleep(0.01))
    run.start()
    deadline = time.time() + 60
    while run.step < 10 and time.time() < deadline:
        time.sleep(0.005)
    run.stop()
    run.join(timeout=60)
    assert not run.is_alive and run.status == "interrupted" and run.epoch < 3
    assert store.get(run.run_id)["status"] == "interrupted"
    assert_resumes_to_the_same_weights(store, run, uninterrupted, digits, make_student, make_teacher)


CHILD = textwrap.dedent("""
    import time
    import torch
    import workbench as wb
    torch.set_num_threads(1)
    data = wb.data.load("digits", n_train=256)
    torch.manual_seed(1)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
    torch.manual_seed(0)
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    run = wb.distill(student, teacher, data, methods={"kd": {"temperature": 3.0}}, epochs=3,
                     batch_size=32, seed=7, progress=False)
    run.on("step_end", lambda r, m: time.sleep(0.1))  # slow enough to be killed mid-epoch
    run.fit()
""")


def test_sigkill_mid_epoch_shows_interrupted_and_resumes_to_the_same_weights(
        digits, make_student, make_teacher, uninterrupted, private_home, tmp_path, capsys):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([PYTHON, str(script)], cwd=ROOT, env=child_env(private_home),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = RunStore()
    try:
        deadline = time.time() + 240
        run_id = None
        while time.time() < deadline and child.poll() is None:
            table = store.runs()
            if not table.empty and table["epochs_done"][0] >= 1:  # written after the checkpoint
                run_id = table["id"][0]
                break
            time.sleep(0.05)
        assert run_id is not None, f"the child wrote no checkpoint: {child.communicate()[1][-3000:]}"
        time.sleep(0.3)  # a few steps (0.1 s each) into epoch 2
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(store.path) as conn:  # as written: the process had no chance to say so
        status, pid = conn.execute("SELECT status, pid FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert status == "running" and pid == child.pid
    row = store.get(run_id)
    assert row["status"] == "interrupted" and row["epochs_done"] == 1
    assert 8 <= max(store.metrics(run_id)["step"]) < 24  # the kill came after epoch 1, before the end
    assert main(["runs", "list"]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "interrupted" in listing and "running" not in listing

    interrupted = type("Killed", (), {"run_id": run_id})
    assert_resumes_to_the_same_weights(store, interrupted, uninterrupted, digits, make_student, make_teacher)


def test_a_live_running_row_is_shown_running_and_is_not_taken_over(digits, make_student, make_teacher):
    """A run that is really running (this process, another thread) is neither shown as interrupted
    nor resumed by a second run of the same config."""
    store = RunStore()
    first = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)
    first.on("step_end", lambda r, m: time.sleep(0.02))
    first.start()
    try:
        deadline = time.time() + 60
        while not store.checkpoints(first.run_id or "-") and time.time() < deadline:
            time.sleep(0.01)
        assert store.get(first.run_id)["status"] == "running"
        assert store.find(first.config.hash(), ("interrupted",)) is None
    finally:
        first.stop()
        first.join(timeout=60)
    assert store.get(first.run_id)["status"] == "interrupted"
    assert store.find(first.config.hash(), ("interrupted",))["id"] == first.run_id


def test_ctrl_c_on_the_command_line_marks_the_run_interrupted(monkeypatch, capsys):
    from workbench.engine.trainer import Run
    real_step = Run._train_step

    def step_then_ctrl_c(self, batch):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Run, "_train_step", step_then_ctrl_c)
    assert main(["train", "--epochs", "2", "--n-train", "256", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "kdwb: interrupted; the run is marked interrupted" in err and "Traceback" not in err
    runs = RunStore().runs()
    assert list(runs["status"]) == ["interrupted"] and list(runs["steps"]) == [3]
