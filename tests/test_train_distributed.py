"""Two processes (gloo, CPU) through the one training loop equal one process on the combined batch:
same final weights, EMA centre and optimizer state (FLYP + AVL + PVL with all-gathered features);
and a checkpoint written by two processes resumes in one."""
import torch, torch.nn as nn, torch.nn.functional as F

from dive_nb.data import Split
from dive_nb.distributed import run_local_processes, setup_distributed, cleanup_distributed
from dive_nb.methods import FineTuneModel, get_method
from dive_nb.train import TrainConfig, train
from tiny import TinyCLIP


def _setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = Split(torch.randint(0, 256, (64, 3, 4, 4), generator=g, dtype=torch.uint8), {"y": torch.randint(0, 3, (64,), generator=g)})
    ref = Split(torch.randint(0, 256, (32, 3, 4, 4), generator=g, dtype=torch.uint8), {}, ["x"] * 32,
                torch.randint(0, 20, (32, 5), generator=g))
    model = FineTuneModel(TinyCLIP(), F.normalize(torch.randn(3, 8), dim=-1))
    with torch.no_grad(): pre = (model.encode_image(ref.images.float() / 255), model.encode_text(ref.tokens))
    return model, ids, ref, pre, torch.randint(0, 20, (2, 3, 5), generator=g)


class _Crash(Exception): pass


def _run(out_dir, steps=6, resume=True, crash_after=None):
    torch.set_num_threads(1)
    model, ids, ref, pre, prompts = _setup()
    cfg = TrainConfig(steps=steps, batch_size=16, ref_batch_size=8, lr=1e-2, ckpt_every=3, progress=False)
    calls = [0]
    def prep(x):
        calls[0] += 1
        if crash_after is not None and calls[0] > crash_after: raise _Crash("simulated failure")
        return x.float() / 255
    train(model, get_method("dive"), ids, "y", prompts, prep, cfg, ref, pre, out_dir=out_dir, resume=resume)
    return model


def _worker(out_dir, steps, crash_after=None):
    setup_distributed()
    try: _run(out_dir, steps, crash_after=crash_after)
    finally: cleanup_distributed()


def test_two_processes_equal_one(tmp_path):
    one = _run(tmp_path / "one").state_dict()
    run_local_processes(_worker, nprocs=2, args=(str(tmp_path / "two"), 6))
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert one.keys() == two.keys()
    for k in one: torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    assert one["state.center.center"].abs().sum() > 0
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=False) for d in ("one", "two"))
    for k in a["opt"]["state"]:
        torch.testing.assert_close(b["opt"]["state"][k]["exp_avg"], a["opt"]["state"][k]["exp_avg"], rtol=1e-4, atol=1e-6)


def test_resume_across_process_counts(tmp_path):
    "A two-process run that dies after its step-3 checkpoint, resumed in ONE process, equals a one-process run."
    d = tmp_path / "mixed"
    try:
        run_local_processes(_worker, nprocs=2, args=(str(d), 6, 2 * 4))  # dies in step 4 (2 prepare calls per step)
        raise AssertionError("the run should have died")
    except Exception as e:
        assert "simulated failure" in str(e) or "_Crash" in repr(e) or "ProcessRaisedException" in type(e).__name__, repr(e)
    assert torch.load(d / "ckpt.pt", weights_only=False)["step"] == 3
    resumed = _run(d).state_dict()  # one process picks up the two-process checkpoint
    one = _run(tmp_path / "one").state_dict()
    for k in one: torch.testing.assert_close(resumed[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
