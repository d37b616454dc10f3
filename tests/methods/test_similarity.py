"""Similarity-based methods (survey 1.3): golden values from the papers' equations computed here
with numpy and loops, gradients, frozen teachers, zero loss at equality, batch-permutation
invariance, hyper-parameter checks, and three training steps of each on real zoo models."""
import math

import numpy as np
import pytest
import torch

import workbench as wb
from method_helpers import distil_three_steps
from workbench.methods.similarity.cc import cc_loss
from workbench.methods.similarity.fsp import fsp_loss
from workbench.methods.similarity.ickd import ickd_loss
from workbench.methods.similarity.irg import irg_losses
from workbench.methods.similarity.pkt import pkt_loss
from workbench.methods.similarity.rkd import rkd_angle_loss, rkd_distance_loss
from workbench.methods.similarity.sp import sp_loss
from workbench.taps import Outputs

NAMES = ["fsp", "rkd", "sp", "cc", "pkt", "irg", "ickd"]


def build(name, **hparams):
    return wb.methods.build_method(name, **hparams)


def run(method, student_feats, teacher_feats, student_logits=None, teacher_logits=None):
    """setup() on detached copies (as the trainer does, under no_grad), then forward()."""
    batch = next(iter(student_feats.values())).shape[0]
    s_logits = torch.zeros(batch, 3) if student_logits is None else student_logits
    t_logits = torch.zeros(batch, 3) if teacher_logits is None else teacher_logits
    student = Outputs(s_logits, dict(student_feats))
    teacher = Outputs(t_logits, dict(teacher_feats))
    with torch.no_grad():
        method.setup(student.detach(), teacher)
    return method(student, teacher, None)


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d <= 1 else d - 0.5


# ------------------------------------------------------------------ golden values, one per method
def numpy_fsp(first, second):
    """G[b, i, j] = sum_{s,t} F1[b,i,s,t] F2[b,j,s,t] / (h w), the larger map average-pooled."""
    while first.shape[2] > second.shape[2]:      # 2x2 average pooling, by hand
        first = first.reshape(first.shape[0], first.shape[1], first.shape[2] // 2, 2,
                              first.shape[3] // 2, 2).mean(axis=(3, 5))
    batch, m, h, w = first.shape
    n = second.shape[1]
    g = np.zeros((batch, m, n))
    for b in range(batch):
        for i in range(m):
            for j in range(n):
                g[b, i, j] = sum(first[b, i, s, t] * second[b, j, s, t]
                                 for s in range(h) for t in range(w)) / (h * w)
    return g


def test_fsp_golden_value():
    rng = np.random.default_rng(0)
    shapes = [(2, 2, 4, 4), (2, 3, 2, 2), (2, 2, 2, 2)]
    s = [rng.normal(size=shape) for shape in shapes]
    t = [rng.normal(size=shape) for shape in shapes]
    expected = sum(np.mean((numpy_fsp(s[i], s[i + 1]) - numpy_fsp(t[i], t[i + 1])) ** 2)
                   for i in range(2))
    as_tensors = lambda xs: [torch.tensor(x, dtype=torch.float32) for x in xs]
    assert fsp_loss(as_tensors(s), as_tensors(t)).item() == pytest.approx(expected, rel=1e-5)
    # the method with equal widths builds no connector and gives the same number
    method = build("fsp", student_taps=("a", "b", "c"), teacher_taps=("a", "b", "c"))
    terms = run(method, dict(zip("abc", as_tensors(s))), dict(zip("abc", as_tensors(t))))
    assert len(method.connectors) == 0
    assert terms["fsp"].item() == pytest.approx(expected, rel=1e-5)


def test_rkd_golden_value():
    s = np.array([[0.0, 1.0], [2.0, 0.5], [1.0, -1.0], [0.5, 0.5]])
    t = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [2.0, 1.0]])
    n = len(s)

    def distances(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))              # mu over pairs i != j

    def angles(e):                                         # cos of the angle at e_j: <e^{ij}, e^{kj}>
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if i != j and k != j:
                        u, v = e[i] - e[j], e[k] - e[j]
                        a[j, i, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    ds, dt, as_, at = distances(s), distances(t), angles(s), angles(t)
    expected_d = np.mean([huber(ds[i, j], dt[i, j]) for i in range(n) for j in range(n)])
    expected_a = np.mean([huber(as_[i, j, k], at[i, j, k])
                          for i in range(n) for j in range(n) for k in range(n)])
    s_t, t_t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    assert rkd_distance_loss(s_t, t_t).item() == pytest.approx(expected_d, rel=1e-5)
    assert rkd_angle_loss(s_t, t_t).item() == pytest.approx(expected_a, rel=1e-5)
    terms = run(build("rkd", student_taps="e", teacher_taps="e"), {"e": s_t}, {"e": t_t})
    assert terms["distance"].item() == pytest.approx(25 * expected_d, rel=1e-5)
    assert terms["angle"].item() == pytest.approx(50 * expected_a, rel=1e-5)


def test_sp_golden_value():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 4, 1, 1))  # shapes may differ

    def normalised_gram(a):
        q = a.reshape(3, -1)
        g = q @ q.T
        return g / np.sqrt((g ** 2).sum(axis=1, keepdims=True))

    expected = ((normalised_gram(t) - normalised_gram(s)) ** 2).sum() / 3 ** 2
    s_t, t_t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    assert sp_loss(s_t, t_t).item() == pytest.approx(expected, rel=1e-5)
    terms = run(build("sp", student_taps="x", teacher_taps="x"), {"x": s_t}, {"x": t_t})
    assert terms["sp"].item() == pytest.approx(expected, rel=1e-5)


def numpy_cc_kernel(f, gamma, order):
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    cos = f @ f.T
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos ** p
               for p in range(order + 1))


def test_cc_golden_value_and_taylor_kernel():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    expected = np.mean((numpy_cc_kernel(t, 0.4, 2) - numpy_cc_kernel(s, 0.4, 2)) ** 2)
    s_t, t_t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    assert cc_loss(s_t, t_t, 0.4, 2).item() == pytest.approx(expected, rel=1e-5)
    terms = run(build("cc", embed_dim=None, student_taps="e", teacher_taps="e"),
                {"e": s_t}, {"e": t_t})
    assert terms["cc"].item() == pytest.approx(expected, rel=1e-5)
    # at high order the expansion is the Gaussian RBF exp(-gamma ||f_i - f_j||^2) of unit vectors
    f = t / np.linalg.norm(t, axis=1, keepdims=True)
    rbf = np.exp(-0.4 * ((f[:, None] - f[None]) ** 2).sum(-1))
    np.testing.assert_allclose(numpy_cc_kernel(t, 0.4, 20), rbf, atol=1e-9)


def test_pkt_golden_value():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 6))
    eps = 1e-7

    def probabilities(x):
        n = len(x)
        k = np.array([[(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])) + 1) / 2
                       for j in range(n)] for i in range(n)])
        return k / k.sum(axis=1, keepdims=True)

    p, q = probabilities(t), probabilities(s)
    expected = np.mean(p * np.log((p + eps) / (q + eps)))
    s_t, t_t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    assert pkt_loss(s_t, t_t).item() == pytest.approx(expected, rel=1e-4)
    terms = run(build("pkt", student_taps="e", teacher_taps="e"), {"e": s_t}, {"e": t_t})
    assert terms["pkt"].item() == pytest.approx(expected, rel=1e-4)


def test_irg_golden_value():
    rng = np.random.default_rng(4)
    n = 3
    s = [rng.normal(size=(n, 2, 2, 2)), rng.normal(size=(n, 4, 1, 1))]
    t = [rng.normal(size=(n, 3, 2, 2)), rng.normal(size=(n, 6, 1, 1))]
    s_logits, t_logits = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))

    def edges(f):
        f = f.reshape(n, -1)
        a = np.array([[((f[i] - f[j]) ** 2).sum() for j in range(n)] for i in range(n)])
        return a / a.max()

    def transform(first, second):
        first = first.mean(axis=(2, 3))                              # 2x2 pooled to 1x1: (n, C1)
        second = second.reshape(n, -1)                               # (n, 2 * C1)
        second = (second[:, 0::2] + second[:, 1::2]) / 2             # channel pairs averaged
        lam = ((first - second) ** 2).sum(axis=1)
        return lam / lam.max()

    vertex = np.mean((s_logits - t_logits) ** 2)
    edge = np.mean([np.mean((edges(a) - edges(b)) ** 2) for a, b in zip(s, t)])
    trans = np.mean((transform(*s) - transform(*t)) ** 2)
    tensors = lambda xs: [torch.tensor(x, dtype=torch.float32) for x in xs]
    got = irg_losses(torch.tensor(s_logits, dtype=torch.float32),
                     torch.tensor(t_logits, dtype=torch.float32), tensors(s), tensors(t))
    assert [g.item() for g in got] == pytest.approx([vertex, edge, trans], rel=1e-5)
    terms = run(build("irg", student_taps=("a", "b"), teacher_taps=("a", "b")),
                dict(zip("ab", tensors(s))), dict(zip("ab", tensors(t))),
                torch.tensor(s_logits, dtype=torch.float32), torch.tensor(t_logits, dtype=torch.float32))
    assert terms["vertex"].item() == pytest.approx(0.1 * vertex, rel=1e-5)
    assert terms["edge"].item() == pytest.approx(5 * edge, rel=1e-5)
    assert terms["transform"].item() == pytest.approx(5 * trans, rel=1e-5)


def test_ickd_golden_value():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 4, 4))   # spatial sizes may differ

    def correlation(f):
        v = f.reshape(f.shape[0], f.shape[1], -1)
        g = np.einsum("bmp,bnp->bmn", v, v)
        return g / np.linalg.norm(g, axis=2, keepdims=True)

    expected = ((correlation(t) - correlation(s)) ** 2).sum() / (2 * 3)
    got = ickd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ properties shared by all
def feature_pair(name, same_widths=True, seed=0):
    """Method, student features (requiring grad) and teacher features for a unit test."""
    g = torch.Generator().manual_seed(seed)
    batch = 6
    if name in ("rkd", "cc", "pkt"):
        s = {"e": torch.randn(batch, 8 if same_widths else 5, generator=g)}
        t = {"e": torch.randn(batch, 8, generator=g)}
        taps = ("e",)
    else:
        widths_s = (4, 6, 8) if same_widths else (3, 5, 7)
        s = {k: torch.randn(batch, c, r, r, generator=g) for k, c, r in zip("abc", widths_s, (8, 4, 4))}
        t = {k: torch.randn(batch, c, r, r, generator=g) for k, c, r in zip("abc", (4, 6, 8), (8, 4, 2))}
        taps = ("a", "b", "c") if name in ("fsp", "irg") else ("c",)
    for v in s.values():
        v.requires_grad_()
    return build(name, student_taps=taps, teacher_taps=taps), s, t


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_connectors_not_teacher(name):
    method, s, t = feature_pair(name, same_widths=False)
    logits = torch.randn(6, 3, requires_grad=True)
    terms = run(method, s, t, logits, torch.randn(6, 3))
    assert terms and all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    used = [s[k] for k in method.student_taps]
    assert all(f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
               for f in used)
    assert all(not v.requires_grad and v.grad is None for v in t.values())
    connector_params = list(method.parameters())
    if name in ("fsp", "cc", "ickd"):       # widths differ here: these build connectors
        assert connector_params
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in connector_params)


@pytest.mark.parametrize("name", ["fsp", "rkd", "sp", "pkt", "irg"])
def test_zero_loss_when_student_equals_teacher(name):
    method, s, t = feature_pair(name, same_widths=True)
    same = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    logits = torch.randn(6, 3)
    terms = run(method, same, t, logits.clone(), logits)
    for value in terms.values():
        assert value.item() == pytest.approx(0.0, abs=1e-6)
    # and a different student gives a positive loss
    assert sum(run(build(name, student_taps=method.student_taps, teacher_taps=method.teacher_taps),
                   s, t, torch.randn(6, 3), logits).values()).item() > 1e-4


def test_cc_and_ickd_relations_vanish_at_equality():
    f = torch.randn(6, 4, 3, 3)
    assert cc_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert ickd_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    cc = build("cc", embed_dim=None, student_taps="e", teacher_taps="e")
    e = torch.randn(6, 5)
    assert run(cc, {"e": e.clone()}, {"e": e})["cc"].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_batch_permutation_invariance(name):
    method, s, t = feature_pair(name, same_widths=False, seed=3)
    s_logits, t_logits = torch.randn(6, 3), torch.randn(6, 3)
    torch.manual_seed(0)
    first = run(method, s, t, s_logits, t_logits)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    second = method(Outputs(s_logits[order], {k: v[order] for k, v in s.items()}),
                    Outputs(t_logits[order], {k: v[order] for k, v in t.items()}), None)
    for key in first:
        assert second[key].item() == pytest.approx(first[key].item(), rel=1e-4, abs=1e-7)


def test_fsp_builds_connectors_only_where_widths_differ_and_checks_taps():
    method, s, t = feature_pair("fsp", same_widths=False)
    run(method, s, t)
    assert sorted(method.connectors) == ["a", "b", "c"]
    single = build("fsp", student_taps=("c",), teacher_taps=("c",))
    with pytest.raises(ValueError, match="at least two taps"):
        run(single, {"c": s["c"]}, {"c": t["c"]})
    odd = build("fsp", student_taps=("a", "b"), teacher_taps=("a", "b"))
    with pytest.raises(ValueError, match=r"student tap 'a' has shape \(6, 1, 1, 1, 1\)"):
        run(odd, {"a": torch.randn(6, 1, 1, 1, 1), "b": s["b"]}, {"a": t["a"], "b": t["b"]})


@pytest.mark.parametrize("name", ["fsp", "cc", "ickd"])
def test_setup_again_keeps_trained_connectors(name):
    """A resumed run calls setup() again; the connectors (and their state) must survive."""
    method, s, t = feature_pair(name, same_widths=False)
    run(method, s, t)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(1.0)                       # as if trained
    trained = {k: v.detach().clone() for k, v in method.named_parameters()}
    with torch.no_grad():
        method.setup(Outputs(torch.zeros(6, 3), s), Outputs(torch.zeros(6, 3), t))
    assert dict(method.named_parameters()).keys() == trained.keys()
    assert all(torch.equal(p, trained[k]) for k, p in method.named_parameters())


def test_module_path_taps_work_as_connector_keys():
    s = {"layer1.0": torch.randn(4, 3, 4, 4), "layer2.0": torch.randn(4, 5, 2, 2)}
    t = {"layer1.0": torch.randn(4, 6, 4, 4), "layer2.0": torch.randn(4, 8, 2, 2)}
    taps = ("layer1.0", "layer2.0")
    for name in ("fsp", "ickd"):
        method = build(name, student_taps=taps, teacher_taps=taps)
        assert torch.isfinite(next(iter(run(method, s, t).values())))
        assert "layer2/0" in method.connectors


def test_fsp_default_taps_start_at_the_stem_where_a_model_has_one():
    resnet = wb.models.build("resnet8x4", num_classes=10)
    cnn = wb.models.build("cnn", num_classes=10)
    method = build("fsp")
    method.bind(resnet, cnn)
    assert method.student_taps == ("stem", "stage1", "stage2", "stage3")
    assert method.teacher_taps == ("stage1", "stage2", "stage3")
    chosen = build("fsp", student_taps=("stage2", "stage3"))
    chosen.bind(resnet, resnet)
    assert chosen.student_taps == ("stage2", "stage3")


def test_irg_transformations_skip_vector_layers():
    torch.manual_seed(2)
    maps_s = [torch.randn(5, 2, 4, 4), torch.randn(5, 4, 2, 2)]
    maps_t = [torch.randn(5, 3, 4, 4), torch.randn(5, 6, 2, 2)]
    logits = torch.randn(5, 3), torch.randn(5, 3)
    _, _, maps_only = irg_losses(*logits, maps_s, maps_t)
    _, _, with_vector = irg_losses(*logits, maps_s + [torch.randn(5, 7)], maps_t + [torch.randn(5, 9)])
    assert with_vector.item() == pytest.approx(maps_only.item(), rel=1e-6)
    _, _, none = irg_losses(*logits, [torch.randn(5, 7)], [torch.randn(5, 9)])
    assert none.item() == 0.0


def test_token_features_are_treated_as_positions():
    """ViT stage taps are (B, N, D): FSP, SP, ICKD and IRG take them without error."""
    tokens_s = {"a": torch.randn(4, 65, 16, requires_grad=True), "b": torch.randn(4, 65, 16)}
    maps_t = {"a": torch.randn(4, 8, 8, 8), "b": torch.randn(4, 12, 4, 4)}
    for name, taps in (("fsp", ("a", "b")), ("sp", ("b",)), ("ickd", ("b",)), ("irg", ("a", "b"))):
        terms = run(build(name, student_taps=taps, teacher_taps=taps), tokens_s, maps_t,
                    torch.randn(4, 3), torch.randn(4, 3))
        assert all(torch.isfinite(v) for v in terms.values()), name


@pytest.mark.parametrize("name, hparam, value", [
    ("fsp", "weight", -1.0), ("rkd", "distance_weight", -25.0), ("rkd", "angle_weight", float("nan")),
    ("sp", "weight", float("inf")), ("cc", "gamma", 0.0), ("cc", "order", -1), ("pkt", "weight", -3.0),
    ("irg", "edge_weight", -5.0), ("irg", "transform_weight", float("nan")), ("ickd", "weight", -2.5)])
def test_bad_hyperparameters_raise_errors_naming_the_value(name, hparam, value):
    with pytest.raises(ValueError, match=f"{hparam}={value!r}"):
        build(name, **{hparam: value})
    method = build(name)
    with pytest.raises(ValueError, match=f"{hparam}={value!r}"):
        setattr(method, hparam, value)         # live changes are checked too


def test_cc_order_must_be_whole_and_embed_dim_positive():
    with pytest.raises(ValueError, match="order=1.5"):
        build("cc", order=1.5)
    with pytest.raises(ValueError, match="embed_dim=0"):
        build("cc", embed_dim=0)


def test_defaults_follow_the_papers_and_reference_configs():
    assert build("rkd").hparams()["distance_weight"] == 25.0
    assert build("rkd").hparams()["angle_weight"] == 50.0
    assert build("sp").weight == 3000.0
    assert build("pkt").weight == 30000.0
    assert (build("cc").gamma, build("cc").order) == (0.4, 2.0)
    assert build("ickd").weight == 2.5
    irg = build("irg").hparams()
    assert (irg["vertex_weight"], irg["edge_weight"], irg["transform_weight"]) == (0.1, 5.0, 5.0)
    for name in NAMES:
        entry = wb.registry.METHODS.get(name)
        assert entry.meta["category"] == "similarity"
        assert entry.meta["notebook"] == "12_sources_similarity"


# ------------------------------------------------------------------ integration: 3 training steps
@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
@pytest.mark.parametrize("name", NAMES)
def test_three_training_steps_with_a_frozen_teacher(name, student_name, shapes):
    torch.manual_seed(0)
    teacher = wb.models.build("resnet32x4", num_classes=shapes.num_classes, in_channels=3)
    student = wb.models.build(student_name, num_classes=shapes.num_classes, in_channels=3)
    distil_three_steps(student, teacher, shapes, name)
