"""tools/dvc_deps.py: every stage's dive_nb deps cover its import closure (lazy and relative imports included), and
the rewrite changes only those entries.  Pure `ast` parsing: nothing here imports dive_nb or torch."""
import contextlib, importlib.util, io, json, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "dvc_deps.py"
_spec = importlib.util.spec_from_file_location("dvc_deps", TOOL)  # this checkout's tool, whatever sys.path holds
D = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(D)


class _Result:
    def __init__(self, rc, out): self.returncode, self.stdout = rc, out


def _run(*args, root=ROOT):
    "The tool's command line, in this process (fast): its exit status and what it printed."
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): rc = D.main(["--root", str(root), *args])
    return _Result(rc, buf.getvalue())


def test_repository_deps_cover_every_import_closure():
    r = subprocess.run([sys.executable, str(TOOL), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_finetune_closure_has_geometry_and_distributed():
    stages = D._load(ROOT / "dvc.yaml")["stages"]  # `${papermill}` substituted from dvc.yaml's vars
    assert "papermill --cwd" in stages["finetune"]["cmd"]
    deps = D.expected_deps(stages["finetune"], ROOT)
    # every loss imports geometry; train imports distributed; experiment imports models and evaluate
    assert {"dive_nb/geometry.py", "dive_nb/distributed.py", "dive_nb/models.py", "dive_nb/evaluate.py"} <= set(deps), deps
    assert "dive_nb/_modidx.py" not in deps and "dive_nb/report.py" not in deps, deps


NOTEBOOK = {"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "!echo hi\n", "from dive_nb.a import f\n"],
                       "metadata": {}, "outputs": [], "execution_count": None}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
DVC = """# a comment at the top
stages:
  one:
    matrix:
      x: [1, 2]
    cmd: mkdir -p out && papermill --cwd . -k python3 nbs/one.ipynb out/one-${item.x}.ipynb -p x ${item.x}
    deps:
      - nbs/one.ipynb
      - artifacts/in
      - dive_nb/a.py
      - params_extra.txt
    outs:
      - out/${item.x}:
          persist: true    # an inline comment
"""


def _fake_repo(tmp_path):
    (tmp_path / "dive_nb").mkdir(); (tmp_path / "nbs").mkdir()
    (tmp_path / "dive_nb" / "__init__.py").write_text('__version__ = "0"\n')
    (tmp_path / "dive_nb" / "a.py").write_text("def f():\n    from dive_nb.b import g  # lazy\n    return g()\n")
    (tmp_path / "dive_nb" / "b.py").write_text("from .c import h\ndef g(): return h()\n")
    (tmp_path / "dive_nb" / "c.py").write_text("def h(): return 1\n")
    (tmp_path / "dive_nb" / "unused.py").write_text("import os\n")
    (tmp_path / "dive_nb" / "_modidx.py").write_text("import dive_nb.unused\n")
    (tmp_path / "nbs" / "one.ipynb").write_text(json.dumps(NOTEBOOK))
    (tmp_path / "dvc.yaml").write_text(DVC)
    return tmp_path


def test_check_names_missing_lazy_and_relative_imports_then_rewrite_fixes_them(tmp_path):
    repo = _fake_repo(tmp_path)
    r = _run("--check", root=repo)
    assert r.returncode == 1
    assert r.stdout.startswith("error: stage one: deps miss ") and "(run python tools/dvc_deps.py)" in r.stdout, r.stdout
    assert "dive_nb/b.py" in r.stdout and "dive_nb/c.py" in r.stdout and "dive_nb/a.py" not in r.stdout, r.stdout
    assert len(r.stdout.splitlines()) == 1, r.stdout
    r = _run(root=repo)
    assert r.returncode == 0, r.stdout
    assert _run("--check", root=repo).returncode == 0
    text = (repo / "dvc.yaml").read_text()
    deps = yaml.safe_load(text)["stages"]["one"]["deps"]
    assert deps == ["nbs/one.ipynb", "artifacts/in", "dive_nb/__init__.py", "dive_nb/a.py", "dive_nb/b.py", "dive_nb/c.py",
                    "params_extra.txt"], deps
    # only the deps lines changed: comments, the cmd and the rest as they were
    strip = lambda t: [l for l in t.splitlines() if not l.strip().startswith("- dive_nb/")]
    assert strip(text) == strip(DVC)
    assert _run(root=repo).stdout.endswith("up to date\n")  # a second run changes nothing


def test_folder_dep_covers_its_files(tmp_path):
    repo = _fake_repo(tmp_path)
    (repo / "dvc.yaml").write_text(DVC.replace("- dive_nb/a.py", "- dive_nb"))
    assert _run("--check", root=repo).returncode == 0


def test_vars_in_commands_are_expanded(tmp_path):
    "A stage whose command names its notebook through a dvc.yaml var still reaches the notebook's imports."
    repo = _fake_repo(tmp_path)
    text = DVC.replace("stages:\n", "vars:\n  - pm: mkdir -p out && papermill --cwd . -k python3\nstages:\n")
    (repo / "dvc.yaml").write_text(text.replace("mkdir -p out && papermill --cwd . -k python3 nbs/one.ipynb", "${pm} nbs/one.ipynb"))
    stage = D._load(repo / "dvc.yaml")["stages"]["one"]
    assert set(D.expected_deps(stage, repo)) >= {"dive_nb/a.py", "dive_nb/b.py", "dive_nb/c.py"}


SEEDED = """stages:
  evaluate:
    cmd: echo
    outs:
      - artifacts/mini/preds/${item.method}
      - metrics/mini/${item.method}-0.json:
          cache: false
      - metrics/mini/${item.method}-1.json:
          cache: false
  other:
    cmd: echo
    outs:
      - metrics/mini/zeroshot-0.json:
          cache: false
"""


def test_per_seed_outs_follow_params_seeds(tmp_path):
    "The per-seed record outs are one entry per seed of params.yaml: --check fails when they drift, the rewrite fixes them."
    out = D.seed_outs_text(SEEDED, [0, 1, 2])
    for stem in ("${item.method}", "zeroshot"):
        assert [f"metrics/mini/{stem}-{s}.json" in out for s in (0, 1, 2)] == [True] * 3, out
    assert out.count("cache: false") == 6 and "artifacts/mini/preds/${item.method}" in out
    assert yaml.safe_load(out)["stages"]["evaluate"]["outs"][1:] == [{f"metrics/mini/${{item.method}}-{s}.json": {"cache": False}} for s in range(3)]
    assert D.seed_outs_text(out, [5]).count(".json") == 2 and D.seed_outs_text(out, [0, 1, 2]) == out
    repo = _fake_repo(tmp_path)
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text() + SEEDED.replace("stages:\n", ""))
    (repo / "params.yaml").write_text("seeds: [0, 1, 2]\n")
    r = _run("--check", root=repo)
    assert r.returncode == 1 and "per-seed record outs differ" in r.stdout and "[0, 1, 2]" in r.stdout, r.stdout
    assert _run(root=repo).returncode == 0 and _run("--check", root=repo).returncode == 0
    assert "zeroshot-2.json" in (repo / "dvc.yaml").read_text()


def _cycles(graph: dict) -> list[list[str]]:
    "The strongly connected components of more than one module (Tarjan), i.e. the import cycles."
    index, low, stack, on, out = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in list(graph):
        if v not in index: visit(v)
    return out


def test_no_import_cycle_in_the_package():
    "dive_nb's import graph (lazy imports inside functions included) has no cycle; the checker finds a planted one."
    assert _cycles(D.module_graph(ROOT)) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_imports(src: str) -> list[str]:
    "Names starting with '_' that `src` imports from a dive_nb module (relative or absolute, lazy imports included)."
    import ast
    return [a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module is not None
            and (n.level > 0 or n.module.split(".")[0] == "dive_nb") for a in n.names if a.name.startswith("_")]


def test_no_module_imports_another_modules_private_names():
    "A module's private helpers stay its own: what another module needs is public (named without a leading underscore)."
    bad = {p.name: _private_imports(p.read_text()) for p in (ROOT / "dive_nb").rglob("*.py") if p.name != "_modidx.py"}
    assert {k: v for k, v in bad.items() if v} == {}
    assert _private_imports("from .stats import aggregate, _label\ndef f():\n    from dive_nb.tables import _papers") == ["_label", "_papers"]
    assert _private_imports("from torch import _C\nfrom .x import public as _alias") == []
