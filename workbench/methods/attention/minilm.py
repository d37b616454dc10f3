"""MiniLM: Wang, Wei, Dong, Bao, Yang & Zhou, "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020.

arXiv 2002.10957, https://arxiv.org/abs/2002.10957

The student mimics the self-attention module of the teacher's LAST transformer layer (L for the
teacher, M for the student), with two terms (eq. 5-8 of the paper), for attention heads a = 1..A_h
and query positions t = 1..|x|:

    L_AT = 1 / (A_h |x|) sum_a sum_t KL(A^T_{L,a,t} || A^S_{M,a,t})        A = softmax(Q K^T / sqrt(d_k))
    L_VR = 1 / (A_h |x|) sum_a sum_t KL(VR^T_{L,a,t} || VR^S_{M,a,t})      VR = softmax(V V^T / sqrt(d_k))
    L = L_AT + L_VR

Only the last layer is distilled, so the student may have any depth, and the value relation is
N x N whatever the hidden size, so the widths may differ. The attention distributions come from
the models' attention taps (``model.attention_taps``, (B, heads, N, N) probabilities). The values
are read from the same block's fused query-key-value projection (``blocks.i.attn.qkv`` of
``vit_tiny``: a Linear whose output (B, N, 3D) is [Q | K | V], each D = heads x d_k, head by head);
tapping that Linear gives V exactly as the block computes it, with no change to the model.

MiniLM needs the same number of heads in both (a head of one is matched to a head of the other).
With different head counts this method follows MiniLMv2 (Wang et al., Findings of ACL 2021,
https://arxiv.org/abs/2012.15828): the concatenated queries, keys and values of each model are split
into the same number R of "relation heads" (d_r = D / R), and the relations
softmax(Q_r K_r^T / sqrt(d_r)) and softmax(V_r V_r^T / sqrt(d_r)) are matched head by head.
``relation_heads=0`` (default) uses the attention heads (MiniLM) when the counts agree and the
student's head count otherwise.

A model without attention taps (every CNN of the zoo) cannot be distilled this way: ``bind`` raises
an error naming the model. The registry metadata says so (``needs="attention"``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...taps import TapError, declared_attention_taps, resolve_tap
from ..base import Method, register_method
from ..feature._maps import tap_tuple

#: the default tap: the model's last attention tap (``attention_taps`` are ordered shallow to deep)
LAST_ATTENTION = "@last_attention"


def relation_kl(log_teacher: torch.Tensor, log_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of row distributions, averaged over every row of every head and
    sample. Log-probabilities (B, heads, N, N) -> scalar, in float32 (under bf16 autocast too)."""
    log_teacher, log_student = log_teacher.float(), log_student.float()
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)   # (B, heads, N)
    return kl.mean()


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    """log of probabilities from an attention tap; a probability that underflowed to 0 gets the
    dtype's smallest normal number, so 0 * log 0 counts as 0 and log p_student stays finite."""
    probs = probs.float()
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, heads, N, D / heads), heads taken as contiguous slices of D."""
    batch, tokens, dim = x.shape
    return x.view(batch, tokens, heads, dim // heads).transpose(1, 2)


def scaled_relation(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax(A_r B_r^T / sqrt(d_r)) per relation head r: (B, N, D) x2 -> (B, heads, N, N)."""
    a, b = split_heads(a.float(), heads), split_heads(b.float(), heads)
    with torch.autocast(a.device.type, enabled=False):   # float32 relations under bf16 autocast
        return F.log_softmax(a @ b.transpose(-2, -1) / math.sqrt(a.shape[-1]), dim=-1)


def minilm_losses(student_qkv: torch.Tensor, teacher_qkv: torch.Tensor, relation_heads: int,
                  student_attention: torch.Tensor | None = None,
                  teacher_attention: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_AT, L_VR) from the fused [Q | K | V] projections (B, N, 3D) of the two last layers.

    With both attention probability tensors (B, A_h, N, N) given, L_AT compares them (MiniLM);
    without them it compares softmax(Q_r K_r^T / sqrt(d_r)) over ``relation_heads`` heads (MiniLMv2).
    L_VR always uses ``relation_heads`` heads of the values.
    """
    q_s, k_s, v_s = student_qkv.chunk(3, dim=-1)                     # (B, N, D_s) each
    q_t, k_t, v_t = teacher_qkv.chunk(3, dim=-1)                     # (B, N, D_t) each
    if student_attention is not None and teacher_attention is not None:
        attention = relation_kl(log_probs(teacher_attention), log_probs(student_attention))
    else:
        attention = relation_kl(scaled_relation(q_t, k_t, relation_heads),
                                scaled_relation(q_s, k_s, relation_heads))
    value = relation_kl(scaled_relation(v_t, v_t, relation_heads), scaled_relation(v_s, v_s, relation_heads))
    return attention, value


def _attention_and_qkv(model: nn.Module, name: str, role: str) -> tuple[str, str]:
    """(attention tap name, module path of the same block's fused qkv Linear) for ``name``."""
    declared = declared_attention_taps(model)
    if name == LAST_ATTENTION:
        if not declared:
            raise TapError(
                f"minilm: the {role} {type(model).__name__} declares no attention taps "
                "(model.attention_taps is empty). MiniLM distils the self-attention distributions and "
                "value relations of a transformer's last layer, so both models must be transformers "
                "with attention taps, e.g. wb.models.build('vit_tiny', ...); for CNNs use attention "
                "transfer ('at', which works on feature maps) instead.")
        name = list(declared)[-1]
    path, _, is_attention = resolve_tap(model, name)    # an unknown name raises TapError here
    if not is_attention:
        raise TapError(f"minilm: {role} tap {name!r} is not an attention tap of "
                       f"{type(model).__name__}; its attention taps: {', '.join(declared) or '(none)'}")
    qkv = f"{path.rpartition('.')[0]}.qkv".lstrip(".")
    linear = dict(model.named_modules()).get(qkv)
    if not isinstance(linear, nn.Linear) or linear.out_features != 3 * linear.in_features:
        raise TapError(f"minilm: {role} attention tap {name!r} ({path}) has no fused query-key-value "
                       f"projection at {qkv!r} (an nn.Linear from D to 3D); MiniLM reads the values there")
    return name, qkv


@register_method("minilm", category="attention", paper="MiniLM: Deep Self-Attention Distillation for "
                 "Task-Agnostic Compression of Pre-Trained Transformers", venue="NeurIPS", year=2020,
                 link="https://arxiv.org/abs/2002.10957", notebook="30_attention", needs="attention")
class MiniLM(Method):
    """Last-layer self-attention distillation: terms ``attention`` (L_AT) and ``value`` (L_VR).

    ``student_taps`` / ``teacher_taps``: one attention tap each (default: the last one,
    ``"@last_attention"``; e.g. ``("block0",)`` for the first block). After binding they hold the
    attention tap and the same block's qkv module path. ``relation_heads``: 0 for the attention
    heads (equal head counts) or the student's head count (different counts); any R > 0 that
    divides both widths forces MiniLMv2 relations with R heads.
    """

    constraints = {"weight": "nonnegative", "relation_heads": "nonnegative"}
    student_taps = (LAST_ATTENTION,)
    teacher_taps = (LAST_ATTENTION,)

    def __init__(self, relation_heads: int = 0, weight: float = 1.0, student_taps=student_taps,
                 teacher_taps=teacher_taps):
        super().__init__(weight=weight)
        self.relation_heads = relation_heads
        if self.relation_heads != int(self.relation_heads):
            raise ValueError(f"minilm: relation_heads={relation_heads!r} must be a whole number")
        self.student_taps = tap_tuple(student_taps)
        self.teacher_taps = tap_tuple(teacher_taps)
        self._shapes: dict[str, int] = {}

    def bind(self, student_model, teacher_model):
        for role, model in (("student", student_model), ("teacher", teacher_model)):
            taps = self.student_taps if role == "student" else self.teacher_taps
            if model is None:
                continue
            if len(taps) != 1:
                raise ValueError(f"minilm: give one attention tap for the {role}, got {taps!r}")
            object.__setattr__(self, f"{role}_taps", _attention_and_qkv(model, taps[0], role))

    def setup(self, student, teacher):
        (s_attn, s_qkv), (t_attn, t_qkv) = self.student_taps, self.teacher_taps
        a_s, a_t = student.attentions[s_attn], teacher.attentions[t_attn]      # (B, heads, N, N)
        x_s, x_t = student.features[s_qkv], teacher.features[t_qkv]          # (B, N, 3D)
        if a_s.shape[-1] != a_t.shape[-1]:
            raise ValueError(f"minilm: student tap {s_attn!r} attends over {a_s.shape[-1]} tokens "
                             f"{tuple(a_s.shape)} but teacher tap {t_attn!r} over {a_t.shape[-1]} "
                             f"{tuple(a_t.shape)}; relations are N x N, so both need the same image "
                             "and patch size")
        self._shapes = {"student_heads": a_s.shape[1], "teacher_heads": a_t.shape[1],
                        "student_dim": x_s.shape[-1] // 3, "teacher_dim": x_t.shape[-1] // 3}
        self._plan()  # fail now, not at the first step, if no relation-head count fits

    def _plan(self) -> tuple[int, bool]:
        """(relation heads R, whether L_AT uses the attention taps) for the current settings."""
        shapes = self._shapes
        same = shapes["student_heads"] == shapes["teacher_heads"]
        heads = int(self.relation_heads) or shapes["student_heads"]
        for role in ("student", "teacher"):
            if shapes[f"{role}_dim"] % heads:
                raise ValueError(f"minilm: {heads} relation heads do not divide the {role}'s width "
                                 f"{shapes[f'{role}_dim']}; set relation_heads to a common divisor of "
                                 f"{shapes['student_dim']} and {shapes['teacher_dim']}")
        return heads, same and heads == shapes["student_heads"]

    def forward(self, student, teacher, batch):
        (s_attn, s_qkv), (t_attn, t_qkv) = self.student_taps, self.teacher_taps
        heads, use_taps = self._plan()
        attention, value = minilm_losses(
            student.features[s_qkv], teacher.features[t_qkv].detach(), heads,
            student.attentions[s_attn] if use_taps else None,
            teacher.attentions[t_attn].detach() if use_taps else None)
        return {"attention": attention, "value": value}
