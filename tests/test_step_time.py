"""The step-time benchmark (benchmarks/step_time.py): its summary arithmetic on known times, and the lockstep
protocol end to end on the tiny model (every child steps exactly the rounds the parent asks for)."""
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("step_time", ROOT / "benchmarks" / "step_time.py")
st = importlib.util.module_from_spec(spec); spec.loader.exec_module(st)


def _recs(mem):
    return {m: [{"method": m, "peak_mb": 1000.0 + v, "peak_above_mb": v}] for m, v in mem.items()}


def test_summarise_known_times():
    # FLYP 1 s, DiVE 1.3 s, bare 1 s, bare + reference 1.2 s every round: DiVE/FLYP 1.3, floor 1.2, distance +0.1 exactly
    R = 20
    T = {"flyp": [1.0] * R, "dive": [1.3] * R, "bare": [1.0] * R, "bare_ref": [1.2] * R}
    rows, floor = st.summarise(T, _recs({"flyp": 100, "dive": 110, "bare": 90, "bare_ref": 120}), block=5)
    assert len(floor) == 4 and all(abs(f - 1.2) < 1e-12 for f in floor)  # 20 rounds in blocks of 5
    d = {r["method"]: r for r in rows}
    assert abs(d["dive"]["time_ratio"] - 1.3) < 1e-12 and abs(d["dive"]["mem_ratio"] - 1.1) < 1e-12
    assert all(abs(d["dive"][k] - 0.1) < 1e-12 for k in ("above_floor", "above_floor_lo", "above_floor_hi"))
    # unpaired (the floor timed apart): the same point estimate
    rows, _ = st.summarise(T, _recs({"flyp": 100, "dive": 110, "bare": 90, "bare_ref": 120}), block=5, paired=False)
    assert abs({r["method"]: r for r in rows}["dive"]["above_floor"] - 0.1) < 1e-12


def test_summarise_block_ratio_is_robust_to_one_slow_step():
    # one 10x slow FLYP step: a ratio of summed seconds over a block of 10 moves DiVE/FLYP by ~50%, the mean of
    # per-step ratios would move it by ~9x / 10; the bootstrap interval brackets the mean over blocks
    T = {"flyp": [1.0] * 40, "dive": [1.2] * 40, "bare": [1.0] * 40, "bare_ref": [1.2] * 40}
    T["flyp"][3] = 10.0
    rows, floor = st.summarise(T, _recs({"flyp": 1, "dive": 1, "bare": 1, "bare_ref": 1}), block=10)
    d = {r["method"]: r for r in rows}["dive"]
    assert d["time_ratio_blocks"][0] == pytest.approx(12 / 19) and d["time_ratio_blocks"][1:] == pytest.approx([1.2] * 3)
    assert d["above_floor_lo"] <= d["above_floor"] <= d["above_floor_hi"] <= 1e-12


def test_bootstrap_diff_brackets_the_difference():
    m, lo, hi = st.bootstrap_diff([1.0, 1.1, 1.2, 1.3], [0.5, 0.6, 0.7])
    assert m == pytest.approx(0.55) and lo < m < hi and hi - lo < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("apart", [False, True])
def test_lockstep_end_to_end(tmp_path, apart):
    out = tmp_path / "cost.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--model", "dive-tiny-vit", "--batch", "8", "--methods",
           "dive", "lpft", "--steps", "7", "--warmup", "1", "--block", "1", "--threads", "1", "--json", str(out)]
    r = subprocess.run(cmd + (["--floor-apart"] if apart else []), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {x["method"]: x for x in json.loads(out.read_text())}
    assert set(rows) == {"flyp", "bare", "bare_ref", "dive", "lpft"}
    # every method stepped the same 6 timed rounds (lpft's two phases round 7 steps up to 8: the parent ran the common 7)
    assert all(x["rounds"] == 6 and len(x["sec_per_step_runs"]) == 6 for x in rows.values())
    assert rows["dive"]["design"].startswith("lockstep") and ("rounds of their own" in rows["dive"]["design"]) == apart
    assert rows["flyp"]["time_ratio"] == pytest.approx(1.0) and rows["dive"]["above_floor_lo"] <= rows["dive"]["above_floor_hi"]
    assert "DiVE / FLYP time - floor" in r.stdout


def test_lockstep_needs_enough_rounds():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--steps", "10", "--block", "5"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: --steps 10 leaves 7 timed rounds")


def test_profile_groups_find_every_part_of_the_step():
    "benchmarks/profile_step.py on the tiny model: each group finds its functions (AdamW's step is Adam.step in torch 2), the groups fit in the loop."
    import argparse
    ps = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    prof = importlib.util.module_from_spec(ps); ps.loader.exec_module(prof)
    a = argparse.Namespace(model="dive-tiny-vit", params=None, image_size=32, batch=8, ref_batch=4, steps=3, threads=1,
                           device="cpu", precision="fp32", reference_pass="fused")
    for m in ("flyp", "dive"):
        r = prof.profile(m, a)
        assert all(r[g] > 0 for g in ("image tower (forward)", "text tower (forward)", "backward", "optimizer")), (m, r)
        assert (r["DiVE terms (EMA, AVL, PVL, differences)"] > 0) == (m == "dive")
        assert sum(r[g] for g in prof.GROUPS) <= r["whole loop"] * 1.001
