"""Golden values, by hand, for the soft-label, attention and survey probes."""
import math

import pytest
import torch

from workbench.methods.logit.kd import kd_loss
from workbench.probes.attention import (at_map, attention_rollout, cls_to_patches, mass_inside,
                                        top_q_iou, upsample_to)
from workbench.probes.soft_labels import entropy, kl_divergence, soft_labels, top_k_with_rest
from workbench.probes.survey import CHAPTERS, normalise_category, survey_tree
from workbench.registry import METHODS, Registry


# -- soft labels ---------------------------------------------------------------------------------
def test_soft_labels_by_hand():
    p = soft_labels(torch.tensor([0.0, math.log(3.0)]), 1.0)      # e^0 : e^log3 = 1 : 3
    assert p.tolist() == pytest.approx([0.25, 0.75])
    p2 = soft_labels(torch.tensor([0.0, 2 * math.log(3.0)]), 2.0)  # T halves the logits
    assert p2.tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="temperature"):
        soft_labels(torch.zeros(3), 0.0)


def test_entropy_uniform_is_log_k_and_one_hot_is_zero():
    assert float(entropy(torch.full((10,), 0.1))) == pytest.approx(math.log(10))
    assert float(entropy(torch.tensor([1.0, 0.0, 0.0]))) == 0.0
    assert float(entropy(soft_labels(torch.tensor([5.0, 1.0, -2.0]), 1e4))) == pytest.approx(math.log(3), abs=1e-6)


def test_entropy_rises_with_temperature():
    logits = torch.tensor([4.0, 1.0, 0.0, -1.0])
    values = [float(entropy(soft_labels(logits, t))) for t in (0.5, 1, 2, 4, 8)]
    assert values == sorted(values) and values[0] < values[-1]


def test_kl_by_hand():
    q, p = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    assert float(kl_divergence(q, q)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl_divergence(q, p)) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    # a zero teacher probability contributes nothing (0 log 0 = 0)
    assert float(kl_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))) == pytest.approx(math.log(2))


def test_kl_times_t_squared_is_the_kd_loss():
    student, teacher = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[3.0, -1.0, 0.0]])
    t = 4.0
    kl = kl_divergence(soft_labels(teacher[0], t), soft_labels(student[0], t))
    assert float(kl) * t ** 2 == pytest.approx(float(kd_loss(student, teacher, t)), rel=1e-5)


def test_top_k_with_rest():
    p = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    index, values, rest = top_k_with_rest(p, 2)
    assert index.tolist() == [1, 3] and values.tolist() == pytest.approx([0.4, 0.3])
    assert rest == pytest.approx(0.3) and float(values.sum()) + rest == pytest.approx(1.0)
    index, values, rest = top_k_with_rest(p, 10)                   # k >= K: everything, no rest
    assert len(index) == 5 and rest == 0.0 and float(values.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        top_k_with_rest(p[None], 2)


# -- attention -----------------------------------------------------------------------------------
def test_at_map_of_a_known_tensor():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [1.0, 2.0]]]])   # (1, 2, 2, 2)
    # mean over the 2 channels of A^2: (1+1)/2, (4+0)/2, (9+1)/2, (16+4)/2
    assert at_map(a).tolist() == [[[1.0, 2.0], [5.0, 10.0]]]


def test_rollout_of_identity_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)                        # (B, heads, N, N)
    assert torch.allclose(attention_rollout([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))


def test_rollout_of_uniform_attention_by_hand():
    uniform = torch.full((1, 2, 2), 0.5)                         # (heads, N, N)
    one = attention_rollout([uniform])                           # (U + I) / 2
    assert one.flatten().tolist() == pytest.approx([0.75, 0.25, 0.25, 0.75])
    two = attention_rollout([uniform, uniform])                  # the square of that
    assert two.flatten().tolist() == pytest.approx([0.625, 0.375, 0.375, 0.625])


def test_rollout_averages_heads_and_orders_blocks():
    first = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])  # heads average to U
    assert attention_rollout([first]).flatten().tolist() == pytest.approx([0.75, 0.25, 0.25, 0.75])
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    hat = lambda m: (m[0] + torch.eye(2)) / 2  # noqa: E731
    assert torch.allclose(attention_rollout([a, b]), hat(b) @ hat(a))  # later blocks on the left


def test_cls_to_patches():
    rollout = torch.arange(25.0).view(1, 5, 5)                   # CLS + 2x2 patches
    assert cls_to_patches(rollout).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]


def test_upsample_to():
    assert torch.allclose(upsample_to(torch.full((2, 2), 3.0), (8, 6)), torch.full((8, 6), 3.0))
    assert upsample_to(torch.rand(4, 2, 2), (5, 5)).shape == (4, 5, 5)


def test_mass_inside_by_hand():
    attention = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    mask = torch.tensor([[True, False], [False, False]])
    assert float(mass_inside(attention, mask)) == pytest.approx(0.25)
    assert float(mass_inside(attention, ~mask)) == pytest.approx(0.75)
    assert float(mass_inside(torch.zeros(2, 2), mask)) == 0.0
    with pytest.raises(ValueError, match="upsample"):
        mass_inside(torch.ones(4, 4), mask)


def test_top_q_iou_by_hand():
    attention = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    mask = torch.tensor([[True, True], [False, False]])
    assert float(top_q_iou(attention, mask, 0.5)) == pytest.approx(1.0)      # top 2 = the mask
    assert float(top_q_iou(attention, mask, 0.25)) == pytest.approx(0.5)     # 1 of 2
    assert float(top_q_iou(attention, mask, 0.75)) == pytest.approx(2 / 3)   # 2 of 3
    assert float(top_q_iou(attention, mask, 1.0)) == pytest.approx(0.5)      # 2 of 4
    batch = top_q_iou(torch.stack([attention, attention.flip(0)]), torch.stack([mask, mask]), 0.5)
    assert batch.tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError):
        top_q_iou(attention, mask, 0.0)


# -- survey --------------------------------------------------------------------------------------
def test_survey_tree_covers_every_registered_category():
    nodes = survey_tree()
    implemented = {n.key for n in nodes if n.sections == 1 and not n.planned}
    for entry in METHODS:
        assert normalise_category(entry.meta["category"]) in implemented, entry.name
    listed = [m for n in nodes if n.sections == 1 for m in n.methods]
    assert sorted(listed) == METHODS.names()


def test_survey_tree_marks_planned_and_other():
    registry = Registry("method")
    registry.register("a", category="Logit", paper="P", venue="V", year=2020, notebook="10_x")(object)
    registry.register("b", category="quantum", paper="Q", venue="W", year=2021)(object)
    nodes = {n.id: n for n in survey_tree(registry, schemes=["offline"])}
    assert nodes["sources/logit"].methods == ["a"] and nodes["sources/logit"].notebooks == ["10_x"]
    assert nodes["sources/logit"].papers == ["P, V, 2020"]
    assert nodes["sources/feature"].planned and nodes["sources/feature"].notebooks == ["11"]
    assert not nodes["schemes/offline"].planned and nodes["schemes/online"].planned
    assert nodes["other/quantum"].methods == ["b"]
    assert nodes["KD survey"].implemented == 3
    leaves = sum(len(sections) for _, sections in CHAPTERS.values()) + 1
    assert nodes["KD survey"].sections == leaves


def test_survey_tree_places_schemes_by_their_category():
    from workbench.registry import SCHEMES
    nodes = {n.id: n for n in survey_tree()}
    for entry in SCHEMES:
        placed = [n.id for n in nodes.values() if entry.name in n.schemes]
        assert len(placed) == 1, (entry.name, placed)
        assert placed[0].endswith("/" + normalise_category(entry.meta["category"])), (entry.name, placed)
    assert not nodes["schemes/online"].planned and "dml" in nodes["schemes/online"].schemes


def test_cls_to_patches_skips_every_token_before_the_patches():
    rollout = torch.zeros(6, 6)
    rollout[0] = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])  # CLS, a second prefix token, 4 patches
    assert cls_to_patches(rollout[1:, 1:]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert torch.allclose(cls_to_patches(rollout, prefix_tokens=2), torch.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="5 patch tokens"):
        cls_to_patches(rollout)                      # the second prefix token taken for a patch
    with pytest.raises(ValueError, match="prefix_tokens=0"):
        cls_to_patches(rollout, prefix_tokens=0)


def test_attention_maps_of_a_deit_student_skip_its_distillation_token():
    from kdviz.attention import spatial_maps
    from workbench.methods.attention.deit import DistilledViT
    import workbench as wb
    torch.manual_seed(0)
    vit = wb.models.build("vit_tiny", num_classes=10, in_channels=1, image_size=8, patch_size=2)
    maps = spatial_maps(DistilledViT(vit).eval(), torch.randn(3, 1, 8, 8))
    assert maps and all(tuple(m.shape) == (3, 8, 8) for m in maps.values())
