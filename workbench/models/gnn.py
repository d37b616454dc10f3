"""Graph neural networks for transductive node classification: GCN, GAT and GraphSAGE.

- ``gcn``: Kipf & Welling, "Semi-Supervised Classification with Graph Convolutional Networks",
  ICLR 2017, https://arxiv.org/abs/1609.02907. H^{l+1} = sigma(D~^{-1/2} A~ D~^{-1/2} H^l W^l),
  A~ = A + I; two layers, dropout 0.5 (the paper's Cora setting; hidden 64 here instead of 16).
- ``gat``: Velickovic et al., "Graph Attention Networks", ICLR 2018, https://arxiv.org/abs/1710.10903.
  alpha_ij = softmax_{j in N(i) + i} LeakyReLU_0.2(a^T [W h_i || W h_j]), h'_i = ||_k sigma(sum_j
  alpha^k_ij W^k h_j); the paper's Cora setting: 8 heads of 8 features (ELU, concatenated), one
  output head, dropout 0.6 on every layer's input and on the attention coefficients.
- ``sage``: Hamilton, Ying & Leskovec, "Inductive Representation Learning on Large Graphs",
  NeurIPS 2017, https://arxiv.org/abs/1706.02216, mean aggregator: h'_i = sigma(W [h_i ||
  mean_{j in N(i)} h_j]) (full neighbourhoods, no sampling; GLNN's default teacher).

The engine calls ``model(x)`` with a batch's node FEATURE rows only. A GNN here is therefore built
with its graph: ``graph={"name": "sbm", **load arguments}`` (JSON-serialisable, so it goes into the
run config); the model rebuilds the graph with ``workbench.data.load`` (deterministic) and keeps
the edges and the full feature matrix as buffers (not in the ``state_dict``: the spec rebuilds
them). ``forward(x)`` finds each row's node by exact lookup (a hash of the row's float bits, then
an equality check; a row that is no node of the graph raises ValueError: the models are
transductive), propagates over the WHOLE graph and returns the batch nodes' logits (B, C).

Taps, as the zoo declares them: ``stage1``.. (each hidden layer's output at the batch's nodes,
(B, D)) and ``embedding`` (the aggregated vector that the final ``classifier`` Linear maps to the
logits: logits = classifier(embedding), as in every zoo model). The last GCN layer
Â H W + b = (Â H) W + b and the single-head GAT output layer sum_j alpha_ij W h_j + b =
W (sum_j alpha_ij h_j) + b are written that way, so their propagated input is the embedding.
:meth:`GraphModel.macs` counts the multiply-accumulates of one forward, graph propagation included.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.registry import MODELS

_PRIME = 2_147_483_647          # 2^31 - 1: row hashes are sums of products below 2^62


def _load_graph(graph: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(edge_index (2, E), features (N, F)) of the data set named by ``graph``."""
    from workbench import data  # here: the data package imports workbench.api, which imports models

    if graph is None:
        raise TypeError("a GNN is built with its graph: graph={'name': 'sbm', ...the data set's "
                        "load arguments...}, e.g. wb.models.build('gcn', num_classes=5, "
                        "in_channels=32, graph={'name': 'sbm', 'seed': 0})")
    if isinstance(graph, str):
        graph = {"name": graph}
    if not isinstance(graph, dict) or "name" not in graph:
        raise TypeError("graph must be a data set name or a dict of its load arguments with a "
                        f"'name', e.g. {{'name': 'sbm', 'seed': 0}}; got {graph!r}")
    args = {k: v for k, v in graph.items() if k != "name"}
    bundle = data.load(graph["name"], **args)
    if "graph" not in bundle.meta:
        raise ValueError(f"data set {graph['name']!r} has no graph (meta['graph']); a GNN needs one")
    return bundle.meta["graph"]["edge_index"], bundle.meta["graph"]["features"]


def propagate(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
              weight: torch.Tensor | None = None, num_nodes: int | None = None) -> torch.Tensor:
    """out_i = sum over edges (j -> i) of weight_ji * h_j: (N, D) -> (num_nodes, D)."""
    messages = h[src] if weight is None else h[src] * weight.unsqueeze(-1)      # (E, D)
    out = h.new_zeros((num_nodes or h.shape[0],) + tuple(h.shape[1:]))
    return out.index_add_(0, dst, messages)


def edge_softmax(scores: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Softmax of edge scores (E, H) over the edges that enter the same node: (E, H)."""
    index = dst.unsqueeze(1).expand_as(scores)
    peak = scores.new_full((num_nodes, scores.shape[1]), float("-inf"))
    peak = peak.scatter_reduce(0, index, scores.detach(), "amax")              # (N, H)
    exp = (scores - peak[dst]).exp()                                          # (E, H)
    total = scores.new_zeros((num_nodes, scores.shape[1])).index_add_(0, dst, exp)
    return exp / total[dst]


class GraphModel(nn.Module):
    """What the three GNNs share: the graph as buffers, node lookup by feature row, taps, MACs."""

    family = "gnn"
    self_loops = True     # does the propagation include each node itself (A + I)?

    def __init__(self, num_classes: int, in_channels: int, graph: Any, hidden: int, num_layers: int,
                 dropout: float):
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1 (propagation steps), got {num_layers!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        edge_index, features = _load_graph(graph)
        if features.shape[1] != in_channels:
            raise ValueError(f"the graph's node features have {features.shape[1]} dimensions but "
                             f"in_channels={in_channels}; build the model with in_channels="
                             f"{features.shape[1]}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.hidden, self.num_layers, self.dropout = hidden, num_layers, dropout
        num_nodes = features.shape[0]
        self.num_nodes = num_nodes
        src, dst = edge_index
        if self.self_loops:
            loops = torch.arange(num_nodes)
            src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
        # buffers follow .to(device) but stay out of the state_dict: the spec rebuilds them
        self.register_buffer("features", features.clone(), persistent=False)      # (N, F)
        self.register_buffer("edge_index", edge_index.clone(), persistent=False)  # (2, E), no loops
        self.register_buffer("src", src, persistent=False)                        # (E',) with loops
        self.register_buffer("dst", dst, persistent=False)
        # exact row lookup: two modular hashes of each row's float bits, one sorted key per node
        weights = torch.randint(1, _PRIME, (2, in_channels), generator=torch.Generator().manual_seed(0))
        self.register_buffer("hash_weights", weights, persistent=False)           # (2, F)
        keys = self._row_keys(self.features)
        sorted_keys, order = keys.sort()
        if (sorted_keys[1:] == sorted_keys[:-1]).any():
            raise ValueError("two nodes of the graph have identical feature rows; a node cannot be "
                             "found from its features")
        self.register_buffer("sorted_keys", sorted_keys, persistent=False)
        self.register_buffer("key_order", order, persistent=False)
        self.preact_taps: dict[str, str] = {}
        self.attention_taps: dict[str, str] = {}

    def _declare_taps(self, stages: int) -> None:
        # identity modules called on the batch's rows of each layer's whole-graph output, so that
        # forward hooks (taps) record (B, D) tensors of the batch's nodes
        self.stage_rows = nn.ModuleList([nn.Identity() for _ in range(stages)])
        self.embedding_rows = nn.Identity()
        self.taps = {f"stage{i + 1}": f"stage_rows.{i}" for i in range(stages)}
        self.taps["embedding"] = "embedding_rows"

    def _row_keys(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) float rows -> (B,) int64 keys from their exact bits (equal rows, equal keys)."""
        bits = x.contiguous().float().view(torch.int32).long() & 0xFFFFFFFF        # (B, F) in [0, 2^32)
        bits = bits % _PRIME
        first = (bits * self.hash_weights[0]).remainder(_PRIME).sum(1).remainder(_PRIME)
        second = (bits * self.hash_weights[1]).remainder(_PRIME).sum(1).remainder(_PRIME)
        return first * _PRIME + second

    def node_index(self, x: torch.Tensor) -> torch.Tensor:
        """The node of each feature row: (B, F) -> (B,) int64; raise if a row is no node's."""
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} takes node feature rows (B, {self.in_channels}), "
                             f"got shape {tuple(x.shape)}")
        keys = self._row_keys(x)
        position = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.num_nodes - 1)
        nodes = self.key_order[position]
        found = (self.sorted_keys[position] == keys) & (self.features[nodes] == x.float()).all(1)
        if not bool(found.all()):  # one host sync per forward: a wrong row must not pass silently
            missing = int((~found).nonzero()[0, 0])
            raise ValueError(f"row {missing} of the batch is not a node of {type(self).__name__}'s "
                             "graph: GNNs here are transductive and take the feature rows of their "
                             "graph's nodes (build the model with graph= the data set's load arguments)")
        return nodes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = self.node_index(x)                                   # (B,)
        return self.classifier(self.embedding_rows(self.embed(nodes)))  # (B, num_classes)

    def embed(self, nodes: torch.Tensor) -> torch.Tensor:
        """The embedding (B, D) of ``nodes``; records the stage taps on the way."""
        raise NotImplementedError

    # -- cost ---------------------------------------------------------------------------------
    def receptive_fields(self, nodes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Bool masks S_0 .. S_K (K = num_layers): S_K = ``nodes`` (all when None), S_{k-1} =
        S_k plus the in-neighbours of S_k: layer k reads S_{k-1} and writes S_k."""
        mask = torch.ones(self.num_nodes, dtype=torch.bool, device=self.src.device)
        if nodes is not None:
            mask = torch.zeros_like(mask)
            mask[nodes] = True
        fields = [mask]
        src, dst = self.edge_index
        for _ in range(self.num_layers):
            grown = fields[0].clone()
            grown[src[fields[0][dst]]] = True
            fields.insert(0, grown)
        return fields

    def _edges_into(self, mask: torch.Tensor, with_loops: bool = True) -> int:
        src, dst = (self.src, self.dst) if with_loops else self.edge_index
        return int(mask[dst].sum())

    def macs(self, nodes: torch.Tensor | None = None) -> int:
        """Multiply-accumulates to classify ``nodes`` (default: every node), counting only the
        nodes and edges in their receptive field: linear layers as nodes x in x out, a propagation
        as edges x features, attention scores as nodes x heads x features."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"nodes={self.num_nodes}, edges={self.edge_index.shape[1]}"


class GCN(GraphModel):
    """Kipf & Welling's GCN: (num_layers - 1) hidden graph convolutions of width ``hidden``, then
    the output convolution Â H W + b, written classifier(Â H) so that Â H is the embedding."""

    def __init__(self, num_classes: int = 10, in_channels: int = 32, graph: Any = None,
                 hidden: int = 64, num_layers: int = 2, dropout: float = 0.5):
        super().__init__(num_classes, in_channels, graph, hidden, num_layers, dropout)
        degree = torch.zeros(self.num_nodes).index_add_(0, self.dst, torch.ones(len(self.dst)))
        norm = degree.rsqrt()
        self.register_buffer("edge_weight", norm[self.src] * norm[self.dst], persistent=False)
        widths = [in_channels] + [hidden] * (num_layers - 1)
        # bias after the propagation, as Kipf & Welling: Â (H W) + b
        self.weights = nn.ModuleList([nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(b)) for b in widths[1:]])
        self.classifier = nn.Linear(widths[-1], num_classes)
        self._declare_taps(num_layers - 1)

    def embed(self, nodes):
        h = self.features                                                         # (N, F)
        for i, (linear, bias) in enumerate(zip(self.weights, self.biases)):
            h = F.dropout(h, self.dropout, self.training)
            h = F.relu(propagate(linear(h), self.src, self.dst, self.edge_weight) + bias)  # (N, hidden)
            self.stage_rows[i](h[nodes])
        h = F.dropout(h, self.dropout, self.training)
        return propagate(h, self.src, self.dst, self.edge_weight)[nodes]           # (B, D): (Â H)_nodes

    def macs(self, nodes=None):
        fields = self.receptive_fields(nodes)
        widths = [self.in_channels] + [self.hidden] * (self.num_layers - 1)
        total = 0
        for k, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
            total += int(fields[k - 1].sum()) * a * b + self._edges_into(fields[k]) * b
        last = fields[-1]
        return total + self._edges_into(last) * widths[-1] + int(last.sum()) * widths[-1] * self.num_classes


class GAT(GraphModel):
    """Velickovic et al.'s GAT: (num_layers - 1) layers of ``heads`` attention heads of ``hidden``
    features (ELU, concatenated), then one output attention head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 32, graph: Any = None,
                 hidden: int = 8, heads: int = 8, num_layers: int = 2, dropout: float = 0.6,
                 negative_slope: float = 0.2):
        super().__init__(num_classes, in_channels, graph, hidden, num_layers, dropout)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        self.heads, self.negative_slope = heads, negative_slope
        widths = [in_channels] + [hidden * heads] * (num_layers - 1)
        self.weights = nn.ModuleList([nn.Linear(a, hidden * heads, bias=False) for a in widths[:-1]])
        self.att_src = nn.ParameterList([nn.Parameter(torch.empty(heads, hidden)) for _ in widths[1:]])
        self.att_dst = nn.ParameterList([nn.Parameter(torch.empty(heads, hidden)) for _ in widths[1:]])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(hidden * heads)) for _ in widths[1:]])
        self.classifier = nn.Linear(widths[-1], num_classes)
        # the output head's attention vectors act on W h, W = the classifier's weight
        self.out_att_src = nn.Parameter(torch.empty(num_classes))
        self.out_att_dst = nn.Parameter(torch.empty(num_classes))
        for p in [*self.att_src, *self.att_dst]:
            nn.init.xavier_uniform_(p)
        for p in (self.out_att_src, self.out_att_dst):
            nn.init.uniform_(p, -(6 / (1 + num_classes)) ** 0.5, (6 / (1 + num_classes)) ** 0.5)
        self._declare_taps(num_layers - 1)

    def _attention(self, score_src, score_dst):
        """alpha over each node's incoming edges (self-loops included), with dropout: (E, H)."""
        scores = F.leaky_relu(score_src[self.src] + score_dst[self.dst], self.negative_slope)
        alpha = edge_softmax(scores, self.dst, self.num_nodes)
        return F.dropout(alpha, self.dropout, self.training)

    def embed(self, nodes):
        h = self.features
        for i, linear in enumerate(self.weights):
            h = F.dropout(h, self.dropout, self.training)
            wh = linear(h).view(-1, self.heads, self.hidden)                          # (N, H, F')
            alpha = self._attention((wh * self.att_src[i]).sum(-1), (wh * self.att_dst[i]).sum(-1))
            h = propagate(wh, self.src, self.dst, alpha, self.num_nodes)              # (N, H, F')
            h = F.elu(h.flatten(1) + self.biases[i])                                  # (N, H F')
            self.stage_rows[i](h[nodes])
        h = F.dropout(h, self.dropout, self.training)
        wh = h @ self.classifier.weight.t()                                           # (N, C): W h
        alpha = self._attention((wh @ self.out_att_src).unsqueeze(1), (wh @ self.out_att_dst).unsqueeze(1))
        return propagate(h, self.src, self.dst, alpha[:, 0], self.num_nodes)[nodes]   # (B, D)

    def macs(self, nodes=None):
        fields = self.receptive_fields(nodes)
        width, total = self.in_channels, 0
        for k in range(1, self.num_layers):
            read, out = int(fields[k - 1].sum()), self.hidden * self.heads
            total += read * width * out + 2 * read * out + self._edges_into(fields[k]) * out
            width = out
        read, last = int(fields[-2].sum()), fields[-1]
        total += read * width * self.num_classes + 2 * read * self.num_classes   # scores on W h
        return total + self._edges_into(last) * width + int(last.sum()) * width * self.num_classes


class SAGE(GraphModel):
    """GraphSAGE with the mean aggregator: h'_i = ReLU(W [h_i || mean_{j in N(i)} h_j]); the output
    layer's [h_i || mean h_j] is the embedding."""

    self_loops = False

    def __init__(self, num_classes: int = 10, in_channels: int = 32, graph: Any = None,
                 hidden: int = 64, num_layers: int = 2, dropout: float = 0.5):
        super().__init__(num_classes, in_channels, graph, hidden, num_layers, dropout)
        degree = torch.zeros(self.num_nodes).index_add_(0, self.dst, torch.ones(len(self.dst)))
        self.register_buffer("edge_weight", 1.0 / degree.clamp(min=1)[self.dst], persistent=False)
        widths = [in_channels] + [hidden] * (num_layers - 1)
        self.weights = nn.ModuleList([nn.Linear(2 * a, b) for a, b in zip(widths, widths[1:])])
        self.classifier = nn.Linear(2 * widths[-1], num_classes)
        self._declare_taps(num_layers - 1)

    def _concat(self, h):
        return torch.cat([h, propagate(h, self.src, self.dst, self.edge_weight)], 1)   # (N, 2D)

    def embed(self, nodes):
        h = self.features
        for i, linear in enumerate(self.weights):
            h = F.relu(linear(self._concat(F.dropout(h, self.dropout, self.training))))
            self.stage_rows[i](h[nodes])
        h = F.dropout(h, self.dropout, self.training)
        return self._concat(h)[nodes]

    def macs(self, nodes=None):
        fields = self.receptive_fields(nodes)
        widths = [self.in_channels] + [self.hidden] * (self.num_layers - 1)
        total = 0
        for k, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
            total += self._edges_into(fields[k], False) * a + int(fields[k].sum()) * 2 * a * b
        last = fields[-1]
        return total + self._edges_into(last, False) * widths[-1] + int(last.sum()) * 2 * widths[-1] * self.num_classes


MODELS.register("gcn", family="gnn", graph=True, paper="https://arxiv.org/abs/1609.02907")(GCN)
MODELS.register("gat", family="gnn", graph=True, paper="https://arxiv.org/abs/1710.10903")(GAT)
MODELS.register("sage", family="gnn", graph=True, paper="https://arxiv.org/abs/1706.02216")(SAGE)
