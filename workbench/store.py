"""The run store: one SQLite file of runs, their metrics and their checkpoints.

Where: ``$KDWB_HOME/runs.sqlite`` (default ``~/.kdwb``); checkpoints go to
``$KDWB_HOME/checkpoints/<run id>/``. Writes are transactions in WAL mode, so a reader never sees a
half-written run and two processes can write at once. Every query takes parameters, never
formatted strings.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

#: 0: no version recorded; 1: + versions, error, epochs_done; 2: + pid, host (a killed run is
#: told from a live one). Older stores gain the missing columns when opened (see `_migrate`).
SCHEMA_VERSION = 2
STATUSES = ("created", "running", "finished", "interrupted", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, label TEXT, kind TEXT, dataset TEXT, student TEXT, teacher TEXT,
    methods TEXT, config TEXT NOT NULL, config_hash TEXT NOT NULL, seed INTEGER,
    status TEXT NOT NULL, created REAL, started REAL, finished REAL, duration_s REAL,
    steps INTEGER DEFAULT 0, epochs_done INTEGER DEFAULT 0, result TEXT, versions TEXT, error TEXT,
    pid INTEGER, host TEXT);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash, status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER, epoch INTEGER,
    name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name, step);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, kind TEXT NOT NULL,
    epoch INTEGER, path TEXT NOT NULL, sha256 TEXT, created REAL);
"""


def home() -> Path:
    """The workbench's folder: ``$KDWB_HOME`` or ``~/.kdwb``."""
    return Path(os.environ.get("KDWB_HOME", Path.home() / ".kdwb")).expanduser()


def model_label(spec: dict) -> str:
    """A short readable name for a model spec, e.g. ``cnn(width=8)``."""
    if not spec:
        return ""
    args = ", ".join(f"{k}={v}" for k, v in spec.items()
                     if k not in ("name", "fingerprint", "num_classes", "in_channels"))
    return f"{spec.get('name', '?')}({args})" if args else str(spec.get("name", "?"))


class StoreError(RuntimeError):
    """The run store could not be read or written (its transaction was rolled back)."""


def _use_wal(conn: sqlite3.Connection, wait: float = 30.0) -> None:
    """Put the store in WAL mode (readers never block the writer). The mode is kept in the file, so
    this only writes once; switching needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy wait, when another process creates the store at the same
    moment: then retry until ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class RunStore:
    """Runs, metrics and checkpoints in one SQLite file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else home() / "runs.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"the run store at {self.path} has schema version {version}, "
                                     f"newer than this workbench's ({SCHEMA_VERSION}); upgrade the "
                                     "workbench or set KDWB_HOME to another folder")
                if version < SCHEMA_VERSION:
                    _migrate(conn)
                conn.executescript(_SCHEMA)
                if version != SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except StoreError:
            raise
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the run store at {self.path}: {error}. "
                             f"Set KDWB_HOME to a writable folder.") from error

    @property
    def checkpoint_root(self) -> Path:
        return self.path.parent / "checkpoints"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30)  # waits up to 30 s for another writer
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the run store at {self.path}: {error}") from error
        conn.row_factory = sqlite3.Row
        try:
            _use_wal(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        except sqlite3.Error as error:  # disk full, read-only file, locked too long, damaged file
            raise StoreError(f"the run store at {self.path} could not be written or read: {error}. "
                             "This change was rolled back; the store is as it was before it. Free "
                             "disk space, or set KDWB_HOME to a writable folder.") from error
        finally:
            conn.close()

    # -- writing -------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], config_hash: str, label: str = "",
                   versions: dict[str, str] | None = None) -> str:
        run_id = uuid.uuid4().hex[:12]
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, label, kind, dataset, student, teacher, methods, config,"
                " config_hash, seed, status, created, versions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, label, config.get("kind"), config.get("dataset"),
                 model_label(config.get("student", {})), model_label(config.get("teacher", {})),
                 "+".join(sorted(config.get("methods", {}))) or "ce", json.dumps(config),
                 config_hash, config.get("seed"), "created", time.time(), json.dumps(versions or {})))
        return run_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set columns of one run (``status``, ``result``, ``steps``, ...)."""
        allowed = {"label", "status", "started", "finished", "duration_s", "steps", "epochs_done",
                   "result", "error", "config_hash", "pid", "host"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update run column(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status={fields['status']!r} is not valid; choose one of {STATUSES}")
        if "result" in fields and not isinstance(fields["result"], str):
            fields["result"] = json.dumps(fields["result"])
        columns = ", ".join(f"{name} = ?" for name in fields)  # names checked against `allowed`
        with self._connect() as conn:
            conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*fields.values(), run_id))

    def log_metrics(self, run_id: str, rows: Iterable[tuple[int, int, str, float]]) -> None:
        """Append (step, epoch, name, value) rows in one transaction."""
        with self._connect() as conn:
            conn.executemany("INSERT INTO metrics (run_id, step, epoch, name, value) VALUES (?,?,?,?,?)",
                             [(run_id, *row) for row in rows])

    def add_artifact(self, run_id: str, kind: str, path: str | Path, epoch: int | None = None,
                     sha256: str | None = None) -> None:
        with self._connect() as conn:
            conn.execute("INSERT INTO artifacts (run_id, kind, epoch, path, sha256, created)"
                         " VALUES (?,?,?,?,?,?)", (run_id, kind, epoch, str(path), sha256, time.time()))

    def delete_metrics_after(self, run_id: str, step: int) -> None:
        """Drop the metric rows of ``run_id`` logged after ``step`` (a resumed run logs them again)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))

    def delete_run(self, run_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- reading -------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any]:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r} in the store at {self.path}")
        return _decode(row)

    def find(self, config_hash: str, statuses: tuple[str, ...] = ("finished",)) -> dict | None:
        """The newest run with this config hash and one of these statuses, or None.

        A "running" row whose process is gone (killed, crashed) counts as "interrupted"."""
        asked = tuple(statuses) + (("running",) if "interrupted" in statuses else ())
        marks = ",".join("?" * len(asked))
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM runs WHERE config_hash = ? AND status IN ({marks})"
                                " ORDER BY created DESC", (config_hash, *asked)).fetchall()
        return next((run for run in map(_decode, rows) if run["status"] in statuses), None)

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """The run's checkpoints, newest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM artifacts WHERE run_id = ? AND kind = 'checkpoint'"
                                " ORDER BY epoch DESC, created DESC", (run_id,)).fetchall()
        return [dict(row) for row in rows]

    def runs(self, **filters: Any):
        """A pandas table of runs, newest first; filter by any of the text columns."""
        import pandas as pd
        allowed = {"kind", "dataset", "student", "teacher", "methods", "status", "config_hash"}
        bad = set(filters) - allowed
        if bad:
            raise ValueError(f"cannot filter runs by {sorted(bad)}; filters: {sorted(allowed)}")
        status = filters.pop("status", None)  # compared after decoding: see `_decode`
        where = " AND ".join(f"{name} = ?" for name in filters if filters[name] is not None)
        values = [v for v in filters.values() if v is not None]
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs" + (f" WHERE {where}" if where else "")
                                + " ORDER BY created DESC", values).fetchall()
        return pd.DataFrame([run for run in map(_decode, rows) if status in (None, run["status"])])

    def metrics(self, run_id: str):
        """A pandas table (step, epoch, name, value) of one run's logged metrics."""
        import pandas as pd
        with self._connect() as conn:
            rows = conn.execute("SELECT step, epoch, name, value FROM metrics WHERE run_id = ?"
                                " ORDER BY step", (run_id,)).fetchall()
        return pd.DataFrame([dict(row) for row in rows], columns=["step", "epoch", "name", "value"])

    def leaderboard(self, dataset: str | None = None, teacher: str | None = None,
                    student: str | None = None, methods: str | None = None):
        """Finished runs side by side: one row per run with its final test metrics."""
        import pandas as pd
        table = self.runs(dataset=dataset, teacher=teacher, student=student, methods=methods,
                          status="finished")
        if table.empty:
            return table
        results = pd.DataFrame(list(table["result"].map(lambda r: r or {})))
        keep = ["id", "label", "dataset", "teacher", "student", "methods", "seed", "duration_s"]
        board = pd.concat([table[keep].reset_index(drop=True), results.reset_index(drop=True)], axis=1)
        return board.sort_values("test_acc", ascending=False, ignore_index=True) \
            if "test_acc" in board else board


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    for key in ("config", "result", "versions"):
        if data.get(key):
            data[key] = json.loads(data[key])
    if data.get("status") == "running" and not _is_live(data):
        data["status"] = "interrupted"  # killed without a chance to say so; resumable
    return data


def _is_live(run: dict[str, Any]) -> bool:
    """Is the process that marked ``run`` "running" still running it?

    Known only on this machine and on POSIX: a row written elsewhere (a store shared between
    machines, another container) or without a pid (a store from before schema 2) reads as not
    live. A pid reused by a newer process is told apart by its start time (Linux).
    """
    pid = run.get("pid")
    if pid is None or run.get("host") != socket.gethostname() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    try:  # Linux: fields after the command name; [0] state, [19] start time in clock ticks
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return False  # killed, not yet reaped by its parent
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return run.get("started") is None or started <= run["started"] + 1.0
    except (OSError, ValueError, IndexError, StopIteration):
        return True


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store from an older schema up to date: add the columns its tables lack.

    The reference is `_SCHEMA` itself, built in memory; new columns are nullable (with the
    schema's default, if any), so old rows stay valid. Tables that are missing are created later
    by `_SCHEMA`. Names come from our own schema, never from input.
    """
    conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; others wait on the lock
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(_SCHEMA)
        tables = [r[0] for r in reference.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if not have:
                continue
            for _, name, kind, _, default, _ in reference.execute(f"PRAGMA table_info({table})"):
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"
                                 + (f" DEFAULT {default}" if default is not None else ""))
    finally:
        reference.close()


def leaderboard(dataset: str | None = None, **filters: Any):
    """The leaderboard of the default store (``$KDWB_HOME/runs.sqlite``)."""
    return RunStore().leaderboard(dataset=dataset, **filters)
