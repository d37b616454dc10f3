"""Hinton et al.'s KD loss against values computed by hand from the paper's equation."""
import math

import pytest
import torch

import workbench as wb
from workbench.methods.logit.kd import kd_loss


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_golden_value_with_t_squared_scaling():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    temperature = 2.0
    expected = 0.0
    for z, v in zip(student, teacher):
        p, q = softmax(z, temperature), softmax(v, temperature)
        expected += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    expected = expected / 2 * temperature ** 2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a hand-checked number, so a shared mistake in the helper above cannot hide
    assert expected == pytest.approx(0.46330, abs=1e-4)


def test_kd_is_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(5, 7)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits + torch.randn(5, 7), logits, 4.0).item() > 0


def test_kd_gradient_scale_is_roughly_temperature_independent():
    """The T^2 factor keeps the soft gradient's size comparable across temperatures (paper, sec. 2)."""
    torch.manual_seed(0)
    teacher = torch.randn(64, 10) * 3
    norms = []
    for temperature in (2.0, 8.0):
        student = (torch.randn(64, 10) * 3).requires_grad_()
        torch.manual_seed(1)
        kd_loss(student, teacher, temperature).backward()
        norms.append(student.grad.norm().item())
    assert 0.2 < norms[0] / norms[1] < 5


def test_method_validates_hyperparameters_with_clear_errors():
    with pytest.raises(ValueError, match="temperature=-1"):
        wb.methods.build_method("kd", temperature=-1)
    with pytest.raises(ValueError, match="weight=nan"):
        wb.methods.build_method("kd", weight=float("nan"))
    with pytest.raises(TypeError, match="no hyper-parameter 'temp'"):
        wb.methods.build_method("kd", temp=2)
    with pytest.raises(KeyError, match="Did you mean 'kd'"):
        wb.methods.build_method("kdd")
    method = wb.methods.build_method("kd")
    assert method.hparams() == {"temperature": 4.0, "weight": 0.9}


def test_live_changes_wait_for_the_step_boundary():
    method = wb.methods.build_method("kd", temperature=4)
    method.set_live(True)
    method.temperature = 8
    assert method.temperature == 4.0            # the running step still sees the old value
    assert method.hparams()["temperature"] == 8.0
    assert method.apply_pending() == {"temperature": 8.0}
    assert method.temperature == 8.0
