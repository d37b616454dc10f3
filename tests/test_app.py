"""`kdwb app`: where it binds, when it needs a token, and the Voila command line it runs (no browser,
no server; tests/browser/ serves the app for real)."""
import sys

import pytest

from workbench import app
from workbench.cli import main


def test_by_default_it_serves_the_quickstart_on_loopback_without_a_token():
    plan = app.plan(base_env={"JUPYTER_TOKEN": "left-over", "PATH": "/bin"})
    assert plan.notebook == app.QUICKSTART and plan.notebook.is_file()
    assert (plan.host, plan.port, plan.token) == ("127.0.0.1", 8866, None)
    assert plan.command[:4] == [sys.executable, "-m", "voila", str(app.QUICKSTART.resolve())]
    assert "--Voila.ip=127.0.0.1" in plan.command and "--port=8866" in plan.command
    assert "--no-browser" in plan.command            # kdwb opens the page itself, with the token
    assert "--Voila.port_retries=0" in plan.command  # a busy port fails, the printed URL stays true
    assert "--token" not in plan.command
    assert "JUPYTER_TOKEN" not in plan.env           # not even one inherited from the shell
    assert plan.url == "http://127.0.0.1:8866/"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_token(host):
    assert app.is_loopback(host)
    assert app.plan(host=host, port=9000).token is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "myhost.example.org"])
def test_any_other_address_gets_a_generated_token(host):
    first, second = app.plan(host=host, port=9000), app.plan(host=host, port=9000)
    assert not app.is_loopback(host)
    assert first.token and len(first.token) >= 32 and first.token != second.token
    assert first.url.endswith(f":9000/?token={first.token}")
    # Voila reads it from its environment: other users can see a command line, not an environment
    assert "--token" in first.command and first.env["JUPYTER_TOKEN"] == first.token
    assert all(first.token not in part for part in first.command)
    assert f"--Voila.ip={host}" in first.command


def test_a_given_token_is_used_as_is():
    plan = app.plan(host="0.0.0.0", port=9000, token="s3cret-token")
    assert plan.token == "s3cret-token" and plan.env["JUPYTER_TOKEN"] == "s3cret-token"
    assert plan.url.endswith("/?token=s3cret-token")
    assert plan.local_url == "http://127.0.0.1:9000/?token=s3cret-token"
    assert app.plan(port=9000, token="on-loopback-too").env["JUPYTER_TOKEN"] == "on-loopback-too"


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_off_loopback_is_refused_with_exit_2(token, capsys):
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without a token"):
        app.plan(host="0.0.0.0", token=token)
    assert main(["app", "--host", "0.0.0.0", "--token", token, "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0 without a token" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_ipv6_host_is_bracketed_in_the_url():
    assert app.plan(host="::1", port=9000).url == "http://[::1]:9000/"
    assert app.plan(host="fe80::1", port=9000, token="t").url == "http://[fe80::1]:9000/?token=t"


def test_the_kernel_imports_this_checkout():
    plan = app.plan(base_env={"PYTHONPATH": "/elsewhere"})
    assert plan.env["PYTHONPATH"].split(":") == [str(app.SOURCE_ROOT), "/elsewhere"]


def test_any_notebook_can_be_served(tmp_path):
    notebook = tmp_path / "lesson.ipynb"
    notebook.write_text("{}")
    assert app.plan(notebook, port=9001).command[3] == str(notebook.resolve())


@pytest.mark.parametrize("argv, message", [
    (["app", "no/such/notebook.ipynb"], "no notebook at no/such/notebook.ipynb"),
    (["app", "README.md"], "is not a notebook (.ipynb)"),
    (["app", "--port", "0"], "--port 0 is not valid"),
    (["app", "--port", "70000"], "--port 70000 is not valid"),
])
def test_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(app.SOURCE_ROOT)
    assert main([*argv, "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_cli_serves_the_plan_and_passes_voilas_exit_status_on(monkeypatch):
    served = []
    monkeypatch.setattr(app, "serve", lambda plan, open_browser: served.append((plan, open_browser)) or 0)
    assert main(["app", "--port", "9002", "--host", "0.0.0.0", "--no-browser"]) == 0
    (plan, open_browser), = served
    assert plan.port == 9002 and plan.token and open_browser is False
    monkeypatch.setattr(app, "serve", lambda plan, open_browser: 3)
    with pytest.raises(SystemExit) as stopped:
        main(["app"])
    assert stopped.value.code == 3


def test_serve_prints_the_url_and_returns_the_servers_status(capsys):
    plan = app.plan(host="0.0.0.0", port=9003)
    plan.command = [sys.executable, "-c", "import os, sys; sys.exit(7 if os.environ['JUPYTER_TOKEN'] else 1)"]
    assert app.serve(plan, open_browser=False) == 7
    assert f"?token={plan.token}" in capsys.readouterr().out
