"""Two CPU processes (gloo) give the same losses, gradients, EMA centre and parameters as one process on
the combined batch: CLIP/FLYP, DiVE's AVL + PVL with the EMA centre over several optimiser steps, and the
other batch-level losses through `gathered`."""
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dive_nb.distributed import (all_gather_no_grad, all_gather_with_grad, gathered, gathered_avl, rank_and_world,
                                 run_local_processes, same_on_all_ranks, setup_distributed, shard_indices, sync_gradients)
from dive_nb.losses.contrastive import clip_loss, zeroshot_ce_loss
from dive_nb.losses.cs import cs_divergence
from dive_nb.losses.dive import EMACenter, avl_loss, difference_vectors, pvl_loss
from dive_nb.losses.gram import gram_alignment_loss
from dive_nb.losses.mixup import m2mix_loss

B, D = 8, 6


class Enc(torch.nn.Module):
    "Two tiny encoders standing in for CLIP's towers."
    def __init__(self):
        super().__init__()
        self.img = torch.nn.Linear(12, D)
        self.txt = torch.nn.Embedding(20, D)
    def encode_image(self, x): return F.normalize(self.img(x), dim=-1)
    def encode_text(self, t): return F.normalize(self.txt(t).mean(1), dim=-1)


def _model():
    torch.manual_seed(0)
    return Enc()


def _data(step=0):
    g = torch.Generator().manual_seed(100 + step)
    return {"x": torch.randn(B, 12, generator=g), "t": torch.randint(0, 20, (B, 5), generator=g),
            "xr": torch.randn(B, 12, generator=g), "tr": torch.randint(0, 20, (B, 5), generator=g),
            "pre_i": F.normalize(torch.randn(B, D, generator=g), dim=-1),
            "pre_t": F.normalize(torch.randn(B, D, generator=g), dim=-1),
            "y": torch.randint(0, 3, (B,), generator=g)}


def _dive_run(steps, rows_fn):
    "FLYP + AVL + PVL with the EMA centre, `steps` SGD steps; rows_fn(step) -> this process's rows of the batch."
    m = _model()
    centre = EMACenter(D, alpha=0.5)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    hist = []
    for s in range(steps):
        d, rows = _data(s), rows_fn(s)
        opt.zero_grad()
        img, txt = m.encode_image(d["x"][rows]), m.encode_text(d["t"][rows])
        flyp = gathered(clip_loss)(img, txt, 10.0)
        u = difference_vectors(m.encode_image(d["xr"][rows]), d["pre_i"][rows])
        v = difference_vectors(m.encode_text(d["tr"][rows]), d["pre_t"][rows])
        l_avl = gathered_avl(u, v, centre)
        l_pvl = gathered(pvl_loss)(u, v)
        loss = flyp + l_avl + l_pvl
        loss.backward()
        sync_gradients(list(m.parameters()))
        hist.append({"loss": loss.detach(), "avl": l_avl.detach(), "centre": centre.center.clone(),
                     "same_centre": same_on_all_ranks(centre.center),
                     "grads": [p.grad.clone() for p in m.parameters()]})
        opt.step()
    return hist, [p.detach().clone() for p in m.parameters()]


def _clip_grads(rows):
    m = _model()
    d = _data()
    loss = gathered(clip_loss)(m.encode_image(d["x"][rows]), m.encode_text(d["t"][rows]), 10.0)
    loss.backward()
    sync_gradients(list(m.parameters()))
    return loss.detach(), [p.grad.clone() for p in m.parameters()]


def _others(rows):
    "Other batch-level losses with gradients: CS divergence, Gram alignment, m2-mix, CE with gathered labels."
    m = _model()
    d = _data()
    img, txt = m.encode_image(d["x"][rows]), m.encode_text(d["t"][rows])
    heads = F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(7)), dim=-1)
    out = {"cs": gathered(cs_divergence)(img, txt),
           "gram": gathered(gram_alignment_loss)(img, d["pre_i"][rows]),
           "m2mix": gathered(m2mix_loss)(img, txt, 0.3),
           "ce": gathered(zeroshot_ce_loss, "img", "labels")(img, heads, d["y"][rows], 10.0)}
    sum(out.values()).backward()
    sync_gradients(list(m.parameters()))
    return {k: v.detach() for k, v in out.items()}, [p.grad.clone() for p in m.parameters()]


def _worker(out_dir):
    info = setup_distributed()
    assert (info.rank, info.world_size) == rank_and_world() and info.world_size == 2
    rows = shard_indices(torch.arange(B))
    res = {"clip": _clip_grads(rows), "dive": _dive_run(3, lambda s: rows), "others": _others(rows)}
    # gather order and backward semantics: the gathered tensor is the global batch; each rank's rows get the
    # sum over ranks of the gradient (here every rank's loss is the same, so 2x)
    x = (torch.arange(4.0).view(2, 2) + 10 * info.rank).requires_grad_()
    g = all_gather_with_grad(x)
    (g * torch.arange(8.0).view(4, 2)).sum().backward()
    res["gather"] = (g.detach(), x.grad.clone(), all_gather_no_grad(torch.tensor([info.rank])))
    res["differs"] = same_on_all_ranks(torch.tensor([float(info.rank)]))
    try:
        all_gather_with_grad(torch.zeros(2 + info.rank, 3))
        res["shape_error"] = None
    except ValueError as e:
        res["shape_error"] = str(e)
    torch.save(res, Path(out_dir) / f"rank{info.rank}.pt")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run_local_processes(_worker, 2, (str(out),))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _close(a, b, tol=1e-6):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_clip_loss_and_grads_equal_single_process(two_process_results):
    ref_loss, ref_grads = _clip_grads(torch.arange(B))
    for res in two_process_results:
        loss, grads = res["clip"]
        _close(loss, ref_loss)
        for a, b in zip(grads, ref_grads): _close(a, b)


def test_dive_avl_pvl_with_ema_centre_equal_single_process(two_process_results):
    ref_hist, ref_params = _dive_run(3, lambda s: torch.arange(B))
    for res in two_process_results:
        hist, params = res["dive"]
        for s, (h, r) in enumerate(zip(hist, ref_hist)):
            assert h["same_centre"], f"EMA centre differs across ranks at step {s}"
            _close(h["centre"], r["centre"]); _close(h["loss"], r["loss"]); _close(h["avl"], r["avl"])
            for a, b in zip(h["grads"], r["grads"]): _close(a, b, 1e-5)
        for a, b in zip(params, ref_params): _close(a, b, 1e-5)
    # the two ranks hold bit-identical centres (gathered update), not merely close ones
    for a, b in zip(two_process_results[0]["dive"][0], two_process_results[1]["dive"][0]):
        assert torch.equal(a["centre"], b["centre"])
    assert ref_hist[-1]["centre"].abs().sum() > 0  # the centre did move


def test_other_batch_losses_equal_single_process(two_process_results):
    ref, ref_grads = _others(torch.arange(B))
    for res in two_process_results:
        vals, grads = res["others"]
        for k in ref: _close(vals[k], ref[k], 1e-5)
        for a, b in zip(grads, ref_grads): _close(a, b, 1e-5)


def test_gather_order_backward_and_errors(two_process_results):
    for rank, res in enumerate(two_process_results):
        g, xg, ranks = res["gather"]
        assert g.tolist() == [[0, 1], [2, 3], [10, 11], [12, 13]]
        w = torch.arange(8.0).view(4, 2)[2 * rank:2 * rank + 2]
        assert torch.equal(xg, 2 * w)  # sum over the two ranks' identical losses
        assert ranks.tolist() == [0, 1]
        assert res["differs"] is False
        assert "same shape on every rank" in res["shape_error"] and "[(2, 3), (3, 3)]" in res["shape_error"]


def test_single_process_fallbacks(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"): monkeypatch.delenv(k, raising=False)
    info = setup_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x and same_on_all_ranks(x)
    torch.testing.assert_close(gathered(clip_loss)(F.normalize(x, dim=-1), F.normalize(x, dim=-1), 5.0),
                               clip_loss(F.normalize(x, dim=-1), F.normalize(x, dim=-1), 5.0))
    monkeypatch.setenv("RANK", "3"); monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=3 must lie in"):
        setup_distributed()
    with pytest.raises(ValueError, match="has no argument"):
        gathered(clip_loss, "labels")
