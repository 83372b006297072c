"""Black-box tests of dive_nb.geometry: randomised properties and independent oracles (scipy, naive float64 loops)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from dive_nb.geometry import (
    alignment,
    check_2d,
    check_same_shape,
    cosine_matrix,
    l2_normalize,
    linear_cka,
    modality_gap,
    rsa,
    slerp,
    uniformity,
)

SEEDS = [0, 1, 2]
SHAPES = [(4, 3), (7, 8), (5, 16)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _unit(n, d, seed, dtype=torch.float64):
    return l2_normalize(torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)).to(dtype)


def _rotation(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed + 100), dtype=torch.float64))
    return q


def _upper_cos(z):
    z = z.double().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return (z @ z.T)[np.triu_indices(len(z), k=1)]


# ----------------------------------------------------------------------------- validators
def test_check_2d_messages():
    x = torch.zeros(2, 3)
    assert check_2d(x) is x
    with pytest.raises(ValueError, match=r"img must be a 2-D \(n, d\) tensor, got shape \(3,\)"):
        check_2d(torch.zeros(3), "img")
    with pytest.raises(ValueError, match="feats must be a 2-D"):
        check_2d([[1.0, 2.0]], "feats")
    with pytest.raises(ValueError, match=r"img and txt must have the same shape, got \(2, 3\) and \(2, 4\)"):
        check_same_shape(torch.zeros(2, 3), torch.zeros(2, 4), ("img", "txt"))


# ----------------------------------------------------------------------------- slerp
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d", SHAPES)
def test_slerp_geodesic_properties(seed, n, d):
    a, b = _unit(n, d, seed), _unit(n, d, seed + 50)
    theta = torch.acos((a * b).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    for t in (0.1, 0.5, 0.9):
        m = slerp(a, b, t)
        torch.testing.assert_close(m.norm(dim=-1), torch.ones(n, dtype=torch.float64))
        # on the geodesic: the two angles add up to theta and split it t : (1 - t)
        ang_a = torch.acos((m * a).sum(-1).clamp(-1, 1))
        ang_b = torch.acos((m * b).sum(-1).clamp(-1, 1))
        torch.testing.assert_close(ang_a, t * theta, atol=1e-7, rtol=1e-7)
        torch.testing.assert_close(ang_b, (1 - t) * theta, atol=1e-7, rtol=1e-7)
        # equivariant under rotations, symmetric under path reversal
        Q = _rotation(d, seed)
        torch.testing.assert_close(slerp(a @ Q, b @ Q, t), m @ Q)
        torch.testing.assert_close(slerp(b, a, 1 - t), m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_slerp_degenerate_inputs_finite_unit(dtype):
    a = _unit(6, 5, 3, dtype)
    for t in (0.0, 0.25, 0.5, 1.0):
        for b in (a, -a, a.clone()):
            m = slerp(a, b, t)
            assert m.dtype == dtype and m.shape == a.shape
            assert torch.isfinite(m).all()
            torch.testing.assert_close(m.double().norm(dim=-1), torch.ones(6, dtype=torch.float64), atol=1e-2, rtol=0)
        # identical inputs return the input
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
        torch.testing.assert_close(slerp(a, a, t).double(), a.double(), atol=tol, rtol=0)


def test_slerp_matches_naive_formula_float64_and_float16_agrees():
    a, b = _unit(8, 4, 7), _unit(8, 4, 8)
    t = 0.37
    th = torch.acos((a * b).sum(-1, keepdim=True))
    naive = (torch.sin((1 - t) * th) * a + torch.sin(t * th) * b) / torch.sin(th)
    torch.testing.assert_close(slerp(a, b, t), naive)
    torch.testing.assert_close(slerp(a.half(), b.half(), t).double(), naive, atol=3e-3, rtol=0)


def test_slerp_gradients():
    a = torch.randn(4, 3, generator=_gen(9), dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, generator=_gen(10), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(slerp, (a, b, t))
    # at a == b the Jacobian w.r.t. b is t (I - a a^T) (tangent projection), finite
    u = _unit(1, 3, 11)
    J = torch.autograd.functional.jacobian(lambda bb: slerp(u, bb, 0.3), u.clone()).squeeze()
    torch.testing.assert_close(J, 0.3 * (torch.eye(3, dtype=torch.float64) - u.T @ u))
    for sign in (1.0, -1.0):
        x = _unit(5, 4, 12, torch.float32).requires_grad_(True)
        y = (sign * x.detach()).requires_grad_(True)
        slerp(x, y, 0.5).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_slerp_bad_inputs():
    a = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        slerp(a, torch.zeros(3, 5), 0.5)
    with pytest.raises(ValueError, match="b must be a 2-D"):
        slerp(a, torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="broadcastable"):
        slerp(a, a, torch.zeros(2))


# ----------------------------------------------------------------------------- cosine matrix
@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_matrix_vs_numpy(seed):
    a = torch.randn(5, 6, generator=_gen(seed), dtype=torch.float64)
    b = torch.randn(3, 6, generator=_gen(seed + 1), dtype=torch.float64)
    an, bn = a.numpy(), b.numpy()
    ref = (an / np.linalg.norm(an, axis=1, keepdims=True)) @ (bn / np.linalg.norm(bn, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_matrix(a, b).numpy(), ref, atol=1e-12)
    with pytest.raises(ValueError, match="feature dimension"):
        cosine_matrix(a, torch.zeros(3, 5, dtype=torch.float64))


# ----------------------------------------------------------------------------- RSA
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d1,d2", [(5, 3, 4), (9, 16, 2), (12, 8, 8)])
def test_rsa_scipy_oracle_and_invariances(seed, n, d1, d2):
    x = torch.randn(n, d1, generator=_gen(seed), dtype=torch.float64)
    y = torch.randn(n, d2, generator=_gen(seed + 7), dtype=torch.float64)
    ux, uy = _upper_cos(x), _upper_cos(y)
    r = rsa(x, y)
    assert isinstance(r, float)
    assert math.isclose(r, scipy.stats.spearmanr(ux, uy).statistic, abs_tol=1e-10)
    assert math.isclose(rsa(x, y, method="pearson"), scipy.stats.pearsonr(ux, uy).statistic, abs_tol=1e-10)
    assert math.isclose(rsa(x, x), 1.0, abs_tol=1e-12)
    assert math.isclose(rsa(x @ _rotation(d1, seed), y @ _rotation(d2, seed + 1)), r, abs_tol=1e-10)
    assert math.isclose(rsa(y, x), r, abs_tol=1e-12)  # symmetric


def test_rsa_ties_match_scipy_average_ranks():
    # integer-valued embeddings produce many exactly equal cosines
    g = _gen(21)
    x = torch.randint(0, 2, (10, 3), generator=g).double() + torch.tensor([1.0, 0, 0], dtype=torch.float64)
    y = torch.randint(0, 2, (10, 4), generator=g).double() + torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)
    ux, uy = _upper_cos(x), _upper_cos(y)
    assert len(np.unique(ux)) < len(ux) and len(np.unique(uy)) < len(uy)
    assert math.isclose(rsa(x, y), scipy.stats.spearmanr(ux, uy).statistic, abs_tol=1e-12)


def test_rsa_float32_input_and_errors():
    x = torch.randn(6, 4, generator=_gen(30))
    y = torch.randn(6, 5, generator=_gen(31))
    assert math.isclose(rsa(x, y), rsa(x.double(), y.double()), abs_tol=1e-12)
    with pytest.raises(ValueError, match="same n samples"):
        rsa(x, y[:5])
    with pytest.raises(ValueError, match="method"):
        rsa(x, y, method="kendall")


# ----------------------------------------------------------------------------- CKA
def _cka_hsic(x, y):
    x, y = x.double(), y.double()
    n = x.shape[0]
    H = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    K, L = x @ x.T, y @ y.T

    def hsic(A, B):
        return torch.trace(A @ H @ B @ H) / (n - 1) ** 2

    return hsic(K, L) / torch.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d1,d2", [(6, 3, 5), (10, 16, 4), (16, 8, 8)])
def test_linear_cka_oracle_and_invariances(seed, n, d1, d2):
    x = torch.randn(n, d1, generator=_gen(seed), dtype=torch.float64) + 1.5
    y = torch.randn(n, d2, generator=_gen(seed + 3), dtype=torch.float64)
    c = linear_cka(x, y)
    torch.testing.assert_close(c, _cka_hsic(x, y))
    assert 0.0 <= float(c) <= 1.0 + 1e-12
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(linear_cka(x, y), linear_cka(y, x))
    torch.testing.assert_close(linear_cka(0.1 * x @ _rotation(d1, seed), 7.0 * y @ _rotation(d2, seed)), c)
    # float32 agrees with the float64 oracle
    torch.testing.assert_close(linear_cka(x.float(), y.float()).double(), c, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- modality gap
def test_modality_gap_known_values_and_oracle():
    v = _unit(1, 5, 40)
    torch.testing.assert_close(modality_gap(v, -v), torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(modality_gap(v.repeat(3, 1), 4.0 * v), torch.tensor(0.0, dtype=torch.float64))
    img = torch.randn(7, 5, generator=_gen(41), dtype=torch.float64)
    txt = torch.randn(4, 5, generator=_gen(42), dtype=torch.float64)
    naive = (sum(r / r.norm() for r in img) / 7 - sum(r / r.norm() for r in txt) / 4).norm()
    torch.testing.assert_close(modality_gap(img, txt), naive)
    Q = _rotation(5, 43)
    torch.testing.assert_close(modality_gap(img @ Q, txt @ Q), naive)
    with pytest.raises(ValueError, match="feature dimension"):
        modality_gap(img, torch.zeros(4, 6, dtype=torch.float64))


# ----------------------------------------------------------------------------- alignment / uniformity
def _unif_naive(x, t):
    n = len(x)
    s = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                s += math.exp(-t * float(((x[i] - x[j]) ** 2).sum()))
    return math.log(s / (n * (n - 1)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,d", SHAPES)
def test_alignment_uniformity_naive_float64(seed, n, d):
    x, y = _unit(n, d, seed), _unit(n, d, seed + 9)
    for t in (0.5, 2.0):
        assert math.isclose(float(uniformity(x, t)), _unif_naive(x, t), rel_tol=1e-10)
    naive_align = sum(float(((x[i] - y[i]) ** 2).sum()) for i in range(n)) / n
    assert math.isclose(float(alignment(x, y)), naive_align, rel_tol=1e-12)
    # unit vectors: ||x - y||^2 = 2 - 2 cos
    assert math.isclose(float(alignment(x, y)), float((2 - 2 * (x * y).sum(-1)).mean()), rel_tol=1e-12)
    assert math.isclose(float(alignment(2 * x, 3 * y, normalize=True)), naive_align, rel_tol=1e-12)
    assert -4.0 * 2.0 <= float(uniformity(x)) <= 0.0


def test_uniformity_stable_and_differentiable():
    x = _unit(6, 4, 50, torch.float32)
    u = uniformity(x, t=5000.0)
    assert torch.isfinite(u) and float(u) < -100.0
    xd = torch.cat([x, x]).requires_grad_(True)  # duplicated rows: zero distances
    uniformity(xd).backward()
    assert torch.isfinite(xd.grad).all()
    z = torch.randn(5, 3, generator=_gen(51), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: uniformity(w, 2.0, normalize=True), (z,))
    with pytest.raises(ValueError, match="at least 2 rows"):
        uniformity(x[:1])
