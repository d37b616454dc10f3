"""Bad configurations are caught before training starts, with one message that names the bad
value and says what is valid: through the Python API, through `kdwb` in-process, and through
`python -m workbench.cli` as a new user would type it (no traceback, non-zero exit)."""
import math

import pytest
import torch

import workbench as wb
from fault_helpers import run_cli_in_parallel
from workbench.cli import main
from workbench.data.bundle import DataBundle, Split
from workbench.registry import UnknownNameError
from workbench.store import RunStore
from workbench.taps import TapError


# -- the run configuration --------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    # wrong types
    ({"epochs": "3"}, "epochs='3' is not valid; it must be a positive integer"),
    ({"lr": "fast"}, "lr='fast' is not valid; it must be a finite number"),
    ({"seed": 1.5}, "seed=1.5 is not valid; it must be an integer"),
    ({"amp": "yes"}, "amp='yes' is not valid; it must be true or false"),
    ({"dataset": 3}, "dataset=3 is not valid; it must be a registered name"),
    ({"student": "cnn"}, "student='cnn' is not valid; it must be a mapping"),
    ({"methods": {"kd": 4}}, r"methods\['kd'\]=4 is not valid; it must be a mapping"),
    ({"grad_clip": "big"}, "grad_clip='big' is not valid; it must be a finite number > 0"),
    # out of range
    ({"lr": -0.1}, r"lr=-0.1 is not valid; it must be > 0"),
    ({"lr": 0}, r"lr=0 is not valid; it must be > 0"),
    ({"batch_size": 0}, "batch_size=0 is not valid; it must be a positive integer"),
    ({"epochs": -2}, "epochs=-2 is not valid; it must be a positive integer"),
    ({"momentum": -0.5}, "momentum=-0.5 is not valid; it must be >= 0"),
    ({"weight_decay": math.nan}, "weight_decay=nan is not valid; it must be a finite number"),
    ({"task_weight": math.inf}, "task_weight=inf is not valid; it must be a finite number"),
    ({"grad_clip": 0.0}, "grad_clip=0.0 is not valid; it must be a finite number > 0, or None"),
    ({"grad_clip": math.inf}, "grad_clip=inf is not valid"),
    ({"optimizer": "adamm"}, "optimizer='adamm' is not valid; choose one of sgd, adam, adamw"),
    # unknown keys
    ({"epoch": 3}, "unknown config key.*'epoch'; valid keys: .*epochs"),
])
def test_bad_run_config_values_name_the_value_and_what_is_valid(fields, message):
    with pytest.raises(ValueError, match=message):
        wb.RunConfig.from_dict(fields)


def test_bad_run_options_fail_when_the_run_is_built_not_when_it_trains(digits, make_student, make_teacher):
    with pytest.raises(ValueError, match=r"lr=-0.1 is not valid; it must be > 0"):
        wb.distill(make_student(), make_teacher(), digits, lr=-0.1, store=None)
    with pytest.raises(ValueError, match="task_weight=nan is not valid"):
        wb.distill(make_student(), make_teacher(), digits, task_weight=float("nan"), store=None)
    with pytest.raises(ValueError, match="unknown config key.*'epoch'"):
        wb.train(make_student(), digits, epoch=3, store=None)


# -- methods and their hyper-parameters -------------------------------------------------------
@pytest.mark.parametrize("hparams, error, message", [
    ({"temperature": -1}, ValueError, r"KD: temperature=-1 is not valid; it must be a finite number > 0"),
    ({"temperature": 0}, ValueError, r"temperature=0 is not valid; it must be a finite number > 0"),
    ({"temperature": math.inf}, ValueError, r"temperature=inf is not valid"),
    ({"weight": math.nan}, ValueError, r"weight=nan is not valid; it must be a finite number >= 0"),
    ({"weight": math.inf}, ValueError, r"weight=inf is not valid; it must be a finite number >= 0"),
    ({"weight": -0.5}, ValueError, r"weight=-0.5 is not valid; it must be a finite number >= 0"),
    ({"temperature": "4"}, TypeError, r"KD: temperature must be a number, got '4'"),
    ({"temp": 4}, TypeError, r"method 'kd' has no hyper-parameter 'temp'; valid: temperature, weight"),
])
def test_bad_method_hyper_parameters_are_refused(hparams, error, message, digits, make_student, make_teacher):
    with pytest.raises(error, match=message):
        wb.distill(make_student(), make_teacher(), digits, methods={"kd": hparams}, store=None)


def test_a_live_change_to_a_bad_value_is_refused_at_once_and_the_old_value_kept(digits, make_student,
                                                                               make_teacher):
    run = wb.distill(make_student(), make_teacher(), digits, methods={"kd": {"temperature": 4.0}},
                     store=None, progress=False)
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature="):
            run.methods["kd"].temperature = bad
    with pytest.raises(ValueError, match="task_weight=-1"):
        run.task_weight = -1
    assert run.methods["kd"].temperature == 4.0 and run.task_weight == 1.0


# -- names --------------------------------------------------------------------------------------
def test_unknown_names_suggest_the_closest(digits, make_student, make_teacher):
    with pytest.raises(UnknownNameError, match=r"unknown method 'kdd'\. Did you mean 'kd'"):
        wb.distill(make_student(), make_teacher(), digits, methods={"kdd": {}}, store=None)
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet9'\. Did you mean 'resnet8'"):
        wb.models.build("resnet9")
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'digitz'\. Did you mean 'digits'"):
        wb.data.load("digitz")
    with pytest.raises(UnknownNameError, match=r"unknown scheme 'ofline'\. Did you mean 'offline'"):
        wb.distill(make_student(), make_teacher(), digits, scheme="ofline", store=None)
    with pytest.raises(TypeError, match="dataset 'digits' got unknown argument.*'ntrain'; it accepts: n_train"):
        wb.data.load("digits", ntrain=10)


# -- models that do not fit the data or each other ----------------------------------------------
def test_teacher_and_student_with_other_class_counts(digits, make_student):
    teacher = wb.models.build("cnn", num_classes=7, in_channels=1, width=4)
    with pytest.raises(ValueError, match="the teacher CNN has 7 outputs but digits has 10 classes; "
                                         "build it with num_classes=10"):
        wb.distill(make_student(), teacher, digits, store=None)
    student = wb.models.build("cnn", num_classes=5, in_channels=1, width=4)
    with pytest.raises(ValueError, match="the student CNN has 5 outputs but digits has 10 classes"):
        wb.distill(student, wb.models.build("cnn", num_classes=10, in_channels=1), digits, store=None)


def test_models_whose_input_channels_or_size_do_not_fit(digits, make_teacher):
    rgb = wb.models.build("cnn", num_classes=10, in_channels=3, width=4)
    with pytest.raises(ValueError, match=r"the student CNN cannot take digits inputs of shape \(1, 8, 8\)"
                                         r".*expected input.*to have 3 channels"):
        wb.distill(rgb, make_teacher(), digits, store=None)
    mlp = wb.models.build("mlp", num_classes=10, in_channels=1)  # built for 32x32
    with pytest.raises(ValueError, match=r"mlp was built for inputs of 1x32x32 = 1024 values, got \(1, 8, 8\)"):
        wb.train(mlp, digits, store=None)
    vit = wb.models.build("vit_tiny", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="vit was built for 32x32 inputs.*got 8x8"):
        wb.distill(vit, make_teacher(), digits, store=None)


def test_a_tap_that_does_not_exist(digits, make_student, make_teacher):
    with pytest.raises(TapError, match=r"model CNN has no tap 'stage9'\. Named taps: stage1, stage2, stage3"
                                       r".*closest: .*stage3"):
        wb.distill(make_student(), make_teacher(), digits,
                   methods={"fitnet": {"student_taps": ["stage9"]}}, store=None)


# -- data that cannot train --------------------------------------------------------------------
def test_an_empty_dataset_and_a_batch_larger_than_the_dataset(digits, make_student, make_teacher):
    with pytest.raises(ValueError, match=r"n_train must be between 1 and 1347 \(the digits training split "
                                         r"has 1347 samples\), got 0"):
        wb.data.load("digits", n_train=0)
    empty = DataBundle("empty", Split(digits.train.x[:0], digits.train.y[:0]), digits.test,
                       digits.num_classes, digits.class_names, digits.input_shape)
    with pytest.raises(ValueError, match="the training split of 'empty' is empty; nothing to train on"):
        wb.distill(make_student(), make_teacher(), empty, store=None)
    with pytest.raises(ValueError, match=r"batch_size=300 is larger than the 256 training samples of "
                                         r"'digits'; use batch_size <= 256"):
        wb.distill(make_student(), make_teacher(), digits, batch_size=300, store=None)


def test_a_batch_smaller_than_a_method_needs(digits, make_student, make_teacher):
    class InBatch(wb.methods.Method):
        min_batch_size = 3  # relations within the batch

        def forward(self, student, teacher, batch):
            return {"zero": student.logits.sum() * 0}

    with pytest.raises(ValueError, match=r"method 'inbatch' needs batches of at least 3 samples, got "
                                         r"batch_size=2; use batch_size >= 3"):
        wb.distill(make_student(), make_teacher(), digits, methods={"inbatch": InBatch()}, batch_size=2,
                   store=None)


def test_nothing_trains_and_nothing_is_stored_when_a_setup_is_bad(digits, make_student, make_teacher):
    """A bad setup fails in the constructor: no run row, no checkpoint, the models unchanged."""
    student = make_student()
    before = [p.detach().clone() for p in student.parameters()]
    with pytest.raises(ValueError):
        wb.distill(student, make_teacher(), digits, batch_size=300)
    assert RunStore().runs().empty
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


# -- the command line, in-process ------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "epochs=0 is not valid; it must be a positive integer"),
    (["train", "--lr", "-0.1"], "lr=-0.1 is not valid; it must be > 0"),
    (["train", "--batch-size", "0"], "batch_size=0 is not valid"),
    (["train", "--grad-clip", "-1"], "grad_clip=-1.0 is not valid; it must be a finite number > 0"),
    (["train", "--n-train", "0"], "n_train must be between 1 and 1347"),
    (["train", "--model", "resnet9"], "unknown model 'resnet9'. Did you mean 'resnet8'"),
    (["train", "--dataset", "digitz"], "unknown dataset 'digitz'. Did you mean 'digits'"),
    (["distill", "--method", "kdd"], "unknown method 'kdd'. Did you mean 'kd'"),
    (["distill", "--method", "kd", "--method-arg", "kd.temperature=-2"],
     "KD: temperature=-2 is not valid; it must be a finite number > 0"),
    (["distill", "--method", "kd", "--method-arg", "kd.weight=.nan"], "KD: weight=nan is not valid"),
    (["distill", "--method", "kd", "--method-arg", "kd.temperature=hot"],
     "KD: temperature must be a number, got 'hot'"),
    (["distill", "--method", "kd", "--method-arg", "kd.temp=2"], "method 'kd' has no hyper-parameter 'temp'"),
    # caught before the teacher trains: they are the distillation run's own checks
    (["distill", "--student", "mlp"], "mlp was built for inputs of 1x32x32 = 1024 values"),
    (["distill", "--student", "vit_tiny"], "vit was built for 32x32 inputs"),
    (["distill", "--method", "fitnet", "--method-arg", "fitnet.student_taps=[stage9]"],
     "model CNN has no tap 'stage9'"),
    (["distill", "--n-train", "100", "--batch-size", "200"],
     "batch_size=200 is larger than the 100 training samples of 'digits'"),
])
def test_cli_bad_input_prints_one_line_exits_2_and_trains_nothing(argv, message, capsys):
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdwb: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert RunStore().runs().empty, "a teacher (or anything) was trained before the error"


@pytest.mark.parametrize("text, message", [
    ("epochs: three\n", "epochs='three' is not valid; it must be a positive integer"),
    ("student: cnn\n", "student='cnn' is not valid; it must be a mapping"),
    ("lr: -1\n", "lr=-1 is not valid; it must be > 0"),
    ("student: {name: cnn}\nteacher: {name: cnn}\nmethods: {kd: {temperature: 0}}\n",
     "temperature=0 is not valid"),
    ("epochs: [unclosed\n", "is not a valid YAML config"),
    ("- just\n- a list\n", "a config must be a mapping of keys to values, got list"),
])
def test_cli_bad_config_file_prints_one_line_and_exits_2(text, message, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["distill", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# -- as a new user would type it ----------------------------------------------------------------
def test_a_new_user_at_the_shell_sees_one_clear_line_and_no_traceback(tmp_path):
    """Real `python -m workbench.cli` processes, started together (each pays the torch import)."""
    config = tmp_path / "run.yaml"
    config.write_text("kind: distill\nepochs: three\n")
    cases = [
        (["distill", "--method", "kdd", "--quiet"], "unknown method 'kdd'. Did you mean 'kd'"),
        (["train", "--lr", "-1", "--quiet"], "lr=-1.0 is not valid; it must be > 0"),
        (["distill", "--student", "mlp", "--quiet"], "mlp was built for inputs of 1x32x32"),
        (["distill", "--config", str(config), "--quiet"], "epochs='three' is not valid"),
    ]
    results = run_cli_in_parallel([argv for argv, _ in cases], tmp_path / "home")
    for (argv, message), result in zip(cases, results):
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith("kdwb: error: ") and message in lines[0], \
            (argv, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
