"""Similarity probes against numpy computed independently, and CKA's defining properties."""
import math

import numpy as np
import pytest
import torch

from workbench.probes.similarity import (cka_matrix, cosine_similarity_matrix, distance_matrix,
                                         gram_similarity_matrix, linear_cka)


def numpy_cka(x, y):
    """Kornblith et al. (2019), eq. for linear CKA in feature space: ||Y^T X||_F^2 / (||X^T X|| ||Y^T Y||)."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_cka_golden_value_by_hand():
    # X: four points on the axes (already centred); Y: their first coordinate only.
    # X^T X = diag(2, 2) -> ||.||_F = 2 sqrt 2; Y^T Y = [2] -> 2; Y^T X = [2, 0] -> ||.||^2 = 4;
    # CKA = 4 / (2 sqrt 2 * 2) = 1 / sqrt 2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = x[:, :1]
    assert linear_cka(x, y).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_cka_matches_numpy_on_a_small_random_example():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    expected = numpy_cka(x, y)
    got = linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 1


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(20, 7)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-6)
    maps = torch.randn(10, 3, 4, 4)            # (N, C, H, W) inputs are flattened
    assert linear_cka(maps, maps).item() == pytest.approx(1.0, abs=1e-6)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_only():
    torch.manual_seed(0)
    x, y = torch.randn(30, 6), torch.randn(30, 6) + 0.5 * torch.randn(30, 1)
    base = linear_cka(x, y).item()
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert linear_cka(x @ q, y).item() == pytest.approx(base, abs=1e-5)
    assert linear_cka(x, 7.5 * y).item() == pytest.approx(base, abs=1e-5)
    assert linear_cka(x + 3.0, y).item() == pytest.approx(base, abs=1e-5)   # centring
    # an arbitrary invertible linear map does change it (CKA is not a CCA-style measure)
    stretch = torch.diag(torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 0.1]))
    assert abs(linear_cka(x @ stretch, y).item() - base) > 1e-3


def test_cka_matrix_fills_every_layer_pair():
    torch.manual_seed(1)
    a = [torch.randn(12, 4), torch.randn(12, 2, 3, 3)]
    b = [torch.randn(12, 5), a[0].clone(), torch.randn(12, 8, 2)]
    matrix = cka_matrix(a, b)
    assert matrix.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert matrix[i, j].item() == pytest.approx(linear_cka(a[i], b[j]).item(), abs=1e-6)
    assert matrix[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_cka_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="5 rows"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="batch sizes"):
        cka_matrix([torch.randn(5, 2)], [torch.randn(6, 2)])
    with pytest.raises(ValueError, match="at least one layer"):
        cka_matrix([], [torch.randn(6, 2)])
    assert linear_cka(torch.ones(5, 2), torch.randn(5, 2)).item() == 0.0   # constant: 0, not NaN


def test_cosine_similarity_matrix_against_numpy():
    x = np.array([[1.0, 2.0, 0.0, 1.0], [0.0, -1.0, 3.0, 1.0], [2.0, 0.0, 0.0, 0.5]])
    norms = np.linalg.norm(x, axis=1)
    expected = np.array([[x[i] @ x[j] / (norms[i] * norms[j]) for j in range(3)] for i in range(3)])
    got = cosine_similarity_matrix(torch.tensor(x, dtype=torch.float32).view(3, 1, 2, 2))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_gram_similarity_matrix_is_sps_row_normalised_gram():
    x = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [2.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    gram = x @ x.T
    expected = gram / np.linalg.norm(gram, axis=1, keepdims=True)
    got = gram_similarity_matrix(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_distance_matrix_normalises_by_mean_off_diagonal_distance():
    e = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    raw = np.array([[np.linalg.norm(a - b) for b in e] for a in e])     # 5, 1, sqrt(18)
    mu = raw.sum() / 6
    tensor = torch.tensor(e, dtype=torch.float32, requires_grad=True)
    np.testing.assert_allclose(distance_matrix(tensor, normalise=False).detach().numpy(), raw, atol=1e-5)
    normalised = distance_matrix(tensor)
    np.testing.assert_allclose(normalised.detach().numpy(), raw / mu, atol=1e-5)
    assert normalised.sum().item() / 6 == pytest.approx(1.0, abs=1e-6)
    normalised.sum().backward()
    assert torch.isfinite(tensor.grad).all()            # no NaN from sqrt at the zero diagonal
