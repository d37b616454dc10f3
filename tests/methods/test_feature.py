"""Feature-based methods (survey chapter 1.2): FitNets, AT, NST, FT, OFD, ReviewKD, SimKD, MGD.

Golden values are computed here from each paper's equation with plain Python (``math``, lists and
loops, no torch), and the simplest are also written out as numbers, so that a mistake shared by a
helper and the code cannot hide. Teacher tensors never require gradients.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from method_helpers import distil_three_steps
from workbench.data.bundle import Batch
from workbench.methods import build_method
from workbench.methods.feature._maps import as_map
from workbench.methods.feature.at import at_loss
from workbench.methods.feature.fitnet import fitnet_loss
from workbench.methods.feature.ft import factor_loss, reconstruction_loss
from workbench.methods.feature.mgd import mgd_loss, random_mask
from workbench.methods.feature.nst import nst_loss
from workbench.methods.feature.ofd import gaussian_negative_mean, partial_l2
from workbench.methods.feature.reviewkd import hcl_loss
from workbench.methods.feature.simkd import simkd_loss
from workbench.registry import METHODS
from workbench.schemes.offline import freeze
from workbench.taps import Outputs, TapError, capture

NAMES = ["fitnet", "at", "nst", "ft", "ofd", "reviewkd", "simkd", "mgd"]


def tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def feats(generator, *shape):
    return torch.randn(*shape, generator=generator)


def outputs(features, batch=None):
    batch = batch if batch is not None else next(iter(features.values())).shape[0]
    return Outputs(torch.zeros(batch, 10), dict(features))


def make(name, student_taps, teacher_taps, **hparams):
    """A method with concrete taps (as after bind), not yet set up."""
    method = build_method(name, **hparams)
    object.__setattr__(method, "student_taps", tuple(student_taps))
    object.__setattr__(method, "teacher_taps", tuple(teacher_taps))
    return method


def ready(name, student_features, teacher_features, **hparams):
    """A method set up on the given features, with taps s0.. / t0.. in order."""
    method = make(name, [f"s{i}" for i in range(len(student_features))],
                  [f"t{i}" for i in range(len(teacher_features))], **hparams)
    student = outputs({f"s{i}": f for i, f in enumerate(student_features)})
    teacher = outputs({f"t{i}": f for i, f in enumerate(teacher_features)})
    with torch.no_grad():
        method.setup(student, teacher)
    return method, student, teacher


def mean(values):
    return sum(values) / len(values)


def flat(x):
    """Nested lists -> flat list of numbers."""
    return [v for item in x for v in flat(item)] if isinstance(x, list) else [x]


# -- FitNets ------------------------------------------------------------------------------------
def test_fitnet_golden_value_of_the_loss():
    regressed = [[[[1.0, 2.0], [0.0, -1.0]]], [[[0.5, 0.5], [2.0, 1.0]]]]       # (2, 1, 2, 2)
    hint = [[[[0.0, 2.0], [1.0, 1.0]]], [[[0.5, 1.5], [0.0, 0.0]]]]
    expected = mean([(h - r) ** 2 for h, r in zip(flat(hint), flat(regressed))])
    assert fitnet_loss(tensor(regressed), tensor(hint)).item() == pytest.approx(expected)
    assert expected == pytest.approx(12.0 / 8)


def test_fitnet_method_golden_value_through_its_regressor():
    """conv1x1 -> batch norm (batch statistics) -> ReLU (the hint is post-ReLU) -> MSE, by hand."""
    g = torch.Generator().manual_seed(0)
    student, teacher = feats(g, 3, 2, 2, 2), feats(g, 3, 3, 2, 2).relu()
    method, s_out, t_out = ready("fitnet", [student], [teacher])
    conv = method.regressors[0][0]
    assert isinstance(method.regressors[0][-1], torch.nn.ReLU)
    w, x, t = conv.weight[:, :, 0, 0].tolist(), student.tolist(), teacher.tolist()
    total, count = 0.0, 0
    for k in range(3):                                  # output channel
        y = [sum(w[k][c] * x[b][c][i][j] for c in range(2)) for b in range(3) for i in range(2)
             for j in range(2)]
        mu = mean(y)
        var = mean([(v - mu) ** 2 for v in y])
        normed = [max(0.0, (v - mu) / math.sqrt(var + 1e-5)) for v in y]
        target = [t[b][k][i][j] for b in range(3) for i in range(2) for j in range(2)]
        total += sum((a - b) ** 2 for a, b in zip(normed, target))
        count += len(y)
    got = method(s_out, t_out, None)["hint"]
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_fitnet_regressor_is_linear_for_a_hint_with_negative_values():
    g = torch.Generator().manual_seed(0)
    method, _, _ = ready("fitnet", [feats(g, 2, 4, 3, 3)], [feats(g, 2, 6, 3, 3)])
    assert not isinstance(method.regressors[0][-1], torch.nn.ReLU)
    assert method.regressors[0][0].weight.shape == (6, 4, 1, 1)


@pytest.mark.parametrize("model, stage", [("resnet8x4", "stage2"), ("wrn_16_1", "stage2"),
                                          ("vgg8", "stage2"), ("mobilenetv2", "stage2"),
                                          ("vit_tiny", "stage3")])
def test_fitnet_default_hint_is_the_middle_stage(model, stage):
    net = wb.models.build(model)
    method = build_method("fitnet")
    method.bind(net, net)
    assert method.student_taps == method.teacher_taps == (stage,)


# -- AT -----------------------------------------------------------------------------------------
def attention_by_hand(x, p=2):
    """Normalised sum_c |A_c|^p per sample, from nested lists (B, C, H, W)."""
    maps = []
    for sample in x:
        q = [sum(abs(ch[i][j]) ** p for ch in sample) for i in range(len(sample[0]))
             for j in range(len(sample[0][0]))]
        norm = math.sqrt(sum(v * v for v in q))
        maps.append([v / norm for v in q])
    return maps


def test_at_golden_value():
    student = [[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 1.0], [1.0, -1.0]]]]           # (1, 2, 2, 2)
    teacher = [[[[2.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]]]
    qs, qt = attention_by_hand(student), attention_by_hand(teacher)
    expected = mean([(a - b) ** 2 for a, b in zip(flat(qs), flat(qt))])
    assert at_loss(tensor(student), tensor(teacher)).item() == pytest.approx(expected)
    # student Q = [1, 1, 5, 2] / sqrt(31), teacher Q = [5, 3, 1, 5] / sqrt(60)
    assert expected == pytest.approx(mean([(a / math.sqrt(31) - b / math.sqrt(60)) ** 2
                                           for a, b in [(1, 5), (1, 3), (5, 1), (2, 5)]]))


def test_at_sums_over_stages_and_pools_the_larger_map():
    g = torch.Generator().manual_seed(1)
    s = [feats(g, 2, 4, 8, 8), feats(g, 2, 8, 4, 4)]
    t = [feats(g, 2, 6, 4, 4), feats(g, 2, 5, 4, 4)]
    method, s_out, t_out = ready("at", s, t)
    expected = at_loss(F.avg_pool2d(s[0], 2), t[0]) + at_loss(s[1], t[1])
    assert method(s_out, t_out, None)["attention"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_at_is_zero_for_the_same_attention_and_ignores_the_scale():
    g = torch.Generator().manual_seed(2)
    t = feats(g, 3, 4, 4, 4)
    assert at_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss(feats(g, 3, 4, 4, 4), t).item() > 0


# -- NST ----------------------------------------------------------------------------------------
def mmd_by_hand(student, teacher):
    """Squared MMD with k(x, y) = (x.y)^2 over L2-normalised channel vectors, batch-averaged."""
    def samples(sample):
        vectors = [flat(ch) for ch in sample]
        return [[v / math.sqrt(sum(u * u for u in vec)) for v in vec] for vec in vectors]

    def kernel_mean(a, b):
        return mean([sum(x * y for x, y in zip(u, v)) ** 2 for u in a for v in b])

    total = 0.0
    for s, t in zip(student, teacher):
        s, t = samples(s), samples(t)
        total += kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)
    return total / len(student)


def test_nst_golden_value():
    student = [[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]]]            # (1, 2, 2, 2)
    teacher = [[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]]
    expected = mmd_by_hand(student, teacher)
    assert nst_loss(tensor(student), tensor(teacher)).item() == pytest.approx(expected)
    # by hand: k_tt = 4/9, k_ss = 2.5/4, k_st = 2.5/6
    assert expected == pytest.approx(4 / 9 + 2.5 / 4 - 2 * 2.5 / 6)
    g = torch.Generator().manual_seed(3)
    s, t = feats(g, 3, 4, 3, 3), feats(g, 3, 5, 3, 3)
    assert nst_loss(s, t).item() == pytest.approx(mmd_by_hand(s.tolist(), t.tolist()), rel=1e-5)


def test_nst_is_zero_for_the_same_channels_in_any_order():
    g = torch.Generator().manual_seed(4)
    t = feats(g, 2, 6, 4, 4)
    assert nst_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert nst_loss(t[:, torch.randperm(6, generator=g)] * 2, t).item() == pytest.approx(0.0, abs=1e-6)
    assert nst_loss(feats(g, 2, 3, 4, 4), t).item() > 0


# -- FT -----------------------------------------------------------------------------------------
def test_ft_golden_values():
    student = [[[[3.0, 0.0], [0.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]        # (2, 1, 2, 2)
    teacher = [[[[0.0, 3.0], [4.0, 0.0]]], [[[2.0, 0.0], [0.0, 0.0]]]]
    expected = 0.0
    for s, t in zip(student, teacher):
        s, t = flat(s), flat(t)
        ns, nt = math.sqrt(sum(v * v for v in s)), math.sqrt(sum(v * v for v in t))
        expected += sum(abs(a / ns - b / nt) for a, b in zip(s, t))
    expected /= 8
    assert factor_loss(tensor(student), tensor(teacher)).item() == pytest.approx(expected)
    assert expected == pytest.approx((2.8 + 2.0) / 8)
    assert reconstruction_loss(tensor(student), tensor(teacher)).item() == pytest.approx(
        mean([(a - b) ** 2 for a, b in zip(flat(student), flat(teacher))]))


def test_ft_factor_is_zero_for_proportional_factors():
    g = torch.Generator().manual_seed(5)
    t = feats(g, 3, 2, 4, 4)
    assert factor_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert factor_loss(t * torch.tensor([1.0, 2.0, 5.0]).view(3, 1, 1, 1), t).item() == \
        pytest.approx(0.0, abs=1e-7)


def test_ft_builds_paraphraser_and_translator_and_routes_gradients():
    g = torch.Generator().manual_seed(6)
    s = feats(g, 2, 4, 4, 4).requires_grad_()
    t = feats(g, 2, 6, 4, 4).relu()
    method, s_out, t_out = ready("ft", [s], [t])
    assert method.paraphrasers[0].encoder[-2].out_channels == 3              # round(6 * 0.5)
    assert method.translators[0][-2].out_channels == 3
    terms = method(s_out, t_out, None)
    # the reconstruction term is the MSE of the paraphraser's auto-encoding of the teacher map
    _, reconstructed = method.paraphrasers[0](t)
    assert terms["reconstruction"].item() == pytest.approx(reconstruction_loss(reconstructed, t).item())
    # the factor term moves the student and the translator, never the paraphraser
    terms["factor"].backward(retain_graph=True)
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.translators.parameters())
    assert all(p.grad is None for p in method.paraphrasers.parameters())
    # weight * reconstruction gives the paraphraser the plain MSE's gradient (see ft.py)
    s.grad = None
    (method.weight * terms["reconstruction"]).backward()
    assert s.grad is None
    got = [p.grad.clone() for p in method.paraphrasers.parameters()]
    method.zero_grad()
    _, reconstructed = method.paraphrasers[0](t)
    reconstruction_loss(reconstructed, t).backward()
    for a, p in zip(got, method.paraphrasers.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-9)


# -- OFD ----------------------------------------------------------------------------------------
def test_ofd_partial_l2_golden_value_covers_each_case():
    margin = [[[[-1.0]]]]                                                       # (1, 1, 1, 1)
    teacher = [[[[2.0, -0.5, -0.5, -3.0, -3.0, 1.0]]]]                          # (1, 1, 1, 6)
    student = [[[[1.0, -0.2, -0.9, -2.0, 0.5, 1.0]]]]
    # T := max(T, m) = [2, -0.5, -0.5, -1, -1, 1]
    # i=0: T > 0 -> 1; i=1: S > T -> 0.09; i=2: S <= T <= 0 -> skip; i=3: S <= T -> skip;
    # i=4: S > T -> 2.25; i=5: T > 0 -> 0
    expected = 1.0 + 0.09 + 2.25
    got = partial_l2(tensor(student), tensor(teacher), tensor(margin))
    assert got.item() == pytest.approx(expected)
    # divided by the batch size
    two = partial_l2(tensor(student * 2), tensor(teacher * 2), tensor(margin))
    assert two.item() == pytest.approx(expected)


def test_ofd_margin_is_the_mean_of_the_negative_part_of_a_gaussian():
    def by_quadrature(mu, sigma, steps=200_000):
        low, high = mu - 12 * sigma, 0.0
        h = (high - low) / steps
        xs = [low + (i + 0.5) * h for i in range(steps)]
        pdf = [math.exp(-((x - mu) / sigma) ** 2 / 2) for x in xs]
        return sum(x * p for x, p in zip(xs, pdf)) / sum(pdf)

    mus, sigmas = [0.0, 1.0, -0.5, 2.0], [1.0, 2.0, 0.3, 0.8]
    got = gaussian_negative_mean(tensor(mus), tensor(sigmas)).tolist()
    for g, mu, sigma in zip(got, mus, sigmas):
        assert g == pytest.approx(by_quadrature(mu, sigma), rel=1e-4)
    assert got[0] == pytest.approx(-math.sqrt(2 / math.pi))                     # half-normal
    # P(x < 0) <= 0.001: the authors' fallback -3 sigma
    assert gaussian_negative_mean(tensor([4.0]), tensor([1.0])).item() == pytest.approx(-3.0)


def test_ofd_estimates_margins_on_the_first_batch_and_weighs_shallow_stages_less():
    g = torch.Generator().manual_seed(7)
    s = [feats(g, 4, 3, 4, 4), feats(g, 4, 5, 2, 2)]
    t = [feats(g, 4, 6, 4, 4) * 2 + 0.5, feats(g, 4, 8, 2, 2)]
    method, s_out, t_out = ready("ofd", s, t)
    for connector, f_t in zip(method.connectors, t):
        values = f_t.transpose(0, 1).reshape(f_t.shape[1], -1).tolist()
        for c, channel in enumerate(values):
            mu = mean(channel)
            sigma = math.sqrt(mean([(v - mu) ** 2 for v in channel]))
            phi = math.exp(-(mu / sigma) ** 2 / 2) / math.sqrt(2 * math.pi)
            cdf = 0.5 * (1 + math.erf(-mu / sigma / math.sqrt(2)))
            want = mu - sigma * phi / cdf if cdf > 1e-3 else -3 * sigma
            assert connector.margin[0, c, 0, 0].item() == pytest.approx(want, rel=1e-4)
    assert "connectors.0.margin" in method.state_dict()
    c0, c1 = method.connectors
    expected = partial_l2(c0(s[0]), t[0], c0.margin) / 2 + partial_l2(c1(s[1]), t[1], c1.margin)
    got = method(s_out, t_out, None)["partial_l2"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ofd_is_zero_when_the_connector_output_is_the_teacher():
    g = torch.Generator().manual_seed(8)
    t = feats(g, 3, 4, 3, 3)
    margin = torch.full((1, 4, 1, 1), -0.5)
    assert partial_l2(t, t, margin).item() == 0.0
    # a student below a non-positive target is not penalised: the ReLU hides the difference
    assert partial_l2(torch.minimum(t, torch.zeros(())) - 1, t.clamp(max=0), margin).item() == 0.0


def test_ofd_names_the_missing_pre_relu_taps_of_a_vit():
    vit, cnn = wb.models.build("vit_tiny"), wb.models.build("resnet8x4")
    with pytest.raises(TapError, match="teacher ViT declares no pre-ReLU taps"):
        build_method("ofd").bind(cnn, vit)


# -- ReviewKD -----------------------------------------------------------------------------------
def hcl_by_hand(s, t):
    """One level of HCL from nested lists (1, 1, H, W): full MSE plus pooled 4/2/1 levels."""
    s, t = s[0][0], t[0][0]
    size = len(s)

    def pooled(x, n):
        k = size // n
        return [mean([x[i * k + a][j * k + b] for a in range(k) for b in range(k)])
                for i in range(n) for j in range(n)]

    loss, w, total = mean([(a - b) ** 2 for a, b in zip(flat(s), flat(t))]), 1.0, 1.0
    for n in (4, 2, 1):
        if n >= size:
            continue
        w /= 2
        loss += w * mean([(a - b) ** 2 for a, b in zip(pooled(s, n), pooled(t, n))])
        total += w
    return loss / total


def test_reviewkd_hcl_golden_value():
    g = torch.Generator().manual_seed(9)
    levels = [(feats(g, 1, 1, 8, 8), feats(g, 1, 1, 8, 8)), (feats(g, 1, 1, 4, 4), feats(g, 1, 1, 4, 4)),
              (feats(g, 1, 1, 1, 1), feats(g, 1, 1, 1, 1))]
    expected = sum(hcl_by_hand(s.tolist(), t.tolist()) for s, t in levels)
    got = hcl_loss([s for s, _ in levels], [t for _, t in levels])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a 2x2 map: full MSE and its 1x1 pool with weight 1/2, over 1.5
    s, t = [[[[1.0, 2.0], [3.0, 4.0]]]], [[[[0.0, 2.0], [3.0, 6.0]]]]
    assert hcl_loss([tensor(s)], [tensor(t)]).item() == pytest.approx((5 / 4 + 0.5 * 0.0625) / 1.5)
    assert hcl_loss([tensor(t)], [tensor(t)]).item() == 0.0


def test_reviewkd_fuses_deep_to_shallow_onto_the_teacher_shapes():
    g = torch.Generator().manual_seed(10)
    s = [feats(g, 2, 4, 8, 8), feats(g, 2, 6, 4, 4), feats(g, 2, 8)]           # last: pooled vector
    t = [feats(g, 2, 5, 16, 16), feats(g, 2, 7, 8, 8), feats(g, 2, 9)]
    s = [f.requires_grad_() for f in s]
    method, s_out, t_out = ready("reviewkd", s, t, warmup=0)
    assert [f.attention is not None for f in method.fusions] == [True, True, False]
    assert method.fusions[0].reduce[0].out_channels == 8                       # min(512, deepest)
    loss = method(s_out, t_out, None)["hcl"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)      # every level is reviewed
    assert all(p.grad is not None for p in method.fusions.parameters())


def test_reviewkd_warmup_ramps_by_training_steps():
    g = torch.Generator().manual_seed(11)
    method, s_out, t_out = ready("reviewkd", [feats(g, 2, 3, 4, 4)], [feats(g, 2, 3, 4, 4)], warmup=0)
    full = method(s_out, t_out, None)["hcl"].item()
    method.steps_done.zero_()
    method.warmup = 4
    ramp = [method(s_out, t_out, None)["hcl"].item() / full for _ in range(5)]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0], rel=1e-5)
    method.eval()                                     # evaluation forwards do not count
    method(s_out, t_out, None)
    assert method.state_dict()["steps_done"].item() == 5


def test_reviewkd_falls_back_to_stage_outputs_for_a_teacher_without_pre_relu_taps():
    method = build_method("reviewkd")
    method.bind(wb.models.build("resnet8x4"), wb.models.build("vit_tiny"))
    assert method.teacher_taps[-1] == "embedding" and method.teacher_taps[0] == "stage1"


# -- SimKD --------------------------------------------------------------------------------------
def test_simkd_golden_value():
    projected, teacher = [[[[1.0, 2.0]], [[0.0, 0.5]]]], [[[[0.0, 2.0]], [[1.0, 1.0]]]]
    assert simkd_loss(tensor(projected), tensor(teacher)).item() == pytest.approx((1 + 0 + 1 + 0.25) / 4)
    t = tensor(teacher)
    assert simkd_loss(t, t).item() == 0.0


def test_simkd_reuses_the_frozen_teacher_classifier_without_training_it():
    torch.manual_seed(0)
    student, teacher = wb.models.build("wrn_16_1"), wb.models.build("resnet8x4")
    freeze(teacher)
    method = build_method("simkd")
    method.bind(student, teacher)
    x = torch.randn(4, 3, 32, 32)
    s_out, t_out = capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps)
    with torch.no_grad():
        method.setup(s_out, t_out)
    classifier = teacher.classifier
    assert not any(p is q for p in method.parameters() for q in classifier.parameters())
    assert not any(key.startswith("_teacher") for key in method.state_dict())
    logits = method.predict(s_out)
    assert logits.shape == (4, 10)
    projected = method.projector(s_out.features["stage3"])
    assert torch.allclose(logits, classifier(projected.mean(dim=(2, 3))), atol=1e-6)
    # the teacher's own features through predict's head give the teacher's logits
    assert torch.allclose(classifier(t_out.features["stage3"].mean(dim=(2, 3))), t_out.logits, atol=1e-5)
    method(s_out, t_out, None)["feature"].backward()
    assert all(p.grad is not None for p in method.projector.parameters())


def test_simkd_rejects_a_teacher_tap_its_classifier_does_not_read():
    student, teacher = wb.models.build("resnet8x4"), wb.models.build("mobilenetv2")
    method = build_method("simkd")
    method.bind(student, teacher)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="classifier takes 1280 features.*'stage4'.*\\(2, 160, 2, 2\\)"):
        method.setup(capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps))
    method = build_method("simkd", teacher_taps=("head",))        # the 1x1 conv the pooling reads
    method.bind(student, teacher)
    method.setup(capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps))
    assert method.projector[-3].out_channels == 1280


# -- MGD ----------------------------------------------------------------------------------------
def test_mgd_golden_value_with_an_identity_generator():
    aligned = [[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 1.0], [1.0, 0.0]]]]         # (2, 1, 2, 2)
    teacher = [[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 2.0]]]]
    mask = [[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]]
    expected = sum((t - a * m) ** 2 for a, t, m in zip(flat(aligned), flat(teacher), flat(mask))) / 2
    got = mgd_loss(tensor(aligned), tensor(teacher), tensor(mask), lambda x: x)
    assert got.item() == pytest.approx(expected)
    assert expected == pytest.approx((0 + 1 + 4 + 9 + 4 + 0 + 1 + 4) / 2)
    t = tensor(teacher)
    assert mgd_loss(t, t, torch.ones_like(t), lambda x: x).item() == 0.0


def test_mgd_mask_drops_the_given_ratio_from_the_global_generator():
    torch.manual_seed(0)
    mask = random_mask(50, 40, 40, 0.5)
    assert mask.shape == (50, 1, 40, 40)
    assert mask.mean().item() == pytest.approx(0.5, abs=0.01)
    assert random_mask(2, 3, 3, 0.0).min().item() == 1.0 and random_mask(2, 3, 3, 1.0).max().item() == 0.0
    torch.manual_seed(0)
    assert torch.equal(random_mask(50, 40, 40, 0.5), mask)


def test_mgd_generates_from_the_masked_aligned_student():
    g = torch.Generator().manual_seed(12)
    s, t = feats(g, 2, 3, 4, 4).requires_grad_(), feats(g, 2, 5, 4, 4)
    method, s_out, t_out = ready("mgd", [s], [t])
    assert isinstance(method.aligns[0], torch.nn.Conv2d) and method.aligns[0].out_channels == 5
    torch.manual_seed(3)
    got = method(s_out, t_out, None)["generation"]
    torch.manual_seed(3)
    mask = random_mask(2, 4, 4, 0.5)
    expected = mgd_loss(method.aligns[0](s), t, mask, method.generators[0])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.parameters())
    same, _, _ = ready("mgd", [t], [t])
    assert isinstance(same.aligns[0], torch.nn.Identity)


# -- every method -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_method_is_registered_with_its_survey_metadata(name):
    entry = METHODS.get(name)
    assert entry.meta["category"] == "feature" and entry.meta["notebook"] == "11_sources_feature"
    assert entry.meta["link"].startswith("https://arxiv.org/abs/")


def small_pair(name, generator, batch=4):
    """Student and teacher features of different widths and sizes, shaped for the method."""
    pre = name == "ofd"
    s = [feats(generator, batch, 4, 8, 8), feats(generator, batch, 6, 4, 4)]
    t = [feats(generator, batch, 5, 4, 4), feats(generator, batch, 7, 4, 4)]
    if not pre:
        t = [f.relu() for f in t]
    if name in ("ft", "simkd", "mgd", "fitnet"):
        s, t = s[-1:], t[-1:]
    if name == "reviewkd":
        s, t = s + [feats(generator, batch, 6)], t + [feats(generator, batch, 7)]
    return s, t


@pytest.mark.parametrize("name", NAMES)
def test_method_gives_finite_terms_and_gradients_to_student_and_connectors(name):
    g = torch.Generator().manual_seed(13)
    s, t = small_pair(name, g)
    s = [f.requires_grad_() for f in s]
    method, s_out, t_out = ready(name, s, t)
    terms = method(s_out, t_out, Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert terms and all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(method.weight * v for v in terms.values()).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(not f.requires_grad and f.grad is None for f in t)
    for pname, p in method.named_parameters():
        assert p.grad is not None, f"{name}: connector parameter {pname} got no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_method_trains_under_bfloat16_autocast(name):
    """The trainer runs steps under bf16 autocast on CUDA; CPU autocast takes the same dtype paths."""
    g = torch.Generator().manual_seed(15)
    s, t = small_pair(name, g)
    s = [f.requires_grad_() for f in s]
    method, s_out, t_out = ready(name, s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method(s_out, outputs({k: v.bfloat16() for k, v in t_out.features.items()}), None)
        loss = sum(method.weight * v for v in terms.values())
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(torch.isfinite(f.grad).all() for f in s)


@pytest.mark.parametrize("name", NAMES)
def test_method_is_invariant_to_the_order_of_the_batch(name):
    g = torch.Generator().manual_seed(14)
    s, t = small_pair(name, g, batch=5)
    fixed = {"mgd": {"mask_ratio": 0.0}, "reviewkd": {"warmup": 0}}.get(name, {})
    method, s_out, t_out = ready(name, s, t, **fixed)
    order = torch.randperm(5, generator=g)
    s_perm = outputs({k: v[order] for k, v in s_out.features.items()})
    t_perm = outputs({k: v[order] for k, v in t_out.features.items()})
    a, b = method(s_out, t_out, None), method(s_perm, t_perm, None)
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name, hparam, value", [
    ("fitnet", "weight", -1), ("at", "p", -1), ("at", "weight", float("inf")), ("nst", "weight", -2),
    ("ft", "factor_rate", 0), ("ofd", "weight", float("nan")), ("reviewkd", "warmup", -1),
    ("simkd", "weight", -1), ("mgd", "mask_ratio", 1.5), ("mgd", "weight", float("nan"))])
def test_bad_hyperparameters_raise_errors_naming_the_value(name, hparam, value):
    with pytest.raises(ValueError, match=f"{hparam}={value!r}"):
        build_method(name, **{hparam: value})


def test_tokens_become_a_grid_without_the_class_token():
    tokens = torch.arange(2 * 65 * 3, dtype=torch.float32).view(2, 65, 3)
    grid = as_map(tokens, "stage1")
    assert grid.shape == (2, 3, 8, 8)
    assert torch.equal(grid[1, 2, 0, 1], tokens[1, 2, 2])                       # token 1 + 1 (CLS)
    with pytest.raises(ValueError, match="'embedding' has shape \\(2, 3\\)"):
        as_map(torch.zeros(2, 3), "embedding")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "ofd"])
def test_method_sets_up_and_runs_with_a_vit_student(name):
    torch.manual_seed(0)
    student, teacher = wb.models.build("vit_tiny"), wb.models.build("resnet8x4").eval()
    method = build_method(name)
    method.bind(student, teacher)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        method.setup(capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps))
    terms = method(capture(student, x, method.student_taps), capture(teacher, x, method.teacher_taps), None)
    assert all(torch.isfinite(v) for v in terms.values())


# -- integration --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    return {name: wb.models.build(name, num_classes=10, in_channels=3)
            for name in ("resnet32x4", "resnet8x4")}


@pytest.mark.parametrize("pair", [("resnet8x4", "resnet32x4"), ("mobilenetv2", "resnet8x4")])
@pytest.mark.parametrize("name", NAMES)
def test_method_distils_three_steps_with_a_frozen_teacher(name, pair, shapes, zoo):
    student_name, teacher_name = pair
    teacher = zoo[teacher_name]
    torch.manual_seed(1)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    run = distil_three_steps(student, teacher, shapes, name)
    if name == "simkd":                    # a SimKD student predicts through the teacher's classifier
        method = run.methods[name].eval()
        x = shapes.test.x[:4]
        logits = method.predict(capture(student.eval(), x, method.student_taps))
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
