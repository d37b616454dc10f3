"""Graph-based methods (survey 3.5): GLNN, MHGD, LSP. Golden values from the papers' equations
computed here with numpy and loops, gradients, frozen teachers, zero loss at equality,
batch-permutation invariance, hyper-parameter checks, and three training steps on zoo CNN pairs
and on a GCN teacher with an MLP student on `sbm`."""
import math

import numpy as np
import pytest
import torch

import workbench as wb
from method_helpers import distil_three_steps
from workbench.methods.graph.glnn import glnn_loss
from workbench.methods.graph.lsp import graph_neighbours, knn_neighbours, lsp_loss
from workbench.methods.graph.mhgd import mhgd_loss, relation_graph, singular_embedding
from workbench.taps import Outputs

NAMES = ["glnn", "mhgd", "lsp"]


def build(name, **hparams):
    return wb.methods.build_method(name, **hparams)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# ------------------------------------------------------------------ golden values
def test_glnn_golden_value():
    s = np.array([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -0.5], [-1.0, 2.0, 0.0, 1.0]])
    t = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
    expected = 0.0
    for i in range(3):                  # KL(z_v || y^_v) at T = 1, mean over nodes
        p, q = softmax(t[i]), softmax(s[i])
        expected += sum(p[k] * math.log(p[k] / q[k]) for k in range(4)) / 3
    got = glnn_loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    method = build("glnn")
    terms = method(Outputs(torch.tensor(s)), Outputs(torch.tensor(t)), None)
    assert terms["kl"].item() == pytest.approx(expected, rel=1e-6)


def test_mhgd_singular_embedding_is_the_top_right_singular_vector():
    rng = np.random.default_rng(0)
    maps = np.abs(rng.normal(size=(3, 5, 4, 4)))                   # (B, C, H, W), non-negative as after ReLU
    got = singular_embedding(torch.tensor(maps, dtype=torch.float32)).numpy()
    for b in range(3):
        matrix = maps[b].reshape(5, 16).T                            # (HW, C)
        v = np.linalg.svd(matrix)[2][0]                              # first right singular vector
        v = v * np.sign(v @ matrix.mean(0))
        np.testing.assert_allclose(got[b], v, atol=1e-4)
    vector = torch.tensor([[3.0, 4.0]])                              # one position: the unit vector
    torch.testing.assert_close(singular_embedding(vector), torch.tensor([[0.6, 0.8]]))


def test_mhgd_graph_and_loss_golden_value():
    rng = np.random.default_rng(1)
    heads, batch, width = 2, 3, 4
    sender, receiver = rng.normal(size=(batch, width * heads)), rng.normal(size=(batch, width * heads))
    graph = relation_graph(torch.tensor(sender), torch.tensor(receiver), heads).numpy()
    for h in range(heads):      # layout (B, D, heads): feature d of head h is column d * heads + h
        for i in range(batch):
            for j in range(batch):
                expected = sum(sender[i, d * heads + h] * receiver[j, d * heads + h] for d in range(width))
                assert graph[h, i, j] == pytest.approx(expected, rel=1e-9)
    g_s, g_t = rng.normal(size=(heads, batch, batch)), rng.normal(size=(heads, batch, batch))
    expected = 0.0
    for h in range(heads):
        for i in range(batch):
            p, q = softmax(np.tanh(g_s[h, i])), softmax(np.tanh(g_t[h, i]))
            expected += sum(p[j] * math.log(p[j] / q[j]) for j in range(batch)) / batch
    assert mhgd_loss(torch.tensor(g_s), torch.tensor(g_t)).item() == pytest.approx(expected, rel=1e-9)


def test_lsp_golden_value():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    neighbours = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [0, 0, 1, 0], [1, 0, 1, 1]], dtype=bool)
    for kernel, bandwidth in (("laplacian", 100.0), ("laplacian", 0.7), ("rbf", 1.3)):
        def structure(z, i):
            sims = {}
            for j in range(4):
                if neighbours[i, j]:
                    d = np.abs(z[i] - z[j]).sum() / bandwidth if kernel == "laplacian" \
                        else ((z[i] - z[j]) ** 2).sum() / (2 * bandwidth ** 2)
                    sims[j] = math.exp(math.exp(-d))              # exp(SIM), SIM = the kernel
            total = sum(sims.values())
            return {j: v / total for j, v in sims.items()}
        expected = 0.0
        for i in range(4):
            p, q = structure(t, i), structure(s, i)                # KL(S^T || S^S)
            expected += sum(p[j] * math.log(p[j] / q[j]) for j in p) / 4
        got = lsp_loss(torch.tensor(s), torch.tensor(t), torch.tensor(neighbours), kernel, bandwidth)
        assert got.item() == pytest.approx(expected, rel=1e-4), kernel   # the kernel runs in float32


def test_lsp_neighbourhoods():
    z = torch.tensor([[0.0], [1.0], [5.0], [5.5], [0.2]])
    knn = knn_neighbours(z, 1)
    assert knn.tolist() == [[True, False, False, False, True], [False, True, False, False, True],
                            [False, False, True, True, False], [False, False, True, True, False],
                            [True, False, False, False, True]]
    assert knn_neighbours(z, 50).all()                               # k is clamped to B - 1
    edges = torch.tensor([[0, 1, 1, 2, 7, 3], [1, 0, 2, 1, 3, 7]])   # 0-1, 1-2, 3-7
    nodes = torch.tensor([2, 1, 7, 5])
    expected = torch.eye(4, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = True                           # nodes 2 and 1 are linked
    assert torch.equal(graph_neighbours(nodes, edges, 8), expected)


# ------------------------------------------------------------------ properties shared by all
def outputs(name, seed=0, same=False):
    """Student outputs (requiring grad) and teacher outputs for a unit test, widths differing."""
    g = torch.Generator().manual_seed(seed)
    batch = 6
    t = {"a": torch.randn(batch, 8, 4, 4, generator=g).relu(), "b": torch.randn(batch, 12, 2, 2, generator=g).relu(),
         "e": torch.randn(batch, 12, generator=g)}
    s = {k: v.clone() for k, v in t.items()} if same else \
        {"a": torch.randn(batch, 4, 4, 4, generator=g).relu(), "b": torch.randn(batch, 6, 2, 2, generator=g).relu(),
         "e": torch.randn(batch, 5, generator=g)}
    t_logits = torch.randn(batch, 3, generator=g)
    s_logits = t_logits.clone() if same else torch.randn(batch, 3, generator=g)
    taps = {"mhgd": ("a", "b"), "lsp": ("e",), "glnn": ()}[name]
    method = build(name, **({"student_taps": taps, "teacher_taps": taps} if taps else {}))
    for v in [*s.values(), s_logits]:
        v.requires_grad_()
    return method, Outputs(s_logits, s), Outputs(t_logits, t)


def run(method, student, teacher, batch=None):
    with torch.no_grad():
        method.setup(student.detach(), teacher)
    return method(student, teacher, batch)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_connectors_not_teacher(name):
    method, student, teacher = outputs(name)
    terms = run(method, student, teacher)
    assert terms and all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    used = [student.logits] if name == "glnn" else [student.features[k] for k in method.student_taps]
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in used)
    assert all(not v.requires_grad and v.grad is None for v in [*teacher.features.values(), teacher.logits])
    if name == "mhgd":
        assert set(method.connectors) == {"a", "b"}                  # widths differ: connectors built
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())


def test_mhgd_terms_train_separate_parts():
    """The graph term trains the student (and connectors), the estimator term the attention net."""
    method, student, teacher = outputs("mhgd")
    terms = run(method, student, teacher)
    terms["graph"].backward(retain_graph=True)
    assert all(p.grad is None for p in [*method.attention.parameters(), *method.estimators.parameters()])
    assert all(p.grad is not None for p in method.connectors.parameters())
    student.features["a"].grad = None
    terms["estimator"].backward()
    assert student.features["a"].grad is None
    assert all(p.grad is not None for p in method.estimators.parameters())


@pytest.mark.parametrize("name, term", [("glnn", "kl"), ("mhgd", "graph"), ("lsp", "local_structure")])
def test_zero_loss_when_student_equals_teacher(name, term):
    method, student, teacher = outputs(name, same=True)
    assert run(method, student, teacher)[term].item() == pytest.approx(0.0, abs=1e-6)
    method, student, teacher = outputs(name, seed=4)
    assert run(method, student, teacher)[term].item() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_batch_permutation_invariance(name):
    method, student, teacher = outputs(name, seed=3)
    run(method, student, teacher)        # setup builds MHGD's networks
    method.eval()                        # MHGD drops heads at random while training
    first = method(student, teacher, None)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    perm = lambda o: Outputs(o.logits[order], {k: v[order] for k, v in o.features.items()})  # noqa: E731
    second = method(perm(student), perm(teacher), None)
    for key in first:
        assert second[key].item() == pytest.approx(first[key].item(), rel=1e-4, abs=1e-7)


def test_mhgd_needs_two_layers_and_checks_shapes():
    method = build("mhgd", student_taps=("e",), teacher_taps=("e",))
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="at least two tap pairs"):
        run(method, Outputs(torch.zeros(4, 3), {"e": s}), Outputs(torch.zeros(4, 3), {"e": t}))
    odd = build("mhgd", student_taps=("a", "b"), teacher_taps=("a", "b"))
    with pytest.raises(ValueError, match=r"student tap 'a' has shape \(4, 1, 1, 1, 1\)"):
        run(odd, Outputs(torch.zeros(4, 3), {"a": torch.randn(4, 1, 1, 1, 1), "b": s}),
            Outputs(torch.zeros(4, 3), {"a": torch.randn(4, 2, 2, 2), "b": t}))


def test_mhgd_setup_again_keeps_trained_networks():
    method, student, teacher = outputs("mhgd")
    run(method, student, teacher)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(1.0)
    trained = {k: v.detach().clone() for k, v in method.named_parameters()}
    with torch.no_grad():
        method.setup(student.detach(), teacher)
    assert all(torch.equal(p, trained[k]) for k, p in method.named_parameters())


@pytest.mark.parametrize("name, hparam, value", [
    ("glnn", "temperature", -1.0), ("glnn", "weight", float("nan")), ("mhgd", "heads", 0),
    ("mhgd", "weight", -1.0), ("lsp", "bandwidth", 0.0), ("lsp", "k", -2), ("lsp", "weight", float("inf"))])
def test_bad_hyperparameters_raise_errors_naming_the_value(name, hparam, value):
    with pytest.raises(ValueError, match=f"{hparam}={value!r}"):
        build(name, **{hparam: value})
    method = build(name)
    with pytest.raises(ValueError, match=f"{hparam}={value!r}"):
        setattr(method, hparam, value)


def test_bad_choices_raise():
    with pytest.raises(ValueError, match="kernel='cosine'"):
        build("lsp", kernel="cosine")
    with pytest.raises(ValueError, match="neighbourhood='ring'"):
        build("lsp", neighbourhood="ring")
    with pytest.raises(ValueError, match="heads=2.5"):
        build("mhgd", heads=2.5)


def test_defaults_follow_the_papers_and_reference_code():
    assert build("glnn").hparams() == {"temperature": 1.0, "weight": 1.0}
    assert build("mhgd").heads == 8.0 and build("mhgd").weight == 1.0
    lsp = build("lsp").hparams()
    assert (lsp["bandwidth"], lsp["kernel"], lsp["weight"]) == (100.0, "laplacian", 1.0)
    for name in NAMES:
        entry = wb.registry.METHODS.get(name)
        assert entry.meta["category"] == "graph" and entry.meta["notebook"] == "34_graph"


# ------------------------------------------------------------------ integration: 3 training steps
@pytest.mark.parametrize("student_name", ["resnet8x4", "wrn_16_1"])
@pytest.mark.parametrize("name", NAMES)
def test_three_training_steps_with_a_frozen_teacher(name, student_name, shapes):
    torch.manual_seed(0)
    teacher = wb.models.build("resnet32x4", num_classes=shapes.num_classes, in_channels=3)
    student = wb.models.build(student_name, num_classes=shapes.num_classes, in_channels=3)
    distil_three_steps(student, teacher, shapes, name)


GRAPH = {"name": "sbm", "n_nodes": 200, "n_test": 60, "seed": 0}


@pytest.mark.parametrize("name", NAMES)
def test_gcn_teacher_teaches_an_mlp_on_the_graph(name):
    data = wb.data.load(**GRAPH)
    torch.manual_seed(0)
    teacher = wb.models.build("gcn", num_classes=5, in_channels=64, graph=GRAPH)
    student = wb.models.build("mlp", num_classes=5, in_channels=64, image_size=1, hidden_sizes=(32, 16))
    # a 2-layer GCN has one hidden stage: MHGD relates its hidden layer and its embedding
    method = build(name, **({"teacher_taps": ("stage1", "embedding")} if name == "mhgd" else {}))
    run_ = wb.distill(student, teacher, data, methods={name: method}, epochs=1, batch_size=32,
                      store=None, progress=False).fit()
    assert run_.step == 3 and math.isfinite(run_.history[-1]["loss"])
    assert all(p.grad is None for p in teacher.parameters())
    if name == "lsp":                    # the GCN's graph gives the neighbourhoods
        assert method._graph_model is teacher
        nodes = data.train.extras["node"][:32]
        neighbours = method.neighbours(None, data.train.batch(torch.arange(32)))
        edges = teacher.edge_index
        linked = {(int(a), int(b)) for a, b in edges.t()}
        for i in range(32):
            for j in range(32):
                assert bool(neighbours[i, j]) == (i == j or (int(nodes[j]), int(nodes[i])) in linked)


def test_lsp_graph_neighbourhood_needs_a_gnn(shapes):
    student = wb.models.build("resnet8", num_classes=10, in_channels=3)
    with pytest.raises(ValueError, match="neighbourhood='graph' needs a GNN"):
        wb.distill(student, wb.models.build("resnet8", num_classes=10, in_channels=3), shapes,
                   methods={"lsp": {"neighbourhood": "graph"}}, batch_size=16, store=None)
