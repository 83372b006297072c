"""Black-box tests of dive_nb.losses.mixup: naive float64 oracle, end-point identities, gradients, dtypes, errors."""

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from dive_nb.geometry import l2_normalize, slerp
from dive_nb.losses.mixup import m2mix_logits, m2mix_loss, sample_mix_lambda


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(n, d, seed, dtype=torch.float64):
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _m2mix_naive(img, txt, lam, tau):
    """Independent float64 oracle: sph_inter-style slerp (code convention, weight lam on txt here) + double loops."""
    img = [r / r.norm() for r in img.double()]
    txt = [r / r.norm() for r in txt.double()]
    n = len(img)
    mixes = []
    for a, b in zip(img, txt):
        th = math.acos(max(-1.0, min(1.0, float(a @ b))))
        mixes.append((math.sin((1 - lam) * th) * a + math.sin(lam * th) * b) / math.sin(th))
    total = 0.0
    for anchor, other in ((img, txt), (txt, img)):
        for i in range(n):
            row = [
                float(anchor[i] @ other[i]) / tau if i == j else float(anchor[i] @ mixes[j]) / tau for j in range(n)
            ]
            m = max(row)
            total += (-row[i] + m + math.log(sum(math.exp(r - m) for r in row))) / n
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,d", [(4, 3), (6, 8), (8, 16)])
def test_m2mix_matches_naive_oracle(seed, n, d):
    img, txt = _rand(n, d, seed), _rand(n, d, seed + 10)
    for lam in (0.0, 0.15, 0.5, 0.8, 1.0):
        for tau in (0.07, 1.0):
            got = m2mix_loss(img, txt, lam, tau)
            assert got.dim() == 0 and got.dtype == torch.float64
            assert math.isclose(float(got), _m2mix_naive(img, txt, lam, tau), rel_tol=1e-10)
    # float32 close to the float64 oracle; unnormalised inputs are normalised inside
    assert math.isclose(float(m2mix_loss(img.float(), txt.float(), 0.4)), _m2mix_naive(img, txt, 0.4, 0.07), rel_tol=1e-5)
    torch.testing.assert_close(m2mix_loss(3 * img, 0.2 * txt, 0.4), m2mix_loss(img, txt, 0.4))


def test_hand_computed_two_pairs():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    # lam=0: image negatives <I1, I2> = 0, text negatives <T1, I2> = 0.8 (plain InfoNCE text side); positives 0.6
    assert math.isclose(float(m2mix_loss(img, txt, 0.0, 0.1)), math.log1p(math.exp(-6)) + math.log1p(math.exp(2)), rel_tol=1e-12)
    # lam=1: image negatives <I1, T2> = 0.8 (plain InfoNCE image side), text negatives <T1, T2> = 0.96
    assert math.isclose(float(m2mix_loss(img, txt, 1.0, 0.1)), math.log1p(math.exp(2)) + math.log1p(math.exp(3.6)), rel_tol=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_lam_endpoints_reduce_to_infonce_halves(seed):
    n, d, tau = 7, 5, 0.07
    img, txt = l2_normalize(_rand(n, d, seed)), l2_normalize(_rand(n, d, seed + 1))
    labels = torch.arange(n)
    _, lt0 = m2mix_logits(img, txt, 0.0, tau)
    li1, _ = m2mix_logits(img, txt, 1.0, tau)
    torch.testing.assert_close(lt0, txt @ img.T / tau)
    torch.testing.assert_close(li1, img @ txt.T / tau)
    # hand computation of the text-side InfoNCE term: mean_i [-s_ii + log sum_j exp s_ij]
    s = (txt @ img.T / tau).tolist()
    hand = sum(-s[i][i] + math.log(sum(math.exp(v) for v in s[i])) for i in range(n)) / n
    assert math.isclose(float(F.cross_entropy(lt0, labels)), hand, rel_tol=1e-12)
    # image side at lam = 0 uses the other images as negatives
    li0, _ = m2mix_logits(img, txt, 0.0, tau)
    expected = img @ img.T / tau
    expected.diagonal().copy_((img * txt).sum(-1) / tau)
    torch.testing.assert_close(li0, expected)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.6, 1.0])
def test_modality_swap_symmetry(lam):
    img, txt = _rand(5, 6, 20), _rand(5, 6, 21)
    torch.testing.assert_close(m2mix_loss(img, txt, lam), m2mix_loss(txt, img, 1 - lam))


def test_tensor_lam_and_gradcheck():
    img = _rand(4, 3, 30).requires_grad_(True)
    txt = _rand(4, 3, 31).requires_grad_(True)
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(m2mix_loss(img, txt, lam), m2mix_loss(img, txt, 0.7))
    assert torch.autograd.gradcheck(lambda a, b, l: m2mix_loss(a, b, l, tau=0.5), (img, txt, lam))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_identical_pairs_finite(dtype, lam):
    x = l2_normalize(_rand(6, 8, 40)).to(dtype).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    loss = m2mix_loss(x, y, lam)
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    # with img == txt every mix equals the pair itself: both sides score x_i against {x_j}
    ref = 2 * F.cross_entropy(x.detach().float() @ x.detach().float().T / 0.07, torch.arange(6))
    tol = 5e-2 if dtype != torch.float32 else 1e-5
    assert math.isclose(float(loss.detach()), float(ref), rel_tol=tol)


def test_mixed_negatives_are_harder_with_a_modality_gap():
    g = _gen(50)
    base, gap = torch.linalg.qr(torch.randn(16, 2, generator=g, dtype=torch.float64))[0].T
    img = l2_normalize(base + 0.6 * gap + 0.1 * torch.randn(8, 16, generator=g, dtype=torch.float64))
    txt = l2_normalize(base - 0.6 * gap + 0.1 * torch.randn(8, 16, generator=g, dtype=torch.float64))
    off = ~torch.eye(8, dtype=torch.bool)
    labels = torch.arange(8)
    clip = F.cross_entropy(img @ txt.T / 0.07, labels) + F.cross_entropy(txt @ img.T / 0.07, labels)
    for lam in (0.2, 0.5, 0.8):
        m = slerp(img, txt, lam)
        # concavity bound on the geodesic
        for anchor in (img, txt):
            assert bool((anchor @ m.T >= (1 - lam) * (anchor @ img.T) + lam * (anchor @ txt.T) - 1e-12).all())
        li, lt = m2mix_logits(img, txt, lam)
        assert bool((li[off] > (img @ txt.T / 0.07)[off]).all())
        assert bool((lt[off] > (txt @ img.T / 0.07)[off]).all())
        assert float(m2mix_loss(img, txt, lam)) > float(clip)


def test_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"img and txt must have the same shape, got \(4, 3\) and \(5, 3\)"):
        m2mix_loss(x, torch.randn(5, 3), 0.5)
    with pytest.raises(ValueError, match=r"txt must be a 2-D \(n, d\) tensor"):
        m2mix_loss(x, torch.randn(4, 3, 1), 0.5)
    for bad in (1.01, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
            m2mix_loss(x, x, bad)
    with pytest.raises(ValueError, match="0-d tensor"):
        m2mix_loss(x, x, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        m2mix_loss(x, x, torch.tensor(2.0))
    with pytest.raises(ValueError, match="tau must be"):
        m2mix_loss(x, x, 0.5, tau=-1.0)


def test_sample_mix_lambda_reproducible_and_beta_distributed():
    a = [sample_mix_lambda(0.5, _gen(1)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and isinstance(a[0], float) and 0.0 <= a[0] <= 1.0
    g1, g2 = _gen(2), _gen(2)
    assert [sample_mix_lambda(0.3, g1) for _ in range(4)] == [sample_mix_lambda(0.3, g2) for _ in range(4)]
    for beta in (0.2, 0.5, 3.0):
        s = sample_mix_lambda(beta, _gen(0), size=20000)
        assert s.shape == (20000,) and bool(((s >= 0) & (s <= 1)).all())
        assert scipy.stats.kstest(s.numpy(), scipy.stats.beta(beta, beta).cdf).pvalue > 0.01
    for bad in (0, -1.0, float("inf"), "0.5"):
        with pytest.raises(ValueError, match="beta must be"):
            sample_mix_lambda(bad)
