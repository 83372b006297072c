"""The whole mini pipeline under DVC on a smoke parameter set, in a temporary clone of this repository:
every declared output exists and parses, a second `dvc repro` does nothing, and changing one method's
hyperparameter reruns only that method's stages (and the sweeps and report that read it)."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _sh(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, shell=True, capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_dvc_pipeline_smoke(tmp_path):
    if shutil.which("git") is None: pytest.skip("git not available")
    repo = tmp_path / "repo"
    r = _sh(f"git clone -q {ROOT} {repo}", tmp_path)
    assert r.returncode == 0, r.stderr
    # the working tree's versions of the pipeline files (so the test checks what is about to be committed)
    for rel in ["dvc.yaml", "nbs/experiments", "dive_nb", "benchmarks", "tools"]:
        src, dst = ROOT / rel, repo / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True); shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.copy(ROOT / "tests" / "smoke_params.yaml", repo / "params.yaml")
    for d in ("metrics", "tables/mini", "figures/mini"):
        shutil.rmtree(repo / d, ignore_errors=True)
    r = _sh("dvc repro", repo, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # every declared output exists and parses
    recs = sorted((repo / "metrics/mini").glob("*-[0-9].json"))
    methods = {json.loads(p.read_text())["method"] for p in recs}
    assert methods == {"zeroshot", "ft", "wiseft", "flyp", "dive", "dive_wise"}, methods
    for p in recs:
        rec = json.loads(p.read_text())
        assert 0 <= rec["id_acc"] <= 100 and "avg" in rec["ood_acc"] and "avg" in rec["zs_acc"]
        assert -1 <= rec["geometry"]["rsa"] <= 1 and rec["git_rev"] != "unknown"
    for sweep in ("lam", "alpha", "refsize", "wise"):
        assert list((repo / "metrics/mini/sweeps" / sweep).glob("*.json")), sweep
    assert json.loads((repo / "metrics/mini/cost.json").read_text())[0]["method"] == "flyp"
    for t in ("main", "zeroshot", "geometry", "ablation", "alpha", "refsize", "wise", "lam", "cost", "significance", "unified"):
        assert (repo / f"tables/mini/{t}.md").read_text().startswith("**Table"), t
        assert (repo / f"tables/mini/{t}.csv").stat().st_size > 0, t
    for t in ("m2mix_retrieval", "mps_fewshot", "mps_ablation", "promptot_base2novel", "csaligner", "papers_selection", "timing", "worlds"):
        assert (repo / f"tables/mini/{t}.md").read_text().startswith("**Table"), t
    # the other world: its own world seed, the worlds' methods with one fine-tuning seed, in the worlds table
    w1 = sorted(p.name for p in (repo / "metrics/mini/worlds/world1").glob("*.json"))
    assert w1 == ["dive-0.json", "flyp-0.json", "ft-0.json", "zeroshot-0.json"], w1
    assert "world 1" in (repo / "tables/mini/worlds.md").read_text()
    for exp in ("m2mix", "mps", "promptot", "csaligner"):  # every arm on both smoke seeds, rates selected where the grid has two
        rec = json.loads((repo / f"metrics/mini/papers/{exp}.json").read_text())
        assert rec["rows"] and {r["seed"] for r in rec["rows"]} == {0, 1} and bool(rec["selection"]) == (exp == "m2mix"), exp
    claims = (repo / "tables/mini/claims.csv").read_text()
    assert all(f",{c}," in claims for c in ("M1", "P1", "O1", "S3")) and "out of scope" in claims
    for f in ("geometry_rsa", "wise_curves", "lam_sweep", "unified_id_vs_zs", "world", "diffvec", "embedding_geometry",
              "mps_fewshot", "csaligner_gap", "csaligner_pairs", "promptot_base2novel", "m2mix_reliability"):
        assert (repo / f"figures/mini/{f}.png").read_bytes()[:4] == b"\x89PNG", f
    assert (repo / "executed/mini/04_finetune-dive.ipynb").exists()
    # readable DVC views: one short row per method in `dvc metrics show`, the figures in `dvc plots show`
    assert json.loads((repo / "metrics/mini_summary/dive.json").read_text())["n"] == 3
    r = _sh("dvc metrics show metrics/mini_summary", repo)
    assert r.returncode == 0 and "dive.json" in r.stdout and max(map(len, r.stdout.splitlines())) < 200, r.stdout[:2000]
    r = _sh("dvc plots show -o plots_html figures/mini/wise_curves.png figures/mini/lam_sweep.png figures/mini/mps_fewshot.png "
            "figures/mini/unified_id_vs_zs.png figures/mini/geometry_rsa.png", repo)
    assert r.returncode == 0, r.stderr[-2000:]
    html = (repo / "plots_html" / "index.html").read_text()
    assert sum(html.count(f) for f in ("wise_curves", "lam_sweep", "mps_fewshot", "unified_id_vs_zs", "geometry_rsa")) >= 4
    shutil.rmtree(repo / "plots_html")
    readme = (repo / "README.md").read_text()
    assert "**Table" in readme and "No results yet" not in readme
    # a second repro does nothing
    r = _sh("dvc repro", repo, timeout=600)
    assert r.returncode == 0 and "Running stage" not in r.stdout, r.stdout[-2000:]
    # changing one method's hyperparameter reruns only its dependants
    p = repo / "params.yaml"
    p.write_text(p.read_text().replace("dive: {lam: 1.0, alpha: 0.99}", "dive: {lam: 2.0, alpha: 0.99}"))
    r = _sh("dvc status dvc.yaml", repo)
    changed = {l.strip().rstrip(":") for l in r.stdout.splitlines() if l and not l.startswith(("\t", " "))}
    assert {"finetune@dive", "evaluate@dive"} <= changed, changed
    assert not changed & {"world", "pretrain", "teacher", "finetune@flyp", "finetune@ft", "evaluate@flyp", "evaluate@ft",
                          "evaluate_zeroshot", "evaluate_wiseft"}, changed
    r = _sh("dvc repro", repo, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    ran = {l.split("'")[1] for l in r.stdout.splitlines() if l.startswith("Running stage")}
    assert "finetune@dive" in ran and "report" in ran and "finetune@flyp" not in ran and "pretrain" not in ran, ran
