"""Logit-based methods (survey chapter 1.1): DKD, DIST, LS, NormKD, TTM, WTTM.

Golden values are computed here by hand from each paper's equation with ``math`` and
``statistics`` (no torch), and also written out as numbers, so that a mistake shared by the helper
and the code cannot hide.
"""
import math
import statistics
import sys

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.data.bundle import Batch
from workbench.methods import build_method
from workbench.methods.logit.dist import dist_loss, pearson
from workbench.methods.logit.dkd import dkd_loss
from workbench.methods.logit.kd import kd_loss
from workbench.methods.logit.ls import ls_kd_loss, standardize
from workbench.methods.logit.normkd import normkd_loss
from workbench.methods.logit.ttm import power_transform, ttm_loss
from workbench.methods.logit.wttm import wttm_loss
from workbench.store import RunStore
from workbench.taps import Outputs

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
TARGET = [0, 2]
NEW_METHODS = ["dkd", "dist", "ls", "normkd", "ttm", "wttm"]


def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def pearson_by_hand(a, b):
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def batch_for(target):
    target = torch.as_tensor(target)
    return Batch(torch.zeros(len(target), 1), target, torch.arange(len(target)))


def random_logits(batch=16, classes=10, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator, dtype=dtype) * 2
    teacher = torch.randn(batch, classes, generator=generator, dtype=dtype) * 4
    target = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, target


# -- DKD ----------------------------------------------------------------------------------------
def test_dkd_golden_value():
    temperature, alpha, beta = 2.0, 1.0, 8.0
    tckd = nckd = 0.0
    for z, v, t in zip(STUDENT, TEACHER, TARGET):
        p, q = softmax(z, temperature), softmax(v, temperature)
        tckd += kl([q[t], 1 - q[t]], [p[t], 1 - p[t]])
        others = [i for i in range(3) if i != t]
        nckd += kl([q[i] / (1 - q[t]) for i in others], [p[i] / (1 - p[t]) for i in others])
    tckd, nckd = alpha * temperature ** 2 * tckd / 2, beta * temperature ** 2 * nckd / 2
    got = dkd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET),
                   alpha, beta, temperature)
    assert got[0].item() == pytest.approx(tckd, rel=1e-6)
    assert got[1].item() == pytest.approx(nckd, rel=1e-6)
    assert (tckd, nckd) == pytest.approx((0.42616, 0.60974), abs=1e-4)


def reference_dkd(student, teacher, target, alpha, beta, temperature):
    """DKD as the authors' code computes it (mdistiller): probabilities gathered by masks, the
    target class pushed out of the non-target softmax by subtracting 1000."""
    gt = F.one_hot(target, student.shape[1]).to(student.dtype)
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature ** 2 / len(target)
    log_hat_s = F.log_softmax(student / temperature - 1000.0 * gt, dim=1)
    hat_t = F.softmax(teacher / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_hat_s, hat_t, reduction="sum") * temperature ** 2 / len(target)
    return alpha * tckd, beta * nckd


def test_dkd_matches_the_authors_masking_implementation():
    student, teacher, target = random_logits(batch=32, classes=100, dtype=torch.float64)
    ours = dkd_loss(student, teacher, target, 1.0, 8.0, 4.0)
    theirs = reference_dkd(student, teacher, target, 1.0, 8.0, 4.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_with_beta_one_minus_teacher_target_probability_is_kd_for_every_sample(
        dtype, tolerance, temperature):
    """The paper's Eq. 5: KD = TCKD + (1 - p_t^T) NCKD, sample by sample."""
    student, teacher, target = random_logits(batch=64, classes=10, dtype=dtype, seed=1)
    p_target = F.softmax(teacher / temperature, dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
    tckd, nckd = dkd_loss(student, teacher, target, alpha=1.0, beta=1 - p_target,
                          temperature=temperature, reduction="none")
    assert tckd.shape == nckd.shape == (64,)
    for i in range(64):
        kd_i = kd_loss(student[i:i + 1], teacher[i:i + 1], temperature)   # batch of one: per sample
        assert (tckd[i] + nckd[i]).item() == pytest.approx(kd_i.item(), rel=tolerance, abs=tolerance)
    # a constant beta cannot do it: the weight must follow each sample's teacher confidence
    tckd_fixed, nckd_fixed = dkd_loss(student, teacher, target, 1.0, 1.0, temperature, reduction="none")
    kd_all = torch.stack([kd_loss(student[i:i + 1], teacher[i:i + 1], temperature) for i in range(64)])
    assert not torch.allclose(tckd_fixed + nckd_fixed, kd_all, rtol=1e-3)


def test_dkd_terms_are_zero_when_student_equals_teacher_and_stable_for_confident_targets():
    student, _, target = random_logits()
    tckd, nckd = dkd_loss(student, student, target, 1.0, 8.0, 4.0)
    assert tckd.item() == pytest.approx(0, abs=1e-6) and nckd.item() == pytest.approx(0, abs=1e-6)
    confident = F.one_hot(target, 10).float() * 200.0        # p_t = 1 - 1e-86: 1 - p_t underflows
    tckd, nckd = dkd_loss(torch.randn(16, 10, requires_grad=True), confident, target, 1.0, 8.0, 1.0)
    assert torch.isfinite(tckd) and torch.isfinite(nckd)
    with pytest.raises(ValueError, match="reduction='sum'"):
        dkd_loss(student, student, target, 1.0, 8.0, 4.0, reduction="sum")


def test_dkd_method_terms_sum_to_the_per_sample_loss_and_to_kd():
    student, teacher, target = random_logits(batch=16, classes=10, dtype=torch.float64, seed=2)
    batch = batch_for(target)
    method = build_method("dkd", warmup=0).double()
    terms = method(Outputs(student), Outputs(teacher), batch)
    assert set(terms) == {"tckd", "nckd"}
    tckd, nckd = dkd_loss(student, teacher, target, 1.0, 8.0, 4.0, reduction="none")
    torch.testing.assert_close(terms["tckd"], tckd.mean())
    torch.testing.assert_close(terms["nckd"], nckd.mean())
    torch.testing.assert_close(terms["tckd"] + terms["nckd"], (tckd + nckd).mean())

    # A batch whose teacher gives every sample the same target probability c (rows are rotations
    # of one vector, the target rotating with them): DKD(alpha=1, beta=1-c) must equal KD's term.
    base = torch.randn(10, dtype=torch.float64)
    shifts = torch.arange(16) % 10
    teacher = torch.stack([base.roll(int(s)) for s in shifts])
    target = (3 + shifts) % 10
    c = F.softmax(base / 4.0, dim=0)[3].item()
    dkd = build_method("dkd", alpha=1.0, beta=1 - c, temperature=4.0, warmup=0)
    kd = build_method("kd", temperature=4.0)
    terms = dkd(Outputs(student), Outputs(teacher), batch_for(target))
    kd_term = kd(Outputs(student), Outputs(teacher), batch_for(target))["kl"]
    assert (terms["tckd"] + terms["nckd"]).item() == pytest.approx(kd_term.item(), rel=1e-10)


def test_dkd_warmup_ramps_linearly_and_counts_only_training_forwards():
    student, teacher, target = random_logits()
    batch = batch_for(target)
    full = build_method("dkd", warmup=0)(Outputs(student), Outputs(teacher), batch)
    method = build_method("dkd", warmup=4)
    assert method.hparams()["warmup"] == 4.0
    ratios = []
    for _ in range(6):
        terms = method(Outputs(student), Outputs(teacher), batch)
        ratios.append((terms["nckd"] / full["nckd"]).item())
        assert (terms["tckd"] / full["tckd"]).item() == pytest.approx(ratios[-1], rel=1e-5)
    assert ratios == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rel=1e-5)
    assert method.steps_done.item() == 6
    method.eval()                                 # an evaluation pass does not advance the ramp
    method(Outputs(student), Outputs(teacher), batch)
    assert method.steps_done.item() == 6


def test_dkd_warmup_counter_is_saved_with_the_method():
    student, teacher, target = random_logits()
    batch = batch_for(target)
    method = build_method("dkd", warmup=10)
    for _ in range(3):
        method(Outputs(student), Outputs(teacher), batch)
    state = method.state_dict()
    assert state["steps_done"].item() == 3
    fresh = build_method("dkd", warmup=10)
    fresh.load_state_dict(state)
    reference = build_method("dkd", warmup=0)(Outputs(student), Outputs(teacher), batch)["nckd"]
    fourth = fresh(Outputs(student), Outputs(teacher), batch)["nckd"]
    assert (fourth / reference).item() == pytest.approx(0.4, rel=1e-5)


# -- DIST ---------------------------------------------------------------------------------------
def test_dist_golden_value():
    student = STUDENT + [[0.3, 0.1, -0.4]]
    teacher = TEACHER + [[-1.0, 1.5, 0.2]]
    temperature, beta, gamma = 2.0, 1.5, 0.5
    ys = [softmax(z, temperature) for z in student]
    yt = [softmax(v, temperature) for v in teacher]
    inter = temperature ** 2 * statistics.fmean(1 - pearson_by_hand(a, b) for a, b in zip(ys, yt))
    intra = temperature ** 2 * statistics.fmean(
        1 - pearson_by_hand([r[j] for r in ys], [r[j] for r in yt]) for j in range(3))
    got = dist_loss(torch.tensor(student), torch.tensor(teacher), temperature, beta, gamma)
    assert got[0].item() == pytest.approx(beta * inter, rel=1e-5)
    assert got[1].item() == pytest.approx(gamma * intra, rel=1e-5)
    assert (inter, intra) == pytest.approx((2.69990, 2.41075), abs=1e-4)


def test_dist_pearson_and_its_invariance():
    a, b = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    for i in range(5):
        assert pearson(a, b)[i].item() == pytest.approx(pearson_by_hand(a[i].tolist(), b[i].tolist()))
    # Pearson ignores a positive scale and a shift of either side, the relation DIST keeps
    torch.testing.assert_close(pearson(3 * a + 7, b), pearson(a, b))
    logits = torch.randn(8, 10, dtype=torch.float64)
    inter, intra = dist_loss(logits, logits, 4.0)
    # not exactly 0: the authors' eps in the denominator leaves tau^2 * eps / |centred probs|^2
    assert inter.item() == pytest.approx(0, abs=1e-4) and intra.item() == pytest.approx(0, abs=1e-4)


# -- LS -----------------------------------------------------------------------------------------
def test_ls_golden_value():
    temperature = 2.0

    def z_score(x):
        return [(v - statistics.fmean(x)) / statistics.stdev(x) for v in x]

    expected = statistics.fmean(
        temperature ** 2 * kl(softmax(z_score(v), temperature), softmax(z_score(z), temperature))
        for z, v in zip(STUDENT, TEACHER))
    got = ls_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.27311, abs=1e-4)
    method = build_method("ls")
    assert method.hparams() == {"base": "kd", "temperature": 2.0, "base_hparams": {}, "weight": 9.0}
    terms = method(Outputs(torch.tensor(STUDENT)), Outputs(torch.tensor(TEACHER)), batch_for(TARGET))
    assert terms["kl"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("base", ["kd", "dkd", "dist", "ttm"])
def test_ls_ignores_each_samples_logit_scale_and_shift(base):
    """The point of LS: the student need not match the teacher's logit range, only its relations."""
    _, teacher, target = random_logits(seed=3)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(teacher.shape, generator=generator)
    student = 0.8 * teacher + noise                       # a student that has learned something
    scale = torch.rand(16, 1, generator=generator) * 5 + 0.2   # a positive factor per sample
    shift = torch.randn(16, 1, generator=generator) * 10
    hparams = {"base_hparams": {"warmup": 0}} if base == "dkd" else {}
    method = build_method("ls", base=base, **hparams)
    plain = method(Outputs(student), Outputs(teacher), batch_for(target))
    moved = method(Outputs(student * scale + shift), Outputs(teacher), batch_for(target))
    for name in plain:
        assert moved[name].item() == pytest.approx(plain[name].item(), rel=1e-4, abs=1e-6)
    # without LS the same change moves the loss a lot
    bare = build_method(base, **hparams.get("base_hparams", {}))
    assert any(abs(bare(Outputs(student * scale + shift), Outputs(teacher), batch_for(target))[n]
                   - bare(Outputs(student), Outputs(teacher), batch_for(target))[n]) > 1e-2
               for n in plain)


def test_ls_wraps_dkd_on_standardised_logits():
    student, teacher, target = random_logits(seed=4)
    method = build_method("ls", base="dkd", temperature=2.0, base_hparams={"beta": 6.0, "warmup": 0})
    assert method.hparams()["base_hparams"] == {"alpha": 1.0, "beta": 6.0, "warmup": 0.0}
    assert method.base_method.temperature == 2.0
    terms = method(Outputs(student), Outputs(teacher), batch_for(target))
    tckd, nckd = dkd_loss(standardize(student), standardize(teacher), target, 1.0, 6.0, 2.0)
    torch.testing.assert_close(terms["tckd"], tckd)
    torch.testing.assert_close(terms["nckd"], nckd)
    # the wrapped DKD's warm-up counter travels with ls's state
    method = build_method("ls", base="dkd")
    method(Outputs(student), Outputs(teacher), batch_for(target))
    assert method.state_dict()["base_method.steps_done"].item() == 1


def test_ls_live_changes_reach_the_wrapped_method_at_the_step_boundary():
    method = build_method("ls", base="dkd")
    method.set_live(True)
    method.temperature = 3.0
    method.base_hparams = {"beta": 2.0}
    assert method.base_method.temperature == 2.0 and method.base_method.beta == 8.0
    assert method.hparams()["temperature"] == 3.0
    assert method.hparams()["base_hparams"]["beta"] == 2.0
    assert method.apply_pending() == {"temperature": 3.0, "base_hparams": {"beta": 2.0}}
    assert method.base_method.temperature == 3.0 and method.base_method.beta == 2.0
    # a checkpoint's hyper-parameters are restored by setattr, as the trainer does
    restored = build_method("ls", base="dkd")
    for key, value in method.hparams().items():
        setattr(restored, key, value)
    assert restored.hparams() == method.hparams()


def test_ls_rejects_bases_it_cannot_wrap():
    with pytest.raises(KeyError, match="Did you mean 'dkd'"):
        build_method("ls", base="dk")
    with pytest.raises(ValueError, match="not a logit method"):
        build_method("ls", base="ls")
    with pytest.raises(ValueError, match="no 'temperature'"):
        build_method("ls", base="normkd")
    with pytest.raises(ValueError, match="set 'temperature' on ls itself"):
        build_method("ls", base="kd", base_hparams={"temperature": 4})
    with pytest.raises(TypeError, match="no hyper-parameter 'gamma'"):
        build_method("ls", base="dkd", base_hparams={"gamma": 1})
    method = build_method("ls", base="dkd")
    with pytest.raises(ValueError, match="cannot change"):
        method.base = "kd"
    with pytest.raises(TypeError, match="no hyper-parameter 'gamma'"):
        method.base_hparams = {"gamma": 1}


# -- NormKD -------------------------------------------------------------------------------------
def test_normkd_golden_value():
    temperature_norm = 2.0
    expected = 0.0
    for z, v in zip(STUDENT, TEACHER):
        t_s = temperature_norm * statistics.stdev(z)
        t_t = temperature_norm * statistics.stdev(v)
        expected += t_t ** 2 * kl(softmax(v, t_t), softmax(z, t_s)) / 2
    got = normkd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature_norm)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.27140, abs=1e-4)


def test_normkd_has_logit_standardisations_distributions_with_a_per_sample_weight():
    student, teacher, _ = random_logits(seed=5)
    per_sample = normkd_loss(student, teacher, 2.0, reduction="none")                 # (B,)
    weight = (2.0 * teacher.std(dim=1)) ** 2
    ls_per_sample = torch.stack([ls_kd_loss(student[i:i + 1], teacher[i:i + 1], 2.0)
                                 for i in range(16)])
    torch.testing.assert_close(per_sample / weight, ls_per_sample / 2.0 ** 2, rtol=1e-4, atol=1e-7)


def test_normkd_stays_finite_on_constant_logits():
    logits = torch.zeros(4, 10, requires_grad=True)       # e.g. a classifier initialised to zero
    loss = normkd_loss(logits, torch.randn(4, 10), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert normkd_loss(torch.zeros(4, 10), torch.zeros(4, 10), 2.0).item() == 0.0


# -- TTM and WTTM -------------------------------------------------------------------------------
def test_power_transform_is_the_tempered_softmax():
    _, teacher, _ = random_logits(dtype=torch.float64)
    log_transformed, power_sum = power_transform(teacher, 4.0)
    p = F.softmax(teacher, dim=1)
    torch.testing.assert_close(log_transformed.exp(), F.softmax(teacher / 4.0, dim=1))
    torch.testing.assert_close(log_transformed.exp(), p ** 0.25 / (p ** 0.25).sum(1, keepdim=True))
    torch.testing.assert_close(power_sum, (p ** 0.25).sum(1))


def test_ttm_and_wttm_golden_values():
    temperature = 2.0
    gamma = 1 / temperature
    ttm = wttm = 0.0
    for z, v in zip(STUDENT, TEACHER):
        p = softmax(v)
        power_sum = sum(pi ** gamma for pi in p)
        transformed = [pi ** gamma / power_sum for pi in p]
        ttm += kl(transformed, softmax(z)) / 2
        wttm += power_sum * kl(transformed, softmax(z)) / 2
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert ttm_loss(student, teacher, temperature).item() == pytest.approx(ttm, rel=1e-5)
    assert wttm_loss(student, teacher, temperature).item() == pytest.approx(wttm, rel=1e-5)
    assert (ttm, wttm) == pytest.approx((0.48341, 0.78095), abs=1e-4)


def test_ttm_student_matches_the_transformed_teacher_and_equals_kd_at_t1():
    student, teacher, _ = random_logits(dtype=torch.float64)
    assert ttm_loss(teacher / 4.0, teacher, 4.0).item() == pytest.approx(0, abs=1e-12)
    assert ttm_loss(teacher, teacher, 4.0).item() > 0.01   # KD's minimum is not TTM's
    torch.testing.assert_close(ttm_loss(student, teacher, 1.0), kd_loss(student, teacher, 1.0))


def test_wttm_weight_is_the_power_sum_and_grows_with_the_teachers_entropy():
    student, teacher, _ = random_logits(dtype=torch.float64)
    _, power_sum = power_transform(teacher, 5.0)
    torch.testing.assert_close(wttm_loss(student, teacher, 5.0, reduction="none"),
                               power_sum * ttm_loss(student, teacher, 5.0, reduction="none"))
    classes, gamma = 10, 0.2
    uniform, one_hot = torch.zeros(1, classes), torch.eye(classes)[:1] * 100.0
    assert power_transform(uniform, 5.0)[1].item() == pytest.approx(classes ** (1 - gamma))
    assert power_transform(one_hot, 5.0)[1].item() == pytest.approx(1.0, abs=1e-6)


# -- every new method ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_METHODS)
def test_method_is_registered_with_its_survey_metadata(name):
    entry = wb.METHODS.get(name)
    assert entry.meta["category"] == "logit" and entry.meta["notebook"] == "10_sources_logit"
    assert entry.meta["link"].startswith("https://arxiv.org/abs/")
    assert entry.factory.__module__.endswith(f"logit.{name}")
    arxiv_id = entry.meta["link"].rsplit("/", 1)[1]
    assert entry.factory.__doc__ and arxiv_id in sys.modules[entry.factory.__module__].__doc__


@pytest.mark.parametrize("name", NEW_METHODS)
def test_method_gives_finite_terms_and_gradients_to_the_student(name):
    student, teacher, target = random_logits(seed=6)
    student.requires_grad_()
    method = build_method(name)
    terms = method(Outputs(student), Outputs(teacher), batch_for(target))
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(method.weight * t for t in terms.values()).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NEW_METHODS)
def test_loss_is_minimal_where_the_method_says_the_student_has_learned(name):
    _, teacher, target = random_logits(seed=7)
    method = build_method(name)
    # TTM's student matches softmax(v / T) with its plain softmax: the optimum is z = v / T
    student = teacher / method.temperature if name in ("ttm", "wttm") else teacher.clone()
    terms = method(Outputs(student), Outputs(teacher), batch_for(target))
    assert all(abs(t.item()) < 1e-5 for t in terms.values()), terms
    moved = method(Outputs(student + torch.randn_like(student)), Outputs(teacher), batch_for(target))
    assert sum(moved.values()).item() > 1e-3


@pytest.mark.parametrize("name, hparam", [("dkd", "beta"), ("dist", "gamma"), ("ls", "temperature"),
                                          ("normkd", "temperature_norm"), ("ttm", "temperature"),
                                          ("wttm", "weight")])
def test_hyperparameters_are_validated(name, hparam):
    with pytest.raises(ValueError, match=f"{hparam}=-1"):
        build_method(name, **{hparam: -1})
    defaults = build_method(name).defaults()
    if name == "ls":                              # None means "the base's own defaults"
        defaults["base_hparams"] = {}
    assert build_method(name).hparams() == defaults


# -- in the trainer -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = wb.models.build("cnn", num_classes=10, in_channels=1, width=16)
    wb.train(model, digits, epochs=2, store=None, progress=False).fit()
    return model


def cnn_student(seed=1):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=4)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_method_trains_a_student_on_digits(digits, teacher, name):
    before = [p.detach().clone() for p in teacher.parameters()]
    run = wb.distill(cnn_student(), teacher, digits, methods={name: {}}, epochs=1, log_every=5,
                     store=None, progress=False).fit()
    assert run.status == "finished"
    assert all(math.isfinite(v) for row in run.history for v in row.values())
    names = {k for row in run.history for k in row}
    assert {f"{name}.{term}" for term in build_method(name)(
        Outputs(torch.randn(4, 10)), Outputs(torch.randn(4, 10)), batch_for([0, 1, 2, 3]))} <= names
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_dkd_warmup_survives_an_interrupted_and_resumed_run(digits, teacher, tmp_path):
    steps_per_epoch = len(digits.train) // 64
    options = dict(methods={"dkd": {"warmup": 2 * steps_per_epoch}}, epochs=3, seed=5, progress=False)
    whole = wb.distill(cnn_student(), teacher, digits, store=RunStore(tmp_path / "a.sqlite"),
                       **options).fit()
    assert whole.methods["dkd"].steps_done.item() == whole.step == 3 * steps_per_epoch

    store = RunStore(tmp_path / "b.sqlite")
    first = wb.distill(cnn_student(), teacher, digits, store=store, **options)
    first.on("epoch_end", lambda run, epoch: run.stop() if epoch == 1 else None)
    first.fit()
    assert first.status == "interrupted" and first.methods["dkd"].steps_done.item() == steps_per_epoch

    resumed = wb.distill(cnn_student(), teacher, digits, store=store, **options).fit()
    assert resumed.run_id == first.run_id and resumed.status == "finished"
    assert resumed.methods["dkd"].steps_done.item() == 3 * steps_per_epoch
    assert resumed.history == whole.history       # the ramp went on where it stopped
