"""A new method is one registry entry plus its params: the selection, the sweeps, the parameter check and every
report table and figure read its facts from the entry, with no other edit (issue: one registry as the single source)."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from dive_nb import figures, paper_numbers, report, selection
from dive_nb.config import check_params, load_params
from dive_nb.experiment import sweep_runs
from dive_nb.methods import METHODS, Method, Phase, register

from test_report import RATES, fabricate_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy():
    "A regulariser on top of FLYP from an imaginary paper, registered for one test and removed after it."
    m = register(Method("toy", "FLYP + w * CLIP loss on reference pairs (a test's method)",
                        (Phase(("visual", "text"), {"flyp": 1.0, "replay": "w"}),), hparams={"w": 1.0},
                        paper="Toy paper", order=6, colour="#123456", lr_group="flyp", weight="w", sweeps=("alpha",)))
    RATES["toy"] = (0.81, 0.6, 0.5)
    yield m
    del METHODS["toy"], RATES["toy"]


def test_selection_plans_and_chooses_for_the_toy(toy, monkeypatch):
    assert "toy" in selection.lr_groups()["flyp"] and selection.weighted()["toy"] == "w"
    # the selection itself, with training replaced by fixed ID validation scores (flyp's lr 1e-3 wins; toy's weights
    # cost 0, 0.5 and 3 points of FLYP's accuracy, so the largest within the 1-point tolerance is 0.3)
    score = {"flyp-lr0.0001": 80.0, "flyp-lr0.001": 85.0, "toy-w0.1": 85.0, "toy-w0.3": 84.5, "toy-w1": 82.0}
    monkeypatch.setattr(selection, "ProfileContext", lambda *a, **k: SimpleNamespace(suite=SimpleNamespace(id_val=[0] * 100)))
    monkeypatch.setattr(selection, "_scores", lambda ctx, world, jobs, workers: [score[j[2].name] for j in jobs])
    params = {"select": {"lr": [1e-4, 1e-3], "weight": [0.1, 0.3, 1.0], "tolerance": 1.0}, "workers": 1}
    chosen, rows = selection.select(params, None, None, None, "/nonexistent", methods=["flyp", "toy"])
    assert chosen == {"flyp": {"lr": 1e-3}, "toy": {"lr": 1e-3, "w": 0.3}}
    assert {r["method"] for r in rows} == {"flyp", "toy"}


def test_sweeps_and_params_know_the_toy(toy):
    # a one-method sweep goes to the method that names it; two that name it are ambiguous, and said so
    assert [m for m, _, _ in sweep_runs({"sweeps": {"refsize": [100, 300]}}, "refsize")] == ["dive", "dive"]
    with pytest.raises(ValueError, match="expected one registered method with it in `sweeps`, got \\['dive', 'toy'\\]"):
        sweep_runs({"sweeps": {"alpha": [0.0]}}, "alpha")
    p = load_params(ROOT / "params.yaml")
    p["main_methods"] = [*p["main_methods"], "toy"]  # the finetune matrix of dvc.yaml is ${main_methods}
    p["methods"]["toy"] = {"w": 0.3, "lr": 0.001}
    assert check_params(p)["methods"]["toy"] == {"w": 0.3, "lr": 0.001}


def test_every_report_table_shows_the_toy(toy, tmp_path):
    metrics = fabricate_profile(tmp_path / "metrics" / "mini", methods=("zeroshot", "ft", "flyp", "dive", "toy"), sweeps=False)
    report.build_report(metrics, tmp_path / "tables", tmp_path / "figures", n_boot=100, verbose=False)
    for t in ("main", "zeroshot", "geometry", "unified", "significance"):
        text = (tmp_path / "tables" / "mini" / f"{t}.md").read_text()
        assert "| toy" in text or "toy" in text.split("\n", 2)[2], t
    rows = [l for l in (tmp_path / "tables" / "mini" / "unified.md").read_text().splitlines() if l.startswith("| ")]
    order = [l.split("|")[1].strip() for l in rows[1:]]
    assert order.index("flyp") < order.index("toy") < order.index("dive")  # its `order`, between FLYP's family and DiVE
    assert "Toy paper" in next(l for l in rows if l.startswith("| toy"))  # its paper, not 'baseline'
    assert figures.method_colour("toy") == "#123456" and not paper_numbers.is_core("toy") and paper_numbers.is_core("dive")


def test_claims_and_report_sets_name_registered_methods():
    "Every DiVE claim's subject and rivals, the worlds' rivals and every fixed set the report reads are registered methods."
    from dive_nb.claims import DIVE_CLAIMS, WORLD_CLAIMS, JUDGES, claims_data
    R = paper_numbers.registry()
    for c in DIVE_CLAIMS + WORLD_CLAIMS:
        assert c.subject in R and all(r in R for r, _ in c.rivals), c.claim_id
        assert c.judge in JUDGES
    assert all(r in R for v in claims_data()["worlds"]["claims"].values() for r in v["rivals"])
    full = paper_numbers.proposed()
    assert R[full].reference in R
    for t in ("ablation", "alpha", "cosine"):
        assert paper_numbers.ablations(t) and all(R[m].reference == R[full].reference for m in paper_numbers.ablations(t))
    assert set(paper_numbers.figure_methods("diffvec")) <= set(R) and paper_numbers.zero_shot_method() in R
    assert all(R[m].label is None or isinstance(R[m].label, str) for m in R)


# Where a registered method's name still stands as a string literal in the package outside its registration, and what
# it means there: (how often, how many of those name the registered method itself, the sense). Most are the same word in
# another sense (a params section, a stage, a dataset role, a paper experiment's records). A new literal anywhere fails
# the test below: read the fact from the registry (`dive_nb.methods.Method`, `dive_nb.paper_numbers`) instead.
_EXP = "a paper experiment (papers.<exp> in params.yaml, metrics/<profile>/papers/<exp>.json)"
LITERALS = {
    ("cli.py", "pretrain"): (4, 0, "the `dive-nb pretrain` command and stage"),
    ("config.py", "pretrain"): (2, 0, "the `pretrain` params section and the world's pre-training split"),
    ("config.py", "zeroshot"): (1, 0, "the `data.zeroshot` params key (the zero-shot tasks)"),
    **{("config.py", e): (n, 0, _EXP) for e, n in (("m2mix", 1), ("mps", 1), ("promptot", 1), ("csaligner", 2))},
    ("experiment.py", "pretrain"): (3, 1, "the params section, the world's split, and the pre-training objective (method)"),
    ("figures.py", "csaligner_pairs"): (2, 0, "the figure csaligner_pairs.png"),
    **{("figures.py", e): (n, 0, _EXP) for e, n in (("mps", 1), ("m2mix", 1), ("promptot", 1), ("csaligner", 3))},
    ("losses/dive.py", "ft"): (2, 0, "the argument `ft` (fine-tuned embeddings) named in an error"),
    ("miniworld.py", "pretrain"): (2, 0, "the world's pre-training split"),
    ("paper_data.py", "zeroshot"): (15, 0, "the zero-shot dataset role"),
    ("paper_data.py", "coop"): (4, 0, "CoOp's split-file format (split_zhou_*.json)"),
    ("paper_experiments.py", "clip_pairs"): (1, 1, "m²-mix's experiment design (method)"),
    ("paper_experiments.py", "m2mix_pairs"): (1, 1, "m²-mix's experiment design (method)"),
    ("paper_experiments.py", "mps"): (2, 1, _EXP + "; MPS-Tuning's experiment design (method)"),
    ("paper_experiments.py", "lp"): (1, 1, "MPS-Tuning's experiment design (method)"),
    ("paper_experiments.py", "coop"): (3, 2, "MPS-Tuning's and Prompt-OT's designs (method); an arm's variant label"),
    ("paper_experiments.py", "promptot"): (2, 1, _EXP + "; Prompt-OT's experiment design (method)"),
    **{("paper_experiments.py", e): (1, 0, _EXP) for e in ("m2mix", "csaligner")},
    ("paper_numbers.py", "dive"): (2, 0, "the DiVE paper's citation key"),
    ("paper_numbers.py", "mps"): (1, 0, "the MPS branch, a model part"),
    ("peft.py", "mps"): (5, 0, "the MPS branch's state key and part name"),
    ("peft.py", "ft"): (2, 0, "the MPS branch's fine-tuned output"),
    ("tables.py", "zeroshot"): (3, 0, "the zero-shot table (ours and the DiVE paper's)"),
    ("tables.py", "pretrain"): (1, 0, "the pre-training stage's notebook"),
    **{("tables.py", e): (n, 0, _EXP) for e, n in (("m2mix", 2), ("mps", 2), ("promptot", 1), ("csaligner", 5))},
}


def _method_literals() -> dict:
    "(file, name) -> how often a registered method's name stands as a string literal, registrations `Method(name, ...)` aside."
    import ast
    from collections import Counter
    names, pkg, seen = set(paper_numbers.registry()), ROOT / "dive_nb", Counter()
    for p in sorted(pkg.rglob("*.py")):
        if p.name in ("methods.py", "other_methods.py", "_modidx.py"): continue  # the registry modules, and nbdev's index
        tree = ast.parse(p.read_text())
        registered = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Method" and n.args}
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in registered:
                seen[(p.relative_to(pkg).as_posix(), n.value)] += 1
    return dict(seen)


def test_method_name_literals_outside_the_registry_are_pinned_and_few():
    "Every literal method name outside the registry is pinned above with its sense; the references to methods themselves are a handful."
    seen = _method_literals()
    new = {k: v for k, v in seen.items() if v > LITERALS.get(k, (0,))[0]}
    assert not new, f"method names written as literals outside the registry (read the registry instead): {new}"
    gone = {k: v[0] for k, v in LITERALS.items() if seen.get(k, 0) < v[0]}
    assert not gone, f"fewer literals than pinned (lower the counts in LITERALS): {gone}"
    assert all(0 <= m <= n for n, m, _ in LITERALS.values())
    assert sum(m for _, m, _ in LITERALS.values()) == 8  # get_method("pretrain") and the paper experiments' designs
    assert sum(seen.values()) == 82  # 320 at 063f130, before the methods' facts moved to the registry
