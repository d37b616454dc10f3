"""Distillation schemes (survey chapter 2): every scheme trains with methods of the sources chapter
on digits and shapes, gradients go where the scheme says, and each scheme's own rule holds (DML's
and KDCL's targets, ONE's gated ensemble, BYOT's exits and MACs, BAN's fresh generations, PS-KD's
previous-epoch targets, Tf-KD = label smoothing at T = 1, CS-KD's same-class partners); an online
run resumed after an interruption equals an uninterrupted one."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.registry import SCHEMES
from workbench.schemes import build_scheme, is_frozen
from workbench.schemes.ban import born_again, shares_tensors
from workbench.schemes.cskd import ClassPartners
from workbench.schemes.kdcl import min_logit_ensemble, naive_ensemble
from workbench.schemes.pskd import pskd_alpha
from workbench.schemes.tfkd import matching_label_smoothing, virtual_teacher_logits
from workbench.store import RunStore

SCHEME_NAMES = ["offline", "dml", "one", "kdcl", "byot", "ban", "pskd", "tfkd", "cskd"]
# two methods per scheme: KD and a feature method where the scheme's teacher has features,
# else a second logit method
METHODS = {
    "offline": ({"kd": {}}, {"kd": {}, "at": {}}),
    "ban": ({"kd": {}}, {"kd": {}, "at": {}}),
    "dml": ({"kd": {"temperature": 1.0, "weight": 1.0}}, {"kd": {}, "at": {}}),
    "cskd": ({"kd": {"temperature": 4.0, "weight": 1.0}}, {"kd": {}, "at": {}}),
    "byot": ({"kd": {"temperature": 3.0, "weight": 0.3}}, {"kd": {}, "rkd": {}}),
    "one": ({"kd": {}}, {"dkd": {}}),
    "kdcl": ({"kd": {}}, {"dkd": {}}),
    "pskd": ({"kd": {}}, {"dkd": {}}),
    "tfkd": ({"kd": {}}, {"dkd": {}}),
}


@pytest.fixture(scope="module")
def digits():
    return wb.data.load("digits", n_train=64)


@pytest.fixture(scope="module")
def shapes():
    return wb.data.load("shapes", n_train=32, n_test=16)


def model(data, seed=0, name=None):
    torch.manual_seed(seed)
    if data.name == "digits":
        return wb.models.build(name or "cnn", num_classes=10, in_channels=1, width=4)
    return wb.models.build(name or "resnet8", num_classes=10, in_channels=3)


def flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def teacher_for(scheme, data):
    """A trained teacher for the schemes that take one (BAN: the student's own architecture)."""
    if scheme not in ("offline", "ban"):
        return None
    teacher = model(data, seed=7) if scheme == "ban" else (
        wb.models.build("cnn", num_classes=10, in_channels=1, width=8) if data.name == "digits"
        else wb.models.build("resnet8", num_classes=10, in_channels=3))
    wb.train(teacher, data, epochs=1, batch_size=16, store=None, progress=False).fit()
    return teacher


# -- registry -----------------------------------------------------------------------------------
def test_every_scheme_is_registered_with_its_paper():
    assert set(SCHEME_NAMES) <= set(SCHEMES.names())
    for name in SCHEME_NAMES:
        entry = SCHEMES.get(name)
        meta = entry.meta
        assert meta["category"] in ("offline", "online", "self"), name
        assert meta["notebook"] == "20_schemes" and meta["venue"] and meta["year"] > 2000, name
        assert meta["link"].startswith("https://") and meta["paper"], name
        doc = sys.modules[entry.factory.__module__].__doc__
        assert meta["link"] in doc.replace("\n", ""), f"{name}: the module docstring cites its paper"
        assert "=" in doc and "L" in doc, f"{name}: the docstring states the loss"
    categories = {SCHEMES.get(n).meta["category"] for n in SCHEME_NAMES}
    assert categories == {"offline", "online", "self"}


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_describe_rebuilds_the_scheme(name):
    scheme = build_scheme(name)
    again = build_scheme(name, **scheme.describe())
    assert again.describe() == scheme.describe() and type(again) is type(scheme)


def test_distill_takes_the_schemes_own_default_methods(digits):
    dml = wb.distill(model(digits), None, digits, scheme="dml", store=None, progress=False)
    assert {n: m.hparams() for n, m in dml.methods.items()} == {"kd": {"temperature": 1.0, "weight": 1.0}}
    assert dml.config.methods == {"kd": {"temperature": 1.0, "weight": 1.0}}
    offline = wb.distill(model(digits), model(digits, 3), digits, store=None, progress=False)
    assert offline.config.methods == {"kd": wb.METHODS.get("kd").factory.defaults()}
    assert wb.distill(model(digits), None, digits, methods={}, scheme="pskd", store=None).methods == {}


@pytest.mark.parametrize("name", ["dml", "one", "kdcl", "byot", "pskd", "tfkd", "cskd"])
def test_schemes_that_make_their_own_teachers_refuse_one(digits, name):
    with pytest.raises(ValueError, match="pass teacher=None"):
        wb.distill(model(digits), model(digits, 1), digits, scheme=name, store=None)


# -- every scheme trains; gradients go where the scheme says ------------------------------------
@pytest.mark.parametrize("dataset", ["digits", "shapes"])
@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_scheme_trains_with_two_methods_and_updates_what_it_should(name, dataset, request):
    data = request.getfixturevalue(dataset)
    teacher = teacher_for(name, data)
    teacher_before = None if teacher is None else flat(teacher)
    for methods in METHODS[name]:
        student = model(data)
        run = wb.distill(student, teacher, data, methods, scheme=name, epochs=2, batch_size=16,
                         log_every=1, store=None, progress=False)
        scheme = run.scheme
        run.on("run_start", lambda r, _: starts.update(
            {k: flat(m) for k, m in trained_parts(r.scheme).items()}))
        starts = {}
        run.fit()
        assert run.status == "finished"
        assert all(math.isfinite(row["loss"]) for row in run.history)
        assert run.result["test_acc"] >= 0
        for part, before in starts.items():
            after = flat(trained_parts(scheme)[part])
            assert not torch.equal(before, after), f"{name}/{dataset}/{list(methods)}: {part} did not learn"
        if teacher is not None:
            assert is_frozen(teacher) and torch.equal(teacher_before, flat(teacher)), "teacher changed"
            assert not any(p.grad is not None for p in teacher.parameters())


def trained_parts(scheme):
    """The modules a scheme must update: the student, every peer, branch, gate, exit head."""
    parts = {"student": scheme.student}
    for k, peer in enumerate(getattr(scheme, "others", [])):
        parts[f"other{k + 1}"] = peer
    if hasattr(scheme, "gate"):
        parts["gate"] = scheme.gate
    for tap, head in getattr(scheme, "heads", {}).items():
        parts[f"exit {tap}"] = head
    return parts


# -- online: DML, KDCL, ONE ---------------------------------------------------------------------
def test_dml_peers_are_fresh_and_the_loss_is_the_papers(digits):
    run = wb.distill(model(digits), None, digits, scheme="dml", scheme_args={"peers": 3}, epochs=1,
                     batch_size=16, store=None, progress=False)
    run._prepare()
    peers = run.scheme.peers
    assert len(peers) == 3 and peers[0] is run.student
    assert not torch.equal(flat(peers[0]), flat(peers[1])) and not torch.equal(flat(peers[1]), flat(peers[2]))
    batch = digits.train.batch(torch.arange(16))
    loss, terms, logits = run.scheme.step(batch)
    # L_k = CE(p_k, y) + 1/(K-1) sum_{l != k} KL(p_l || p_k), by hand
    with torch.no_grad():
        z = [p(batch.x) for p in peers]
    expected = 0.0
    for k in range(3):
        expected += F.cross_entropy(z[k], batch.y)
        for l in range(3):
            if l != k:
                kl = (z[l].softmax(1) * (z[l].log_softmax(1) - z[k].log_softmax(1))).sum(1).mean()
                expected += kl / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(logits, z[0], atol=1e-6) and set(terms) == {
        f"peer{k}.{t}" for k in range(3) for t in ("ce", "kd.kl")}
    run.scheme.close()


def test_fresh_peers_never_repeat_the_student_and_equal_peers_are_refused(digits):
    for seed in range(3):   # a student made with a small seed, and runs with small seeds
        for run_seed in range(3):
            run = wb.distill(model(digits, seed), None, digits, scheme="dml", seed=run_seed,
                             batch_size=16, store=None)
            assert not torch.equal(flat(run.scheme.others[0]), flat(run.student))
    with pytest.raises(ValueError, match="has the weights of"):
        wb.distill(model(digits, 4), None, digits, scheme="dml", scheme_args={"peers": [model(digits, 4)]},
                   batch_size=16, store=None)


def test_dml_takes_peers_by_name_and_reports_each_peers_accuracy(digits):
    run = wb.distill(model(digits), None, digits, scheme="dml",
                     scheme_args={"peers": [{"name": "cnn", "width": 8}]}, epochs=1, batch_size=16,
                     store=None, progress=False).fit()
    assert run.scheme.others[0].stages[0].conv.out_channels == 8
    assert {"peer0_acc", "peer1_acc", "ensemble_acc"} <= set(run.result)
    assert run.result["peer0_acc"] == run.result["test_acc"]
    assert run.config.scheme_args == {"peers": [{"name": "cnn", "width": 8}]}
    with pytest.raises(ValueError, match="peers >= 2"):
        build_scheme("dml", peers=1)


def test_kdcl_ensembles():
    logits = torch.tensor([[[2.0, 1.0, 0.0]], [[0.5, 3.0, -1.0]]])    # (m=2, B=1, K=3)
    labels = torch.tensor([0])
    # min_k (z_k - z_k[y]): peer 1 gives [0, -1, -2], peer 2 [0, 2.5, -1.5] -> [0, -1, -2]
    assert torch.equal(min_logit_ensemble(logits, labels), torch.tensor([[0.0, -1.0, -2.0]]))
    assert torch.equal(naive_ensemble(logits, labels), logits[0])     # peer 1 has the lower CE
    assert torch.equal(naive_ensemble(logits, torch.tensor([1])), logits[1])
    ensemble = min_logit_ensemble(torch.randn(3, 5, 4), torch.tensor([0, 1, 2, 3, 0]))
    assert torch.all(ensemble.gather(1, torch.tensor([[0], [1], [2], [3], [0]])) == 0)


def test_one_gates_its_branches_and_refuses_models_it_cannot_split(shapes):
    run = wb.distill(model(shapes), None, shapes, scheme="one", epochs=1, batch_size=16, store=None,
                     progress=False)
    run._prepare()
    scheme = run.scheme
    assert scheme.last_stage_path == "layer3" and scheme.own_branch[0] is run.student.layer3
    batch = shapes.train.batch(torch.arange(8))
    scheme.eval()
    with torch.no_grad():
        logits, ensemble = scheme.forward_all(batch.x)
        trunk = run.student.layer2(run.student.layer1(run.student.stem(batch.x)))
        gate = scheme.gate(trunk.mean((2, 3))).softmax(1)
        assert torch.allclose(run.student(batch.x), logits[0], atol=1e-6)   # branch 0 is the student
    assert torch.allclose(ensemble, sum(gate[:, k:k + 1] * logits[k] for k in range(3)), atol=1e-6)
    assert not torch.equal(flat(scheme.others[0]), flat(torch.nn.Sequential(*scheme.own_branch)))
    scheme.close()
    torch.manual_seed(0)
    vit = wb.models.build("vit_tiny", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match="resnet, wrn and cnn"):
        wb.distill(vit, None, shapes, scheme="one", epochs=1, batch_size=16, store=None, progress=False).fit()
    with pytest.raises(ValueError, match="needs taps"):
        wb.distill(model(shapes), None, shapes, {"at": {}}, scheme="one", batch_size=16, store=None)


@pytest.mark.parametrize("name", ["wrn_16_1", "cnn"])
def test_one_runs_on_the_supported_families(shapes, name):
    torch.manual_seed(0)
    student = wb.models.build(name, num_classes=10, in_channels=3, **({"width": 4} if name == "cnn" else {}))
    run = wb.distill(student, None, shapes, scheme="one", scheme_args={"branches": 2}, epochs=1,
                     batch_size=16, store=None, progress=False).fit()
    assert {"branch0_acc", "branch1_acc", "ensemble_acc"} <= set(run.result)
    assert run.result["branch0_acc"] == run.result["test_acc"]


# -- self: BYOT, BAN, PS-KD, Tf-KD, CS-KD -------------------------------------------------------
# GNNs (meta "graph") are built with their graph and take node feature rows, not images
@pytest.mark.parametrize("name", [n for n in wb.models.names() if not wb.MODELS.get(n).meta.get("graph")])
def test_byot_attaches_exits_to_any_zoo_model(name):
    data = wb.data.load("shapes", size=16, n_train=8, n_test=4)
    kwargs = {"image_size": 16} if name in ("vit_tiny", "mlp") else {}
    torch.manual_seed(0)
    student = wb.models.build(name, num_classes=10, in_channels=3, **kwargs)
    run = wb.distill(student, None, data, scheme="byot", epochs=1, batch_size=4, store=None,
                     progress=False).fit()
    exits = run.scheme.exits
    assert exits and all(math.isfinite(r["loss"]) for r in run.history)
    result = run.result
    assert result["exit_final_macs"] == wb.models.summary(student, (3, 16, 16)).macs
    for tap in exits:
        assert 0 < result[f"exit_{tap}_macs"] and 0 <= result[f"exit_{tap}_acc"] <= 1
    assert result["exit_final_acc"] == result["test_acc"]


def test_byot_exit_macs_are_the_backbone_to_the_stage_plus_the_head(digits):
    run = wb.distill(model(digits), None, digits, scheme="byot", epochs=1, batch_size=16, store=None,
                     progress=False).fit()
    student, scheme = run.student, run.scheme
    # cnn: stage1 = conv 1->4 on 8x8; its head's MACs counted on its own by summary's rule
    stage1 = 8 * 8 * 4 * 1 * 9
    head = scheme.heads["stage1"]
    from workbench.models.summary import _macs
    total = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + _macs(m, i, o)))
             for m in head.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    head.eval()
    with torch.no_grad():
        head(torch.zeros(1, 4, 8, 8))
    for h in hooks:
        h.remove()
    assert run.result["exit_stage1_macs"] == stage1 + total[0]
    assert run.result["exit_stage1_macs"] < run.result["exit_stage2_macs"] < run.result["exit_final_macs"]


def test_born_again_generations_start_afresh_and_are_ensembled(digits):
    inits = []

    def factory():
        m = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
        inits.append(flat(m))
        return m

    gens = born_again(factory, digits, generations=2, epochs=2, batch_size=16, store=None, progress=False)
    assert len(gens.models) == 3 and len(set(map(id, gens.models))) == 3
    for k in (1, 2):
        assert not shares_tensors(gens.models[k], gens.models[k - 1])
        assert not torch.equal(inits[k], flat(gens.models[k - 1])), "a generation started from its teacher"
        assert not torch.equal(inits[k], inits[k - 1]), "every generation draws its own initial weights"
        assert gens.runs[k].config.scheme == "ban" and gens.runs[k].teacher is gens.models[k - 1]
    assert len(set(gens.initial_fingerprints)) == 3
    probs = torch.stack([m.eval()(digits.test.x).softmax(1) for m in gens.models]).mean(0)
    assert gens.ensemble_acc == pytest.approx((probs.argmax(1) == digits.test.y).float().mean().item())
    assert gens.accuracies[-1] == pytest.approx(gens.runs[-1].result["test_acc"])
    same = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
    with pytest.raises(ValueError, match="must build a new one"):
        born_again(lambda: same, digits, generations=1, epochs=1, batch_size=16, store=None, progress=False)
    with pytest.raises(ValueError, match="teacher's architecture"):
        wb.distill(model(digits), gens.models[0].__class__(num_classes=10, in_channels=1, width=8),
                   digits, scheme="ban", store=None)
    with pytest.raises(ValueError, match="shares weights"):
        wb.distill(gens.models[0], gens.models[0], digits, scheme="ban", store=None)


class Spy(wb.methods.Method):
    """Records, per step, the sample indices, the student's logits and the teacher's logits."""

    def __init__(self, weight: float = 1.0):
        super().__init__(weight=weight)
        object.__setattr__(self, "seen", [])

    def forward(self, student, teacher, batch):
        self.seen.append((batch.index.clone(), student.logits.detach().clone(), teacher.logits.detach().clone()))
        return {"zero": student.logits.sum() * 0}


def test_pskd_targets_are_the_previous_epochs_predictions_of_the_same_samples(digits):
    spy = Spy()
    run = wb.distill(model(digits), None, digits, {"kd": {"temperature": 1.0, "weight": 1.0}, "spy": spy},
                     scheme="pskd", epochs=3, batch_size=16, log_every=1, store=None, progress=False)
    epochs = []
    run.on("step_end", lambda r, _: epochs.append(r.epoch))
    run.fit()
    steps = len(digits.train) // 16
    by_epoch = [spy.seen[e * steps:(e + 1) * steps] for e in range(3)]
    for index, student, teacher in by_epoch[0]:          # no past: the sample teaches itself nothing
        assert torch.equal(teacher, student)
    for epoch in (1, 2):
        previous = {int(i): s[j] for index, s, _ in by_epoch[epoch - 1] for j, i in enumerate(index)}
        for index, student, teacher in by_epoch[epoch]:
            for j, i in enumerate(index.tolist()):
                assert torch.equal(teacher[j], previous[i]), f"epoch {epoch}, sample {i}"
    alphas = [row["alpha"] for row in run.history]
    assert alphas[0] == 0 and alphas[-1] == pytest.approx(0.8)
    assert pskd_alpha(0.8, 1, 3) == pytest.approx(0.4)


def test_tfkd_at_temperature_one_is_label_smoothing_of_the_matching_strength(digits):
    labels = torch.tensor([3, 0])
    probs = virtual_teacher_logits(labels, 10, 0.9).softmax(1)
    assert torch.allclose(probs[0, 3], torch.tensor(0.9)) and torch.allclose(probs[0, 0], torch.tensor(0.1 / 9))
    # gradient of CE + w * KD(T=1) from the virtual teacher == (1 + w) * gradient of LS-CE(eps)
    w = 0.5
    eps = matching_label_smoothing(0.9, 10, kd_weight=w, task_weight=1.0)
    logits = torch.randn(2, 10, requires_grad=True)
    teacher = virtual_teacher_logits(labels, 10, 0.9)
    kd = F.kl_div(logits.log_softmax(1), teacher.log_softmax(1), reduction="batchmean", log_target=True)
    (F.cross_entropy(logits, labels) + w * kd).backward()
    grad_tfkd = logits.grad.clone()
    logits.grad = None
    ((1 + w) * F.cross_entropy(logits, labels, label_smoothing=eps)).backward()
    assert torch.allclose(grad_tfkd, logits.grad, atol=1e-6)
    # and through the workbench: a tfkd run and an offline label-smoothing run take equal steps
    tf = wb.distill(model(digits), None, digits, {"kd": {"temperature": 1.0, "weight": w}}, scheme="tfkd",
                    epochs=1, batch_size=16, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                    store=None, progress=False).fit()
    ls = wb.distill(model(digits), None, digits, {}, scheme_args={"label_smoothing": eps},
                    task_weight=1 + w, epochs=1, batch_size=16, optimizer="sgd", momentum=0.0,
                    weight_decay=0.0, store=None, progress=False).fit()
    assert torch.allclose(flat(tf.student), flat(ls.student), atol=1e-5)


def test_cskd_partners_share_the_class_and_are_other_samples(digits):
    labels = torch.tensor([0, 1, 0, 2, 1, 0])                       # class 2 has one sample
    partners = ClassPartners(labels)
    for seed in range(20):
        got = partners(torch.arange(6), torch.Generator().manual_seed(seed))
        assert torch.equal(labels[got], labels)
        assert all(int(g) != i for i, g in enumerate(got) if i != 3) and int(got[3]) == 3
    index = torch.arange(len(digits.train))
    got = ClassPartners(digits.train.y)(index, torch.Generator().manual_seed(0))
    assert torch.equal(digits.train.y[got], digits.train.y) and not torch.equal(got, index)
    spy = Spy()
    run = wb.distill(model(digits), None, digits, {"kd": {}, "spy": spy}, scheme="cskd", epochs=1,
                     batch_size=16, store=None, progress=False)
    run.fit()
    assert all(not torch.equal(s, t) for _, s, t in spy.seen)      # the partner is another input


# -- checkpoint + resume of online and self schemes ---------------------------------------------
@pytest.mark.parametrize("name", ["dml", "pskd"])
def test_interrupt_after_an_epoch_and_resume_equals_an_uninterrupted_run(digits, tmp_path, name):
    options = dict(scheme=name, epochs=3, batch_size=16, seed=5, progress=False)
    whole = wb.distill(model(digits), None, digits, store=RunStore(tmp_path / "a.sqlite"), **options).fit()

    store = RunStore(tmp_path / "b.sqlite")
    first = wb.distill(model(digits), None, digits, store=store, **options)
    first.on("epoch_end", lambda run, epoch: run.stop() if epoch == 1 else None)
    first.fit()
    assert first.status == "interrupted" and first.epoch == 1

    resumed = wb.distill(model(digits), None, digits, store=store, **options).fit()
    assert resumed.run_id == first.run_id and resumed.status == "finished"
    assert torch.equal(flat(resumed.scheme), flat(whole.scheme))      # every peer, every buffer
    assert all(torch.equal(a, b) for a, b in zip(resumed.scheme.state_dict().values(),
                                                  whole.scheme.state_dict().values()))
    assert resumed.history == whole.history


def test_train_puts_every_module_back_in_training_and_keeps_the_teacher_in_eval(digits):
    """A scheme's train() at each epoch skips its walk when nothing changed; it must still undo
    anything that did (an evaluation, a probe, a user) and keep the frozen teacher in eval mode."""
    torch.manual_seed(0)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    run = wb.distill(student, teacher, digits, methods={"kd": {}}, epochs=1, batch_size=64, store=None,
                     progress=False).fit()
    scheme = run.scheme
    scheme.train()
    assert all(m.training for m in scheme.modules()) and not any(m.training for m in teacher.modules())
    student.eval()                                   # what an evaluation leaves
    next(iter(student.modules())).training = True    # a mixed state: the top in train, the rest not
    teacher.train()                                  # a teacher someone switched to train mode
    scheme.train()
    assert all(m.training for m in scheme.modules()) and not any(m.training for m in teacher.modules())
    scheme.eval()
    assert not any(m.training for m in scheme.modules())


def test_a_finished_run_is_freed_without_the_garbage_collector(digits):
    """The scheme refers to its run weakly: no run <-> scheme cycle keeps a finished run's models
    and optimiser state alive until a collection."""
    import gc
    import weakref
    torch.manual_seed(0)
    student = wb.models.build("cnn", num_classes=10, in_channels=1, width=4)
    teacher = wb.models.build("cnn", num_classes=10, in_channels=1, width=8)
    run = wb.distill(student, teacher, digits, methods={"kd": {}}, epochs=1, batch_size=64, store=None,
                     progress=False).fit()
    gone = weakref.ref(run)
    gc.disable()
    try:
        del run
        assert gone() is None
    finally:
        gc.enable()
