"""Black-box tests of dive_nb.losses.gram: float64 oracles, invariances, the GW bound (POT), gradients, errors."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from dive_nb.losses.gram import cosine_annealed_tau, gram_alignment_loss, sculpt_loss

SEEDS = list(range(6))
F64 = torch.float64


def _np_gram_loss(a, b, p):
    "numpy oracle over the last two axes (works for (n, d) and (n, t, d))."
    na = a / np.linalg.norm(a, axis=-1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=-1, keepdims=True)
    ga, gb = na @ np.swapaxes(na, -1, -2), nb @ np.swapaxes(nb, -1, -2)
    return float(np.mean(np.abs(ga - gb) ** p))


def _orth(d, g):
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_gram_matches_numpy_2d_3d(seed, p):
    g = torch.Generator().manual_seed(seed)
    n, t, d = 2 + seed, 3 + seed % 3, 4 + seed
    a, b = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64)
    assert gram_alignment_loss(a, b, p).item() == pytest.approx(_np_gram_loss(a.numpy(), b.numpy(), p), rel=1e-12)
    A, B = torch.randn(n, t, d, generator=g, dtype=F64), torch.randn(n, t, d, generator=g, dtype=F64)
    assert gram_alignment_loss(A, B, p).item() == pytest.approx(_np_gram_loss(A.numpy(), B.numpy(), p), rel=1e-12)
    # local term = average over samples of each sample's own 2-D loss
    per = torch.stack([gram_alignment_loss(A[i], B[i], p) for i in range(n)]).mean()
    torch.testing.assert_close(gram_alignment_loss(A, B, p), per)


@pytest.mark.parametrize("seed", SEEDS)
def test_gram_invariances(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 3 + seed, 5
    a, b = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64)
    Q1, Q2 = _orth(d, g), _orth(d, g)
    s1 = torch.rand(n, 1, generator=g, dtype=F64) * 10 + 0.01
    perm = torch.randperm(n, generator=g)
    for p in [1, 2]:
        ref = gram_alignment_loss(a, b, p)
        assert gram_alignment_loss(a, a * s1, p).item() < 1e-14
        torch.testing.assert_close(gram_alignment_loss(a @ Q1, b @ Q1, p), ref)
        torch.testing.assert_close(gram_alignment_loss(a @ Q1, b @ Q2, p), ref)
        torch.testing.assert_close(gram_alignment_loss(a * s1, b, p), ref)
        torch.testing.assert_close(gram_alignment_loss(a[perm], b[perm], p), ref)   # same relabelling of both
        torch.testing.assert_close(gram_alignment_loss(b, a, p), ref)               # symmetric in value
    # p = 2 never exceeds p = 1 here since all |G - G'| <= 2 ... and Jensen: mean|.|^2 >= (mean|.|)^2
    l1, l2 = gram_alignment_loss(a, b, 1).item(), gram_alignment_loss(a, b, 2).item()
    assert l2 >= l1 ** 2 - 1e-15


@pytest.mark.parametrize("seed", SEEDS)
def test_gw_bound(seed):
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(seed)
    N, d = 4 + 2 * seed, 6
    zf = torch.randn(N, d, generator=g, dtype=F64)
    zp = zf + 0.8 * torch.randn(N, d, generator=g, dtype=F64)
    uf, up = [(z / z.norm(dim=1, keepdim=True)).numpy() for z in (zf, zp)]
    D, Dp = cdist(uf, uf, "sqeuclidean"), cdist(up, up, "sqeuclidean")
    assert np.abs(D - Dp).mean() == pytest.approx(2 * gram_alignment_loss(zf, zp, 1).item(), rel=1e-12)
    assert ((D - Dp) ** 2).mean() == pytest.approx(4 * gram_alignment_loss(zf, zp, 2).item(), rel=1e-12)
    w = np.full(N, 1 / N)
    constC, hC1, hC2 = ot.gromov.init_matrix(D, Dp, w, w, "square_loss")
    at_id = ot.gromov.gwloss(constC, hC1, hC2, np.eye(N) / N)
    assert at_id == pytest.approx(4 * gram_alignment_loss(zf, zp, 2).item(), rel=1e-10)
    gw = ot.gromov.gromov_wasserstein2(D, Dp, w, w, "square_loss", G0=np.eye(N) / N)
    assert -1e-12 <= gw <= at_id + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gram_gradcheck_and_frozen_reference(seed):
    g = torch.Generator().manual_seed(seed)
    zp = torch.randn(5, 4, generator=g, dtype=F64)
    zf = torch.randn(5, 4, generator=g, dtype=F64, requires_grad=True)
    Zp = torch.randn(2, 4, 3, generator=g, dtype=F64)
    Zf = torch.randn(2, 4, 3, generator=g, dtype=F64, requires_grad=True)
    for p in [1, 2]:
        assert torch.autograd.gradcheck(lambda z: gram_alignment_loss(z, zp, p), (zf,))
        assert torch.autograd.gradcheck(lambda z: gram_alignment_loss(z, Zp, p), (Zf,))
    zp_ = zp.clone().requires_grad_()
    gram_alignment_loss(zf, zp_).backward()
    assert zp_.grad is None


def _naive_sculpt(q, labels, text, tau, normalize_text=True):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True) if normalize_text else text
    S = np.concatenate([q, t])
    sl = np.concatenate([labels, np.arange(len(text))])
    out = []
    for i in range(len(q)):
        keep = [j for j in range(len(S)) if j != i]
        e = {j: math.exp(float(q[i] @ S[j]) / tau) for j in keep}
        den = sum(e.values())
        pos = [j for j in keep if sl[j] == labels[i]]
        out.append(-sum(math.log(e[j] / den) for j in pos) / len(pos))
    return sum(out) / len(out)


@pytest.mark.parametrize("seed", SEEDS)
def test_sculpt_matches_naive_and_bound(seed):
    g = torch.Generator().manual_seed(seed)
    B, C, d = 1 + 2 * seed, 1 + seed % 4, 5
    q = torch.randn(B, d, generator=g, dtype=F64)
    labels = torch.randint(0, C, (B,), generator=g)
    text = torch.randn(C, d, generator=g, dtype=F64) * 3
    for tau, nt in [(0.07, True), (0.5, True), (0.2, False)]:
        ours = sculpt_loss(q, labels, text, tau, normalize_text=nt).item()
        assert ours == pytest.approx(_naive_sculpt(q.numpy(), labels.numpy(), text.numpy(), tau, nt), rel=1e-10, abs=1e-12)
        npos = np.array([(labels == labels[i]).sum().item() for i in range(B)])   # other same-class queries + text
        assert ours >= np.log(npos).mean() - 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_sculpt_invariances(seed):
    g = torch.Generator().manual_seed(seed)
    B, C, d = 6, 3, 4
    q = torch.randn(B, d, generator=g, dtype=F64)
    labels = torch.randint(0, C, (B,), generator=g)
    text = torch.randn(C, d, generator=g, dtype=F64)
    ref = sculpt_loss(q, labels, text, 0.3)
    perm = torch.randperm(B, generator=g)
    torch.testing.assert_close(sculpt_loss(q[perm], labels[perm], text, 0.3), ref)       # reorder queries
    cperm = torch.randperm(C, generator=g)                                                  # rename classes
    inv = torch.empty_like(cperm); inv[cperm] = torch.arange(C)
    torch.testing.assert_close(sculpt_loss(q, inv[labels], text[cperm], 0.3), ref)
    Q = _orth(d, g)
    torch.testing.assert_close(sculpt_loss(q @ Q, labels, text @ Q, 0.3), ref)             # rotate everything
    s = torch.rand(B, 1, generator=g, dtype=F64) + 0.1
    torch.testing.assert_close(sculpt_loss(q * s, labels, text * 7, 0.3), ref)             # rescale rows
    assert abs(sculpt_loss(q, labels, text * 7, 0.3, normalize_text=False).item() - ref.item()) > 1e-6


def test_sculpt_on_class_texts_reaches_minimum():
    C, d = 4, 6
    text = torch.eye(C, d, dtype=F64)
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    q = text[labels]
    B = len(labels)
    npos = torch.tensor([(labels == l).sum().item() for l in labels], dtype=F64)
    for tau in [1.0, 0.3, 0.1]:
        exact = torch.log(npos + (B + C - 1 - npos) * math.exp(-1 / tau)).mean()
        torch.testing.assert_close(sculpt_loss(q, labels, text, tau), exact)
    assert sculpt_loss(q, labels, text, 0.005).item() == pytest.approx(npos.log().mean().item(), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_sculpt_gradcheck_and_float32(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(5, 4, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    labels = torch.tensor([2, 0, 1, 1, 0])
    for nt in [True, False]:
        assert torch.autograd.gradcheck(lambda a, b: sculpt_loss(a, labels, b, 0.25, normalize_text=nt), (q, t))
    q32 = torch.randn(128, 32, generator=g)
    l32 = torch.randint(0, 10, (128,), generator=g)
    v = sculpt_loss(q32, l32, torch.randn(10, 32, generator=g), 1e-3)
    assert v.dtype == torch.float32 and torch.isfinite(v)


def test_cosine_annealed_tau():
    for t0, t1, S in [(0.5, 0.07, 50), (0.1, 0.05, 200), (1.0, 2.0, 7)]:
        assert cosine_annealed_tau(0, S, t0, t1) == pytest.approx(t0)
        assert cosine_annealed_tau(S, S, t0, t1) == t1
        assert cosine_annealed_tau(S + 5, S, t0, t1) == t1
        assert cosine_annealed_tau(S / 2, S, t0, t1) == pytest.approx((t0 + t1) / 2)
        for s in range(S):   # symmetric about the midpoint
            assert cosine_annealed_tau(s, S, t0, t1) + cosine_annealed_tau(S - s, S, t0, t1) == pytest.approx(t0 + t1)


def test_errors():
    with pytest.raises(ValueError, match="z_ft"):
        gram_alignment_loss(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="same shape"):
        gram_alignment_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="same shape"):
        gram_alignment_loss(torch.randn(2, 3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="p must"):
        gram_alignment_loss(torch.randn(3, 4), torch.randn(3, 4), p=0)
    q, t = torch.randn(4, 3), torch.randn(3, 3)
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        sculpt_loss(q, torch.tensor([0, 3, 1, 2]), t, 0.1)
    with pytest.raises(ValueError, match="labels"):
        sculpt_loss(q, torch.tensor([[0, 1, 1, 2]]), t, 0.1)
    with pytest.raises(ValueError, match="integer"):
        sculpt_loss(q, torch.tensor([0.0, 1.0, 1.0, 2.0]), t, 0.1)
    with pytest.raises(ValueError, match="tau"):
        sculpt_loss(q, torch.tensor([0, 1, 1, 2]), t, -0.1)
    with pytest.raises(ValueError, match="feature dimension"):
        sculpt_loss(q, torch.tensor([0, 1, 1, 2]), torch.randn(3, 5), 0.1)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_annealed_tau(0, 0, 0.5, 0.07)
    with pytest.raises(ValueError, match="step"):
        cosine_annealed_tau(-2, 10, 0.5, 0.07)
