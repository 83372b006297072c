"""Black-box tests of dive_nb.losses.cs: numpy/scipy oracles, Parzen quadrature, invariances, extremes, gradients, errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist, pdist
from scipy.special import logsumexp

from dive_nb.losses.contrastive import clip_loss
from dive_nb.losses.cs import cs_divergence, gaussian_log_kernel_mean, median_bandwidth

SEEDS = list(range(8))


def _sets(seed, dtype=torch.float64):
    "Two random sample sets with random sizes, dimension, shift and scale."
    g = torch.Generator().manual_seed(seed)
    m, n, d = (int(v) for v in torch.randint(1, 25, (3,), generator=g))
    x = torch.randn(m, d, generator=g, dtype=dtype)
    y = torch.randn(n, d, generator=g, dtype=dtype) * (0.5 + torch.rand(1, generator=g, dtype=dtype)) + 0.3
    return x, y


def _np_cs(x, y, s):
    "Independent numpy/scipy float64 estimator (scipy logsumexp over cdist)."
    lm = lambda a, b: logsumexp(-cdist(a, b, "sqeuclidean") / (2 * s * s)) - math.log(len(a) * len(b))
    return lm(x, x) + lm(y, y) - 2 * lm(x, y)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_scipy_oracle_and_median(seed):
    x, y = _sets(seed)
    xn, yn = x.numpy(), y.numpy()
    for s in [0.3, 1.0, 4.0]:
        assert cs_divergence(x, y, s).item() == pytest.approx(_np_cs(xn, yn, s), rel=1e-10, abs=1e-12)
    pooled = np.concatenate([xn, yn])
    med = np.median(pdist(pooled)) if len(pooled) > 1 else None
    if med is not None and med > 0:
        assert median_bandwidth(x, y).item() == pytest.approx(med, rel=1e-12)
        assert median_bandwidth(x, y, scale=0.5).item() == pytest.approx(med / 2, rel=1e-12)
        assert cs_divergence(x, y).item() == pytest.approx(_np_cs(xn, yn, med), rel=1e-9, abs=1e-12)
        assert cs_divergence(x, y, median_scale=0.5).item() == pytest.approx(_np_cs(xn, yn, med / 2), rel=1e-9, abs=1e-12)
    # the log kernel mean itself
    assert gaussian_log_kernel_mean(x, y, 0.7).item() == pytest.approx(
        logsumexp(-cdist(xn, yn, "sqeuclidean") / 0.98) - math.log(len(xn) * len(yn)), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_parzen_quadrature_1d(seed):
    "D_CS of Gaussian Parzen windows of width h (by quadrature) equals the estimator at sigma = h * sqrt(2)."
    rng = np.random.default_rng(seed)
    xs, ys = rng.normal(size=rng.integers(1, 6)), rng.normal(size=rng.integers(1, 6)) + 0.5
    h = rng.uniform(0.3, 1.5)
    u = np.linspace(-12, 12, 120001)
    parzen = lambda pts: np.exp(-(u[:, None] - pts[None]) ** 2 / (2 * h * h)).mean(1) / (h * math.sqrt(2 * math.pi))
    p, q = parzen(xs), parzen(ys)
    d_quad = -math.log(np.trapezoid(p * q, u) ** 2 / (np.trapezoid(p * p, u) * np.trapezoid(q * q, u)))
    d_est = cs_divergence(torch.tensor(xs)[:, None], torch.tensor(ys)[:, None], h * math.sqrt(2)).item()
    assert d_est == pytest.approx(d_quad, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_nonnegative_symmetric(seed):
    x, y = _sets(seed)
    s = 0.05 + 3 * torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
    d = cs_divergence(x, y, s)
    assert d.item() >= -1e-12
    assert cs_divergence(y, x, s).item() == pytest.approx(d.item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_iff_same_empirical_distribution(seed):
    x, _ = _sets(seed)
    g = torch.Generator().manual_seed(100 + seed)
    perm = torch.randperm(len(x), generator=g)
    for s in [None, 0.5, 2.0]:
        assert cs_divergence(x, x, s).item() == pytest.approx(0.0, abs=1e-12)
        assert cs_divergence(x, x[perm], s).item() == pytest.approx(0.0, abs=1e-12)
        assert cs_divergence(x, torch.cat([x, x[perm], x]), s).item() == pytest.approx(0.0, abs=1e-12)
    if len(x) >= 2:   # dropping a point changes the empirical distribution
        assert cs_divergence(x, x[1:], 1.0).item() > 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_isometry_and_scale_covariance(seed):
    x, y = _sets(seed)
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    t = torch.randn(d, generator=g, dtype=torch.float64) * 10
    ref = cs_divergence(x, y, 0.9)
    torch.testing.assert_close(cs_divergence(x @ Q + t, y @ Q + t, 0.9), ref)   # rigid motions
    torch.testing.assert_close(cs_divergence(3 * x, 3 * y, 2.7), ref)           # D(cx, cy, c sigma) = D(x, y, sigma)
    torch.testing.assert_close(cs_divergence(3 * x, 3 * y), cs_divergence(x, y))  # hence the median rule is scale-free


@pytest.mark.parametrize("seed", SEEDS)
def test_large_sigma_limit_is_mean_difference(seed):
    x, y = _sets(seed)
    lim = ((x.mean(0) - y.mean(0)) ** 2).sum().item()
    assert cs_divergence(x, y, 1e4).item() * 1e8 == pytest.approx(lim, rel=1e-4, abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_float32_extremes_finite(seed):
    x, y = _sets(seed, torch.float32)
    g = torch.Generator().manual_seed(seed)
    near = x + 1e-6 * torch.randn(x.shape, generator=g)
    for s in [1e-3, 1e-2, 1e3, None]:
        for a, b in [(x, y), (x, near), (x, x.clone()), (x, torch.cat([x, x]))]:
            v = cs_divergence(a, b, s)
            assert v.dtype == torch.float32 and torch.isfinite(v), (s, v)
    # tiny sigma: dominated by the closest cross pair
    v = cs_divergence(x, y, 1e-3).item()
    ref = (torch.cdist(x.double(), y.double()) ** 2).min().item() / 1e-6
    assert v == pytest.approx(ref, rel=1e-3)
    if len(x) >= 2:   # (one point each: the median is their distance and D = 1 by construction)
        assert abs(cs_divergence(x, near).item()) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cs_divergence(a, b, 0.8), (a, b))
    assert torch.autograd.gradcheck(lambda a, b: gaussian_log_kernel_mean(a, b, 1.3), (a, b))
    extra = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(  # CS-Aligner's objective: InfoNCE + lam * CS of the pooled samples
        lambda a, b: clip_loss(F.normalize(a, dim=1), F.normalize(b[:5], dim=1), 3.0)
        + 0.7 * cs_divergence(F.normalize(a, dim=1), torch.cat([F.normalize(b[:5], dim=1), F.normalize(extra, dim=1)]), 0.6), (a, b))


@pytest.mark.parametrize("seed", SEEDS)
def test_cs_of_pooled_samples(seed):
    "CS-Aligner's unpaired samples join the CS term as appended rows; the default bandwidth is the pooled median."
    g = torch.Generator().manual_seed(seed)
    B, d = 2 + seed, 6
    unit = lambda n: F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    img, txt, ei, et = unit(B), unit(B), unit(seed + 1), unit(2 * seed + 3)
    s = 0.5 + 0.1 * seed
    got = cs_divergence(torch.cat([img, ei]), torch.cat([txt, et]), s)
    assert got.item() == pytest.approx(_np_cs(torch.cat([img, ei]).numpy(), torch.cat([txt, et]).numpy(), s), rel=1e-10, abs=1e-12)
    med = np.median(pdist(torch.cat([img, ei, txt]).numpy()))
    assert cs_divergence(torch.cat([img, ei]), txt).item() == pytest.approx(
        _np_cs(torch.cat([img, ei]).numpy(), txt.numpy(), med), rel=1e-9, abs=1e-12)


def test_errors():
    x, y = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="feature dimension"):
        cs_divergence(x, torch.randn(4, 2))
    for bad in [0, 0.0, -1.0, float("nan"), float("inf"), torch.tensor(-0.5)]:
        with pytest.raises(ValueError, match="sigma"):
            cs_divergence(x, y, bad)
    with pytest.raises(ValueError, match="x"):
        cs_divergence(torch.randn(4), y)
    with pytest.raises(ValueError, match="y"):
        cs_divergence(x, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="at least one row"):
        cs_divergence(x, torch.randn(0, 3))
    with pytest.raises(ValueError, match="scale"):
        median_bandwidth(x, y, scale=-1.0)
