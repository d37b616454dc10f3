"""Multi-teacher distillation (survey 3.3): the MultiTeacher ensemble module, averaged targets,
AEKD, CA-MKD and knowledge amalgamation. Golden values from the papers' equations computed here
(numpy loops; AEKD's gradients by autograd and its weights in closed form or by grid search),
gradients, frozen teachers, zero loss at equality, batch and teacher-order permutation,
hyper-parameter checks, three training steps on zoo models, and an amalgamated digits student
that classifies all ten digits from two teachers that each know five."""

import numpy as np
import pytest
import torch

import workbench as wb
from method_helpers import distil_three_steps
from workbench.data.bundle import DataBundle
from workbench.methods.multi_teacher import MultiTeacher
from workbench.methods.multi_teacher.aekd import aekd_loss, min_norm_weights, project_capped_simplex
from workbench.methods.multi_teacher.amalgamation import amalgamation_losses
from workbench.methods.multi_teacher.camkd import camkd_loss, confidence_weights
from workbench.methods.multi_teacher.ensemble_kd import ensemble_kd_loss
from workbench.taps import Outputs

NAMES = ["ensemble_kd", "aekd", "camkd"]
RNG = np.random.default_rng(0)
Z = RNG.normal(size=(4, 5)) * 2                       # student logits, B = 4, C = 5
V = [RNG.normal(size=(4, 5)) * 2 for _ in range(3)]   # three teachers
Y = np.array([0, 3, 1, 4])
T = 4.0


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(q, p):
    return float(np.sum(q * (np.log(q) - np.log(p))))


def ensemble_outputs(logits):
    """Teacher Outputs as a MultiTeacher's taps deliver them."""
    logits = [t(v) for v in logits]
    return Outputs(logits[0], {f"members.{k}": v for k, v in enumerate(logits)})


def bound(name, count, **hparams):
    """A method bound as to a MultiTeacher of ``count`` members (taps members.0 ...)."""
    method = wb.methods.build_method(name, **hparams)
    method.bind(None, MultiTeacher([torch.nn.Identity() for _ in range(count)]))
    return method


# ------------------------------------------------------------------------------- golden values
def test_ensemble_kd_golden_value():
    expected = np.mean([np_kl(np.mean([np_softmax(v[b] / T) for v in V], 0), np_softmax(Z[b] / T))
                        for b in range(4)]) * T * T
    assert ensemble_kd_loss(t(Z), [t(v) for v in V], T).item() == pytest.approx(expected, rel=1e-5)
    terms = bound("ensemble_kd", 3)(Outputs(t(Z)), ensemble_outputs(V), None)
    assert terms["kl"].item() == pytest.approx(expected, rel=1e-5)


def test_camkd_golden_value():
    weights = np.zeros((3, 4))
    for b in range(4):
        ce = np.array([-np.log(np_softmax(v[b])[Y[b]]) for v in V])
        weights[:, b] = (1 - np.exp(ce) / np.exp(ce).sum()) / (3 - 1)
    expected = np.mean([sum(weights[k, b] * np_kl(np_softmax(V[k][b] / T), np_softmax(Z[b] / T)) for k in range(3))
                        for b in range(4)]) * T * T
    assert torch.allclose(confidence_weights([t(v) for v in V], torch.tensor(Y)), t(weights), atol=1e-6)
    assert camkd_loss(t(Z), [t(v) for v in V], torch.tensor(Y), T).item() == pytest.approx(expected, rel=1e-5)
    batch = type("Batch", (), {"y": torch.tensor(Y)})()
    assert bound("camkd", 3)(Outputs(t(Z)), ensemble_outputs(V), batch)["kl"].item() == pytest.approx(expected, rel=1e-5)
    # with two teachers the weights are exactly softmax over teachers of -CE
    two = confidence_weights([t(v) for v in V[:2]], torch.tensor(Y))
    ce = torch.stack([torch.nn.functional.cross_entropy(t(v), torch.tensor(Y), reduction="none") for v in V[:2]])
    assert torch.allclose(two, (-ce).softmax(0), atol=1e-6)


def kd_by_autograd(z, v, temperature):
    """T^2 mean_b KL(softmax(v/T) || softmax(z/T)) and its gradient w.r.t. z, by autograd."""
    z = t(z, grad=True)
    q = torch.softmax(t(v) / temperature, 1)
    loss = (q * (q.log() - torch.log_softmax(z / temperature, 1))).sum(1).mean() * temperature ** 2
    (grad,) = torch.autograd.grad(loss, z)
    return loss.item(), grad.mean(0).numpy()   # the batch-averaged gradient, as the authors' code


@pytest.mark.parametrize("tolerance", [1.0, 0.6])
def test_aekd_golden_value_two_teachers(tolerance):
    (l1, g1), (l2, g2) = kd_by_autograd(Z, V[0], T), kd_by_autograd(Z, V[1], T)
    # min over a in [1 - C, C] of ||a g1 + (1 - a) g2||^2: the unconstrained minimiser, clipped
    a = np.clip(np.dot(g2 - g1, g2) / np.dot(g1 - g2, g1 - g2), 1 - tolerance, tolerance)
    loss, alpha = aekd_loss(t(Z), [t(V[0]), t(V[1])], T, tolerance)
    assert alpha.numpy() == pytest.approx([a, 1 - a], abs=1e-4)
    assert loss.item() == pytest.approx(a * l1 + (1 - a) * l2, rel=1e-4)


def test_aekd_weights_match_a_grid_search_for_three_teachers():
    grads = [kd_by_autograd(Z, v, T)[1] for v in V]
    cap, best = 0.6, (np.inf, None)
    steps = np.linspace(0, 1, 401)
    for a in steps:
        for b in steps:
            c = 1 - a - b
            if max(a, b, c) <= cap + 1e-12 and c >= -1e-12:
                norm = np.sum((a * grads[0] + b * grads[1] + c * grads[2]) ** 2)
                best = min(best, (norm, (a, b, c)), key=lambda item: item[0])
    alpha = min_norm_weights(torch.tensor(np.stack(grads)), cap)
    assert alpha.numpy() == pytest.approx(best[1], abs=0.01)
    assert float(alpha.sum()) == pytest.approx(1.0) and float(alpha.max()) <= cap + 1e-6


def test_capped_simplex_projection():
    for v, cap in [([0.9, 0.1, 0.3], 0.6), ([5.0, -2.0, 0.0, 1.0], 0.5), ([0.2, 0.2], 1.0), ([1.0, 1.0, 1.0], 1 / 3)]:
        x = project_capped_simplex(torch.tensor(v, dtype=torch.float64), cap)
        assert float(x.sum()) == pytest.approx(1.0) and float(x.min()) >= 0 and float(x.max()) <= cap + 1e-9
        # optimality: moving mass from a coordinate below the cap to one above zero cannot get closer
        gaps = (x - torch.tensor(v, dtype=torch.float64)).numpy()
        free = (x.numpy() > 1e-9) & (x.numpy() < cap - 1e-9)
        if free.sum() > 1:
            assert np.ptp(gaps[free]) < 1e-9   # equal shift tau on every free coordinate


def test_amalgamation_golden_value():
    z = RNG.normal(size=(3, 5))
    low, high = RNG.normal(size=(3, 2)), RNG.normal(size=(3, 3))
    classes = [[3, 0], [1, 4, 2]]                      # teacher 0 scores classes 3, 0; teacher 1: 1, 4, 2
    joint_target = np.zeros((3, 5))
    joint_target[:, [3, 0]], joint_target[:, [1, 4, 2]] = low, high
    subset = sum(np.mean([np_kl(np_softmax(v[b] / T), np_softmax(z[b, c] / T)) for b in range(3)])
                 for v, c in ((low, [3, 0]), (high, [1, 4, 2]))) * T * T
    joint = np.mean([np_kl(np_softmax(joint_target[b] / T), np_softmax(z[b] / T)) for b in range(3)]) * T * T
    got = amalgamation_losses(t(z), [t(low), t(high)], [torch.tensor(c) for c in classes], T)
    assert got[0].item() == pytest.approx(subset, rel=1e-5)
    assert got[1].item() == pytest.approx(joint, rel=1e-5)
    method = wb.methods.build_method("amalgamation", joint_weight=0.5)
    method.bind(None, MultiTeacher([torch.nn.Linear(1, 2), torch.nn.Linear(1, 3)], classes=classes))
    terms = method(Outputs(t(z)), ensemble_outputs([low, high]), None)
    assert terms["subset"].item() == pytest.approx(subset, rel=1e-5)
    assert terms["joint"].item() == pytest.approx(0.5 * joint, rel=1e-5)
    # the student that outputs the concatenated scores has nothing left to learn
    zero = method(Outputs(t(joint_target)), ensemble_outputs([low, high]), None)
    assert zero["subset"].item() == pytest.approx(0.0, abs=1e-5) and zero["joint"].item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------- the ensemble module itself
def test_multi_teacher_forward_and_checks():
    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3) for _ in range(2)]
    x = torch.randn(5, 4)
    probs = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    ensemble = MultiTeacher(members)
    assert torch.allclose(ensemble(x).softmax(1), probs, atol=1e-6)   # log of the averaged probabilities
    assert ensemble.member_taps() == ["members.0", "members.1"]
    low, high = torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)
    split = MultiTeacher([low, high], classes=[[4, 1], [0, 2, 3]])
    out = split(x)
    assert torch.equal(out[:, [4, 1]], low(x)) and torch.equal(out[:, [0, 2, 3]], high(x))
    with pytest.raises(ValueError, match="disjoint"):
        MultiTeacher([low, high], classes=[[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="one list of classes per teacher"):
        MultiTeacher([low, high], classes=[[0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="at least one"):
        MultiTeacher([])
    resnet = wb.models.build("resnet8", num_classes=10, in_channels=3)
    with pytest.raises(ValueError, match="10 outputs"):
        MultiTeacher([resnet, low], classes=[[0, 1, 2, 3, 4], [5, 6]])
    with pytest.raises(ValueError, match="appears twice"):
        MultiTeacher([resnet, resnet])
    with pytest.raises(ValueError, match="use 'amalgamation'"):
        bound("ensemble_kd", 1).bind(None, split)
    with pytest.raises(ValueError, match="give each one's class subset"):
        bound("amalgamation", 2)


# --------------------------------------------------- gradients, equality, permutations, bad input
@pytest.mark.parametrize("name", NAMES)
def test_gradients_equality_and_permutations(name):
    batch = type("Batch", (), {"y": torch.tensor(Y)})()
    method = bound(name, 3)
    student = Outputs(t(Z, grad=True))
    teacher = ensemble_outputs(V)
    loss = method(student, teacher, batch)["kl"]
    loss.backward()
    assert torch.isfinite(loss) and student.logits.grad.abs().sum() > 0
    assert all(not v.requires_grad for v in teacher.features.values())
    same = method(Outputs(t(V[0])), ensemble_outputs([V[0]] * 3), batch)["kl"]
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    order = [3, 1, 0, 2]
    permuted = method(Outputs(t(Z[order])), ensemble_outputs([v[order] for v in V]),
                      type("Batch", (), {"y": torch.tensor(Y[order])})())["kl"]
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-5)
    swapped = method(Outputs(t(Z)), ensemble_outputs([V[2], V[0], V[1]]), batch)["kl"]
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-4)    # teachers are unordered


@pytest.mark.parametrize("name", NAMES + ["amalgamation"])
def test_bad_hyper_parameters(name):
    with pytest.raises(ValueError, match="temperature=-1"):
        wb.methods.build_method(name, temperature=-1)
    with pytest.raises(ValueError, match="weight=inf"):
        wb.methods.build_method(name, weight=float("inf"))
    if name == "aekd":
        with pytest.raises(ValueError, match="tolerance=1.5"):
            wb.methods.build_method(name, tolerance=1.5)
    if name == "amalgamation":
        with pytest.raises(ValueError, match="joint_weight=-1"):
            wb.methods.build_method(name, joint_weight=-1)


# ----------------------------------------------------------------------------- training steps
def zoo(name, seed):
    torch.manual_seed(seed)
    return wb.models.build(name, num_classes=10, in_channels=3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
def test_three_steps_from_an_ensemble_of_three(shapes, name, student_name):
    teacher = MultiTeacher([zoo("resnet14", 1), zoo("wrn_16_1", 2), zoo("resnet8", 3)])
    run = distil_three_steps(zoo(student_name, 4), teacher, shapes, name)
    assert 0.0 <= run.result["teacher_acc"] <= 1.0        # the ensemble is evaluated as one teacher
    if name == "aekd":
        alpha = run.methods["aekd"].teacher_weights
        assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-5) and float(alpha.max()) <= 0.6 + 1e-5


def test_aekd_three_steps_with_a_resnet32x4_in_the_ensemble(shapes):
    teacher = MultiTeacher([zoo("resnet32x4", 5), zoo("wrn_16_1", 6)])
    distil_three_steps(zoo("resnet8x4", 7), teacher, shapes, "aekd")


def digits_subset(bundle, classes):
    """The digits of ``classes`` only, relabelled 0..len(classes) - 1 (what a specialist saw)."""
    def part(split):
        keep = (split.y[:, None] == torch.tensor(classes)[None]).any(1).nonzero().squeeze(1)
        sub = split.subset(keep)
        sub.y = sub.y - min(classes)
        return sub
    return DataBundle(f"digits_{classes[0]}-{classes[-1]}", part(bundle.train), part(bundle.test),
                      len(classes), [bundle.class_names[c] for c in classes], bundle.input_shape, {})


def test_amalgamation_student_classifies_every_digit_from_two_half_teachers():
    digits = wb.data.load("digits")
    low, high = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    teachers = []
    for seed, classes in enumerate((low, high)):
        torch.manual_seed(seed)
        teacher = wb.models.build("cnn", num_classes=5, in_channels=1, width=16)
        run = wb.train(teacher, digits_subset(digits, classes), epochs=3, batch_size=32, store=None,
                       progress=False).fit()
        assert run.result["test_acc"] > 0.9                 # each teacher knows its five digits
        teachers.append(teacher)
    torch.manual_seed(5)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=16)
    # task_weight=0: no labels, as in the paper; the student learns from the two teachers alone
    run = wb.distill(student, MultiTeacher(teachers, classes=[low, high]), digits,
                     methods={"amalgamation": {}}, task_weight=0.0, epochs=3, batch_size=32,
                     store=None, progress=False).fit()
    # measured 96.7% (the teachers' concatenated scores: 95.8%); a teacher alone tops out at ~50%
    assert run.result["test_acc"] > 0.85
    assert run.result["teacher_acc"] > 0.85
