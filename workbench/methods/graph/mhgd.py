"""MHGD: Lee & Song, "Graph-based Knowledge Distillation by Multi-head Attention Network",
BMVC 2019.

arXiv 1907.02226, https://arxiv.org/abs/1907.02226 (authors' TensorFlow code:
sseung0703/KD_methods_with_TF, ``nets/Relation.py``, function ``MHGD``)

The knowledge is how the teacher's embedding of a batch changes from one feature map to the next.
1. Each feature map is compressed, per sample, to one unit vector: its first right singular
   vector (SVD of the (HW x C) map, as in KD-SVD / SVP), V^l (B, C_l).
2. A multi-head attention network relates the B samples at layer l (senders, from V^l) to the B
   samples at layer l-1 (receivers, from V^{l-1}): for each head h,

       G^l_h = BN(FC_s(V^l))_h  BN(FC_r(V^{l-1}))_h^T          (B x B)

   It is trained on the teacher alone, to make the graph informative: an estimator predicts V^l
   from V^{l-1} through the graph, Vhat^l = normalise(FC(concat_h softmax(G^l_h) relu(BN(FC(V^{l-1}))))),
   with loss mean_i (1 - <Vhat^l_i, V^l_i>) (heads are dropped at random while it trains).
3. The student's graph, made by the SAME (frozen) attention network from the student's vectors,
   matches the teacher's, row by row:

       L_MHGD = sum_l sum_h KL( softmax(tanh(G^l_{S,h})) || softmax(tanh(G^l_{T,h})) )

Defaults and choices, from the reference code: 8 heads; head width (C_l + C_{l-1}) / 2; the
attention network's batch norms in inference mode (running statistics) when it builds the graphs
that are matched; the KL direction as written above (student first). Deviations, to fit a
per-batch loss: the reference trains the attention network for 40 epochs before the student and
freezes it; here it trains alongside (the ``estimator`` term: its gradients reach only the
attention network and the estimator, the teacher's vectors being fixed) while the ``graph`` term
uses its current weights detached, so the graph loss trains only the student. The reference clips
the distillation gradient to the cross-entropy's norm; here the KL is averaged over the B rows
(not summed) and summed over heads and layer pairs, with ``weight`` 1. The singular vector is
computed by power iteration on the detached C x C Gram matrix (started from the mean feature, which
fixes its sign) followed by one differentiable step v = normalise(F^T F v), the role of the
reference's custom SVD gradient. When student and teacher widths differ, a linear connector
(C_S -> C_T, built in ``setup``) maps the student's vectors to the teacher's width first.
Taps: every stage (``@stages``), consecutive pairs, aligned from the deepest; maps, token
sequences (tokens as positions) and vectors all work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Method, register_method
from ..similarity.common import as_taps, channels, channels_positions, module_key

POWER_STEPS = 20


def singular_embedding(feature: torch.Tensor) -> torch.Tensor:
    """First right singular vector of each sample's (positions x channels) matrix: (B, ...) -> (B, C).

    Sign: positive along the sample's mean feature. Gradients flow through one power step."""
    f = channels_positions(feature.float())                             # (B, C, P)
    gram = f @ f.transpose(1, 2) / f.shape[2]                          # (B, C, C)
    with torch.no_grad():
        v = F.normalize(f.mean(2), dim=1)                              # (B, C) start: the mean feature
        for _ in range(POWER_STEPS):
            v = F.normalize((gram @ v.unsqueeze(2)).squeeze(2), dim=1)
    return F.normalize((gram @ v.unsqueeze(2)).squeeze(2), dim=1)     # (B, C), unit rows


def relation_graph(sender: torch.Tensor, receiver: torch.Tensor, heads: int) -> torch.Tensor:
    """G_h = S_h R_h^T for (B, D * heads) projections laid out (B, D, heads): -> (heads, B, B)."""
    batch = sender.shape[0]
    s = sender.view(batch, -1, heads).permute(2, 0, 1)                 # (heads, B, D)
    r = receiver.view(batch, -1, heads).permute(2, 1, 0)               # (heads, D, B)
    return s @ r                                                       # (heads, B, B)


def mhgd_loss(student_graph: torch.Tensor, teacher_graph: torch.Tensor) -> torch.Tensor:
    """sum_h mean_i KL(softmax(tanh G_S[h, i]) || softmax(tanh G_T[h, i])): (heads, B, B) -> scalar."""
    log_s = F.log_softmax(torch.tanh(student_graph), dim=-1)
    log_t = F.log_softmax(torch.tanh(teacher_graph), dim=-1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)                       # (heads, B)
    return kl.sum(0).mean()


class AttentionHead(nn.Module):
    """FC + BN for senders (layer l) and receivers (layer l-1); ``frozen`` applies them with
    detached weights and running batch-norm statistics."""

    def __init__(self, sender_dim: int, receiver_dim: int, heads: int):
        super().__init__()
        self.dims, self.heads = (sender_dim, receiver_dim), heads
        width = (sender_dim + receiver_dim) // 2 * heads
        self.sender, self.sender_bn = nn.Linear(sender_dim, width), nn.BatchNorm1d(width)
        self.receiver, self.receiver_bn = nn.Linear(receiver_dim, width), nn.BatchNorm1d(width)

    @staticmethod
    def _project(x, linear, bn, frozen):
        if not frozen:
            return bn(linear(x))
        x = F.linear(x, linear.weight.detach(), linear.bias.detach())
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(),
                            training=False, eps=bn.eps)

    def forward(self, senders, receivers, frozen: bool = False):
        return relation_graph(self._project(senders, self.sender, self.sender_bn, frozen),
                              self._project(receivers, self.receiver, self.receiver_bn, frozen),
                              self.heads)                              # (heads, B, B)


class Estimator(nn.Module):
    """Predicts V^l from V^{l-1} through the graph: the attention network's training task."""

    def __init__(self, in_dim: int, out_dim: int, heads: int):
        super().__init__()
        width = (in_dim + out_dim) // 2
        self.embed, self.bn = nn.Linear(in_dim, width), nn.BatchNorm1d(width)
        self.out = nn.Linear(width * heads, out_dim)
        nn.init.zeros_(self.out.bias)

    def forward(self, previous, graph):
        heads, batch, _ = graph.shape
        weights = graph.softmax(-1)                                    # (heads, B, B)
        if self.training:   # drop about half the heads at random, as the reference's drop_head
            noise = torch.randn(heads, batch, 1, device=graph.device)
            weights = weights * (noise - noise.mean(0, keepdim=True) > 0)
        x = F.relu(self.bn(self.embed(previous)))                      # (B, D')
        mixed = (weights @ x).transpose(0, 1).reshape(batch, -1)       # (B, heads * D')
        return F.normalize(self.out(mixed), dim=-1)                    # (B, C_l)


@register_method("mhgd", category="graph", paper="Graph-based Knowledge Distillation by Multi-head "
                 "Attention Network", venue="BMVC", year=2019,
                 link="https://arxiv.org/abs/1907.02226", notebook="34_graph")
class MHGD(Method):
    """Relation graphs between consecutive layers' embeddings, made by a multi-head attention
    network trained on the teacher; terms ``graph`` (the student's loss) and ``estimator`` (the
    attention network's own loss, which reaches no student parameter)."""

    constraints = {"weight": "nonnegative", "heads": "positive"}
    min_batch_size = 2      # batch norms and in-batch graphs need two samples

    def __init__(self, heads: int = 8, weight: float = 1.0, student_taps=("@stages",),
                 teacher_taps=("@stages",)):
        super().__init__(weight=weight)
        self.heads = heads                   # validated first: a positive finite number
        if float(heads) != int(heads):
            raise ValueError(f"MHGD: heads={heads!r} must be a whole number")
        self.student_taps = as_taps(student_taps)
        self.teacher_taps = as_taps(teacher_taps)
        self.attention = nn.ModuleList()
        self.estimators = nn.ModuleList()
        self.connectors = nn.ModuleDict()

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        if len(pairs) < 2:
            raise ValueError(f"MHGD relates consecutive layers and needs at least two tap pairs; got "
                             f"student taps {self.student_taps} and teacher taps {self.teacher_taps}")
        heads = int(self.heads)
        dims = []
        for s_tap, t_tap in pairs:
            for role, tap, x in (("student", s_tap, student.features[s_tap]),
                                 ("teacher", t_tap, teacher.features[t_tap])):
                if x.dim() not in (2, 3, 4):
                    raise ValueError(f"MHGD: {role} tap {tap!r} has shape {tuple(x.shape)}; expected "
                                     "(B, C, H, W), (B, N, D) or (B, D)")
            c_s, c_t = channels(student.features[s_tap]), channels(teacher.features[t_tap])
            dims.append(c_t)
            key = module_key(s_tap)
            current = self.connectors[key] if key in self.connectors else None
            if c_s != c_t and (current is None or (current.in_features, current.out_features) != (c_s, c_t)):
                self.connectors[key] = nn.Linear(c_s, c_t, bias=False)
            elif c_s == c_t and current is not None:
                del self.connectors[key]
        wanted = [(dims[i], dims[i - 1], heads) for i in range(1, len(dims))]
        have = [(*a.dims, a.heads) for a in self.attention]
        if have != wanted:    # setup runs again on resume: trained networks of the right size stay
            self.attention = nn.ModuleList([AttentionHead(*w) for w in wanted])
            self.estimators = nn.ModuleList([Estimator(dims[i - 1], dims[i], heads)
                                             for i in range(1, len(dims))])

    def _student_vector(self, tap, feature):
        v = singular_embedding(feature)
        key = module_key(tap)
        return F.normalize(self.connectors[key](v), dim=1) if key in self.connectors else v

    def forward(self, student, teacher, batch):
        pairs = self.tap_pairs()
        with torch.autocast(device_type=student.logits.device.type, enabled=False):
            v_t = [singular_embedding(teacher.features[t].detach()) for _, t in pairs]
            v_s = [self._student_vector(s, student.features[s]) for s, _ in pairs]
            graph = estimator = v_t[0].new_zeros(())
            for i, (head, est) in enumerate(zip(self.attention, self.estimators), start=1):
                estimate = est(v_t[i - 1], head(v_t[i], v_t[i - 1]))
                estimator = estimator + (1 - (estimate * v_t[i]).sum(-1)).mean()
                graph = graph + mhgd_loss(head(v_s[i], v_s[i - 1], frozen=True),
                                          head(v_t[i], v_t[i - 1], frozen=True))
        return {"graph": graph, "estimator": estimator}
