"""Similarity between samples and between representations: the matrices the similarity-based KD
methods match, and CKA to compare two networks layer by layer.

Sample-by-sample matrices, for a batch of B inputs with features of any shape (B, ...):
- cosine similarity (PKT, Passalis & Tefas, ECCV 2018, arXiv 1803.10837): flatten each sample,
  L2-normalise it, S = X X^T, so S_ij = cos(x_i, x_j);
- SP's Gram matrix (Tung & Mori, ICCV 2019, arXiv 1907.09682): Q = features reshaped to (B, -1),
  G = Q Q^T, each row divided by its L2 norm, G~_[i,:] = G_[i,:] / ||G_[i,:]||_2;
- RKD's distances (Park et al., CVPR 2019, arXiv 1904.05068): D_ij = ||t_i - t_j||_2, divided by
  mu = the mean distance over the B (B - 1) pairs i != j, so the matrix is free of the feature scale.

Representation similarity: linear CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural
Network Representations Revisited", ICML 2019, arXiv 1905.00414). For X (N, D1) and Y (N, D2)
with centred columns,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
              = <K, L>_F / (||K||_F ||L||_F),   K = X X^T, L = Y Y^T   (centred Gram matrices)

It is 1 for X with itself, invariant to orthogonal transforms and isotropic scaling of either side,
and not invariant to arbitrary invertible linear maps. The Gram form is used here: it costs
O(N^2 D), needs one (N, N) matrix per layer, and lets :func:`cka_matrix` reuse each layer's Gram.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _flat(features: torch.Tensor, name: str = "features") -> torch.Tensor:
    if features.dim() < 2:
        raise ValueError(f"{name} must be (B, ...) with a batch dimension, got shape "
                         f"{tuple(features.shape)}")
    return features.flatten(1)


def cosine_similarity_matrix(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """S_ij = cos(x_i, x_j) of the flattened samples: (B, ...) -> (B, B), values in [-1, 1].

    A zero sample has zero similarity to everything (its norm is clamped at ``eps``)."""
    x = F.normalize(_flat(features).float(), dim=1, eps=eps)              # (B, D), unit rows
    return x @ x.t()                                                      # (B, B)


def gram_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """SP's row-normalised Gram matrix G~ = rownorm(Q Q^T), Q = features as (B, -1): (B, B)."""
    q = _flat(features).float()                                           # (B, D)
    return F.normalize(q @ q.t(), p=2, dim=1)                             # (B, B), unit rows


def distance_matrix(embeddings: torch.Tensor, normalise: bool = True,
                    eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances D_ij = ||e_i - e_j||_2 between flattened samples: (B, ...) -> (B, B).

    With ``normalise``, D is divided by its mean over the B (B - 1) off-diagonal pairs (RKD's mu).
    The diagonal is exactly 0 and passes no gradient (the square root is not differentiable at 0).
    """
    e = _flat(embeddings, "embeddings").float()                           # (B, D)
    batch = e.shape[0]
    square = e.pow(2).sum(1)                                              # (B,)
    # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b; clamping keeps sqrt's gradient finite near 0
    squared = (square[:, None] + square[None, :] - 2 * e @ e.t()).clamp(min=eps)
    off_diagonal = 1 - torch.eye(batch, dtype=e.dtype, device=e.device)
    distances = squared.sqrt() * off_diagonal                             # (B, B), zero diagonal
    if normalise:
        mean = distances.sum() / max(batch * (batch - 1), 1)              # mu over pairs i != j
        distances = distances / mean.clamp(min=eps)
    return distances


def _centred_gram(x: torch.Tensor, name: str) -> torch.Tensor:
    """K = X_c X_c^T in float64, X_c = X with each column's mean removed: (N, ...) -> (N, N)."""
    x = _flat(x, name).double()
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.t()


def _cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    # <K, L>_F / (||K||_F ||L||_F); a constant representation (K = 0) gets 0, not NaN
    return (k * l).sum() / (k.norm() * l.norm()).clamp(min=1e-300)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two representations of the same N inputs: x (N, D1), y (N, D2).

    Inputs with more dimensions are flattened to (N, -1). Computed in float64; returns a 0-dim
    float32 tensor in [0, 1]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same inputs on both sides: x has {x.shape[0]} rows "
                         f"(shape {tuple(x.shape)}), y has {y.shape[0]} (shape {tuple(y.shape)})")
    return _cka_from_grams(_centred_gram(x, "x"), _centred_gram(y, "y")).float()


def cka_matrix(features_a: Sequence[torch.Tensor],
               features_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear CKA of every layer of ``features_a`` with every layer of ``features_b``: (La, Lb).

    Each element is one layer's features for the same N inputs, (N, ...). Entry [i, j] is
    ``linear_cka(features_a[i], features_b[j])``; each layer's Gram matrix is computed once."""
    if not features_a or not features_b:
        raise ValueError("cka_matrix needs at least one layer on each side")
    rows = {f.shape[0] for f in [*features_a, *features_b]}
    if len(rows) != 1:
        raise ValueError(f"cka_matrix needs the same N inputs for every layer; got batch sizes "
                         f"{sorted(rows)}")
    grams_a = [_centred_gram(f, f"features_a[{i}]") for i, f in enumerate(features_a)]
    grams_b = [_centred_gram(f, f"features_b[{j}]") for j, f in enumerate(features_b)]
    return torch.stack([torch.stack([_cka_from_grams(k, l) for l in grams_b])
                        for k in grams_a]).float()                          # (La, Lb)
