"""Resume after a real SIGKILL: the resumed run ends bit-identical to an uninterrupted one
(model, EMA centre, optimizer, scheduler, sampling generator and torch RNG state)."""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import torch

HERE = str(Path(__file__).parent)

SCRIPT = textwrap.dedent('''
    import sys, time, torch, torch.nn as nn, torch.nn.functional as F
    torch.set_num_threads(1)
    from dive_nb.data import Split
    from dive_nb.methods import FineTuneModel, get_method
    from dive_nb.train import TrainConfig, train
    sys.path.insert(0, sys.argv[3])
    from tiny import TinyCLIP as Tiny

    g = torch.Generator().manual_seed(0)
    ids = Split(torch.randint(0, 256, (64, 3, 4, 4), generator=g, dtype=torch.uint8), {"y": torch.randint(0, 3, (64,), generator=g)})
    ref = Split(torch.randint(0, 256, (32, 3, 4, 4), generator=g, dtype=torch.uint8), {}, ["x"] * 32, torch.randint(0, 20, (32, 5), generator=g))
    torch.manual_seed(0)
    model = FineTuneModel(Tiny(), F.normalize(torch.randn(3, 8), dim=-1))
    with torch.no_grad(): pre = (model.encode_image(ref.images.float() / 255), model.encode_text(ref.tokens))
    prompts = torch.randint(0, 20, (2, 3, 5), generator=g)
    delay = float(sys.argv[2])
    def prep(x):
        time.sleep(delay)  # slow steps so the parent can kill the run mid-way
        return x.float() / 255
    cfg = TrainConfig(steps=40, batch_size=16, ref_batch_size=8, lr=1e-2, ckpt_every=3, progress=False)
    train(model, get_method("dive"), ids, "y", prompts, prep, cfg, ref, pre, out_dir=sys.argv[1])
''')


def _tree_equal(a, b):
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict): return a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_after_sigkill(tmp_path):
    script = tmp_path / "run.py"; script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(full), "0", HERE], check=True, env=env, timeout=300)
    p = subprocess.Popen([sys.executable, str(script), str(killed), "0.02", HERE], env=env)
    ck = killed / "ckpt.pt"
    t0 = time.time()
    while time.time() - t0 < 120:  # wait for a mid-run checkpoint, then SIGKILL
        if ck.exists():
            try:
                if torch.load(ck, weights_only=False)["step"] >= 9: break
            except Exception:
                pass  # (never happens with atomic writes, but do not fail on a partial read)
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    mid = torch.load(ck, weights_only=False)
    assert 9 <= mid["step"] < 40, mid["step"]  # killed mid-run, with a checkpoint on disk
    subprocess.run([sys.executable, str(script), str(killed), "0", HERE], check=True, env=env, timeout=300)
    a, b = (torch.load(d / "ckpt.pt", weights_only=False) for d in (full, killed))
    for k in ("model", "opt", "sched", "gen", "torch_rng", "phase", "step"):
        assert _tree_equal(a[k], b[k]), k
    assert a["model"]["state.center.center"].abs().sum() > 0
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (full, killed))
    assert _tree_equal(ma, mb)
