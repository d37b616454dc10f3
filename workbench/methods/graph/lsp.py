"""LSP: Yang, Qiu, Song, Tao & Wang, "Distilling Knowledge from Graph Convolutional Networks",
CVPR 2020.

arXiv 2003.10477, https://arxiv.org/abs/2003.10477 (authors' code: ihollywhy/DistillGCN.PyTorch)

Local structure preserving: for node i with neighbours N(i) and features z, the local structure
is a distribution over the neighbours,

    S_ij = exp(SIM(z_i, z_j)) / sum_{k in N(i)} exp(SIM(z_i, z_k)),      j in N(i)

computed on the teacher's and on the student's features (their widths may differ: only the
distributions are compared), and the student matches the teacher's, averaged over the nodes:

    L_LSP = 1/N sum_i KL(S_i^T || S_i^S)        (total loss: L_CE + lambda L_LSP, lambda = 1)

SIM is a kernel. The authors' code (``local_structure.py``, ``auxilary_loss.py``) uses
SIM(z_i, z_j) = exp(-||z_i - z_j||_1 / 100), a softmax over each node's incoming edges, and the KL
direction above (teacher first), mean over nodes; those are the defaults here (``bandwidth`` is
the 100). ``kernel="rbf"`` gives exp(-||z_i - z_j||_2^2 / (2 bandwidth^2)) instead, one of the
kernels the paper compares.

The neighbourhood (a choice of this implementation, since the engine's batches are node subsets):
- with a graph (``neighbourhood="graph"``, or ``"auto"`` when the teacher or the student is a GNN
  of :mod:`workbench.models.gnn`): the graph's edges between the batch's nodes (nodes from the
  batch's ``"node"`` extras, else looked up from the feature rows), plus each node itself, as the
  GCN's A + I; a node with no neighbour in the batch has a one-point distribution and adds 0;
- without one (CNN pairs, ``"knn"``): each sample and its ``k`` nearest neighbours in the
  teacher's feature space within the batch (Euclidean, the teacher's features detached).
Taps: the embedding (``@embedding``, (B, D)) of both networks by default; maps and token sequences
are flattened per sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, register_method
from ..similarity.common import as_taps

KERNELS = ("laplacian", "rbf")
NEIGHBOURHOODS = ("auto", "graph", "knn")


def similarity(features: torch.Tensor, kernel: str, bandwidth: float) -> torch.Tensor:
    """SIM(z_i, z_j) for every pair of the batch: (B, ...) -> (B, B)."""
    z = features.flatten(1).float()                                    # (B, D)
    if kernel == "laplacian":
        return torch.exp(-torch.cdist(z, z, p=1) / bandwidth)
    squared = (z.unsqueeze(1) - z.unsqueeze(0)).pow(2).sum(-1)         # (B, B), exact zeros on the diagonal
    return torch.exp(-squared / (2 * bandwidth ** 2))


def local_structure(features: torch.Tensor, neighbours: torch.Tensor, kernel: str = "laplacian",
                    bandwidth: float = 100.0) -> torch.Tensor:
    """Log of S_ij, the softmax of SIM over each row's neighbours: (B, B); -inf off the neighbourhood."""
    scores = similarity(features, kernel, bandwidth).masked_fill(~neighbours, float("-inf"))
    return F.log_softmax(scores, dim=1)


def lsp_loss(student: torch.Tensor, teacher: torch.Tensor, neighbours: torch.Tensor,
             kernel: str = "laplacian", bandwidth: float = 100.0) -> torch.Tensor:
    """mean_i KL(S_i^T || S_i^S) over the (B, B) bool neighbourhood (every row holds itself)."""
    log_s = local_structure(student, neighbours, kernel, bandwidth)
    log_t = local_structure(teacher, neighbours, kernel, bandwidth)
    kl = torch.where(neighbours, log_t.exp() * (log_t - log_s), torch.zeros_like(log_t))
    return kl.sum(1).mean()


def knn_neighbours(features: torch.Tensor, k: int) -> torch.Tensor:
    """Each sample and its k nearest others (Euclidean): (B, ...) -> (B, B) bool, diagonal set."""
    z = features.flatten(1).float()
    batch = z.shape[0]
    distance = torch.cdist(z, z).fill_diagonal_(float("-inf"))         # self first
    nearest = distance.topk(min(k, batch - 1) + 1, dim=1, largest=False).indices   # (B, k + 1)
    return torch.zeros(batch, batch, dtype=torch.bool, device=z.device).scatter_(1, nearest, True)


def graph_neighbours(nodes: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """neighbours[a, b]: edge (nodes[b] -> nodes[a]) in the graph, or a == b: (B, B) bool.

    No host sync: edges with an end outside the batch are scattered into a spare slot."""
    batch = nodes.shape[0]
    position = torch.full((num_nodes,), -1, dtype=torch.long, device=nodes.device)
    position[nodes] = torch.arange(batch, device=nodes.device)
    src, dst = position[edge_index[0]], position[edge_index[1]]       # (E,), -1 outside the batch
    inside = (src >= 0) & (dst >= 0)
    slot = torch.where(inside, dst * batch + src, torch.full_like(src, batch * batch))
    flat = torch.zeros(batch * batch + 1, dtype=torch.bool, device=nodes.device)
    flat[slot] = True
    return flat[:-1].view(batch, batch) | torch.eye(batch, dtype=torch.bool, device=nodes.device)


@register_method("lsp", category="graph", paper="Distilling Knowledge from Graph Convolutional "
                 "Networks", venue="CVPR", year=2020, link="https://arxiv.org/abs/2003.10477",
                 notebook="34_graph")
class LSP(Method):
    """Local structure preserving: per-node distributions over its neighbours, teacher vs student."""

    constraints = {"weight": "nonnegative", "bandwidth": "positive", "k": "positive"}
    min_batch_size = 2

    def __init__(self, bandwidth: float = 100.0, k: int = 8, weight: float = 1.0,
                 kernel: str = "laplacian", neighbourhood: str = "auto",
                 student_taps=("@embedding",), teacher_taps=("@embedding",)):
        super().__init__(weight=weight)
        if kernel not in KERNELS:
            raise ValueError(f"LSP: kernel={kernel!r} is not one of {KERNELS}")
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"LSP: neighbourhood={neighbourhood!r} is not one of {NEIGHBOURHOODS}")
        self.bandwidth, self.k = bandwidth, k      # validated first: positive finite numbers
        if float(k) != int(k):
            raise ValueError(f"LSP: k={k!r} must be a whole number")
        self.kernel, self.neighbourhood = kernel, neighbourhood
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)
        object.__setattr__(self, "_graph_model", None)

    def bind(self, student_model, teacher_model):
        super().bind(student_model, teacher_model)
        # the graph lives on a GNN of the pair (read at each step: .to(device) replaces buffers)
        graph_model = next((m for m in (teacher_model, student_model)
                            if m is not None and hasattr(m, "edge_index") and hasattr(m, "node_index")),
                           None)
        if self.neighbourhood == "graph" and graph_model is None:
            raise ValueError("LSP: neighbourhood='graph' needs a GNN teacher or student (a model of "
                             "workbench.models.gnn, which holds its graph); use 'knn' otherwise")
        object.__setattr__(self, "_graph_model", graph_model)

    def neighbours(self, teacher_features: torch.Tensor, batch) -> torch.Tensor:
        graph = self._graph_model
        if graph is not None and self.neighbourhood != "knn":
            extras = getattr(batch, "extras", {}) or {}
            nodes = extras["node"] if "node" in extras else graph.node_index(batch.x)
            return graph_neighbours(nodes.to(graph.edge_index.device), graph.edge_index, graph.num_nodes)
        return knn_neighbours(teacher_features.detach(), int(self.k))

    def forward(self, student, teacher, batch):
        total = 0.0
        for s_tap, t_tap in self.tap_pairs():
            f_s, f_t = student.features[s_tap], teacher.features[t_tap].detach()
            with torch.autocast(device_type=f_s.device.type, enabled=False):
                total = total + lsp_loss(f_s, f_t, self.neighbours(f_t, batch), self.kernel, self.bandwidth)
        return {"local_structure": total}
