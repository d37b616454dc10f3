"""KDCL: Guo, Wang, Wu, Yu, Liang, Hu & Luo, "Online Knowledge Distillation via Collaborative
Learning", CVPR 2020.

https://openaccess.thecvf.com/content_CVPR_2020/html/Guo_Online_Knowledge_Distillation_via_Collaborative_Learning_CVPR_2020_paper.html

Peers train together; from their logits z_1..z_m a soft target z^t is built per sample, and every
peer is distilled towards it (the ensemble is a fixed target: no gradient flows through it):

    L_k = L_CE(z_k, y) + T^2 * KL(softmax(z^t / T) || softmax(z_k / T))

Two of the paper's ensembles, both free of extra parameters (``variant``):
- ``"minlogit"`` (KDCL-MinLogit, the default): subtract each peer's target-class logit from its
  logits, then take the element-wise minimum over peers,
      z^t_c = min_k (z_{k,c} - z_{k,y}),
  so the target class sits at 0 and every other class at its smallest margin among the peers:
  the ensemble is at least as confident in the true class as any peer, and keeps their ranks.
- ``"naive"`` (KDCL-Naive): per sample, the logits of the peer with the lowest cross-entropy.
(The paper's KDCL-Linear and KDCL-General fit weights on held-out data; not implemented here.)
The paper also feeds each peer a differently augmented view of the image; here all peers see the
same batch. The distillation term is any logit method (default KD at T = 2, weight 1), since the
ensemble has logits and no features. ``extra_metrics``: ``peer{k}_acc`` and ``ensemble_acc``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import SCHEMES
from ..taps import Outputs
from ._cohort import Cohort

VARIANTS = ("minlogit", "naive")


def min_logit_ensemble(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KDCL-MinLogit: z^t_c = min_k (z_{k,c} - z_{k,y}). logits (m, B, K), labels (B,) -> (B, K)."""
    target = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))   # (m, B, 1)
    return (logits - target).min(0).values


def naive_ensemble(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KDCL-Naive: each sample's logits from the peer with the lowest cross-entropy. -> (B, K)."""
    losses = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits])  # (m, B)
    best = losses.argmin(0)                                                                # (B,)
    return logits[best, torch.arange(labels.shape[0], device=labels.device)]


@SCHEMES.register("kdcl", category="online", paper="Online Knowledge Distillation via Collaborative "
                  "Learning", venue="CVPR", year=2020,
                  link="https://openaccess.thecvf.com/content_CVPR_2020/html/Guo_Online_Knowledge_"
                       "Distillation_via_Collaborative_Learning_CVPR_2020_paper.html",
                  notebook="20_schemes")
class KDCL(Cohort):
    """Collaborative learning: every peer distils from an ensemble target of the cohort's logits.

    ``peers``: cohort size (default 2) or the list of the other peers; ``variant``: ``"minlogit"``
    (default) or ``"naive"``.
    """

    name = "kdcl"
    logit_teacher = True
    default_methods = {"kd": {"temperature": 2.0, "weight": 1.0}}

    def __init__(self, peers: "int | list" = 2, variant: str = "minlogit"):
        super().__init__(peers)
        if variant not in VARIANTS:
            raise ValueError(f"kdcl: variant={variant!r}; choose one of {', '.join(VARIANTS)}")
        self.variant = variant

    def ensemble(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The soft target's logits (B, K) from the peers' (m, B, K), detached."""
        build = min_logit_ensemble if self.variant == "minlogit" else naive_ensemble
        return build(logits.detach().float(), labels)

    def method_teacher(self, outs, j, batch):
        return Outputs(self.ensemble(torch.stack([o.logits for o in outs]), batch.y))

    def step(self, batch):
        outs = [record(batch.x) for record in self.peer_taps]
        target = self.method_teacher(outs, None, batch)
        loss, terms = 0.0, {}
        for k, out in enumerate(outs):
            ce = F.cross_entropy(out.logits, batch.y)
            distill, pair_terms = self.method_terms(out, target, batch, prefix=f"peer{k}.")
            loss = loss + self.run.active_task_weight * ce + distill
            terms.update({f"peer{k}.ce": ce, **pair_terms})
        return loss, terms, outs[0].logits

    def describe(self):
        return {**super().describe(), "variant": self.variant}
