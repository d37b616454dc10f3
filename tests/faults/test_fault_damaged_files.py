"""Damaged files: truncated or corrupted checkpoints, a store from an older schema, two processes
writing one store at once, and writes that fail (full disk, unwritable folder)."""
import errno
import json
import sqlite3
import subprocess
import textwrap
import time

import pytest
import torch

import workbench as wb
import workbench.engine.checkpoint as checkpoint_module
from fault_helpers import PYTHON, ROOT, weights
from workbench.cli import main
from workbench.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from workbench.store import SCHEMA_VERSION, RunStore, StoreError

OPTIONS = dict(methods={"kd": {}}, epochs=3, batch_size=64, seed=3, progress=False)


def interrupted_after(epochs_done, store, digits, make_student, make_teacher):
    run = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)
    run.on("epoch_end", lambda r, epoch: r.stop() if epoch == epochs_done else None)
    run.fit()
    assert run.status == "interrupted" and run.epoch == epochs_done
    return run


def damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle: same size, same name, other content
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])


# -- checkpoints ------------------------------------------------------------------------------
def test_load_checkpoint_names_what_is_wrong(tmp_path):
    path = tmp_path / "c.pt"
    digest = save_checkpoint(path, {"w": torch.ones(3)})
    assert torch.equal(load_checkpoint(path, digest)["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    damage(path, "corrupted")
    with pytest.raises(CheckpointError, match="is damaged: its SHA-256 does not match"):
        load_checkpoint(path)  # the .sha256 written beside it
    (tmp_path / "c.pt.sha256").unlink()
    damage(path, "truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)  # no checksum known: torch itself refuses the truncated file


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_previous_good_one_used(
        how, digits, make_student, make_teacher, capsys):
    whole = wb.distill(make_student(), make_teacher(), digits, store=None, **OPTIONS).fit()
    store = RunStore()
    first = interrupted_after(2, store, digits, make_student, make_teacher)
    newest = store.checkpoints(first.run_id)[0]
    assert newest["epoch"] == 2
    damage(store.checkpoint_root / first.run_id / "epoch_0002.pt", how)
    capsys.readouterr()
    resumed = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)
    started_at = []
    resumed.on("run_start", lambda r, _: started_at.append(r.epoch))
    resumed.fit()
    assert "skipping checkpoint" in capsys.readouterr().out
    assert started_at == [1] and resumed.run_id == first.run_id and resumed.status == "finished"
    assert torch.equal(weights(resumed.student), weights(whole.student))


def test_when_every_checkpoint_is_damaged_the_run_starts_over_and_says_so(digits, make_student,
                                                                         make_teacher, capsys):
    store = RunStore()
    first = interrupted_after(1, store, digits, make_student, make_teacher)
    damage(store.checkpoint_root / first.run_id / "epoch_0001.pt", "corrupted")
    again = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS).fit()
    out = capsys.readouterr().out
    assert f"skipping checkpoint {store.checkpoint_root / first.run_id / 'epoch_0001.pt'} is damaged" in out
    assert again.status == "finished" and again.run_id != first.run_id and again.epoch == 3


def test_a_finished_run_with_a_damaged_final_checkpoint_is_not_reused(digits, make_student, make_teacher,
                                                                     capsys):
    store = RunStore()
    first = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS).fit()
    damage(store.checkpoint_root / first.run_id / "epoch_0003.pt", "truncated")
    capsys.readouterr()
    again = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS).fit()
    out = capsys.readouterr().out
    assert "finished but its last checkpoint is damaged; training again" in out
    assert again.status == "finished" and again.run_id != first.run_id
    assert torch.equal(weights(again.student), weights(first.student))


# -- schema migration -------------------------------------------------------------------------
V0 = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, label TEXT, kind TEXT, dataset TEXT, student TEXT, teacher TEXT,
    methods TEXT, config TEXT NOT NULL, config_hash TEXT NOT NULL, seed INTEGER,
    status TEXT NOT NULL, created REAL, started REAL, finished REAL, duration_s REAL,
    steps INTEGER DEFAULT 0, result TEXT);
CREATE TABLE metrics (run_id TEXT NOT NULL, step INTEGER, epoch INTEGER, name TEXT NOT NULL, value REAL);
"""


def columns(path, table):
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_a_store_from_an_older_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:  # version 0: no versions/error/epochs_done/pid/host, no artifacts
        conn.executescript(V0)
        conn.execute("INSERT INTO runs (id, label, kind, dataset, methods, config, config_hash, seed, status,"
                     " created, result) VALUES ('old1', 'cnn:kd', 'distill', 'digits', 'kd', ?, 'h0', 0,"
                     " 'finished', 1.0, ?)", (json.dumps({"epochs": 1}), json.dumps({"test_acc": 0.9})))
        conn.execute("INSERT INTO runs (id, config, config_hash, status, created) VALUES"
                     " ('old2', '{}', 'h1', 'running', 2.0)")
        conn.execute("INSERT INTO metrics VALUES ('old1', 10, 1, 'loss', 0.5)")
    assert "pid" not in columns(path, "runs")

    store = RunStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {"versions", "error", "epochs_done", "pid", "host"} <= set(columns(path, "runs"))
    assert "sha256" in columns(path, "artifacts")
    old = store.get("old1")
    assert old["status"] == "finished" and old["result"] == {"test_acc": 0.9} and old["epochs_done"] == 0
    assert store.get("old2")["status"] == "interrupted"  # "running" with no process recorded
    assert list(store.metrics("old1")["value"]) == [0.5]
    assert list(store.leaderboard()["id"]) == ["old1"]
    new = store.create_run({"kind": "train"}, "h2", "new", {"torch": "x"})
    store.update_run(new, status="failed", error="boom", pid=1, host="h")
    store.add_artifact(new, "checkpoint", tmp_path / "x.pt", epoch=1, sha256="0")
    assert store.get(new)["error"] == "boom" and len(store.runs()) == 3
    RunStore(path)  # opening a migrated store again changes nothing
    assert len(RunStore(path).runs()) == 3


def test_a_store_from_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this "
                                         rf"workbench's \({SCHEMA_VERSION}\); upgrade"):
        RunStore(path)


# -- two writers at once ------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import importlib.util, sys, time
    from pathlib import Path
    # the store module alone (no torch import): the writers start within milliseconds
    spec = importlib.util.spec_from_file_location("kdwb_store", sys.argv[1])
    store_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(store_module)
    go, name, runs, chunks, rows = Path(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:8])
    while not go.exists():
        time.sleep(0.001)
    store = store_module.RunStore(sys.argv[2])  # both open (and create) the store at once
    for r in range(runs):
        run_id = store.create_run({"kind": "train", "seed": r}, f"{name}-{r}", f"{name}-{r}")
        store.update_run(run_id, status="running", pid=0, host=name)
        for c in range(chunks):
            store.log_metrics(run_id, [(c * rows + i, 0, "loss", float(i)) for i in range(rows)])
        store.update_run(run_id, status="finished", steps=chunks * rows)
""")


def test_two_processes_writing_one_store_at_once_lose_no_rows(tmp_path):
    script, go, path = tmp_path / "writer.py", tmp_path / "go", tmp_path / "shared" / "runs.sqlite"
    script.write_text(WRITER)
    runs, chunks, rows = 15, 8, 25
    procs = [subprocess.Popen([PYTHON, str(script), str(ROOT / "workbench" / "store.py"), str(path), str(go),
                               name, str(runs), str(chunks), str(rows)], stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    time.sleep(0.5)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = RunStore(path)
    table = store.runs()
    assert len(table) == 2 * runs and set(table["status"]) == {"finished"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2 * runs * chunks * rows
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for run_id in table["id"]:
        assert len(store.metrics(run_id)) == chunks * rows


# -- writes that fail ----------------------------------------------------------------------------
@pytest.fixture
def full_disk(monkeypatch):
    """Every new store connection may not grow the file: SQLite answers 'database or disk is full'."""
    import workbench.store as store_module
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        return conn

    def fill():
        monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    return fill


def test_a_store_write_on_a_full_disk_fails_clearly_and_changes_nothing(tmp_path, full_disk):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run({"kind": "train"}, "h", "before")
    store.log_metrics(run_id, [(0, 0, "loss", 1.0)])
    full_disk()
    with pytest.raises(StoreError, match=r"the run store at .*runs.sqlite could not be written or read: "
                                         r"database or disk is full\. This change was rolled back"):
        store.log_metrics(run_id, [(i, 0, "loss", float(i)) for i in range(20_000)])
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 1
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_checkpoint_write_on_a_full_disk_fails_the_run_clearly_and_keeps_the_last_checkpoint(
        digits, make_student, make_teacher, monkeypatch):
    writes = []
    real_open = open

    class FullDisk:
        """A file that takes half of what is written, then reports ENOSPC."""

        def __init__(self, path, mode):
            self.handle = real_open(path, mode)

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def open_(path, mode="r", *args, **kwargs):
        writes.append(path)
        return FullDisk(path, mode) if len(writes) >= 2 else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", open_, raising=False)
    store = RunStore()
    run = wb.distill(make_student(), make_teacher(), digits, store=store, **OPTIONS)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*epoch_0002\.pt: \[Errno 28\] No space "
                                              r"left on device\. Earlier checkpoints are kept"):
        run.fit()
    row = store.get(run.run_id)
    assert row["status"] == "failed" and "No space left on device" in row["error"]
    assert [a["epoch"] for a in store.checkpoints(run.run_id)] == [1]
    folder = store.checkpoint_root / run.run_id
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0001.pt", "epoch_0001.pt.sha256"]  # no .tmp
    assert load_checkpoint(folder / "epoch_0001.pt")["epoch"] == 1


def test_an_unwritable_home_fails_before_training_with_a_clear_error(tmp_path, monkeypatch, digits,
                                                                    make_student, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where KDWB_HOME should be a folder")
    monkeypatch.setenv("KDWB_HOME", str(blocker))
    with pytest.raises(StoreError, match=r"cannot open the run store at .*not_a_folder/runs.sqlite: .*"
                                         r"Set KDWB_HOME to a writable folder"):
        wb.train(make_student(), digits)
    assert main(["runs", "list"]) == 2
    err = capsys.readouterr().err
    assert "Set KDWB_HOME to a writable folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes to read-only folders anyway")
def test_a_read_only_home_fails_with_a_clear_error(tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    home.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Set KDWB_HOME to a writable folder"):
            RunStore(home / "runs.sqlite")
    finally:
        home.chmod(0o700)


OPENER = textwrap.dedent("""
    import importlib.util, sys, time
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("kdwb_store", sys.argv[1])
    store_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(store_module)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.001)
    store_module.RunStore(sys.argv[2])
""")


def test_six_processes_creating_one_store_at_once_all_open_it(tmp_path):
    # switching a new store to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once (no busy wait) when another process is creating the file: 3 of 90 such
    # opens failed before the store retried the switch
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    for trial in range(5):
        path, go = tmp_path / f"t{trial}" / "runs.sqlite", tmp_path / f"go{trial}"
        path.parent.mkdir()
        procs = [subprocess.Popen([PYTHON, str(script), str(ROOT / "workbench" / "store.py"), str(path), str(go)],
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        time.sleep(0.5)
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
