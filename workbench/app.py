"""`kdwb app`: a notebook served as a web app with Voila (outputs and widgets, no code), for teaching.

    kdwb app                                  # the quickstart, on http://127.0.0.1:8866/
    kdwb app notebooks/10_sources_logit.ipynb --port 8900
    kdwb app --host 0.0.0.0                   # reachable by others: a token is generated and printed

Voila runs the whole notebook in a fresh kernel for every page that is opened, so every visitor gets
their own kernel (and their own training runs). The kernel gets the environment of this command:
``KDWB_QUICK=1 kdwb app`` serves the notebook in quick mode.

Safety: the server binds to 127.0.0.1 unless ``--host`` says otherwise. Anyone who can open a Voila
page can drive its kernel, so on any other address a token is required: one is generated when
``--token`` is not given, and an empty token is refused. The token travels to Voila in its
environment (``JUPYTER_TOKEN``), not on its command line, where other users of the machine could
read it.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8866
SOURCE_ROOT = Path(__file__).resolve().parents[1]       # the checkout holding workbench/
QUICKSTART = SOURCE_ROOT / "notebooks" / "00_quickstart.ipynb"
READY_PATH = "/voila/static/voila.js"                   # answers once the server is up


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to serve with: as given; generated off loopback when none is given.

    Raises ValueError (``kdwb`` exits 2) for an empty token on an address others can reach.
    """
    if token is not None and not token.strip():
        if not is_loopback(host):
            raise ValueError(f"refusing to serve on {host} without a token: anyone who can reach "
                             "it could run code in the app's kernel. Leave out --token to get one "
                             "generated, or pass a non-empty one")
        return None
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def app_url(host: str, port: int, token: str | None) -> str:
    """The address to open. A wildcard host (0.0.0.0, ::) is shown as this machine's name."""
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:  # an IPv6 address
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


@dataclass
class AppPlan:
    """What ``kdwb app`` runs: Voila's command line, its environment and the URL to open."""
    notebook: Path
    host: str
    port: int
    token: str | None
    command: list[str]
    env: dict[str, str] = field(repr=False)
    url: str
    local_url: str      # the same server seen from this machine (what a local browser opens)


def plan(notebook: str | os.PathLike | None = None, host: str = DEFAULT_HOST,
         port: int = DEFAULT_PORT, token: str | None = None,
         base_env: dict[str, str] | None = None) -> AppPlan:
    """Check the arguments and build the Voila command line, without starting anything."""
    path = Path(notebook) if notebook is not None else QUICKSTART
    if not path.is_file():
        hint = "" if notebook is not None else "; pass a notebook: kdwb app NOTEBOOK"
        raise ValueError(f"no notebook at {path}{hint}")
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook (.ipynb)")
    if not 0 < port < 65536:
        raise ValueError(f"--port {port} is not valid; use 1..65535")
    if importlib.util.find_spec("voila") is None:
        raise ValueError("app mode needs Voila, which is not installed: pip install voila "
                         "(or pip install -e '.[dev]')")
    token = resolve_token(host, token)
    command = [sys.executable, "-m", "voila", str(path.resolve()),
               f"--Voila.ip={host}", f"--port={port}",
               "--Voila.port_retries=0",   # a busy port is an error, not a silently different URL
               "--no-browser",             # Voila would open the page without the token
               # Show each cell's outputs as it runs. The widgets then exist in the page while the
               # notebook updates them (plotly FigureWidgets do not keep updates made before a
               # page shows them), and they load a few at a time (each plotly FigureWidget loads
               # a 5 MB script, and anywidget gives up on a widget after 2 s).
               "--progressive_rendering=True"]
    env = dict(os.environ if base_env is None else base_env)
    env.pop("JUPYTER_TOKEN", None)
    if token:
        command.append("--token")          # Voila reads the token from JUPYTER_TOKEN
        env["JUPYTER_TOKEN"] = token
    if (SOURCE_ROOT / "pyproject.toml").is_file():   # a source checkout: the kernel imports this one
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    local_host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return AppPlan(path, host, port, token, command, env, app_url(host, port, token),
                   app_url(local_host, port, token))


def wait_until_serving(url: str, timeout: float = 120.0) -> bool:
    """Poll Voila's static script under ``url`` (a base URL, token ignored) until it answers."""
    probe = url.split("?")[0].rstrip("/") + READY_PATH
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(probe, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def serve(app: AppPlan, open_browser: bool = True) -> int:
    """Run Voila until it exits or Ctrl-C; return its exit status."""
    print(f"kdwb app: serving {app.notebook} with Voila at\n    {app.url}\n"
          "(every visitor gets a fresh kernel that runs the whole notebook; Ctrl-C stops)",
          flush=True)
    process = subprocess.Popen(app.command, env=app.env)
    if open_browser:
        threading.Thread(target=lambda: wait_until_serving(app.local_url)
                         and webbrowser.open(app.local_url), daemon=True).start()
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return 130
