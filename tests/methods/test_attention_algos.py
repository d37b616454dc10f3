"""Attention algorithms (survey 3.1): MiniLM and DeiT. Golden values from the papers' equations
computed here with numpy and loops, gradients, frozen teachers, zero loss at equality, batch
permutation, hyper-parameter checks, the errors for models without attention taps or without a
distillation token, and three training steps of each on small ViTs (and DeiT from a CNN teacher).
AT, the third method of the chapter, lives in the feature family (tests/methods/test_feature.py)."""
import math

import numpy as np
import pytest
import torch

import workbench as wb
from method_helpers import distil_three_steps
from workbench.methods.attention.deit import DistilledViT, deit_loss
from workbench.methods.attention.minilm import minilm_losses
from workbench.taps import Outputs, TapError, capture


def vit(dim=32, depth=1, heads=2, seed=0):
    torch.manual_seed(seed)
    return wb.models.build("vit_tiny", num_classes=10, in_channels=3, image_size=32, patch_size=8,
                           dim=dim, depth=depth, heads=heads)


# ------------------------------------------------------------------------------------- MiniLM
def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_relation(a, b, heads):
    """softmax(A_h B_h^T / sqrt(d)) per head by loops: (B, N, D) -> (B, heads, N, N)."""
    batch, tokens, dim = a.shape
    d = dim // heads
    out = np.zeros((batch, heads, tokens, tokens))
    for n in range(batch):
        for h in range(heads):
            for i in range(tokens):
                for j in range(tokens):
                    out[n, h, i, j] = sum(a[n, i, h * d + c] * b[n, j, h * d + c] for c in range(d)) / math.sqrt(d)
            out[n, h] = np_softmax(out[n, h])
    return out


def np_kl_rows(p, q):
    """mean over every row of sum_j p log(p / q)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def minilm_method(**hparams):
    """A MiniLM whose taps name plain tensors (no models): ('attn', 'qkv') on both sides."""
    method = wb.methods.build_method("minilm", **hparams)
    method.student_taps = ("attn", "qkv")
    method.teacher_taps = ("attn", "qkv")
    return method


def minilm_outputs(qkv, heads, requires_grad=False):
    """Outputs with the fused qkv (B, N, 3D) and the attention probabilities it implies."""
    qkv = torch.tensor(qkv, dtype=torch.float32, requires_grad=requires_grad)
    q, k, _ = qkv.chunk(3, -1)
    d = q.shape[-1] // heads
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    attn = (split(q) @ split(k).transpose(-2, -1) / math.sqrt(d)).softmax(-1)
    return Outputs(torch.zeros(qkv.shape[0], 3), {"qkv": qkv}, {"attn": attn})


def run_minilm(method, student, teacher):
    with torch.no_grad():
        method.setup(student.detach(), teacher)
    return method(student, teacher, None)


def test_minilm_golden_value_equal_heads():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 12)), rng.normal(size=(2, 3, 18))   # D_s = 4, D_t = 6, 2 heads each
    expected_at = np_kl_rows(np_relation(t[..., :6], t[..., 6:12], 2), np_relation(s[..., :4], s[..., 4:8], 2))
    expected_vr = np_kl_rows(np_relation(t[..., 12:], t[..., 12:], 2), np_relation(s[..., 8:], s[..., 8:], 2))
    method = minilm_method()
    terms = run_minilm(method, minilm_outputs(s, 2), minilm_outputs(t, 2))
    assert method._plan() == (2, True)          # equal head counts: L_AT from the attention taps
    assert terms["attention"].item() == pytest.approx(expected_at, rel=1e-5)
    assert terms["value"].item() == pytest.approx(expected_vr, rel=1e-5)


def test_minilm_golden_value_different_heads_uses_relation_heads():
    """Teacher with 4 heads, student with 2: MiniLMv2 relations over 2 relation heads each."""
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 12)), rng.normal(size=(2, 3, 24))   # D_s = 4 (2 heads), D_t = 8 (4 heads)
    expected_at = np_kl_rows(np_relation(t[..., :8], t[..., 8:16], 2), np_relation(s[..., :4], s[..., 4:8], 2))
    expected_vr = np_kl_rows(np_relation(t[..., 16:], t[..., 16:], 2), np_relation(s[..., 8:], s[..., 8:], 2))
    method = minilm_method()
    terms = run_minilm(method, minilm_outputs(s, 2), minilm_outputs(t, 4))
    assert method._plan() == (2, False)
    assert terms["attention"].item() == pytest.approx(expected_at, rel=1e-5)
    assert terms["value"].item() == pytest.approx(expected_vr, rel=1e-5)
    # an explicit relation-head count that divides both widths overrides the default
    method = minilm_method(relation_heads=1)
    terms = run_minilm(method, minilm_outputs(s, 2), minilm_outputs(t, 4))
    assert method._plan() == (1, False)
    assert terms["value"].item() == pytest.approx(
        np_kl_rows(np_relation(t[..., 16:], t[..., 16:], 1), np_relation(s[..., 8:], s[..., 8:], 1)), rel=1e-5)


def test_minilm_attention_taps_agree_with_recomputed_attention():
    rng = np.random.default_rng(2)
    s, t = minilm_outputs(rng.normal(size=(2, 5, 12)), 2), minilm_outputs(rng.normal(size=(2, 5, 18)), 2)
    with_taps = minilm_losses(s.features["qkv"], t.features["qkv"], 2, s.attentions["attn"], t.attentions["attn"])
    recomputed = minilm_losses(s.features["qkv"], t.features["qkv"], 2)
    assert torch.allclose(with_taps[0], recomputed[0], rtol=1e-5)


def test_minilm_gradients_zero_at_equality_and_permutation():
    rng = np.random.default_rng(3)
    qkv = rng.normal(size=(3, 4, 12))
    student, teacher = minilm_outputs(qkv, 2, requires_grad=True), minilm_outputs(qkv, 2)
    terms = run_minilm(minilm_method(), student, teacher)
    assert terms["attention"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["value"].item() == pytest.approx(0.0, abs=1e-6)
    student = minilm_outputs(rng.normal(size=(3, 4, 12)), 2, requires_grad=True)
    terms = run_minilm(minilm_method(), student, teacher)
    (terms["attention"] + terms["value"]).backward()
    grad = student.features["qkv"].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not teacher.features["qkv"].requires_grad and teacher.features["qkv"].grad is None
    order = torch.tensor([2, 0, 1])
    permuted = lambda o: Outputs(o.logits[order], {"qkv": o.features["qkv"][order]},  # noqa: E731
                                 {"attn": o.attentions["attn"][order]})
    again = run_minilm(minilm_method(), permuted(student), permuted(teacher))
    assert again["value"].item() == pytest.approx(terms["value"].item(), rel=1e-5)


def test_minilm_bad_hyper_parameters_and_shapes():
    with pytest.raises(ValueError, match="relation_heads=-1"):
        wb.methods.build_method("minilm", relation_heads=-1)
    with pytest.raises(ValueError, match="whole number"):
        wb.methods.build_method("minilm", relation_heads=1.5)
    with pytest.raises(ValueError, match="weight=nan"):
        wb.methods.build_method("minilm", weight=float("nan"))
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="relation heads do not divide"):    # 3 heads vs widths 4 and 6
        run_minilm(minilm_method(relation_heads=3), minilm_outputs(rng.normal(size=(2, 3, 12)), 2),
                   minilm_outputs(rng.normal(size=(2, 3, 18)), 2))
    with pytest.raises(ValueError, match="tokens"):                         # 3 tokens vs 5
        run_minilm(minilm_method(), minilm_outputs(rng.normal(size=(2, 3, 12)), 2),
                   minilm_outputs(rng.normal(size=(2, 5, 12)), 2))


def test_minilm_binds_to_the_last_block_and_names_models_without_attention(shapes):
    method = wb.methods.build_method("minilm")
    method.bind(vit(depth=1), vit(dim=64, depth=2, heads=4))
    assert method.student_taps == ("block0", "blocks.0.attn.qkv")
    assert method.teacher_taps == ("block1", "blocks.1.attn.qkv")
    with pytest.raises(TapError, match="ResNet declares no attention taps"):
        wb.distill(wb.models.build("resnet8"), wb.models.build("resnet14"), shapes,
                   methods={"minilm": {}}, batch_size=16, store=None)
    with pytest.raises(TapError, match="no tap 'no_such_layer'"):
        wb.distill(vit(), vit(dim=64), shapes, methods={"minilm": {"student_taps": "no_such_layer"}},
                   batch_size=16, store=None)
    with pytest.raises(TapError, match="not an attention tap"):
        wb.distill(vit(), vit(dim=64), shapes, methods={"minilm": {"student_taps": "stage1"}},
                   batch_size=16, store=None)
    assert wb.METHODS.get("minilm").meta["needs"] == "attention"


@pytest.mark.parametrize("heads", [4, 2])
def test_minilm_trains_a_vit_from_a_wider_deeper_vit(shapes, heads):
    teacher = vit(dim=64, depth=2, heads=4, seed=1)
    student = vit(dim=32, depth=1, heads=heads, seed=2)
    run = distil_three_steps(student, teacher, shapes, "minilm")
    assert run.methods["minilm"]._plan() == (heads, heads == 4)


# --------------------------------------------------------------------------------------- DeiT
def test_deit_golden_values():
    z_d = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    z_t = np.array([[0.0, 3.0, 1.0], [2.0, 1.0, 0.0]])
    # hard: CE of the distillation head on the teacher's argmax (1 and 0)
    hard = np.mean([-(z_d[0, 1] - np.log(np.exp(z_d[0]).sum())), -(z_d[1, 0] - np.log(np.exp(z_d[1]).sum()))])
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    assert deit_loss(as_t(z_d), as_t(z_t), "hard", 3.0).item() == pytest.approx(hard, rel=1e-5)
    # soft: tau^2 KL(psi(Z_t / tau) || psi(Z_d / tau)), averaged over samples
    tau = 3.0
    soft = np.mean([sum(q * math.log(q / p) for q, p in zip(np_softmax(z_t[b] / tau), np_softmax(z_d[b] / tau)))
                    for b in range(2)]) * tau ** 2
    method = wb.methods.build_method("deit", distillation="soft")
    method.student_taps = ("dist",)
    terms = method(Outputs(torch.zeros(2, 3), {"dist": as_t(z_d)}), Outputs(as_t(z_t)), None)
    assert terms["distillation"].item() == pytest.approx(soft, rel=1e-5)
    assert deit_loss(as_t(z_t), as_t(z_t), "soft", tau).item() == pytest.approx(0.0, abs=1e-6)


def test_distilled_vit_averages_both_heads_at_test_time():
    base = vit(heads=2)
    model = DistilledViT(base)
    assert model.vit is base and model.classifier is base.classifier
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    out = capture(model, x, ["dist_head", "embedding", "block0"])
    class_logits = base.classifier(out.embedding)
    assert torch.allclose(out.logits, (class_logits + out.features["dist_head"]) / 2, atol=1e-6)
    assert out.attentions["block0"].shape == (3, 2, 16 + 2, 16 + 2)   # class + distillation + 16 patches
    model.train()
    assert torch.allclose(model(x), capture(model, x, ["embedding"]).embedding @ base.classifier.weight.T
                          + base.classifier.bias, atol=1e-5)
    with pytest.raises(TypeError, match="vit_tiny"):
        DistilledViT(wb.models.build("resnet8"))


def test_deit_gradients_reach_the_distillation_token_not_the_teacher(shapes):
    student, teacher = DistilledViT(vit()), vit(dim=64, seed=3)
    method = wb.methods.build_method("deit")
    method.bind(student, teacher)
    out = capture(student, shapes.train.x[:4], ["dist_head"])
    with torch.no_grad():
        t_out = capture(teacher, shapes.train.x[:4])
    method(out, t_out, None)["distillation"].backward()
    assert student.dist_token.grad is not None and student.dist_token.grad.abs().sum() > 0
    assert student.dist_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_deit_bad_hyper_parameters_and_plain_students(shapes):
    with pytest.raises(ValueError, match="distillation='medium'"):
        wb.methods.build_method("deit", distillation="medium")
    with pytest.raises(ValueError, match="temperature=-1"):
        wb.methods.build_method("deit", temperature=-1)
    with pytest.raises(TapError, match="DistilledViT"):
        wb.distill(vit(), vit(dim=64), shapes, methods={"deit": {}}, batch_size=16, store=None)
    assert wb.METHODS.get("deit").meta["needs"] == "distillation_token"


@pytest.mark.parametrize("teacher_name, distillation", [("vit", "hard"), ("vit", "soft"), ("resnet8", "hard")])
def test_deit_trains_a_distilled_vit(shapes, teacher_name, distillation):
    teacher = vit(dim=64, depth=2, heads=4, seed=4) if teacher_name == "vit" else \
        wb.models.build("resnet8", num_classes=10, in_channels=3)
    student = DistilledViT(vit(seed=5))
    run = distil_three_steps(student, teacher, shapes, "deit", {"distillation": distillation})
    assert 0.0 <= run.result["agreement"] <= 1.0          # evaluated with both heads averaged
