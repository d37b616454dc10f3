"""`sbm`: a stochastic-block-model graph for graph-based KD, generated offline from a seed.

Holland, Laskey & Leinhardt, "Stochastic blockmodels: First steps", Social Networks 5(2), 1983.
``num_classes`` communities of (nearly) equal size; every pair of nodes is joined independently,
with probability ``p_in`` inside a community and ``p_out`` across two. Node features are noisy
class-dependent Gaussians: community c has a centre mu_c ~ N(0, I_F) and node i of community y_i
has x_i = mu_{y_i} + feature_noise * eps_i, eps_i ~ N(0, I_F), standardised per dimension over all
nodes. With the default noise the features alone are a weak clue (an MLP on them is clearly worse
than a GNN that also averages each node's neighbours, which are mostly of its community): the
setting of GLNN (Zhang et al., ICLR 2022, arXiv 2110.08727), where a GNN teacher has something to
teach an MLP student.

Transductive: the graph holds every node; the splits hold node rows. ``n_train`` labelled nodes
(stratified: 20 per class by default, the Planetoid / GLNN convention) form the training split,
``n_test`` nodes the test split, and the other nodes are observed but unlabelled
(``meta["unlabelled"]``). Each split's ``x`` holds node feature rows (N, F) and extras ``"node"``
the node indices (int64). ``meta["graph"]`` holds ``edge_index`` (2, E) int64, both directions of
every undirected edge, no self-loops, sorted; ``features`` (num_nodes, F) float32, the full
feature matrix (split rows are exact copies of its rows); and ``num_nodes``. ``meta["homophily"]``
is the edge homophily (the fraction of edges that join two nodes of one community).

:func:`distillation_view` builds GLNN's training set: the labelled nodes plus the unlabelled ones,
labelled by a teacher's predictions.
"""
from __future__ import annotations

import numpy as np
import torch

from workbench.data.bundle import DataBundle, Split
from workbench.data.common import check_float, check_int, stratified_subset
from workbench.registry import DATASETS

MAX_NODES = 10_000   # the pairwise draw holds n^2 / 2 random numbers


def edge_homophily(edge_index: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of edges (u, v) with labels[u] == labels[v]; edge_index (2, E), labels (N,)."""
    if edge_index.shape[1] == 0:
        return float("nan")
    return (labels[edge_index[0]] == labels[edge_index[1]]).double().mean().item()


def _edges(labels: np.ndarray, p_in: float, p_out: float, rng: np.random.Generator) -> np.ndarray:
    """Both directions of every SBM edge, sorted by (source, target): (2, 2 * undirected edges)."""
    n = len(labels)
    rows, cols = np.triu_indices(n, k=1)                          # every unordered pair once
    prob = np.where(labels[rows] == labels[cols], p_in, p_out)
    keep = rng.random(len(rows)) < prob
    src = np.concatenate([rows[keep], cols[keep]])
    dst = np.concatenate([cols[keep], rows[keep]])
    order = np.lexsort((dst, src))
    return np.stack([src[order], dst[order]]).astype(np.int64)


@DATASETS.register("sbm", kind="embedded", modality="graph",
                   description="stochastic block model graph: noisy Gaussian node features, "
                               "communities as classes (transductive node classification)")
def sbm(n_nodes: int = 1000, num_classes: int = 5, p_in: float = 0.03, p_out: float = 0.006,
        feature_dim: int = 64, feature_noise: float = 3.5, n_train: int | None = None,
        n_test: int = 400, seed: int = 0) -> DataBundle:
    """Generate the graph, its features and the node splits from ``seed``.

    ``n_train`` labelled training nodes (default 20 per class), ``n_test`` test nodes; the rest
    are unlabelled. The default p_in / p_out give about 6 neighbours in a node's community and 5
    outside it (edge homophily about 0.56; a random graph would give 1 / num_classes = 0.2). With
    the default features (64 dimensions, noise 3.5: the class centres are recoverable from many
    nodes but not from 100) an MLP on the 100 labelled nodes reaches about 70% test accuracy and a
    GCN about 90% (seed 0, 200 Adam steps each).
    """
    n_nodes = check_int("n_nodes", n_nodes, 2, MAX_NODES)
    num_classes = check_int("num_classes", num_classes, 2, n_nodes,
                            why=f" (at most n_nodes={n_nodes})")
    p_in, p_out = check_float("p_in", p_in, 0.0, 1.0), check_float("p_out", p_out, 0.0, 1.0)
    feature_dim = check_int("feature_dim", feature_dim, 1)
    feature_noise = check_float("feature_noise", feature_noise, 0.0, float("inf"))
    if n_train is None:
        n_train = 20 * num_classes
    n_train = check_int("n_train", n_train, num_classes, n_nodes - 1,
                        why=f" (one labelled node per class at least, and fewer than n_nodes={n_nodes})")
    n_test = check_int("n_test", n_test, 1, n_nodes - n_train,
                       why=f" (n_train={n_train} of the {n_nodes} nodes are taken)")
    check_int("seed", seed, low=0)

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_nodes) % num_classes)          # balanced communities
    edge_index = _edges(labels, p_in, p_out, rng)
    centres = rng.normal(size=(num_classes, feature_dim))               # (C, F)
    x = centres[labels] + feature_noise * rng.normal(size=(n_nodes, feature_dim))
    x = (x - x.mean(0)) / x.std(0).clip(min=1e-8)                       # standardised per dimension
    features = torch.from_numpy(x.astype(np.float32))                   # (N, F)
    y = torch.from_numpy(labels.astype(np.int64))

    # splits: labelled training nodes, then test nodes among the rest; both stratified
    train_nodes = stratified_subset(labels, n_train, seed + 1)
    rest = np.setdiff1d(np.arange(n_nodes), train_nodes)
    test_nodes = np.sort(rest[stratified_subset(labels[rest], n_test, seed + 2)])
    unlabelled = np.setdiff1d(rest, test_nodes)

    def split(nodes: np.ndarray) -> Split:
        index = torch.from_numpy(nodes.astype(np.int64))
        return Split(features[index].clone(), y[index], {"node": index})

    edges = torch.from_numpy(edge_index)
    return DataBundle(
        name="sbm", train=split(train_nodes), test=split(test_nodes), num_classes=num_classes,
        class_names=[f"community {c}" for c in range(num_classes)], input_shape=(feature_dim,),
        meta={"graph": {"edge_index": edges, "features": features, "num_nodes": n_nodes},
              "unlabelled": torch.from_numpy(unlabelled.astype(np.int64)),
              "homophily": edge_homophily(edges, y),
              "n_train": n_train, "seed": seed})


@torch.no_grad()
def distillation_view(bundle: DataBundle, teacher: torch.nn.Module, batch_size: int = 256) -> DataBundle:
    """GLNN's training set: the labelled nodes and the unlabelled ones, on which the student
    learns the teacher's soft labels (Zhang et al. 2022, sec. 3: L_teacher over all nodes V).

    The unlabelled nodes carry the teacher's predicted class as their label (their true label is
    never read), and extras ``"labelled"`` (bool) says which labels are real. Train a student on
    it with ``task_weight=0`` (GLNN's lambda = 0, the reference code's default) and the labels
    only feed the training-accuracy telemetry; with lambda > 0 the unlabelled nodes' task loss
    would use the teacher's hard labels. The test split is the bundle's, unseen by the student.
    """
    from workbench.api import fingerprint  # here: workbench.api imports the data package

    graph = bundle.meta["graph"]
    nodes = bundle.meta["unlabelled"]
    x = graph["features"][nodes]
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    try:
        predicted = torch.cat([teacher(x[i:i + batch_size].to(device)).argmax(1).cpu()
                               for i in range(0, len(nodes), batch_size)])
    finally:
        teacher.train(was_training)
    train = bundle.train
    labelled = torch.cat([torch.ones(len(train), dtype=torch.bool), torch.zeros(len(nodes), dtype=torch.bool)])
    view = Split(torch.cat([train.x, x]), torch.cat([train.y, predicted]),
                 {"node": torch.cat([train.extras["node"], nodes]), "labelled": labelled})
    meta = dict(bundle.meta)
    # run configs hash the load arguments: the view and its teacher make a different data set
    meta["load_args"] = {**bundle.meta.get("load_args", {}), "view": "distillation",
                         "labels_from": fingerprint(teacher)}
    return DataBundle(bundle.name, view, bundle.test, bundle.num_classes, list(bundle.class_names),
                      tuple(bundle.input_shape), meta)
