"""Adversarial family (survey 3.2): the discriminator-in-the-loop method `adversarial_kd`.

Golden values from an explicit MLP forward and the BCE formulas; one backward gives the
discriminator exactly the gradient of its own BCE and the student exactly that of the generator
loss; the teacher gets none; batch-permutation invariance; bad settings raise naming the value;
features mode builds a connector; three training steps on two zoo pairs. (There is no "zero when
the student equals the teacher" property: a GAN term is not a distance; what holds instead, and
is checked, is that the discriminator's term cannot go below log 2 when the two inputs are equal.)
(ARD and PGD are tested in tests/test_ard.py.)"""
import copy
import math

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.data.bundle import Batch
from workbench.methods import build_method
from workbench.methods.adversarial.adversarial_kd import (AdversarialKD, discriminator_loss,
                                                          discriminator_separation, generator_loss)
from workbench.registry import METHODS
from workbench.taps import Outputs

B, K = 3, 4


def batch_of(y):
    return Batch(torch.zeros(len(y), 1), y, torch.arange(len(y)))


def built(method, s_logits, t_logits, seed=0, features=None):
    torch.manual_seed(seed)
    student = Outputs(s_logits, features or {})
    teacher = Outputs(t_logits, {k: v.detach() for k, v in (features or {}).items()})
    method.setup(student, teacher)
    return method


def logits(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, generator=g)


def np_mlp(layers, x):
    """The discriminator's forward by hand: Linear -> LeakyReLU(0.2) -> Linear -> LeakyReLU -> Linear."""
    for i, layer in enumerate(layers):
        w, b = layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy().astype(np.float64)
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.where(x > 0, x, 0.2 * x)
    return x[:, 0]


def log_sigmoid(z):
    return -np.log1p(np.exp(-z))


def np_softmax(z, temperature):
    e = np.exp(z / temperature - (z / temperature).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("on", ["probs", "logits"])
@pytest.mark.parametrize("conditional", [True, False])
def test_golden_values(conditional, on):
    s, t, y = logits(1) * 3, logits(2) * 3, torch.tensor([0, 3, 1])
    method = built(AdversarialKD(on=on, temperature=2.0, conditional=conditional, hidden=5), s, t)
    layers = [m for m in method.discriminator if isinstance(m, torch.nn.Linear)]
    onehot = np.eye(K)[y.numpy()]
    seen = (lambda v: np_softmax(v, 2.0)) if on == "probs" else (lambda v: v)  # noqa: E731
    as_input = lambda v: np.concatenate([seen(v), onehot], 1) if conditional else seen(v)  # noqa: E731
    real = np_mlp(layers, as_input(t.numpy().astype(np.float64)))
    fake = np_mlp(layers, as_input(s.numpy().astype(np.float64)))
    # L_D = -1/2 [mean log D(t) + mean log(1 - D(s))], L_G = -mean log D(s), D = sigmoid(score)
    expected_d = -0.5 * (np.mean(log_sigmoid(real)) + np.mean(log_sigmoid(-fake)))
    expected_g = -np.mean(log_sigmoid(fake))
    terms = method(Outputs(s), Outputs(t), batch_of(y))
    assert math.isclose(terms["discriminator"].item(), expected_d, rel_tol=1e-5)
    assert math.isclose(terms["generator"].item(), expected_g, rel_tol=1e-5)


@pytest.mark.parametrize("on", ["probs", "logits"])
def test_one_backward_trains_each_player_on_its_own_loss(on):
    s, t, y = logits(3).requires_grad_(True), logits(4), torch.tensor([2, 0, 1])
    weight, temperature = 0.7, 4.0
    method = built(AdversarialKD(weight=weight, on=on, hidden=8), s.detach(), t)
    seen = (lambda v: torch.softmax(v / temperature, 1)) if on == "probs" else (lambda v: v)  # noqa: E731
    terms = method(Outputs(s), Outputs(t), batch_of(y))
    (weight * (terms["discriminator"] + terms["generator"])).backward()
    d_grads = [p.grad.clone() for p in method.discriminator.parameters()]
    s_grad = s.grad.clone()
    # reference 1: the discriminator's own BCE, alone, on its parameters
    ref = copy.deepcopy(method.discriminator)
    with_labels = lambda v: torch.cat([seen(v), torch.nn.functional.one_hot(y, K).float()], 1)  # noqa: E731
    real, fake = ref(with_labels(t)).squeeze(1), ref(with_labels(s.detach())).squeeze(1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    d_only = 0.5 * (bce(real, torch.ones(B)) + bce(fake, torch.zeros(B)))
    expected = torch.autograd.grad(weight * d_only, list(ref.parameters()))
    for got, want in zip(d_grads, expected):
        assert torch.allclose(got, want, atol=1e-7)
    # reference 2: the non-saturating generator loss, alone, on the student's logits
    s2 = s.detach().clone().requires_grad_(True)
    g_only = bce(ref(with_labels(s2)).squeeze(1), torch.ones(B))
    (want_s,) = torch.autograd.grad(weight * g_only, [s2])
    assert torch.allclose(s_grad, want_s, atol=1e-7)
    assert s_grad.abs().sum() > 0 and all(g.abs().sum() > 0 for g in d_grads)


def test_the_teacher_needs_no_gradient():
    s, t, y = logits(5).requires_grad_(True), logits(6), torch.tensor([1, 1, 2])
    assert not t.requires_grad
    method = built(AdversarialKD(), s.detach(), t)
    terms = method(Outputs(s), Outputs(t), batch_of(y))
    sum(terms.values()).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_equal_inputs_leave_the_discriminator_at_or_above_chance():
    # D(s) = D(t) for every sample when s == t: L_D = 1/2 [softplus(-d) + softplus(d)] >= log 2
    t, y = logits(7), torch.tensor([0, 1, 2])
    method = built(AdversarialKD(), t.clone(), t)
    terms = method(Outputs(t.clone()), Outputs(t), batch_of(y))
    assert terms["discriminator"].item() >= math.log(2) - 1e-6


def test_batch_permutation_invariance():
    s, t, y = logits(8), logits(9), torch.tensor([3, 0, 2])
    method = built(AdversarialKD(), s, t)
    perm = torch.tensor([2, 0, 1])
    a = method(Outputs(s), Outputs(t), batch_of(y))
    b = method(Outputs(s[perm]), Outputs(t[perm]), batch_of(y[perm]))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6)


def test_pure_losses():
    assert math.isclose(discriminator_loss(torch.zeros(4), torch.zeros(4)).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(generator_loss(torch.zeros(4)).item(), math.log(2), rel_tol=1e-6)
    assert discriminator_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)).item() < 1e-6


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weight": -1.0}, ValueError, "weight=-1.0"),
    ({"hidden": 0}, ValueError, "hidden=0"),
    ({"hidden": 2.5}, ValueError, "hidden=2.5"),
    ({"on": "pixels"}, ValueError, "on='pixels'"),
    ({"temperature": -1}, ValueError, "temperature=-1"),
    ({"conditional": "yes"}, TypeError, "conditional"),
])
def test_bad_settings_raise_naming_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_method("adversarial_kd", **kwargs)


def test_mismatched_class_counts_raise():
    method = AdversarialKD()
    with pytest.raises(ValueError, match="different numbers of classes"):
        method.setup(Outputs(torch.zeros(2, 4)), Outputs(torch.zeros(2, 5)))


def test_features_mode_builds_a_connector_that_the_generator_trains():
    fs = torch.randn(B, 6, 3, 3, requires_grad=True)       # a 4D student map, pooled over space
    ft = torch.randn(B, 10)                                 # a (B, D) teacher embedding
    method = AdversarialKD(on="features", student_taps=("s",), teacher_taps=("t",))
    assert method.student_taps == ("s",)
    torch.manual_seed(0)
    method.setup(Outputs(logits(1), {"s": fs.detach()}), Outputs(logits(2), {"t": ft}))
    assert isinstance(method.connector, torch.nn.Linear) and method.connector.weight.shape == (10, 6)
    terms = method(Outputs(logits(1), {"s": fs}), Outputs(logits(2), {"t": ft}), batch_of(torch.tensor([0, 1, 2])))
    terms["generator"].backward()
    assert method.connector.weight.grad.abs().sum() > 0 and fs.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.discriminator.parameters())


def test_separation_measure_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    s, t, y = logits(11), logits(12), torch.tensor([0, 2, 3])
    method = built(AdversarialKD(conditional=False), s, t)
    result = discriminator_separation(method, s, t, y)
    with torch.no_grad():
        real, fake = method.scores(torch.softmax(t / 4, 1), y), method.scores(torch.softmax(s / 4, 1), y)
    auc = roc_auc_score([1] * B + [0] * B, torch.cat([real, fake]).numpy())
    assert math.isclose(result["auc"], auc, rel_tol=1e-6)
    accuracy = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
    assert math.isclose(result["accuracy"], accuracy.item())


def test_registry_metadata():
    meta = METHODS.get("adversarial_kd").meta
    assert meta["category"] == "adversarial" and meta["notebook"] == "31_adversarial"
    assert meta["link"] == "https://arxiv.org/abs/1709.00513"


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return wb.models.build("resnet32x4", num_classes=10, in_channels=3)


@pytest.mark.parametrize("student_name, options", [("resnet8x4", {}), ("wrn_16_1", {}),
                                                    ("wrn_16_1", {"on": "features"}),
                                                    ("resnet8x4", {"on": "logits", "conditional": False})])
def test_three_training_steps(shapes, teacher, student_name, options):
    torch.manual_seed(1)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    before = copy.deepcopy(teacher.state_dict())
    run = wb.distill(student, teacher, shapes, methods={"adversarial_kd": options}, epochs=1, batch_size=16,
                     log_every=1, store=None, progress=False)
    d_before = None

    def remember(run_, _):
        nonlocal d_before
        if d_before is None:
            d_before = [p.detach().clone() for p in run_.methods["adversarial_kd"].discriminator.parameters()]

    run.on("run_start", lambda r, _=None: remember(r, None))
    run.fit()
    assert run.step == 3 and all(math.isfinite(r["loss"]) for r in run.history)
    assert {"adversarial_kd.discriminator", "adversarial_kd.generator"} <= set(run.history[-1])
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in teacher.parameters())
    d_after = list(run.methods["adversarial_kd"].discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d_after))   # the discriminator trained
