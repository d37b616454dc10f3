"""GNN models (gcn, gat, sage): built with their graph, node lookup by feature row, taps, a GCN
layer against a dense reference, MACs, training on `sbm`, and the MLP student on node features."""
import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.registry import MODELS
from workbench.taps import capture

GRAPH = {"name": "sbm", "n_nodes": 200, "n_test": 60, "seed": 0}
GNNS = ["gcn", "gat", "sage"]


@pytest.fixture(scope="module")
def data():
    return wb.data.load(**GRAPH)


def build(name, **kwargs):
    torch.manual_seed(0)
    return wb.models.build(name, num_classes=5, in_channels=64, graph=GRAPH, **kwargs)


@pytest.mark.parametrize("name", GNNS)
def test_forward_taps_and_spec(name, data):
    model = build(name).eval()
    assert MODELS.get(name).meta["graph"] and MODELS.get(name).meta["family"] == "gnn"
    assert model.spec["graph"] == GRAPH                 # JSON-serialisable: it goes into run configs
    assert list(model.taps) == ["stage1", "embedding"]
    x = data.test.x[:7]
    out = capture(model, x, list(model.taps))
    assert out.logits.shape == (7, 5)
    torch.testing.assert_close(out.logits, model(x))
    assert out.features["stage1"].shape[0] == 7 and out.embedding.dim() == 2
    torch.testing.assert_close(model.classifier(out.embedding), out.logits)   # logits = classifier(embedding)
    # each row's answer depends on its node only, not on the rest of the batch
    torch.testing.assert_close(model(x[3:4]), out.logits[3:4])
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}  # the graph is no state


@pytest.mark.parametrize("name", GNNS)
def test_node_lookup_is_exact_and_rejects_other_rows(name, data):
    model = build(name)
    nodes = data.train.extras["node"]
    assert torch.equal(model.node_index(data.train.x), nodes)
    bad = data.train.x[:3].clone()
    bad[1, 0] += 1e-6
    with pytest.raises(ValueError, match="row 1 of the batch is not a node"):
        model(bad)
    with pytest.raises(ValueError, match=r"takes node feature rows \(B, 64\)"):
        model(torch.randn(2, 3, 8, 8))


def test_graph_argument_is_required_and_checked():
    with pytest.raises(TypeError, match="built with its graph"):
        wb.models.build("gcn", num_classes=5, in_channels=64)
    with pytest.raises(ValueError, match="in_channels=3"):
        wb.models.build("gcn", num_classes=5, in_channels=3, graph=GRAPH)
    with pytest.raises(ValueError, match="has no graph"):
        wb.models.build("gcn", num_classes=10, in_channels=1, graph={"name": "digits"})


def test_gcn_matches_a_dense_reference(data):
    model = build("gcn", dropout=0.0).eval()
    g = data.meta["graph"]
    n = g["num_nodes"]
    a = torch.zeros(n, n)
    a[g["edge_index"][1], g["edge_index"][0]] = 1.0
    a = a + torch.eye(n)                                            # A~ = A + I
    d = a.sum(1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]                             # D^-1/2 A~ D^-1/2
    h = F.relu(a_hat @ (g["features"] @ model.weights[0].weight.t()) + model.biases[0])
    expected = a_hat @ h @ model.classifier.weight.t() + model.classifier.bias
    nodes = data.test.extras["node"]
    torch.testing.assert_close(model(data.test.x), expected[nodes], rtol=1e-4, atol=1e-5)


def test_gat_attention_sums_to_one_over_each_neighbourhood(data):
    from workbench.models.gnn import edge_softmax
    model = build("gat")
    scores = torch.randn(len(model.dst), 3)
    alpha = edge_softmax(scores, model.dst, model.num_nodes)
    total = torch.zeros(model.num_nodes, 3).index_add_(0, model.dst, alpha)
    torch.testing.assert_close(total, torch.ones(model.num_nodes, 3))


@pytest.mark.parametrize("name", GNNS)
def test_macs_count_the_receptive_field(name):
    model = build(name)
    everything = model.macs()
    one = model.macs(torch.tensor([0]))
    assert 0 < one < everything
    if name == "gcn":   # by hand: 2-hop field of node 0, linear + propagation per layer
        fields = model.receptive_fields(torch.tensor([0]))
        e = lambda m: int(m[model.dst].sum())   # noqa: E731
        hand = int(fields[0].sum()) * 64 * 64 + e(fields[1]) * 64 + e(fields[2]) * 64 + 64 * 5
        assert one == hand


def test_mlp_student_takes_node_feature_rows(data):
    mlp = wb.models.build("mlp", num_classes=5, in_channels=64, image_size=1)
    assert mlp(data.train.x[:4]).shape == (4, 5)
    assert wb.models.summary(mlp, (64,)).macs == 64 * 256 + 256 * 128 + 128 * 5


@pytest.mark.parametrize("name", GNNS)
def test_trains_on_sbm_and_rebuilds_from_its_spec(name, data):
    model = build(name)
    run = wb.train(model, data, epochs=3, batch_size=20, lr=0.01, optimizer="adam", store=None,
                   progress=False).fit()
    assert run.status == "finished" and run.result["test_acc"] > 0.3
    again = wb.models.build(**model.spec)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval()(data.test.x), model.eval()(data.test.x))
