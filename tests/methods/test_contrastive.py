"""Contrastive distillation (survey 3.7): CRD, CRCD and SSKD. Golden values from the papers'
equations (and the authors' code where the paper leaves a step open) computed here with numpy and
loops, the memory banks of CRD (momentum update, growth, checkpoint size), gradients, frozen
teachers, batch permutation, hyper-parameter checks, and three training steps of each on zoo pairs
of equal and of mismatched widths."""
import math

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.data.bundle import Batch
from workbench.methods.contrastive.crcd import relation_contrast, task_gradient
from workbench.methods.contrastive.crd import contrast_logits, draw_contrast, nce_loss
from workbench.methods.contrastive.sskd import keep_by_error_level, rotations, sskd_losses
from workbench.taps import Outputs

RNG = np.random.default_rng(0)


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=grad)


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def batch_of(y, index=None):
    y = torch.as_tensor(y)
    return Batch(torch.zeros(len(y), 1), y, torch.arange(len(y)) if index is None else torch.as_tensor(index))


# ------------------------------------------------------------------------------------------ CRD
def repdistiller_nce(scores, temperature, n_data, z):
    """RepDistiller's ContrastLoss on exp(score / T) / Z, Z = n_data * first-batch mean, by loops."""
    eps, batch, m = 1e-7, scores.shape[0], scores.shape[1] - 1
    pn = 1.0 / n_data
    total = 0.0
    for b in range(batch):
        p = np.exp(scores[b] / temperature) / z
        total += math.log(p[0] / (p[0] + m * pn + eps))
        total += sum(math.log(m * pn / (p[k] + m * pn + eps)) for k in range(1, m + 1))
    return -total / batch


def test_crd_golden_value():
    n_data, dim, temperature = 50, 6, 0.07
    bank_s, bank_t = np_normalize(RNG.normal(size=(n_data, dim))), np_normalize(RNG.normal(size=(n_data, dim)))
    v_s, v_t = np_normalize(RNG.normal(size=(3, dim))), np_normalize(RNG.normal(size=(3, dim)))
    contrast = np.array([[4, 9, 1, 33, 20], [7, 0, 48, 2, 11], [30, 5, 5, 19, 40]])   # positive first
    scores_s = np.array([[bank_t[c] @ v_s[b] for c in contrast[b]] for b in range(3)])
    scores_t = np.array([[bank_s[c] @ v_t[b] for c in contrast[b]] for b in range(3)])
    # Z from this (first) batch, as RepDistiller sets it on its first call
    z_s, z_t = (np.exp(s / temperature).mean() * n_data for s in (scores_s, scores_t))
    logits = contrast_logits(t(v_s), t(v_t), t(bank_s), t(bank_t), torch.tensor(contrast), temperature)
    log_norm = logits.flatten(1).logsumexp(1) - math.log(logits[0].numel())
    got = [nce_loss(logits[i] - log_norm[i]).item() for i in range(2)]
    assert got[0] == pytest.approx(repdistiller_nce(scores_s, temperature, n_data, z_s), rel=1e-4)
    assert got[1] == pytest.approx(repdistiller_nce(scores_t, temperature, n_data, z_t), rel=1e-4)


def test_crd_draws_negatives_among_the_other_rows():
    torch.manual_seed(0)
    index = torch.tensor([0, 5, 9])
    contrast = draw_contrast(index, rows=10, negatives=200)
    assert torch.equal(contrast[:, 0], index)
    assert (contrast[:, 1:] != index[:, None]).all() and contrast.min() >= 0 and contrast.max() <= 9
    assert len(torch.unique(contrast[0, 1:])) == 9                     # every other row is reachable


def crd_setup(n_data=0, batch=4, dim_s=5, dim_t=7, **hparams):
    torch.manual_seed(1)
    method = wb.methods.build_method("crd", n_data=n_data, feat_dim=8, **hparams)
    method.student_taps, method.teacher_taps = ("e",), ("e",)
    student = Outputs(torch.zeros(batch, 3), {"e": torch.randn(batch, dim_s)})
    teacher = Outputs(torch.zeros(batch, 3), {"e": torch.randn(batch, dim_t)})
    with torch.no_grad():
        method.setup(student, teacher)
    return method


def test_crd_memory_momentum_normaliser_growth_and_checkpoint():
    method = crd_setup(momentum=0.5)
    assert method.bank_student.shape == (4, 8) and torch.isnan(method.log_norm).all()
    f_s = t(RNG.normal(size=(3, 5)), grad=True)
    f_t = t(RNG.normal(size=(3, 7)))
    index = torch.tensor([9, 2, 6])                # beyond the 4 rows made from the first batch
    old = method.bank_student.clone()
    terms = method(Outputs(torch.zeros(3, 3), {"e": f_s}), Outputs(torch.zeros(3, 3), {"e": f_t}),
                   batch_of([0, 1, 2], index))
    assert method.bank_student.shape == (10, 8) and torch.equal(method.bank_student[:2], old[:2])
    v_s = method.embed_student(f_s).detach()
    expected = torch.nn.functional.normalize(old[2] * 0.5 + v_s[1] * 0.5, dim=0)
    assert torch.allclose(method.bank_student[2], expected, atol=1e-6)     # w <- normalize(m w + (1-m) v)
    assert torch.isfinite(method.log_norm).all()
    first = method.log_norm.clone()
    method(Outputs(torch.zeros(3, 3), {"e": f_s}), Outputs(torch.zeros(3, 3), {"e": f_t}), batch_of([0, 1, 2], index))
    assert torch.equal(method.log_norm, first)                             # Z is fixed by the first batch
    (terms["student_anchor"] + terms["teacher_anchor"]).backward()
    assert f_s.grad.abs().sum() > 0 and method.embed_student.linear.weight.grad.abs().sum() > 0
    assert method.embed_teacher.linear.weight.grad.abs().sum() > 0 and not f_t.requires_grad
    # a fresh run (banks of the first batch's size) loads a checkpoint with grown banks
    fresh = crd_setup()
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.bank_teacher, method.bank_teacher)


def test_crd_bad_hyper_parameters():
    for bad, match in [({"temperature": -1}, "temperature=-1"), ({"momentum": 1.5}, "momentum=1.5"),
                       ({"n_negatives": 0}, "n_negatives=0"), ({"feat_dim": 1.5}, "feat_dim=1.5"),
                       ({"n_data": -3}, "n_data=-3"), ({"weight": float("nan")}, "weight=nan")]:
        with pytest.raises(ValueError, match=match):
            wb.methods.build_method("crd", **bad)


# ----------------------------------------------------------------------------------------- CRCD
def np_relation_contrast(q, a, temperature):
    batch, total, count = len(q), 0.0, 0
    for i in range(batch):
        for j in range(batch):
            if j == i:
                continue
            r = np_normalize(q[i] - a[j])
            ks = [k for k in range(batch) if k != j]
            logits = np.array([r @ np_normalize(a[k] - a[j]) / temperature for k in ks])
            total += -np_log_softmax(logits)[ks.index(i)]
            count += 1
    return total / count


def test_crcd_golden_value_and_permutation():
    q, a = np_normalize(RNG.normal(size=(5, 4))), np_normalize(RNG.normal(size=(5, 4)))
    got = relation_contrast(t(q), t(a), 0.07).item()
    assert got == pytest.approx(np_relation_contrast(q, a, 0.07), rel=1e-4)
    order = [3, 0, 4, 1, 2]
    assert relation_contrast(t(q[order]), t(a[order]), 0.07).item() == pytest.approx(got, rel=1e-5)
    with pytest.raises(ValueError, match="batch of 3 or more"):
        relation_contrast(t(q[:2]), t(a[:2]), 0.07)


def test_crcd_gradient_element_equals_autograd():
    e = t(RNG.normal(size=(4, 6)), grad=True)
    head = torch.nn.Linear(6, 5)
    y = torch.tensor([0, 4, 2, 2])
    logits = head(e)
    torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()  # per-sample gradients
    assert torch.allclose(task_gradient(logits.detach(), y, head.weight.detach()), e.grad, atol=1e-6)


def crcd_models():
    torch.manual_seed(2)
    return wb.models.build("cnn", num_classes=5, in_channels=1, width=4), \
        wb.models.build("cnn", num_classes=5, in_channels=1, width=8)


def test_crcd_method_terms_gradients_and_frozen_teacher():
    student_model, teacher_model = crcd_models()
    method = wb.methods.build_method("crcd")
    method.bind(student_model, teacher_model)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        method.setup(wb.capture(student_model, x, method.student_taps), wb.capture(teacher_model, x, method.teacher_taps))
        teacher = wb.capture(teacher_model, x, method.teacher_taps)
    student = wb.capture(student_model, x, method.student_taps)
    terms = method(student, teacher, batch_of(y))
    f_s, f_t = student.embedding, teacher.embedding
    feature = relation_contrast(method.embed_student(f_s), method.embed_teacher(f_t), 0.07) \
        + relation_contrast(method.embed_teacher(f_t), method.embed_student(f_s), 0.07)
    assert terms["feature"].item() == pytest.approx(feature.item(), rel=1e-5)
    (terms["feature"] + terms["gradient"]).backward()
    assert student_model.classifier.weight.grad.abs().sum() > 0            # through the gradient element
    assert method.embed_student_gradient.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())


def test_crcd_taps_and_bad_hyper_parameters():
    student_model, teacher_model = crcd_models()
    x = torch.randn(4, 1, 8, 8)
    method = wb.methods.build_method("crcd", student_taps="stage1", teacher_taps="stage1")
    method.bind(student_model, teacher_model)
    outs = [wb.capture(m, x, ["stage1"]) for m in (student_model, teacher_model)]
    with pytest.raises(ValueError, match="gradient_weight=0"):
        method.setup(*outs)
    method = wb.methods.build_method("crcd", student_taps="stage1", teacher_taps="stage1", gradient_weight=0)
    method.bind(student_model, teacher_model)
    method.setup(*outs)
    terms = method(*outs, batch_of([0, 1, 2, 3]))
    assert torch.isfinite(terms["feature"]) and terms["gradient"].item() == 0.0
    for bad, match in [({"temperature": -1}, "temperature=-1"), ({"gradient_weight": -1}, "gradient_weight=-1"),
                       ({"feat_dim": 2.5}, "feat_dim=2.5")]:
        with pytest.raises(ValueError, match=match):
            wb.methods.build_method("crcd", **bad)


# ----------------------------------------------------------------------------------------- SSKD
def np_kl_rows(target_logits, input_logits):
    lt, li = np_log_softmax(target_logits), np_log_softmax(input_logits)
    return np.sum(np.exp(lt) * (lt - li), axis=1)


def np_keep(scores, truth, ratio):
    """The authors' selection: ranks by argsort, keep right rows and int(wrong * ratio) others."""
    rank = np.array([list(np.argsort(-scores[r])).index(truth[r]) for r in range(len(truth))])
    wrong = int((rank > 0).sum())
    index = np.argsort(rank, kind="stable")[: len(rank) - wrong + int(wrong * ratio)]
    return np.sort(index)


def np_cos(a, b):
    return np_normalize(a) @ np_normalize(b).T


def test_sskd_golden_value():
    batch, classes, dim = 4, 5, 6
    y = np.array([1, 0, 4, 1])
    zs, zt = RNG.normal(size=(batch, classes)), RNG.normal(size=(batch, classes)) * 3
    zs_rot, zt_rot = RNG.normal(size=(3 * batch, classes)), RNG.normal(size=(3 * batch, classes)) * 3
    es, es_rot = RNG.normal(size=(batch, dim)), RNG.normal(size=(3 * batch, dim))
    et = RNG.normal(size=(batch, dim))
    et_rot = np.tile(et, (3, 1)) + RNG.normal(size=(3 * batch, dim)) * 0.8     # some rotations recognised
    kd = np.mean(np_kl_rows(zt / 4, zs / 4)) * 16
    keep = np_keep(zt_rot, np.tile(y, 3), 1.0)
    tf = np.mean(np_kl_rows(zt_rot[keep] / 4, zs_rot[keep] / 4)) * 16
    t_sim, s_sim = np_cos(et_rot, et), np_cos(es_rot, es)
    keep = np_keep(t_sim, np.tile(np.arange(batch), 3), 0.75)
    assert 0 < len(keep) < 3 * batch                                          # some rows dropped
    ss = np.mean(np_kl_rows(t_sim[keep] / 0.5, s_sim[keep] / 0.5)) * 0.25
    got = sskd_losses(t(zs), t(zt), t(zs_rot), t(zt_rot), t(es), t(es_rot), t(et), t(et_rot),
                      torch.tensor(y))
    assert [g.item() for g in got] == pytest.approx([kd, tf, ss], rel=1e-4)


def test_sskd_selection_and_rotations():
    scores = t([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    truth = torch.tensor([0, 0, 1, 0])                  # right, wrong, wrong, wrong
    assert keep_by_error_level(scores, truth, 0.0).tolist() == [True, False, False, False]
    assert keep_by_error_level(scores, truth, 0.7).tolist() == [True, True, True, False]
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    rotated = rotations(x)
    for r in range(6):
        expected = np.rot90(x[r % 2, 0].numpy(), k=r // 2 + 1)
        assert np.array_equal(rotated[r, 0].numpy(), expected)
    with pytest.raises(ValueError, match="square"):
        rotations(torch.zeros(2, 10))


def test_sskd_method_gradients_and_frozen_teacher():
    student_model, teacher_model = crcd_models()
    teacher_model.eval()
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    method = wb.methods.build_method("sskd")
    method.bind(student_model, teacher_model)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        method.setup(wb.capture(student_model, x, method.student_taps), wb.capture(teacher_model, x, method.teacher_taps))
        teacher = wb.capture(teacher_model, x, method.teacher_taps)
    student = wb.capture(student_model, x, method.student_taps)
    batch = Batch(x, y, torch.arange(4))
    terms = method(student, teacher, batch)
    assert set(terms) == {"kd", "transform", "similarity"}
    sum(terms.values()).backward()
    assert student_model.classifier.weight.grad.abs().sum() > 0
    assert method.projection[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())
    for bad, match in [({"similarity_temperature": -1}, "similarity_temperature=-1"),
                       ({"similarity_keep": 2}, "similarity_keep=2"), ({"transform_weight": -1}, "transform_weight=-1")]:
        with pytest.raises(ValueError, match=match):
            wb.methods.build_method("sskd", **bad)


# ----------------------------------------------------------------------------- training steps
@pytest.fixture(scope="module")
def shapes():
    return {32: wb.data.load("shapes", n_train=48, n_test=16),
            # SSKD runs both models on three rotated copies of every batch: 16x16 images keep its
            # runs within this file's time budget (the zoo's CIFAR models take any image size)
            16: wb.data.load("shapes", size=16, n_train=48, n_test=16)}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return wb.models.build("resnet32x4", num_classes=10, in_channels=3)


@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
@pytest.mark.parametrize("name", ["crd", "crcd", "sskd"])
def test_three_training_steps(shapes, teacher, name, student_name):
    torch.manual_seed(1)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = shapes[16 if name == "sskd" else 32]
    run = wb.distill(student, teacher, data, methods={name: {}}, epochs=1, batch_size=16, log_every=1,
                     store=None, progress=False).fit()
    assert run.step == 3
    row = run.history[-1]
    assert math.isfinite(row["loss"])
    assert any(k.startswith(f"{name}.") and math.isfinite(v) for k, v in row.items())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    if name == "crd":   # the banks grew to one row per training sample seen
        assert run.methods["crd"].bank_student.shape[0] == 48
