"""Real-browser harness: Jupyter servers on 127.0.0.1 in private folders, Debian's Chromium driven by
Playwright for Python (``/work/shared/BROWSER_TESTING.md`` records what works here and why).

- Every server is started by these fixtures with ``start_new_session=True``, on a free port of
  127.0.0.1 with a random token, and stopped by its own PID (SIGTERM, then wait) at teardown.
- Jupyter's config, data-independent runtime, settings and workspace folders, IPython's folder and
  the run store (``KDWB_HOME``) live in a temporary folder; JupyterLab's news pop-up is off, and
  so is notebook windowing (cells outside the viewport would not be in the page).
- The notebooks are served from copies in that folder, so JupyterLab's autosave can never write
  outputs and widget state into ``notebooks/``.
- Screenshots go to ``tests/browser/artifacts/`` (git-ignored).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
READY_SECONDS = 120       # a server, a kernel or a Voila page on two shared cores
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process started by a fixture, its base URL, token and log."""
    name: str
    process: subprocess.Popen
    url: str
    token: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- last lines of the {self.name} log ({self.log}) ---\n" + \
            "\n".join(text.splitlines()[-lines:])


def start_server(name: str, command: list[str], env: dict[str, str], cwd: Path, url: str,
                 token: str, probe_path: str, log: Path) -> Server:
    """Start ``command`` in a new session; wait until ``url + probe_path`` answers 200."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(name, process, url, token, log)
    deadline = time.monotonic() + READY_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} before serving\n"
                               + server.log_tail())
        try:
            with urllib.request.urlopen(url + probe_path, timeout=5) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"{name} did not answer {probe_path} within {READY_SECONDS} s\n"
                               + server.log_tail())
        time.sleep(0.25)


def stop_server(server: Server) -> None:
    """SIGTERM to exactly the process this fixture started, then wait for it (it shuts down its
    kernels); SIGKILL to that same PID only if it has not exited after a minute."""
    process = server.process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def jupyter_home(root: Path) -> dict[str, str]:
    """The environment of a server whose Jupyter and IPython folders all live under ``root``."""
    folders = {name: root / name for name in ("config", "data", "runtime", "settings", "workspaces",
                                              "ipython", "kdwb")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    settings = {
        # no "would you like to receive news?" pop-up over the page
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
        # every cell in the page (with windowing, cells out of view are not in the DOM)
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = folders["settings"] / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    for variable in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_PATH", "KDWB_HEADLESS"):
        env.pop(variable, None)
    env.update(
        JUPYTER_CONFIG_DIR=str(folders["config"]), JUPYTER_DATA_DIR=str(folders["data"]),
        JUPYTER_RUNTIME_DIR=str(folders["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(folders["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(folders["workspaces"]), IPYTHONDIR=str(folders["ipython"]),
        KDWB_HOME=str(folders["kdwb"]), KDWB_QUICK="1", PYTHONUNBUFFERED="1",
        # `workbench` and `kdviz` from this checkout, installed or not
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    return env


def lab_command(root: Path, port: int) -> list[str]:
    """JupyterLab on 127.0.0.1 serving ``root``, with ``window.jupyterapp`` in the page."""
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    return command


def new_token() -> str:
    return secrets.token_urlsafe(16)
