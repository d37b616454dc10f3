"""Cross-modal distillation (survey chapter 3.4): the paired data set `shapes_paired`, the
`cross_modal` scheme and Gupta et al.'s `supervision_transfer` loss.

The data: the same scenes in every modality (RGB bit for bit shapes' images), modalities that
differ but agree with the masks, each normalised on its own. The scheme: the teacher sees the
teacher's modality and the student its own, in the same pairs; without labels no label reaches a
loss; with k per class only those k do. The loss: golden values from the equation with plain
Python, gradients, connectors, and 3-step runs.
"""
import math

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.data.shapes_paired import MODALITIES, LUMA, labelled_index, render_paired, teacher_view
from workbench.methods import build_method
from workbench.methods.cross_modal.supervision_transfer import supervision_transfer_loss
from workbench.registry import METHODS, SCHEMES
from workbench.schemes import build_scheme
from workbench.taps import Outputs

SMALL = dict(n_train=48, n_test=16)


@pytest.fixture(scope="module")
def pairs():
    return wb.data.load("shapes_paired", **SMALL)


def cnn(channels, seed=0, width=4):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=channels, width=width)


def flat(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


# -- the data --------------------------------------------------------------------------------------
def test_paired_layout_and_meta(pairs):
    assert pairs.name == "shapes_paired" and pairs.input_shape == (1, 32, 32)
    assert set(pairs.train.extras) == {"rgb", "mask", "box", "segmentation"}
    assert pairs.train.extras["rgb"].shape == (48, 3, 32, 32) and pairs.test.extras["rgb"].shape == (16, 3, 32, 32)
    assert pairs.meta["student_modality"] == "depth" and pairs.meta["teacher_modality"] == "rgb"
    assert pairs.meta["modalities"] == {"x": "depth", "extras['rgb']": "rgb"}
    for x in (pairs.train.x, pairs.train.extras["rgb"]):        # each normalised on its own split
        assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(x.shape[1]), atol=1e-4)
        assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(x.shape[1]), atol=1e-3)
    assert len(pairs.meta["teacher_mean"]) == 3 and len(pairs.meta["mean"]) == 1


def test_rgb_is_shapes_bit_for_bit_and_the_scenes_are_shared(pairs):
    shapes = wb.data.load("shapes", **SMALL)
    rgb = wb.data.load("shapes_paired", student_modality="rgb", **SMALL)
    for split, plain, paired in ((rgb.train, shapes.train, pairs.train), (rgb.test, shapes.test, pairs.test)):
        assert torch.equal(split.x, plain.x) and torch.equal(paired.extras["rgb"], plain.x)
        assert torch.equal(split.y, plain.y) and torch.equal(paired.y, plain.y)
        for key in ("mask", "box", "segmentation"):
            assert torch.equal(paired.extras[key], plain.extras[key])
    view = teacher_view(pairs)                   # the teacher's bundle, without rendering again
    assert torch.equal(view.train.x, rgb.train.x) and torch.equal(view.test.x, rgb.test.x)
    assert view.meta["load_args"] == rgb.meta["load_args"] and view.input_shape == (3, 32, 32)
    assert view.meta["mean"] == rgb.meta["mean"]


def test_deterministic_per_seed(pairs):
    again = wb.data.load("shapes_paired", **SMALL)
    for a, b in ((pairs.train, again.train), (pairs.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.extras["rgb"], b.extras["rgb"]) and torch.equal(a.y, b.y)
    other = wb.data.load("shapes_paired", seed=1, **SMALL)
    assert not torch.equal(pairs.train.x, other.train.x)
    assert not torch.equal(pairs.train.extras["mask"], other.train.extras["mask"])
    # asking for another modality pair never changes a modality's pixels
    edges = wb.data.load("shapes_paired", student_modality="edges", teacher_modality="depth", **SMALL)
    assert torch.equal(edges.train.extras["depth"], pairs.train.x)


def test_modalities_differ_but_agree_with_the_masks():
    arrays, labels, masks = render_paired(12, 32, 0.0, 2, seed=5, stream=0, modalities=set(MODALITIES))
    assert {k: v.shape[1] for k, v in arrays.items()} == MODALITIES
    depth, edges = arrays["depth"][:, 0], arrays["edges"][:, 0]
    for i in range(12):
        m = masks[i]
        assert depth[i][m].mean() < depth[i][~m].mean()                     # the object is nearer
        inside = m[1:-1, 1:-1]                                               # mask boundary pixels ...
        boundary = inside & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
        assert (edges[i][1:-1, 1:-1][boundary] == 1).all()                  # ... are edges
        assert (edges[i][1:-1, 1:-1][inside & ~boundary] == 0).all()        # the object's inside is not
    assert np.allclose(arrays["gray"][:, 0], np.einsum("c,nchw->nhw", LUMA, arrays["rgb"]), atol=1e-6)
    assert not np.allclose(arrays["gray"], arrays["depth"])


def test_bad_modality_names_list_the_valid_ones():
    for arg in ("student_modality", "teacher_modality"):
        with pytest.raises(ValueError, match=rf"{arg}='thermal'.*valid: 'rgb', 'depth', 'edges', 'gray'"):
            wb.data.load("shapes_paired", **{arg: "thermal"}, **SMALL)


def test_labelled_index_and_keep_per_class(pairs):
    index = labelled_index(pairs.train.y, 2, seed=0)
    assert torch.bincount(pairs.train.y[torch.from_numpy(index)], minlength=10).tolist() == [2] * 10
    assert np.array_equal(index, labelled_index(pairs.train.y.numpy(), 2, seed=0))
    assert not np.array_equal(index, labelled_index(pairs.train.y, 2, seed=1))
    assert len(labelled_index(pairs.train.y, 0)) == 0
    with pytest.raises(ValueError, match="class .* has only"):
        labelled_index(pairs.train.y, 40)
    few = wb.data.load("shapes_paired", keep_per_class=2, **SMALL)
    assert torch.equal(few.train.x, pairs.train.x[torch.from_numpy(index)])   # whole-split statistics
    assert torch.equal(few.train.extras["rgb"], pairs.train.extras["rgb"][torch.from_numpy(index)])
    assert torch.equal(few.test.x, pairs.test.x)


# -- the scheme ------------------------------------------------------------------------------------
def test_scheme_is_registered_and_rebuilt_from_its_description():
    entry = SCHEMES.get("cross_modal")
    assert entry.meta["category"] == "cross_modal" and entry.meta["notebook"] == "33_cross_modal"
    assert entry.meta["link"] == "https://arxiv.org/abs/1507.00448" and entry.meta["year"] == 2016
    scheme = build_scheme("cross_modal", teacher_modality="depth", labels_per_class=3, label_seed=2)
    again = build_scheme("cross_modal", **scheme.describe())
    assert again.describe() == scheme.describe() == {"teacher_modality": "depth", "labels_per_class": 3,
                                                     "label_seed": 2}
    for bad in ({"labels_per_class": -1}, {"teacher_modality": ""}, {"label_seed": -2}):
        with pytest.raises(ValueError):
            build_scheme("cross_modal", **bad)


def test_teacher_load_args_name_the_teachers_own_labelled_data(pairs):
    scheme = build_scheme("cross_modal", labels_per_class=2)
    args = scheme.teacher_load_args({**SMALL, "keep_per_class": 2, "label_seed": 1})
    assert args == {**SMALL, "student_modality": "rgb"}
    assert torch.equal(wb.data.load("shapes_paired", **args).train.x, teacher_view(pairs).train.x)


def test_the_teacher_sees_rgb_and_the_student_depth_of_the_same_scenes(pairs):
    teacher, student = cnn(3, seed=7, width=8), cnn(1)
    seen = {"teacher": [], "student": []}
    hooks = [model.register_forward_pre_hook(lambda m, args, role=role: seen[role].append(args[0].detach().clone()))
             for role, model in (("teacher", teacher), ("student", student))]
    run = wb.distill(student, teacher, pairs, scheme="cross_modal", epochs=1, batch_size=16,
                     store=None, progress=False)
    seen["teacher"].clear(), seen["student"].clear()     # the compatibility probe's passes
    run.fit()
    for hook in hooks:
        hook.remove()
    # one pass of each per batch, in order: the first batch (connectors), 3 training steps, and
    # the evaluation on the test split; every pass pairs the same scenes
    rgb = torch.cat([pairs.train.extras["rgb"], pairs.test.extras["rgb"]])
    depth = torch.cat([pairs.train.x, pairs.test.x])
    assert len(seen["teacher"]) == len(seen["student"]) == 5
    for t, s in zip(seen["teacher"], seen["student"]):
        assert t.shape[1] == 3 and s.shape[1] == 1
        rows = [int((depth == row).flatten(1).all(1).nonzero()) for row in s]   # each sample's scene
        assert torch.equal(t, rgb[rows])                                        # the same scene, in RGB
    assert torch.equal(seen["teacher"][-1], pairs.test.extras["rgb"])
    # the run's teacher metrics are the teacher's on its own modality
    with torch.no_grad():
        direct = (teacher.eval()(pairs.test.extras["rgb"]).argmax(1) == pairs.test.y).float().mean().item()
    assert run.result["teacher_acc"] == pytest.approx(direct)
    assert run.result["labelled_samples"] == 0.0


def _fit(pairs, y=None, labelled=None, **scheme_args):
    data = pairs
    if y is not None:
        data = wb.data.DataBundle(pairs.name, wb.data.Split(pairs.train.x, y, pairs.train.extras),
                                  pairs.test, pairs.num_classes, pairs.class_names, pairs.input_shape,
                                  dict(pairs.meta))
    student = cnn(1, seed=3)
    run = wb.distill(student, cnn(3, seed=7, width=8), data, {"supervision_transfer": {}, "kd": {}},
                     scheme="cross_modal", scheme_args=scheme_args, epochs=1, batch_size=16, seed=0,
                     log_every=1, store=None, progress=False)
    if labelled is not None:      # the labelled subset is chosen from the labels: keep it fixed
        run.scheme.labelled = labelled
    return run.fit(), flat(student)


def test_no_labels_means_no_label_reaches_a_loss(pairs):
    run, weights = _fit(pairs)
    assert all("ce" not in row for row in run.history)
    assert {k for k in run.history[-1] if "." in k} == {"supervision_transfer.transfer", "kd.kl"}
    scrambled = (pairs.train.y + 1 + torch.arange(len(pairs.train.y)) % 7) % 10   # every label wrong
    _, scrambled_weights = _fit(pairs, y=scrambled)
    assert torch.equal(weights, scrambled_weights)


def test_few_labels_use_those_alone(pairs):
    run, weights = _fit(pairs, labels_per_class=2)
    index = labelled_index(pairs.train.y, 2)
    assert run.scheme.labelled.nonzero().flatten().tolist() == index.tolist()
    assert run.result["labelled_samples"] == 20.0 and all("ce" in row for row in run.history)
    others = torch.ones(len(pairs.train.y), dtype=torch.bool)
    others[torch.from_numpy(index)] = False
    y = pairs.train.y.clone()
    y[others] = (y[others] + 3) % 10                      # change only the unlabelled samples' labels
    assert torch.equal(weights, _fit(pairs, y=y, labelled=run.scheme.labelled, labels_per_class=2)[1])
    y = pairs.train.y.clone()
    y[torch.from_numpy(index)] = (y[torch.from_numpy(index)] + 3) % 10   # change the labelled ones
    assert not torch.equal(weights, _fit(pairs, y=y, labelled=run.scheme.labelled, labels_per_class=2)[1])
    all_labels, _ = _fit(pairs, labels_per_class=None)
    assert all_labels.result["labelled_samples"] == 48.0


def test_a_missing_teacher_modality_names_the_extras():
    shapes = wb.data.load("shapes", n_train=32, n_test=8)
    with pytest.raises(ValueError, match=r"extras\['rgb'\].*\['box', 'mask', 'segmentation'\]"):
        wb.distill(cnn(3), cnn(3, seed=1), shapes, scheme="cross_modal", batch_size=16, store=None)
    with pytest.raises(ValueError, match="nothing to learn from"):
        wb.distill(cnn(1), cnn(3, seed=1), wb.data.load("shapes_paired", **SMALL), {},
                   scheme="cross_modal", batch_size=16, store=None)


def test_the_cache_sees_the_teachers_modality(pairs):
    runs = [wb.distill(cnn(1, seed=3), cnn(3, seed=7, width=8), pairs, scheme="cross_modal",
                       scheme_args={"cache": cache}, epochs=2, batch_size=16, log_every=1, seed=0,
                       store=None, progress=False).fit() for cache in (False, True)]
    assert runs[0].history == runs[1].history
    cache = runs[1].scheme.cache
    assert cache.reason is None and cache.served == 3 and cache.teacher_forwards == 3


# -- the loss ---------------------------------------------------------------------------------------
def _method(student_feature, teacher_feature, **hparams):
    method = build_method("supervision_transfer", **hparams)
    object.__setattr__(method, "student_taps", ("s",))
    object.__setattr__(method, "teacher_taps", ("t",))
    with torch.no_grad():
        method.setup(Outputs(torch.zeros(len(student_feature), 10), {"s": student_feature}),
                     Outputs(torch.zeros(len(teacher_feature), 10), {"t": teacher_feature}))
    return method


def _terms(method, student_feature, teacher_feature):
    return method(Outputs(torch.zeros(len(student_feature), 10), {"s": student_feature}),
                  Outputs(torch.zeros(len(teacher_feature), 10), {"t": teacher_feature}), None)


def test_golden_value_of_the_l2_loss():
    s = [[[[0.5, -1.0], [2.0, 0.0]]], [[[1.5, 0.25], [-0.5, 3.0]]]]         # (2, 1, 2, 2)
    t = [[[[1.0, 1.0], [0.0, 0.0]]], [[[2.0, -0.75], [0.5, 1.0]]]]
    squares = [(a - b) ** 2 for sb, tb in zip(s, t) for sc, tc in zip(sb, tb)
               for sr, tr in zip(sc, tc) for a, b in zip(sr, tr)]
    expected = math.fsum(squares) / len(squares)
    assert expected == pytest.approx((0.25 + 4 + 4 + 0 + 0.25 + 1 + 1 + 4) / 8)
    got = supervision_transfer_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    method = _method(torch.tensor(s), torch.tensor(t))                        # equal widths: identity
    assert isinstance(method.connectors[0], torch.nn.Identity)
    assert _terms(method, torch.tensor(s), torch.tensor(t))["transfer"].item() == pytest.approx(expected, rel=1e-6)


def test_connector_gradients_and_a_frozen_target():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(4, 10, 2, 2, generator=g)                                  # wider, smaller map
    method = _method(s.detach(), t)
    conv = method.connectors[0]
    assert isinstance(conv, torch.nn.Conv2d) and (conv.in_channels, conv.out_channels) == (6, 10)
    loss = _terms(method, s, t)["transfer"]
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0
    assert not t.requires_grad and t.grad is None
    # the connector's output is average-pooled to the teacher's 2x2 map, then compared
    expected = ((torch.nn.functional.adaptive_avg_pool2d(conv(s.detach()), 2) - t) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert isinstance(_method(s.detach(), t[:, :6], connector="conv").connectors[0], torch.nn.Conv2d)


def test_zero_when_equal_permutation_invariant_and_other_shapes():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(5, 8, 3, 3, generator=g)
    method = _method(f, f)
    assert _terms(method, f, f)["transfer"].item() == 0.0
    t = torch.randn(5, 8, 3, 3, generator=g)
    perm = torch.randperm(5, generator=g)
    assert _terms(method, f[perm], t[perm])["transfer"].item() == pytest.approx(_terms(method, f, t)["transfer"].item())
    vectors = torch.randn(5, 8, generator=g)                                   # pooled taps: (B, D)
    assert _terms(_method(vectors, vectors * 2), vectors, vectors * 2)["transfer"].item() == pytest.approx(
        (vectors ** 2).mean().item())
    tokens = torch.randn(5, 17, 8, generator=g)                                # ViT: class token + 4x4
    assert torch.isfinite(_terms(_method(tokens, f), tokens, f)["transfer"])


def test_bad_hyper_parameters_name_the_value():
    for value in (float("nan"), -1.0):
        with pytest.raises(ValueError, match=f"weight={value}"):
            build_method("supervision_transfer", weight=value)
    with pytest.raises(ValueError, match="connector='mlp'"):
        build_method("supervision_transfer", connector="mlp")
    meta = METHODS.get("supervision_transfer").meta
    assert meta["category"] == "cross_modal" and meta["notebook"] == "33_cross_modal"
    defaults = METHODS.get("supervision_transfer").factory.defaults()
    assert defaults["student_taps"] == ("@last",) and defaults["weight"] == 10.0


@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
def test_three_steps_on_zoo_pairs_with_a_frozen_teacher(student_name):
    shapes = wb.data.load("shapes", **SMALL)
    torch.manual_seed(0)
    teacher = wb.models.build("resnet32x4", num_classes=10, in_channels=3)
    student = wb.models.build(student_name, num_classes=10, in_channels=3)
    before = flat(teacher)
    run = wb.distill(student, teacher, shapes, {"supervision_transfer": {}}, epochs=1, batch_size=16,
                     log_every=1, store=None, progress=False).fit()
    assert run.step == 3 and all(math.isfinite(row["loss"]) for row in run.history)
    assert torch.equal(before, flat(teacher)) and all(p.grad is None for p in teacher.parameters())
    expected = torch.nn.Identity if student_name == "resnet8x4" else torch.nn.Conv2d   # 256 vs 64 wide
    assert isinstance(run.methods["supervision_transfer"].connectors[0], expected)


def test_three_cross_modal_steps_depth_from_rgb(pairs):
    teacher = cnn(3, seed=7, width=8)
    before = flat(teacher)
    run = wb.distill(cnn(1, width=4), teacher, pairs, scheme="cross_modal", scheme_args={"labels_per_class": 1},
                     epochs=1, batch_size=16, log_every=1, store=None, progress=False).fit()
    assert run.step == 3 and run.status == "finished"
    assert all(math.isfinite(row["loss"]) for row in run.history)
    assert torch.equal(before, flat(teacher))
    assert isinstance(run.methods["supervision_transfer"].connectors[0], torch.nn.Conv2d)   # 16 vs 32


def test_a_cross_modal_run_from_the_command_line_trains_its_teacher_on_the_teacher_modality(capsys):
    from workbench.cli import main
    from workbench.store import RunStore
    assert main(["distill", "--teacher", "cnn", "--student", "cnn", "--dataset", "shapes_paired",
                 "--data-arg", "size=16", "--n-train", "32", "--scheme", "cross_modal",
                 "--method", "supervision_transfer", "--epochs", "1", "--teacher-epochs", "1",
                 "--batch-size", "16", "--quiet"]) == 0
    runs = RunStore().runs()
    teacher = runs[runs["kind"] == "train"]
    assert len(teacher) == 1 and len(runs) == 2
    # the teacher trained on the RGB scenes, all labelled; the student's run reads depth
    assert teacher.iloc[0]["config"]["dataset_args"]["student_modality"] == "rgb"
    student = runs[runs["kind"] == "distill"].iloc[0]
    assert student["config"]["dataset_args"].get("student_modality", "depth") == "depth"
    assert "labelled_samples" in capsys.readouterr().out
