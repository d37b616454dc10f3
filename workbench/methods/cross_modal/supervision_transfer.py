"""Supervision transfer: Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision
Transfer", CVPR 2016.

arXiv 1507.00448, https://arxiv.org/abs/1507.00448

A network phi trained with labels on a source modality s (RGB) supervises a network psi for a
target modality d (depth) through *paired, unlabelled* images (I_s, I_d) of the same scenes: the
target network learns to reproduce the source network's mid-level representation,

    min_{W_d}  sum_{(I_s, I_d) in U_{s,d}}  f( t(phi^{i*}(I_s; W_s)),  psi^{j*}(I_d; W_d) )

with f the L2 loss, phi^{i*} the frozen source network up to its layer i*, psi^{j*} the target
network up to its layer j*, and t a transformation that makes the two representations comparable
(the identity in the paper, whose two networks share the architecture). The learned psi is then
fine-tuned on whatever labels the target modality has, or used with the source network's upper
layers on top and no target labels at all. In the workbench the pairing is the data's
(``wb.data.load("shapes_paired")``: x = depth, extras["rgb"] = the same scene in RGB) and the
``cross_modal`` scheme shows the teacher the other modality; on an ordinary data set the method
is plain feature regression between two networks on the same inputs.

Layer: the paper transfers at pool5, the last convolutional (pooled) layer of AlexNet/VGG, the
deepest layer that is still a spatial map: mid-level enough to be shared across modalities,
semantic enough to carry the labels' supervision. The default tap is therefore ``@last``, each
model's deepest stage output (the map its classifier pools); ``student_taps`` / ``teacher_taps``
take any other taps, pooled vectors (``"embedding"``, the paper's fc-level variants) included.

Workbench choices: the squared error is averaged over the feature's elements and the batch
(``F.mse_loss``) instead of Caffe's Euclidean loss (summed over elements, halved, averaged over
the batch), so one weight fits taps of every size; the factor is a constant the weight absorbs.
Where the two taps differ in width, a 1x1 convolution (a linear map of the channels, with bias)
on the student's side is the connector t, trained with the student: putting t on the frozen
teacher's side would let it shrink the target to zero. Equal widths take the identity, as in the
paper (``connector="conv"`` asks for the 1x1 convolution anyway). Maps of different spatial size
are average-pooled to the smaller, token maps (ViT) are laid out as maps, and pooled vectors
(B, D) are 1x1 maps. ``weight`` 10: with the task's cross-entropy beside it, the feature term's
gradients (divided by the feature's size) would otherwise be negligible; trained with this term
alone (the paper's pre-training, ``cross_modal`` scheme with ``labels_per_class=0``) the weight
only scales the learning rate.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import Method, register_method
from ..feature._maps import as_map, check_pairs, pool_to_common, tap_tuple
from ..feature.fitnet import fitnet_loss

CONNECTORS = ("auto", "conv")


#: f, the L2 loss between t(psi(I_d)) and phi(I_s): the mean squared error of FitNets' hint loss
supervision_transfer_loss = fitnet_loss


def as_feature_map(feature: torch.Tensor, tap: str) -> torch.Tensor:
    """A tap as a map (B, C, H, W): pooled vectors (B, D) become (B, D, 1, 1); tokens a grid."""
    if feature.dim() == 2:
        return feature[:, :, None, None]
    return as_map(feature, tap)


@register_method("supervision_transfer", category="cross_modal",
                 paper="Cross Modal Distillation for Supervision Transfer", venue="CVPR", year=2016,
                 link="https://arxiv.org/abs/1507.00448", notebook="33_cross_modal")
class SupervisionTransfer(Method):
    """L2 regression of the student's mid-level feature onto the (frozen) teacher's, usually on
    paired images of another modality (``cross_modal`` scheme). ``connector``: ``"auto"``
    (identity where widths match, else a 1x1 conv) or ``"conv"`` (always a 1x1 conv)."""

    constraints = {"weight": "nonnegative"}
    student_taps = ("@last",)
    teacher_taps = ("@last",)

    def __init__(self, weight: float = 10.0, connector: str = "auto", student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        if connector not in CONNECTORS:
            raise ValueError(f"supervision_transfer: connector={connector!r} is not valid; "
                             f"use one of {', '.join(map(repr, CONNECTORS))}")
        self.connector = connector
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)

    def setup(self, student, teacher):
        pairs = self.tap_pairs()
        check_pairs("supervision_transfer", pairs)
        connectors = []
        for s_tap, t_tap in pairs:
            f_s = as_feature_map(student.features[s_tap], s_tap)
            f_t = as_feature_map(teacher.features[t_tap], t_tap)
            if self.connector == "auto" and f_s.shape[1] == f_t.shape[1]:
                connectors.append(nn.Identity())
            else:  # t: a linear map of the student's channels onto the teacher's, per position
                connectors.append(nn.Conv2d(f_s.shape[1], f_t.shape[1], kernel_size=1))
        self.connectors = nn.ModuleList(connectors)

    def forward(self, student, teacher, batch):
        total = 0.0
        for (s_tap, t_tap), connector in zip(self.tap_pairs(), self.connectors):
            # the teacher's feature is a fixed target; pool first (the 1x1 conv commutes with it)
            f_s, f_t = pool_to_common(as_feature_map(student.features[s_tap], s_tap),
                                      as_feature_map(teacher.features[t_tap], t_tap).detach())
            total = total + supervision_transfer_loss(connector(f_s), f_t)
        return {"transfer": total}
