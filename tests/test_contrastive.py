"""Black-box tests of dive_nb.losses.contrastive: open_clip oracle, float64 loops, invariances, gradients, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dive_nb.losses.contrastive import clip_logits, clip_loss, zeroshot_ce_loss

CASES = [(seed, n, d) for seed, (n, d) in enumerate([(1, 3), (2, 2), (4, 8), (7, 5), (8, 16), (13, 4)])]


def _unit(n, d, g, dtype=torch.float64):
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def _naive_clip(I, T, s):
    n = I.shape[0]
    L = [[s * sum(float(I[i, k]) * float(T[j, k]) for k in range(I.shape[1])) for j in range(n)] for i in range(n)]
    rows = sum(math.log(sum(math.exp(L[i][j] - L[i][i]) for j in range(n))) for i in range(n)) / n
    cols = sum(math.log(sum(math.exp(L[i][j] - L[j][j]) for i in range(n))) for j in range(n)) / n
    return (rows + cols) / 2


@pytest.mark.parametrize("seed,n,d", CASES)
def test_matches_open_clip(seed, n, d):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    g = torch.Generator().manual_seed(seed)
    I, T = _unit(n, d, g, torch.float32), _unit(n, d, g, torch.float32)
    raw = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # open_clip stores the log-scale
    ours = clip_loss(I, T, raw.exp())
    ref = open_clip_loss.ClipLoss()(I, T, raw.exp())
    torch.testing.assert_close(ours, ref)
    g_ours, = torch.autograd.grad(ours, raw)
    g_ref, = torch.autograd.grad(open_clip_loss.ClipLoss()(I, T, raw.exp()), raw)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("seed,n,d", CASES)
def test_matches_float64_loop_symmetric_rotation_invariant(seed, n, d):
    g = torch.Generator().manual_seed(100 + seed)
    I, T = _unit(n, d, g), _unit(n, d, g)
    s = float(torch.empty(()).uniform_(1.0, 100.0, generator=g))
    loss = clip_loss(I, T, s)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_naive_clip(I, T, s), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(clip_loss(T, I, s), loss)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    torch.testing.assert_close(clip_loss(I @ Q, T @ Q, s), loss)


def test_hand_made_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    s = 3.0
    # img @ txt.T = txt.T, so logits = s * [[0.8, 0], [0.6, 1]] = [[2.4, 0], [1.8, 3]]
    rows = (math.log1p(math.exp(0 - 2.4)) + math.log1p(math.exp(1.8 - 3.0))) / 2
    cols = (math.log1p(math.exp(1.8 - 2.4)) + math.log1p(math.exp(0 - 3.0))) / 2
    assert clip_loss(img, txt, s).item() == pytest.approx((rows + cols) / 2, rel=1e-12)
    torch.testing.assert_close(clip_logits(img, txt, s), torch.tensor([[2.4, 0.0], [1.8, 3.0]], dtype=torch.float64))


@pytest.mark.parametrize("n,m,d", [(3, 5, 4), (6, 2, 3)])
def test_logits_rectangular(n, m, d):
    g = torch.Generator().manual_seed(n * m)
    I, T = _unit(n, d, g), _unit(m, d, g)
    L = clip_logits(I, T, 7.0)
    assert L.shape == (n, m)
    for i in range(n):
        for j in range(m):
            assert float(L[i, j]) == pytest.approx(7.0 * sum(float(I[i, k] * T[j, k]) for k in range(d)))


def test_gradcheck():
    g = torch.Generator().manual_seed(7)
    I, T = _unit(5, 3, g).requires_grad_(), _unit(5, 3, g).requires_grad_()
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(clip_loss, (I, T, s))


@pytest.mark.parametrize("n", [2, 5, 64])
def test_float32_extremes(n):
    x = F.normalize(torch.ones(n, 8), dim=1).requires_grad_()
    loss = clip_loss(x, x.detach().clone(), 100.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(n), rel=1e-5)
    assert torch.isfinite(x.grad).all()
    # opposite directions for the positives: huge loss, still finite
    y = torch.zeros(n, 8); y[:, 0] = 1.0
    z = y.clone(); z[0] = -z[0]
    z.requires_grad_()
    loss = clip_loss(y, z, 100.0); loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_errors():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="img and txt must have the same shape"):
        clip_loss(a, torch.randn(4, 5), 1.0)
    with pytest.raises(ValueError, match="img and txt must have the same shape"):
        clip_loss(a, torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match=r"img must be a 2-D"):
        clip_loss(a[0], a[0], 1.0)
    with pytest.raises(ValueError, match=r"txt must be a 2-D"):
        clip_logits(a, a[None], 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        clip_loss(a, a, torch.ones(1))
    with pytest.raises(ValueError, match="logit_scale"):
        clip_loss(a, a, 0.0)


def _naive_ce(I, W, y, s):
    tot = 0.0
    for i in range(I.shape[0]):
        z = [s * sum(float(I[i, k] * W[c, k]) for k in range(I.shape[1])) for c in range(W.shape[0])]
        mx = max(z)
        tot += mx + math.log(sum(math.exp(v - mx) for v in z)) - z[int(y[i])]
    return tot / I.shape[0]


@pytest.mark.parametrize("seed,n,k,d", [(0, 1, 2, 3), (1, 6, 3, 4), (2, 8, 10, 16), (3, 5, 1, 2)])
def test_zeroshot_ce_matches_loop(seed, n, k, d):
    g = torch.Generator().manual_seed(seed)
    I, W = _unit(n, d, g), _unit(k, d, g)
    y = torch.randint(0, k, (n,), generator=g)
    s = 100.0 if seed == 2 else 10.0
    assert zeroshot_ce_loss(I, W, y, s).item() == pytest.approx(_naive_ce(I, W, y, s), rel=1e-10, abs=1e-12)
    # int32 labels are accepted too
    torch.testing.assert_close(zeroshot_ce_loss(I, W, y.int(), s), zeroshot_ce_loss(I, W, y, s))


def test_zeroshot_ce_gradcheck_and_errors():
    g = torch.Generator().manual_seed(11)
    I, W = _unit(4, 3, g).requires_grad_(), _unit(3, 3, g).requires_grad_()
    y = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b: zeroshot_ce_loss(a, b, y, 6.0), (I, W))
    with pytest.raises(ValueError, match=r"\[0, 3\).*labels\[2\] = 3"):
        zeroshot_ce_loss(I, W, torch.tensor([0, 1, 3, 0]), 6.0)
    with pytest.raises(ValueError, match=r"labels\[0\] = -2"):
        zeroshot_ce_loss(I, W, torch.tensor([-2, 1, 0, 0]), 6.0)
    with pytest.raises(ValueError, match="integer"):
        zeroshot_ce_loss(I, W, torch.zeros(4), 6.0)
    with pytest.raises(ValueError, match="length n=4"):
        zeroshot_ce_loss(I, W, torch.zeros(4, 1, dtype=torch.long), 6.0)
    with pytest.raises(ValueError, match="feature dimension"):
        zeroshot_ce_loss(I, W[:, :2], y, 6.0)
