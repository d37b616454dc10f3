"""Adaptive distillation (survey chapter 3.6): CTKD, the teacher-assistant chain (TAKD),
early-stopped teachers and early-stopped distillation (ESKD).

Golden values are computed here from the papers' equations with ``math`` (no torch), so a mistake
shared by the helper and the code cannot hide.
"""
import math

import pytest
import torch

import workbench as wb
from method_helpers import distil_three_steps
from workbench.adaptive import (early_stopped_teachers, stop_distillation_at, teacher_assistant_chain,
                                teacher_at_epoch)
from workbench.data.bundle import Batch
from workbench.methods import build_method
from workbench.methods.adaptive.ctkd import (CTKD, OFFICIAL_INITIAL_TEMPERATURE, TemperatureTrace,
                                             ctkd_loss, curriculum_lambda, reverse_gradient)
from workbench.methods.logit.kd import kd_loss
from workbench.taps import Outputs

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kd_by_hand(student, teacher, temperature):
    """T^2 * mean over samples of KL(softmax(v/T) || softmax(z/T))."""
    total = 0.0
    for z, v in zip(student, teacher):
        p, q = softmax(z, temperature), softmax(v, temperature)
        total += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    return temperature ** 2 * total / len(student)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def outputs(logits):
    return Outputs(logits=logits, features={})


def batch(n):
    return Batch(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), torch.arange(n))


# -- CTKD: the pieces -------------------------------------------------------------------------
def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([1.5, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, -4.0])).sum().backward()
    assert x.grad.tolist() == pytest.approx([-0.3, -0.6, 1.2])


def test_cosine_curriculum_values():
    # eq. 8: lambda_n = l_min + 1/2 (l_max - l_min)(1 + cos((1 + min(n, E)/E) pi)), E = 10
    def by_hand(n, low, high, loops=10):
        return low + 0.5 * (high - low) * (1 + math.cos((1 + min(n, loops) / loops) * math.pi))

    for n, expected in [(0, 0.0), (5, 0.5), (10, 1.0), (25, 1.0), (2.5, by_hand(2.5, 0, 1))]:
        assert curriculum_lambda(n, 0.0, 1.0, 10) == pytest.approx(expected, abs=1e-12)
        assert curriculum_lambda(torch.tensor(n), 0.0, 1.0, 10).item() == pytest.approx(expected, abs=1e-6)
    assert curriculum_lambda(2.5, 0.0, 1.0, 10) == pytest.approx(0.146447, abs=1e-6)
    assert curriculum_lambda(3, 0.2, 2.0, 10) == pytest.approx(by_hand(3, 0.2, 2.0))
    assert curriculum_lambda(torch.tensor(7), 0.2, 2.0, 10).item() == pytest.approx(by_hand(7, 0.2, 2.0), rel=1e-6)


def test_defaults_follow_the_authors_code():
    method = build_method("ctkd")
    # theta = 1 and tau = 1 + 20 sigmoid(theta) (--t_start 1 --t_end 20), lambda 0 -> 1, KD weight 0.9
    assert OFFICIAL_INITIAL_TEMPERATURE == pytest.approx(1 + 20 * sigmoid(1.0))
    assert method.theta.item() == pytest.approx(1.0, abs=1e-6)
    assert method.current_temperature().item() == pytest.approx(15.6212, abs=1e-3)
    assert (method.lambda_min, method.lambda_max, method.weight) == (0.0, 1.0, 0.9)
    assert method.curriculum_steps == 7810 and method.steps_done.item() == 0


def test_ctkd_golden_value_is_kd_at_the_learned_temperature():
    method = CTKD(initial_temperature=3.0)
    theta = method.theta.item()
    temperature = 1 + 20 * sigmoid(theta)
    assert temperature == pytest.approx(3.0, rel=1e-6)
    got = method(outputs(torch.tensor(STUDENT)), outputs(torch.tensor(TEACHER)), batch(2))["kl"]
    assert got.item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, temperature), rel=1e-5)
    # the pure function at the same temperature is KD's
    assert got.item() == pytest.approx(kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 3.0).item(), rel=1e-6)
    assert got.item() == pytest.approx(0.474485, rel=1e-5)  # the same number, written out


def test_temperature_gradient_ascends_the_kd_loss():
    """theta's gradient is lambda times the *negative* of the one that would minimise the loss."""
    lam, theta0 = 0.4, 0.3
    theta = torch.tensor(theta0, requires_grad=True)
    ctkd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), theta, lam).backward()
    # d L / d theta by central differences of the hand-written loss at tau = 1 + 20 sigmoid(theta)
    eps = 1e-5
    loss_at = lambda t: kd_by_hand(STUDENT, TEACHER, 1 + 20 * sigmoid(t))  # noqa: E731
    descent_gradient = (loss_at(theta0 + eps) - loss_at(theta0 - eps)) / (2 * eps)
    assert abs(descent_gradient) > 1e-3
    assert theta.grad.item() == pytest.approx(-lam * descent_gradient, rel=1e-3)
    assert math.copysign(1, theta.grad.item()) == -math.copysign(1, descent_gradient)


def test_student_gets_ordinary_gradients_and_theta_gets_reversed_ones():
    method = CTKD(curriculum_steps=4, lambda_min=0.0, lambda_max=1.0)
    method.steps_done.fill_(2)  # lambda = 0.5
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER)
    loss = method(outputs(student), outputs(teacher), batch(2))["kl"]
    assert torch.isfinite(loss)
    loss.backward()
    # the student's gradient is plain KD's at the same temperature
    reference = torch.tensor(STUDENT, requires_grad=True)
    kd_loss(reference, teacher, method.current_temperature()).backward()
    assert torch.allclose(student.grad, reference.grad)
    assert method.theta.grad is not None and method.theta.grad.item() != 0
    assert not teacher.requires_grad and teacher.grad is None
    assert method.steps_done.item() == 3  # a training forward counts a step


def test_step_counter_moves_only_on_training_steps_and_is_saved():
    method = CTKD(curriculum_steps=10)
    s, t = outputs(torch.tensor(STUDENT)), outputs(torch.tensor(TEACHER))
    with torch.no_grad():
        method(s, t, batch(2))
    method.eval()
    method(s, t, batch(2))
    assert method.steps_done.item() == 0
    method.train()
    for _ in range(3):
        method(s, t, batch(2))
    assert method.steps_done.item() == 3
    assert method.current_lambda().item() == pytest.approx(curriculum_lambda(3, 0.0, 1.0, 10), rel=1e-6)
    again = CTKD(curriculum_steps=10)
    again.load_state_dict(method.state_dict())
    assert again.steps_done.item() == 3 and "steps_done" in method.state_dict()


def test_zero_loss_when_student_equals_teacher_and_batch_permutation_invariance():
    method = CTKD()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator) * 3
    with torch.no_grad():
        assert method(outputs(logits), outputs(logits.clone()), batch(6))["kl"].item() == pytest.approx(0, abs=1e-6)
        teacher = torch.randn(6, 5, generator=generator)
        order = torch.randperm(6, generator=generator)
        a = method(outputs(logits), outputs(teacher), batch(6))["kl"]
        b = method(outputs(logits[order]), outputs(teacher[order]), batch(6))["kl"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("hparams, message", [
    ({"weight": float("nan")}, "weight=nan"),
    ({"initial_temperature": -2.0}, "initial_temperature=-2"),
    ({"min_temperature": 0.0}, "min_temperature=0"),
    ({"temperature_range": -1.0}, "temperature_range=-1"),
    ({"lambda_max": -0.5}, "lambda_max=-0.5"),
    ({"curriculum_steps": 0}, "curriculum_steps=0"),
    ({"initial_temperature": 30.0}, "initial_temperature=30.0 is outside"),
    ({"lambda_min": 2.0, "lambda_max": 1.0}, "lambda_min=2.0 is above"),
])
def test_bad_hyper_parameters_raise_naming_the_value(hparams, message):
    with pytest.raises(ValueError, match=message):
        build_method("ctkd", **hparams)


# -- CTKD in runs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits", n_train=100)


@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
def test_ctkd_trains_three_steps_with_a_frozen_teacher(student_name, shapes):
    torch.manual_seed(0)
    teacher = wb.models.build("resnet32x4", num_classes=10, in_channels=3)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    run = distil_three_steps(student, teacher, shapes, "ctkd")
    method = run.methods["ctkd"]
    assert method.steps_done.item() == 3
    assert method.theta.item() != pytest.approx(1.0, abs=1e-9)  # the optimiser trained the temperature


def cnn(width, seed):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)


def test_temperature_trace_records_without_changing_the_loss(digits):
    teacher = cnn(8, 0)
    trace = TemperatureTrace()
    run = wb.distill(cnn(4, 1), teacher, digits, {"ctkd": {"curriculum_steps": 8}}, epochs=3,
                     batch_size=25, log_every=2, task_weight=0.1, store=None, progress=False,
                     callbacks=[trace]).fit()
    assert trace.steps == [2, 4, 6, 8, 10, 12]
    assert trace.lambdas[-1] == pytest.approx(1.0) and trace.lambdas[0] < trace.lambdas[-1]
    assert all(1.0 < t < 21.0 for t in trace.temperatures) and len(set(trace.temperatures)) > 1
    assert trace.temperatures[-1] == pytest.approx(run.methods["ctkd"].current_temperature().item())
    for row in run.history:
        assert row["ctkd.temperature"] in trace.temperatures
        # the loss is the cross-entropy plus the weighted KD term: the temperature is not a term
        assert row["loss"] == pytest.approx(0.1 * row["ce"] + 0.9 * row["ctkd.kl"], rel=1e-5)


def test_ctkd_resume_continues_the_curriculum_exactly(digits):
    options = dict(epochs=2, batch_size=25, task_weight=0.1, progress=False, log_every=4)
    methods = {"ctkd": {"curriculum_steps": 6}}
    teacher = cnn(8, 0)
    whole = wb.distill(cnn(4, 1), teacher, digits, methods, reuse=False, **options).fit()
    first = wb.distill(cnn(4, 1), teacher, digits, methods, reuse=False, **options)
    first.on("epoch_end", lambda run, epoch: run.stop())
    first.fit()
    assert first.status == "interrupted" and first.methods["ctkd"].steps_done.item() == 4
    resumed = wb.distill(cnn(4, 1), teacher, digits, methods, reuse=False, **options).fit()
    assert resumed.run_id == first.run_id and resumed.status == "finished"
    for a, b in zip(whole.scheme.state_dict().values(), resumed.scheme.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.methods["ctkd"].steps_done.item() == 8


# -- TAKD ---------------------------------------------------------------------------------------
def test_chain_validates_its_inputs(digits):
    with pytest.raises(ValueError, match="at least 2 models"):
        teacher_assistant_chain([cnn(8, 0)], digits)
    wrong = wb.models.build("cnn", num_classes=5, in_channels=1, width=4)
    with pytest.raises(ValueError, match=r"models\[1\] \(cnn.*\) has 5 outputs but digits has 10 classes"):
        teacher_assistant_chain([cnn(8, 0), wrong, cnn(4, 1)], digits, store=None)
    shared = cnn(4, 1)
    with pytest.raises(ValueError, match=r"models\[0\] and models\[2\] are the same"):
        teacher_assistant_chain([shared, cnn(4, 2), shared], digits, store=None)
    with pytest.raises(TypeError, match="not built Method objects"):
        teacher_assistant_chain([cnn(8, 0), cnn(4, 1)], digits, {"kd": build_method("kd")}, store=None)
    with pytest.raises(TypeError, match=r"models\[1\] must be an nn.Module"):
        teacher_assistant_chain([cnn(8, 0), "cnn"], digits)
    with pytest.raises(ValueError, match="3 models make 2 links, but 3 data sets were given"):
        teacher_assistant_chain([cnn(8, 0), cnn(4, 1), cnn(2, 2)], [digits] * 3)
    shapes = wb.data.load("shapes", n_train=16, n_test=16)
    with pytest.raises(ValueError, match=r"models\[1\] \(cnn\(width=4\)\) cannot take shapes inputs"):
        teacher_assistant_chain([cnn(8, 0), cnn(4, 1), cnn(2, 2)], [digits, shapes])


def test_chain_of_any_length_trains_each_link_from_the_one_before(digits):
    models = [cnn(16, 0), cnn(8, 1), cnn(4, 2), cnn(2, 3)]
    teacher_before = [p.detach().clone() for p in models[0].parameters()]
    initial = [[p.detach().clone() for p in m.parameters()] for m in models[1:]]
    every = wb.data.load("digits")  # the assistants learn from every image, the student from 100
    runs = teacher_assistant_chain(models, [every, every, digits], {"kd": {"temperature": 2.0}}, epochs=1,
                                   batch_size=25, store=None, progress=False)
    assert len(runs) == 3 and [len(r.data.train) for r in runs] == [len(every.train)] * 2 + [100]
    for i, run in enumerate(runs, start=1):
        assert run.status == "finished" and run.student is models[i] and run.teacher is models[i - 1]
        assert run.methods["kd"].temperature == 2.0
        assert any(not torch.equal(a, b) for a, b in zip(initial[i - 1], models[i].parameters()))
    assert len({id(run.methods["kd"]) for run in runs}) == 3  # each link built its own method
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, models[0].parameters()))
    assert "TA 1" in runs[0].label and "student" in runs[-1].label


def test_chain_takes_options_per_link(digits):
    every = wb.data.load("digits")
    models = [cnn(8, 0), cnn(4, 1), cnn(2, 2)]
    runs = teacher_assistant_chain(models, [every, digits], batch_size=25, store=None, progress=False,
                                   link_options=[{"epochs": 1, "batch_size": 64}, {"epochs": 2, "seed": 3}])
    assert [(r.config.epochs, r.config.batch_size, r.config.seed) for r in runs] == [(1, 64, 0), (2, 25, 3)]
    with pytest.raises(ValueError, match="link_options must be a list of 2 dicts"):
        teacher_assistant_chain(models, digits, link_options=[{}])


def test_chain_reuses_finished_links_from_the_store_and_warns_when_it_grows(digits):
    options = dict(epochs=1, batch_size=25, progress=False)
    first = teacher_assistant_chain([cnn(16, 0), cnn(8, 1), cnn(4, 2)], digits, **options)
    again = teacher_assistant_chain([cnn(16, 0), cnn(8, 1), cnn(4, 2)], digits, **options)
    assert [r.status for r in first] == ["finished", "finished"]
    assert [r.status for r in again] == ["reused", "reused"]
    assert again[-1].result["test_acc"] == first[-1].result["test_acc"]
    with pytest.warns(UserWarning, match=r"models\[1\] .* is larger than its teacher"):
        teacher_assistant_chain([cnn(4, 0), cnn(8, 1)], digits, store=None, **options)


# -- early-stopped teachers and ESKD ----------------------------------------------------------
def test_early_stopped_teachers_are_the_weights_after_those_epochs(digits):
    options = dict(epochs=3, batch_size=25, progress=False, seed=0)
    teachers = early_stopped_teachers(cnn(4, 0), digits, [1, 3], **options)
    assert list(teachers) == [1, 3]
    one, three = (teachers[e].state_dict() for e in (1, 3))
    assert any(not torch.equal(one[k], three[k]) for k in one)
    # a second call reuses the stored run: the epochs come from its checkpoints, equal to the snapshots
    final = cnn(4, 0)
    again = early_stopped_teachers(final, digits, at_epochs=[3, 1], **options)
    for epoch in (1, 3):
        for key, value in teachers[epoch].state_dict().items():
            assert torch.equal(value, again[epoch].state_dict()[key])
    for key, value in final.state_dict().items():
        assert torch.equal(value, three[key])
    run = wb.train(cnn(4, 0), digits, **options).fit()
    assert run.status == "reused"
    assert all(torch.equal(v, teacher_at_epoch(run, 1).state_dict()[k]) for k, v in one.items())
    sparse = wb.train(cnn(4, 0), digits, **{**options, "checkpoint_every": 3, "seed": 1}).fit()
    with pytest.raises(ValueError, match=r"no checkpoint of epoch 2 \(it has \[3\]\)"):
        teacher_at_epoch(sparse, 2)
    unstored = wb.train(cnn(4, 0), digits, **{**options, "store": None}).fit()
    with pytest.raises(ValueError, match="has no store"):
        teacher_at_epoch(unstored, 1)


def test_early_stopped_teachers_rejects_bad_epochs(digits):
    with pytest.raises(ValueError, match="epoch 4 is not valid; it must be an integer from 1 to epochs=3"):
        early_stopped_teachers(cnn(4, 0), digits, [1, 4], epochs=3, store=None)
    with pytest.raises(ValueError, match="at least one epoch"):
        early_stopped_teachers(cnn(4, 0), digits, [], epochs=3, store=None)


def test_stop_distillation_at_switches_kd_off_after_that_epoch(digits):
    run = wb.distill(cnn(4, 1), cnn(8, 0), digits, {"kd": {}}, epochs=3, batch_size=25, log_every=1,
                     task_weight=0.1, store=None, progress=False)
    stop_distillation_at(run, 1, task_weight=1.0).fit()
    per_epoch = run.steps_per_epoch
    assert run.live_changes == [{"step": per_epoch, "kd.weight": 0.0, "task_weight": 1.0}]
    assert run.methods["kd"].weight == 0.0 and run.task_weight == 1.0
    for row in run.history:
        expected = 0.1 * row["ce"] + 0.9 * row["kd.kl"] if row["step"] <= per_epoch else row["ce"]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="epoch=3 is not valid"):
        stop_distillation_at(run, 3)
    with pytest.raises(ValueError, match="no method 'at'"):
        stop_distillation_at(run, 1, methods=["at"])


def test_an_eskd_run_never_loads_the_stored_full_kd_run(digits):
    teacher, options = cnn(8, 0), dict(epochs=2, batch_size=25, task_weight=0.1, progress=False)
    full = wb.distill(cnn(4, 1), teacher, digits, {"kd": {}}, **options).fit()
    eskd = stop_distillation_at(wb.distill(cnn(4, 1), teacher, digits, {"kd": {}}, **options), 1).fit()
    assert full.status == "finished" and eskd.status == "finished" and eskd.run_id != full.run_id
    assert eskd.methods["kd"].weight == 0.0 and eskd.live_changes
    again = wb.distill(cnn(4, 1), teacher, digits, {"kd": {}}, **options).fit()
    assert again.status == "reused" and again.run_id == full.run_id  # the ESKD run is not the plain config's
