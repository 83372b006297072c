"""A killed `dvc repro` resumes its runs: run folders are `persist: true` outputs, so DVC keeps them, and the loop's
checkpoint (its key and data fingerprint checked) carries the run on from where the kill left it, bit-exactly."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

BIN = Path(sys.executable).parent
SMOKE = yaml.safe_load((Path(__file__).parent / "smoke_params.yaml").read_text())


def sh(*argv, cwd, **kw):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, **kw)


@pytest.mark.skipif(not (BIN / "dvc").exists(), reason="dvc is a dev requirement (make venv installs it)")
def test_killed_dvc_repro_resumes(tmp_path):
    params = {**SMOKE, "finetune": {**SMOKE["finetune"], "steps": 400, "ckpt_every": 10}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("world", "pretrain", "teacher"):
        r = sh(BIN / "dive-nb", stage, "--params", "params.yaml", "--root", "a", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"finetune": {
        "cmd": "dive-nb check --params params.yaml --methods ft && dive-nb run --params params.yaml --root a --metrics m --methods ft --seeds 0",
        "deps": ["a/mini/world", "a/mini/pretrained", "a/mini/teacher"], "params": ["finetune"],
        "outs": [{"a/mini/runs": {"persist": True}}]}}}))
    assert sh(BIN / "dvc", "init", "--no-scm", "-q", cwd=tmp_path).returncode == 0
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=tmp_path, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "a" / "mini" / "runs" / "ft-0" / "ckpt.pt"
    t0, step = time.time(), 0
    while time.time() - t0 < 300 and p.poll() is None:
        if ck.exists():
            try: step = torch.load(ck, weights_only=False)["step"]
            except Exception: step = 0  # being replaced
            if step >= 30: break
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be killed (make it longer)"
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert 30 <= step < 400 and not (ck.parent / "model.pt").exists()
    r = sh(BIN / "dvc", "repro", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "ft: resuming from step " in out and " of 400 (" in out, out[-2000:]
    resumed_at = int(out.split("ft: resuming from step ")[1].split()[0])
    assert resumed_at >= 30
    # the resumed run equals an uninterrupted one, bit for bit
    import shutil
    shutil.copytree(tmp_path / "a" / "mini", tmp_path / "b" / "mini", ignore=shutil.ignore_patterns("runs"))
    r = sh(BIN / "dive-nb", "run", "--params", "params.yaml", "--root", "b", "--metrics", "m2", "--methods", "ft", "--seeds", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a = torch.load(ck.parent / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "mini" / "runs" / "ft-0" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
