"""The `sbm` graph data set: deterministic per seed, homophilous, transductive splits of node rows."""
import pytest
import torch

import workbench as wb
from workbench.data.sbm import distillation_view, edge_homophily


@pytest.fixture(scope="module")
def graph():
    return wb.data.load("sbm", n_nodes=300, seed=3, n_test=100)


def test_same_seed_same_graph_other_seed_other_graph(graph):
    again = wb.data.load("sbm", n_nodes=300, seed=3, n_test=100)
    assert torch.equal(graph.meta["graph"]["edge_index"], again.meta["graph"]["edge_index"])
    assert torch.equal(graph.meta["graph"]["features"], again.meta["graph"]["features"])
    assert torch.equal(graph.train.extras["node"], again.train.extras["node"])
    other = wb.data.load("sbm", n_nodes=300, seed=4, n_test=100)
    assert not torch.equal(graph.meta["graph"]["features"], other.meta["graph"]["features"])


def test_shapes_splits_and_rows(graph):
    g = graph.meta["graph"]
    features, edges = g["features"], g["edge_index"]
    assert features.shape == (300, 64) and g["num_nodes"] == 300 and graph.input_shape == (64,)
    assert edges.dtype == torch.int64 and edges.shape[0] == 2
    assert graph.num_classes == 5 and len(graph.train) == 100 and len(graph.test) == 100
    assert torch.bincount(graph.train.y, minlength=5).tolist() == [20] * 5   # 20 labelled per class
    train, test, rest = graph.train.extras["node"], graph.test.extras["node"], graph.meta["unlabelled"]
    assert train.dtype == torch.int64
    everything = torch.cat([train, test, rest])
    assert sorted(everything.tolist()) == list(range(300))               # disjoint, every node once
    assert torch.equal(graph.train.x, features[train]) and torch.equal(graph.test.x, features[test])
    # undirected, no self-loops, no repeated edge
    assert not (edges[0] == edges[1]).any()
    pairs = set(map(tuple, edges.t().tolist()))
    assert len(pairs) == edges.shape[1] and all((v, u) in pairs for u, v in pairs)


def test_homophily_is_well_above_a_random_graph(graph):
    # measured from the split labels alone: edges with both ends in train or test
    labels = torch.full((300,), -1)
    for split in (graph.train, graph.test):
        labels[split.extras["node"]] = split.y
    edges = graph.meta["graph"]["edge_index"]
    known = (labels[edges[0]] >= 0) & (labels[edges[1]] >= 0)
    same = (labels[edges[0]] == labels[edges[1]])[known].double().mean().item()
    # SBM: p_in * n/C / (p_in * n/C + p_out * n (C-1)/C) = 0.03*60 / (0.03*60 + 0.006*240) = 0.556
    assert same > 0.45 and graph.meta["homophily"] > 0.45
    assert same > 2 * (1 / 5)                                             # a random graph: 1 / C
    assert edge_homophily(edges, labels.clamp(min=0)) <= 1.0


def test_p_in_equal_p_out_gives_a_random_graph():
    flat = wb.data.load("sbm", n_nodes=400, p_in=0.02, p_out=0.02, n_test=100, seed=1)
    assert abs(flat.meta["homophily"] - 0.2) < 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"n_nodes": 1}, "n_nodes must be between 2 and 10000, got 1"),
    ({"num_classes": 1}, "num_classes must be between 2"),
    ({"p_in": 1.5}, "p_in must be between 0.0 and 1.0, got 1.5"),
    ({"p_out": -0.1}, "p_out must be between 0.0 and 1.0, got -0.1"),
    ({"feature_noise": -1.0}, "feature_noise must be between"),
    ({"n_train": 3}, "n_train must be between 5"),
    ({"n_test": 2000}, "n_test must be between 1 and 900"),
    ({"feature_dim": 0}, "feature_dim must be >= 1, got 0"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wb.data.load("sbm", **kwargs)
    with pytest.raises(TypeError, match="unknown argument"):
        wb.data.load("sbm", nodes=10)


def test_distillation_view_adds_the_unlabelled_nodes_with_teacher_labels(graph):
    class Constant(torch.nn.Module):          # a "teacher" that always says class 3
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 3), 5).float() + self.w

    view = distillation_view(graph, Constant())
    n_rest = len(graph.meta["unlabelled"])
    assert len(view.train) == len(graph.train) + n_rest and view.test is graph.test
    assert view.train.extras["labelled"].sum().item() == len(graph.train)
    assert (view.train.y[len(graph.train):] == 3).all()                  # never the true labels
    assert torch.equal(view.train.y[:len(graph.train)], graph.train.y)
    assert view.meta["load_args"]["view"] == "distillation"
