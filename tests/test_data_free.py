"""Data-free distillation (survey chapter 3.2): DAFL and ZSKT train on SEALED data without ever
reading a training image, while the offline scheme fails on the same bundle; the sealed split
itself; golden values of both papers' losses; gradients go where each paper says (the frozen
teacher gets none, ZSKT's generator step raises the divergence); an interrupted run resumed from
its checkpoint equals an uninterrupted one; bad arguments raise naming the value."""
import math

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.data import SealedSplit, TrainingDataAccessError, seal_training_data
from workbench.registry import SCHEMES
from workbench.schemes import build_scheme, is_frozen
from workbench.schemes._generator import Generator
from workbench.schemes.dafl import (DAFL, activation_loss, dafl_generator_loss, information_entropy_loss,
                                    one_hot_loss)
from workbench.schemes.zskt import ZSKT, zskt_divergence, zskt_generator_loss
from workbench.store import RunStore
from workbench.taps import TapError

SMALL = {"generator_width": 16}      # a narrow generator keeps the tests fast


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits", n_train=256)


@pytest.fixture(scope="module")
def sealed(digits):
    return seal_training_data(digits)


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    wb.train(model, digits, epochs=2, batch_size=32, store=None, progress=False).fit()
    return model


def cnn(seed=1, width=4):
    torch.manual_seed(seed)
    return wb.models.build("cnn", num_classes=10, in_channels=1, width=width)


def mlp(seed=1):
    torch.manual_seed(seed)
    return wb.models.build("mlp", num_classes=10, in_channels=1, image_size=8, hidden_sizes=(32,))


def flat(module):
    return torch.cat([t.detach().flatten().clone().float() for t in module.state_dict().values()
                      if t.is_floating_point()])


def run_of(scheme, student, teacher, data, methods=None, **options):
    defaults = dict(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0,
                    store=None, progress=False, log_every=2)
    scheme_args = {**SMALL, **options.pop("scheme_args", {})}
    return wb.distill(student, teacher, data, methods, scheme=scheme, scheme_args=scheme_args,
                      **{**defaults, **options})


# -- the sealed split ---------------------------------------------------------------------------
def test_sealed_split_keeps_only_its_length(digits, sealed):
    assert isinstance(sealed.train, SealedSplit) and len(sealed.train) == len(digits.train) == 256
    for read in (lambda s: s.x, lambda s: s.y, lambda s: s.extras, lambda s: s.batch(torch.arange(2)),
                 lambda s: s.subset(torch.arange(2)), lambda s: list(s.batches(8))):
        with pytest.raises(TrainingDataAccessError, match="'digits'.*sealed"):
            read(sealed.train)
    assert "256 samples of 'digits'" in repr(sealed.train)


def test_sealing_leaves_the_test_split_and_the_original_bundle_readable(digits, sealed):
    assert torch.equal(sealed.test.x, digits.test.x) and torch.equal(sealed.test.y, digits.test.y)
    assert sealed.num_classes == 10 and tuple(sealed.input_shape) == (1, 8, 8)
    assert digits.train.x.shape[0] == 256                  # the original is untouched
    assert sealed.meta == digits.meta and sealed.meta is not digits.meta


def test_the_offline_scheme_cannot_train_on_sealed_data(sealed, teacher):
    # it reads the training samples as soon as the run is built (its model check probes them)
    with pytest.raises(TrainingDataAccessError, match="'digits' is sealed"):
        wb.distill(cnn(), teacher, sealed, {"kd": {}}, epochs=1, batch_size=32, store=None,
                   progress=False).fit()


# -- data-free training on sealed data ----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["dafl", "zskt"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_data_free_schemes_train_on_sealed_data(scheme, kind, sealed, teacher):
    student = cnn() if kind == "cnn" else mlp()
    methods = {"kd": {"temperature": 1.0, "weight": 1.0}} if (scheme, kind) == ("zskt", "mlp") else None
    teacher_before, student_before = flat(teacher), flat(student)
    args = {"student_steps": 3} if scheme == "zskt" else {}
    run = run_of(scheme, student, teacher, sealed, methods, scheme_args=args)
    generator_before = flat(run.scheme.generator)
    run.fit()                                               # no TrainingDataAccessError: nothing read
    assert run.status == "finished" and run.step == 8
    assert all(math.isfinite(v) for row in run.history for v in row.values())
    assert torch.equal(teacher_before, flat(teacher)) and is_frozen(teacher)
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(student_before, flat(student))
    assert not torch.equal(generator_before, flat(run.scheme.generator))
    # the run's optimiser never moved G: its state holds only the student's (and connectors')
    generator_params = {id(p) for p in run.scheme.generator.parameters()}
    assert not any(id(p) in generator_params for p in run.optimizer.state)
    assert 0.0 <= run.result["test_acc"] <= 1.0 and "agreement" in run.result
    assert 0.0 <= run.history[-1]["train_acc"] <= 1.0      # agreement with T on generated images
    expected = {"dafl": {"generator.one_hot", "generator.activation", "generator.entropy", "generator.loss"},
                "zskt": {"generator.kl"}}[scheme]
    assert expected <= set(run.history[-1])


def test_zskt_default_loss_needs_feature_maps_and_says_so(sealed, teacher):
    run = run_of("zskt", mlp(), teacher, sealed)             # AT needs the student's maps
    with pytest.raises(ValueError, match="feature map"):
        run.fit()


def test_first_batch_is_generated_and_labelled_by_the_teacher(sealed, teacher):
    run = run_of("dafl", cnn(), teacher, sealed)
    stats = {k: v.clone() for k, v in run.scheme.generator.state_dict().items()}
    first = run.scheme.first_batch(5)
    assert first.x.shape == (5, 1, 8, 8) and torch.equal(first.index, torch.arange(5))
    with torch.no_grad():
        assert torch.equal(first.y, teacher(first.x).argmax(1))
    assert all(torch.equal(v, run.scheme.generator.state_dict()[k]) for k, v in stats.items())
    again = run.scheme.first_batch(5)
    assert torch.equal(first.x, again.x)                    # seeded: the same connectors every time
    samples = run.scheme.sample(6, seed=3)
    assert samples.shape == (6, 1, 8, 8)
    assert all(torch.equal(v, run.scheme.generator.state_dict()[k]) for k, v in stats.items())


def test_generator_makes_images_of_any_size():
    for shape in ((1, 8, 8), (3, 32, 32), (3, 30, 18)):
        torch.manual_seed(0)
        images = Generator(latent_dim=7, out_shape=shape, width=8)(torch.randn(4, 7))
        assert images.shape == (4, *shape)
        # the last, non-affine batch norm standardises each channel of the batch
        assert torch.allclose(images.mean((0, 2, 3)), torch.zeros(shape[0]), atol=1e-5)


# -- golden values ------------------------------------------------------------------------------
def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


LOGITS = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.3, -0.2, 1.5], [-1.0, -1.0, 3.0, 0.2]]
FEATURES = [[0.5, -2.0, 1.0], [-0.25, 0.0, 3.0], [1.5, -1.0, -0.5]]


def test_dafl_losses_golden_values():
    logits, features = torch.tensor(LOGITS), torch.tensor(FEATURES)
    probs = [_softmax(row) for row in LOGITS]
    one_hot = sum(-math.log(p[max(range(4), key=lambda j: row[j])]) for p, row in zip(probs, LOGITS)) / 3
    activation = -sum(abs(v) for row in FEATURES for v in row) / 9
    mean = [sum(p[j] for p in probs) / 3 for j in range(4)]
    entropy = sum(m * math.log10(m) for m in mean)
    assert one_hot_loss(logits).item() == pytest.approx(one_hot, rel=1e-5)
    assert activation_loss(features).item() == pytest.approx(activation, rel=1e-6)
    assert information_entropy_loss(logits).item() == pytest.approx(entropy, rel=1e-5)
    total, terms = dafl_generator_loss(logits, features, one_hot=1.0, activation=0.1, entropy=5.0)
    assert total.item() == pytest.approx(one_hot + 0.1 * activation + 5.0 * entropy, rel=1e-5)
    assert set(terms) == {"one_hot", "activation", "entropy"}
    # the entropy term is lowest, -log10(K), when the batch covers the classes evenly
    assert information_entropy_loss(torch.eye(4) * 30).item() == pytest.approx(-math.log10(4), abs=1e-6)


def test_zskt_losses_golden_values():
    student = [[0.3, 0.1, -0.4, 2.0], [1.0, 1.0, 0.0, -1.0], [0.0, 0.5, 1.0, 1.5]]
    t, s = [_softmax(r) for r in LOGITS], [_softmax(r) for r in student]
    kl = sum(t[i][j] * (math.log(t[i][j]) - math.log(s[i][j])) for i in range(3) for j in range(4)) / (3 * 4)
    s_logits, t_logits = torch.tensor(student), torch.tensor(LOGITS)
    assert zskt_divergence(s_logits, t_logits).item() == pytest.approx(kl, rel=1e-5)
    assert zskt_generator_loss(s_logits, t_logits).item() == pytest.approx(-kl, rel=1e-5)
    # at temperature 2 both distributions are softened
    t2, s2 = [_softmax([v / 2 for v in r]) for r in LOGITS], [_softmax([v / 2 for v in r]) for r in student]
    kl2 = sum(t2[i][j] * math.log(t2[i][j] / s2[i][j]) for i in range(3) for j in range(4)) / 12
    assert zskt_divergence(s_logits, t_logits, 2.0).item() == pytest.approx(kl2, rel=1e-5)
    assert zskt_divergence(t_logits, t_logits).item() == pytest.approx(0.0, abs=1e-7)


def test_zskt_default_student_loss_is_the_authors_kl_plus_250_at(sealed, teacher):
    """The default methods (KD weight 0.1 at T = 1, AT weight 250) give the code's
    F.kl_div(log s, t) (element mean) + 250 * sum_l mean((a_s - a_t)^2) on K = 10 classes."""
    run = run_of("zskt", cnn(), teacher, sealed)
    run._prepare()
    scheme = run.scheme
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        s, t = scheme.student_taps(x), scheme.teacher_taps(x)
        distill, _ = scheme.method_terms(s, t, None)
    p_s, p_t = F.softmax(s.logits, 1), F.softmax(t.logits, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum() / p_t.numel()
    at = 0.0
    for k in ("stage1", "stage2", "stage3"):
        a_s = F.normalize(s.features[k].pow(2).mean(1).flatten(1))
        a_t = F.normalize(t.features[k].pow(2).mean(1).flatten(1))
        at = at + (a_s - a_t).pow(2).mean()
    assert float(distill) == pytest.approx(float(kl + 250 * at), rel=1e-4)
    run.scheme.close()


# -- gradients ----------------------------------------------------------------------------------
def test_zskt_generator_step_increases_the_divergence_and_touches_nothing_else(sealed, teacher):
    run = run_of("zskt", cnn(), teacher, sealed, scheme_args={"generator_lr": 0.01})
    run._prepare()
    scheme = run.scheme
    z = torch.randn(32, scheme.latent_dim, generator=torch.Generator().manual_seed(0))

    def divergence():
        with torch.no_grad():
            images = scheme.generate(z)
            student, teacher = scheme.student_taps(images), scheme.teacher_taps(images)
            return zskt_divergence(student.logits, teacher.logits).item()

    params_before = [p.detach().clone() for p in scheme.student.parameters()]
    before = divergence()
    for _ in range(3):
        scheme.adversarial_step(z)
    assert divergence() > before
    assert all(p.grad is None for p in scheme.student.parameters())   # G's loss trains G only
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, p) for a, p in zip(params_before, scheme.student.parameters()))
    scheme.close()


def test_dafl_generator_gradient_flows_through_the_frozen_teacher(sealed, teacher):
    run = run_of("dafl", cnn(), teacher, sealed, scheme_args={"generator_lr": 0.01})
    run._prepare()
    scheme = run.scheme
    z = torch.randn(32, scheme.latent_dim, generator=torch.Generator().manual_seed(1))

    def generator_loss():
        images = scheme.generate(z)
        out = scheme.teacher_with_grad(images)
        return dafl_generator_loss(out.logits, out.features[scheme.feature_tap],
                                   scheme.one_hot, scheme.activation, scheme.entropy)[0]

    loss = generator_loss()
    grads = torch.autograd.grad(loss, list(scheme.generator.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    before = generator_loss().item()
    for _ in range(5):
        scheme.generator_step(generator_loss())
    assert generator_loss().item() < before                  # G descends its loss
    assert all(p.grad is None for p in teacher.parameters())
    scheme.close()


# -- resume -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["dafl", "zskt"])
def test_interrupt_and_resume_equals_an_uninterrupted_run(scheme, sealed, teacher, tmp_path):
    args = {"student_steps": 3} if scheme == "zskt" else {}
    options = dict(epochs=3, seed=4, log_every=2, scheme_args=args)
    whole = run_of(scheme, cnn(), teacher, sealed, store=RunStore(tmp_path / "a.sqlite"), **options).fit()

    store = RunStore(tmp_path / "b.sqlite")
    first = run_of(scheme, cnn(), teacher, sealed, store=store, **options)
    first.on("epoch_end", lambda run, epoch: run.stop() if epoch == 1 else None)
    first.fit()
    assert first.status == "interrupted" and first.epoch == 1

    resumed = run_of(scheme, cnn(), teacher, sealed, store=store, **options).fit()
    assert resumed.run_id == first.run_id and resumed.status == "finished"
    assert torch.equal(flat(resumed.student), flat(whole.student))
    assert torch.equal(flat(resumed.scheme.generator), flat(whole.scheme.generator))
    assert resumed.history == whole.history
    a = resumed.scheme.generator_optimizer.state_dict()["state"]
    b = whole.scheme.generator_optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def test_a_finished_run_is_reused_with_its_generator(sealed, teacher, tmp_path):
    store = RunStore(tmp_path / "c.sqlite")
    first = run_of("dafl", cnn(), teacher, sealed, store=store).fit()
    again = run_of("dafl", cnn(), teacher, sealed, store=store).fit()
    assert again.status == "reused"
    assert torch.equal(flat(again.scheme.generator), flat(first.scheme.generator))


# -- registry, arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dafl", "zskt"])
def test_registered_with_paper_and_rebuilt_from_describe(name):
    meta = SCHEMES.get(name).meta
    assert meta["category"] == "adversarial" and meta["notebook"] == "31_adversarial"
    assert meta["year"] == 2019 and meta["link"].startswith("https://arxiv.org/abs/") and meta["paper"]
    scheme = build_scheme(name)
    assert scheme.reads_training_data is False and scheme.needs_teacher
    assert build_scheme(name, **scheme.describe()).describe() == scheme.describe()


@pytest.mark.parametrize("cls, kwargs, value", [
    (DAFL, {"entropy": -1.0}, "-1.0"), (DAFL, {"activation": float("nan")}, "nan"),
    (DAFL, {"generator_lr": 0.0}, "0.0"), (DAFL, {"latent_dim": 0}, "0"),
    (DAFL, {"activation_tap": ""}, "''"), (ZSKT, {"student_steps": 0}, "0"),
    (ZSKT, {"generator_steps": -2}, "-2"), (ZSKT, {"temperature": -1.0}, "-1.0"),
    (ZSKT, {"generator_clip": float("inf")}, "inf"), (ZSKT, {"generator_width": 2.5}, "2.5"),
])
def test_bad_arguments_raise_naming_the_value(cls, kwargs, value):
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"{name}={value}"):
        cls(**kwargs)


def test_bad_runs_raise_clearly(sealed, teacher):
    with pytest.raises(ValueError, match="needs a teacher"):
        run_of("dafl", cnn(), None, sealed)
    with pytest.raises(ValueError, match="no methods|none"):
        run_of("zskt", cnn(), teacher, sealed, methods={})
    with pytest.raises(TapError, match="nothing"):
        run_of("dafl", cnn(), teacher, sealed, scheme_args={"activation_tap": "nothing"})
