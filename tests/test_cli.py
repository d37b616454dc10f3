"""The `kdwb` command: listing, training, distilling from flags and configs, runs, clear errors."""
import json
import subprocess
import sys

import pytest

from workbench.cli import main

TINY = ["--epochs", "1", "--batch-size", "64", "--quiet"]


def test_list_shows_methods_with_their_survey_category(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["kd", "logit"] for line in out.splitlines())


def test_list_shows_schemes_with_their_survey_category(capsys):
    assert main(["list", "schemes"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["dafl", "adversarial"] in rows and ["dml", "online"] in rows and ["cross_modal", "cross_modal"] in rows


def test_train_then_distill_then_compare_runs(capsys):
    assert main(["train", "--model", "cnn", "--model-arg", "width=4", *TINY]) == 0
    assert "test_acc" in capsys.readouterr().out
    assert main(["distill", "--teacher", "cnn", "--teacher-arg", "width=8", "--student", "cnn",
                 "--student-arg", "width=4", "--method", "kd", "--method-arg", "kd.temperature=2",
                 "--n-train", "200", "--teacher-epochs", "1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "cnn:kd: finished" in out and "agreement" in out
    assert main(["runs", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("finished") == 3  # the trained model, the teacher and the KD run
    assert main(["runs", "compare"]) == 0
    assert "test_acc" in capsys.readouterr().out


def test_distill_from_a_yaml_config_reuses_the_finished_run(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("kind: distill\ndataset: digits\ndataset_args: {n_train: 200}\n"
                      "student: {name: cnn, width: 4}\nteacher: {name: cnn, width: 8}\n"
                      "methods: {kd: {temperature: 3}}\nepochs: 1\n")
    assert main(["distill", "--config", str(config), "--quiet"]) == 0
    assert "finished" in capsys.readouterr().out
    assert main(["distill", "--config", str(config), "--quiet"]) == 0
    assert "reused from the store" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["distill", "--method", "kdd"], "unknown method 'kdd'. Did you mean 'kd'"),
    (["distill", "--method", "kd", "--method-arg", "kd.temperature=-1"], "temperature=-1"),
    (["train", "--lr", "-1"], "lr=-1.0 is not valid"),
    (["train", "--batch-size", "0"], "batch_size=0 is not valid"),
    (["train", "--model", "resnet9"], "unknown model 'resnet9'"),
    (["train", "--dataset", "digitz"], "unknown dataset 'digitz'. Did you mean 'digits'"),
])
def test_bad_input_prints_one_clear_line_and_exits_2(argv, message, capsys):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_cifar10_exits_non_zero_with_a_clear_message_and_no_traceback(tmp_path):
    env = {"KDWB_DATA": str(tmp_path / "data"), "KDWB_HOME": str(tmp_path / "home"), "PATH": ""}
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "distill", "--dataset", "cifar10",
                             "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "data") in result.stderr and "download" in result.stderr
    assert "shapes" in result.stderr


def test_runs_show_prints_the_config(capsys):
    assert main(["train", "--model", "cnn", "--model-arg", "width=4", *TINY]) == 0
    out = capsys.readouterr().out
    run_id = out.split("run id ")[1].split()[0]
    assert main(["runs", "show", run_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["student"]["name"] == "cnn" and shown["status"] == "finished"


def test_an_online_scheme_runs_from_the_command_line_without_a_teacher(capsys):
    assert main(["distill", "--scheme", "dml", "--scheme-arg", "peers=2", "--student", "cnn",
                 "--student-arg", "width=4", "--method", "kd", "--method-arg", "kd.temperature=1",
                 "--n-train", "200", *TINY]) == 0
    out = capsys.readouterr().out
    assert "peer1_acc" in out
    assert main(["runs", "list"]) == 0
    assert capsys.readouterr().out.count("finished") == 1  # no teacher was trained
