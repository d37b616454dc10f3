"""DML: Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018.

arXiv 1706.00384, https://arxiv.org/abs/1706.00384

No pretrained teacher: a cohort of K >= 2 networks trains together, and each one learns from the
labels and from the others' predictions. For peer k with predictions p_k (eq. 10 of the paper):

    L_k = L_C(p_k, y) + 1/(K - 1) * sum_{l != k} D_KL(p_l || p_k)

The paper's D_KL is the KD loss at T = 1 (the default method here,
``{"kd": {"temperature": 1, "weight": 1}}``); any method of the sources chapter can stand in for it
(``{"at": {}}`` makes every peer match the others' attention maps), with the teaching peer's outputs
detached, so each term trains only the learning peer. All peers step together on the sum of their
losses (the paper alternates: update peer 1, recompute its predictions, update peer 2; the
simultaneous update is what most reimplementations do, and the two agree to first order).

``run.student`` is peer 0; ``extra_metrics`` gives every peer's test accuracy (``peer{k}_acc``)
and that of their averaged probabilities (``ensemble_acc``).
"""
from __future__ import annotations

import torch.nn.functional as F

from ..registry import SCHEMES
from ._cohort import Cohort


@SCHEMES.register("dml", category="online", paper="Deep Mutual Learning", venue="CVPR", year=2018,
                  link="https://arxiv.org/abs/1706.00384", notebook="20_schemes")
class DML(Cohort):
    """Deep mutual learning. ``peers``: cohort size (default 2: the student and one fresh copy of
    its architecture) or the list of the other peers (zoo names, spec dicts or modules)."""

    name = "dml"
    default_methods = {"kd": {"temperature": 1.0, "weight": 1.0}}

    def step(self, batch):
        outs = [record(batch.x) for record in self.peer_taps]
        teachers = [out.detach() for out in outs]   # a teaching peer is a fixed target
        others = len(outs) - 1
        loss, terms = 0.0, {}
        for k, out in enumerate(outs):
            ce = F.cross_entropy(out.logits, batch.y)
            terms[f"peer{k}.ce"] = ce
            loss = loss + self.run.active_task_weight * ce
            for l, teacher in enumerate(teachers):
                if l == k:
                    continue
                distill, pair_terms = self.method_terms(out, teacher, batch, prefix=f"peer{k}.")
                loss = loss + distill / others           # 1/(K-1) sum over the other peers
                for name, value in pair_terms.items():
                    terms[name] = terms.get(name, 0.0) + value / others
        return loss, terms, outs[0].logits
