"""PGD and robust accuracy (workbench.robust) and the ARD scheme (workbench.schemes.ard): the attack
raises the loss inside the epsilon-ball and the valid pixel range, leaves the model as it found it;
ARD's loss is the paper's equation; with epsilon = 0 it is offline KD + CE step for step; robust
accuracy never exceeds clean accuracy; bad budgets raise naming the value."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.registry import SCHEMES
from workbench.robust import InputSpace, check_budget, pgd_attack, robust_accuracy
from workbench.schemes import build_scheme
from workbench.schemes.ard import ARD


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits", n_train=96)


def cnn(seed=0, width=4):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)


def mlp(seed=0):
    torch.manual_seed(seed)
    return wb.models.build("mlp", num_classes=10, in_channels=1, hidden_sizes=(32,), image_size=8)


@pytest.fixture(scope="module")
def trained(digits):
    model = cnn(3, width=8)
    wb.train(model, digits, epochs=15, batch_size=32, lr=0.1, store=None, progress=False).fit()
    return model


# -- input space ----------------------------------------------------------------------------------
def test_input_space_converts_pixel_budgets_with_the_bundle_statistics(digits):
    space = InputSpace.of(digits)
    x = digits.test.x[:2]
    (std,), (mean,) = digits.meta["std"], digits.meta["mean"]
    assert torch.allclose(space.budget(8 / 255, x), torch.full((1, 1, 1, 1), 8 / 255 / std))
    lo, hi = space.clamp_bounds(x)
    assert math.isclose(lo.item(), (0 - mean) / std, rel_tol=1e-6)
    assert math.isclose(hi.item(), (1 - mean) / std, rel_tol=1e-6)
    # the normalised data itself lies in that range, and maps back to pixels in [0, 1]
    assert digits.test.x.min() >= lo - 1e-5 and digits.test.x.max() <= hi + 1e-5
    pixels = space.to_pixels(digits.test.x)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_input_space_without_statistics_is_the_identity():
    data = wb.data.load("digits", n_train=20)
    data.meta.pop("mean"), data.meta.pop("std")
    space = InputSpace.of(data)
    x = data.test.x[:2]
    assert torch.equal(space.budget(0.1, x), torch.full((1, 1, 1, 1), 0.1)) and space.clamp_bounds(x) is None


# -- PGD --------------------------------------------------------------------------------------------
def test_pgd_raises_the_loss_and_stays_in_the_ball_and_the_pixel_range(digits, trained):
    space = InputSpace.of(digits)
    x, y = digits.test.x[:64], digits.test.y[:64]
    eps, step = space.budget(0.1, x), space.budget(0.025, x)
    lo, hi = space.clamp_bounds(x)
    adv = pgd_attack(trained, x, y, eps, step, steps=10, clamp=(lo, hi))
    trained.eval()
    with torch.no_grad():
        clean_loss = F.cross_entropy(trained(x), y).item()
        adv_loss = F.cross_entropy(trained(adv), y).item()
        noise = (x + (2 * torch.rand_like(x) - 1) * eps).clamp(lo, hi)
        noise_loss = F.cross_entropy(trained(noise), y).item()
    assert adv_loss > clean_loss + 0.1 and adv_loss > noise_loss
    assert ((adv - x).abs() <= eps + 1e-6).all()
    assert (adv >= lo - 1e-6).all() and (adv <= hi + 1e-6).all()
    assert not adv.requires_grad


def test_pgd_restores_modes_and_touches_no_parameter(digits):
    model = cnn(1)
    model.train()
    list(model.modules())[1].eval()          # a mixed state: every module's own mode must come back
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = copy.deepcopy(model.state_dict())
    pgd_attack(model, digits.test.x[:16], digits.test.y[:16], 0.3, 0.1, steps=3)
    assert {name: m.training for name, m in model.named_modules()} == modes
    # eval mode while crafting: batch-norm running statistics unchanged
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_pgd_with_zero_budget_or_no_steps_returns_the_input(digits, trained):
    x, y = digits.test.x[:8], digits.test.y[:8]
    assert torch.equal(pgd_attack(trained, x, y, 0.0, 0.0, steps=5), x)
    assert torch.equal(pgd_attack(trained, x, y, 0.3, 0.1, steps=0, random_start=False), x)


def test_robust_accuracy_is_at_most_clean_accuracy_and_equal_at_zero_budget(digits, trained):
    space = InputSpace.of(digits)
    attacked = robust_accuracy(trained, digits.test, space, epsilon=0.1, step_size=0.025, steps=5)
    assert 0 <= attacked["robust_acc"] <= attacked["clean_acc"]
    assert attacked["robust_acc"] < attacked["clean_acc"]          # 0.1 of the pixel range hurts
    again = robust_accuracy(trained, digits.test, space, epsilon=0.1, step_size=0.025, steps=5)
    assert again == attacked                                          # seeded random starts
    zero = robust_accuracy(trained, digits.test, space, epsilon=0.0, step_size=0.0, steps=5)
    assert zero["robust_acc"] == zero["clean_acc"] == attacked["clean_acc"]
    stronger = robust_accuracy(trained, digits.test, space, epsilon=0.2, step_size=0.05, steps=5)
    assert stronger["robust_acc"] <= attacked["robust_acc"]


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": -0.1}, "epsilon=-0.1"),
    ({"epsilon": float("nan")}, "epsilon=nan"),
    ({"step_size": float("inf")}, "step_size=inf"),
    ({"steps": -3}, "steps=-3"),
    ({"steps": 2.5}, "steps=2.5"),
    ({"step_size": 0.0}, "step_size=0.0"),
])
def test_bad_budgets_raise_naming_the_value(kwargs, match):
    budget = {"epsilon": 8 / 255, "step_size": 2 / 255, "steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        check_budget("pgd", **budget)
    with pytest.raises(ValueError, match=match):
        build_scheme("ard", **budget)


@pytest.mark.parametrize("kwargs, match", [({"alpha": 1.5}, "alpha=1.5"), ({"eval_steps": -1}, "eval_steps=-1"),
                                           ({"task_input": "noisy"}, "task_input='noisy'")])
def test_bad_scheme_settings_raise_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_scheme("ard", **kwargs)


# -- the ARD scheme -------------------------------------------------------------------------------
def test_ard_is_registered_and_describes_itself():
    entry = SCHEMES.get("ard")
    assert entry.meta["category"] == "adversarial" and entry.meta["notebook"] == "31_adversarial"
    assert entry.meta["link"] == "https://arxiv.org/abs/1905.09747"
    scheme = build_scheme("ard", epsilon=0.1, steps=3, alpha=0.5)
    assert build_scheme("ard", **scheme.describe()).describe() == scheme.describe()
    assert ARD().describe() == {"epsilon": 8 / 255, "step_size": 2 / 255, "steps": 10, "alpha": 1.0,
                                "random_start": True, "eval_steps": 20, "task_input": "clean"}
    assert ARD.default_methods == {"kd": {"temperature": 30.0, "weight": 1.0}}


def test_ard_with_zero_budget_is_offline_kd_plus_ce_step_for_step(digits, trained):
    alpha, temperature = 0.7, 4.0
    options = dict(epochs=2, batch_size=16, seed=3, log_every=1, store=None, progress=False)
    ard = wb.distill(cnn(5), trained, digits, {"kd": {"temperature": temperature, "weight": 1.0}},
                     scheme="ard", scheme_args={"epsilon": 0.0, "alpha": alpha}, **options).fit()
    kd = wb.distill(cnn(5), trained, digits, {"kd": {"temperature": temperature, "weight": alpha}},
                    task_weight=1 - alpha, **options).fit()
    assert [r["loss"] for r in ard.history] == [r["loss"] for r in kd.history]
    for a, b in zip(ard.student.state_dict().values(), kd.student.state_dict().values()):
        assert torch.equal(a, b)
    assert "robust_acc" not in ard.result         # no attack, nothing to report


def test_ard_loss_is_the_papers_equation():
    # an MLP student (no batch-norm, no dropout): its forward passes are pure functions
    data = wb.data.load("digits", n_train=40)
    teacher, student = mlp(0), mlp(1)
    alpha, temperature = 0.6, 5.0
    run = wb.distill(student, teacher, data, {"kd": {"temperature": temperature, "weight": 1.0}},
                     scheme="ard", scheme_args={"epsilon": 0.2, "step_size": 0.05, "steps": 4, "alpha": alpha},
                     batch_size=8, store=None, progress=False)
    scheme = run.scheme
    batch = data.train.batch(torch.arange(8))
    scheme.prepare(batch)
    torch.manual_seed(11)
    loss, terms, logits = scheme.step(batch)
    # independently: the same random start, then the equation
    space = InputSpace.of(data)
    torch.manual_seed(11)
    x_adv = pgd_attack(student, batch.x, batch.y, space.budget(0.2, batch.x), space.budget(0.05, batch.x), 4,
                       clamp=space.clamp_bounds(batch.x))
    with torch.no_grad():
        s_adv, s, t = student(x_adv), student(batch.x), teacher(batch.x)
    q = torch.softmax(t / temperature, 1)
    kl = (q * (q.log() - torch.log_softmax(s_adv / temperature, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(8), batch.y].mean()
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    assert torch.allclose(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(terms["ce"].detach(), ce, rtol=1e-5) and torch.allclose(logits.detach(), s)
    assert not torch.allclose(s_adv, s)              # the student saw perturbed inputs in the KD term


def test_ard_trains_the_student_with_a_frozen_teacher_and_reports_robust_accuracy(digits, trained):
    student = cnn(2)
    teacher_before = copy.deepcopy(trained.state_dict())
    student_before = [p.detach().clone() for p in student.parameters()]
    run = wb.distill(student, trained, digits, scheme="ard",
                     scheme_args={"epsilon": 0.1, "step_size": 0.05, "steps": 2, "eval_steps": 2},
                     epochs=1, batch_size=32, log_every=1, store=None, progress=False).fit()
    assert run.status == "finished" and all(math.isfinite(r["loss"]) for r in run.history)
    assert "kd.kl" in run.history[-1] and 0 <= run.result["robust_acc"] <= run.result["test_acc"] + 1e-6
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in teacher_before.items())
    assert all(p.grad is None for p in trained.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters()))


def test_the_attack_is_crafted_against_the_student(digits, trained):
    # the trained network is the STUDENT here; the teacher is an untrained one
    student, teacher = copy.deepcopy(trained), cnn(9)
    run = wb.distill(student, teacher, digits, scheme="ard", scheme_args={"epsilon": 0.1, "step_size": 0.03},
                     batch_size=32, store=None, progress=False)
    x, y = digits.test.x[:64], digits.test.y[:64]
    torch.manual_seed(0)
    adv = run.scheme.adversarial(x, y)
    student.eval()
    with torch.no_grad():
        rise = F.cross_entropy(student(adv), y) - F.cross_entropy(student(x), y)
        teacher_rise = F.cross_entropy(teacher(adv), y) - F.cross_entropy(teacher(x), y)
    assert rise > 0.1 and rise > 5 * teacher_rise.abs()


def test_adversarial_training_without_a_teacher(digits):
    model = cnn(4)
    run = wb.distill(model, None, digits, methods={}, scheme="ard",
                     scheme_args={"alpha": 0.0, "task_input": "adversarial", "epsilon": 0.1, "steps": 2,
                                  "step_size": 0.05, "eval_steps": 1},
                     epochs=1, batch_size=32, store=None, progress=False).fit()
    assert run.status == "finished" and "robust_acc" in run.result
    with pytest.raises(ValueError, match="need a teacher"):
        wb.distill(cnn(4), None, digits, scheme="ard", store=None, progress=False)
