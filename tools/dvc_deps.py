#!/usr/bin/env python
"""Each DVC stage's `dive_nb/...` deps, generated from the package's import graph.

A stage depends on the dive_nb modules its command reaches: the papermill notebook(s) it runs (their code cells),
any `python script.py` / `python -m dive_nb.x` it runs, and the `dive-nb SUB` console command, then everything those
modules import, transitively.  Imports count wherever they are in a file (module level and lazy imports inside
functions), `from dive_nb.pkg import name` counts the submodule `pkg/name.py` where there is one, and importing a
module counts the `__init__.py` of every package above it (Python runs them).  A package data file (such as
`dive_nb/paper_numbers.json`) counts for a module that names it in a string literal.

Deps are listed as files, never folders: a stage's `dive_nb/...` entries are exactly its closure, sorted, so a new
module shows up as a missing dep (`--check`) instead of being hidden in a folder dep.  (On reading, a folder dep such
as `dive_nb/losses` still covers every file under it.)

The console module (settings.ini `console_scripts`, dive_nb.cli) is a dispatcher: one function per subcommand, each
lazily importing the layers it runs, so counted whole it would make every stage depend on every module.  For it alone
lazy imports count per function: `dive-nb check` reaches the imports of the functions `cmd_check` calls (by name,
transitively, within cli.py) plus cli's module-level imports, and another module importing cli (experiment.main, a
forwarder for `python -m dive_nb.experiment`) reaches only cli's module-level imports.

The per-seed record outputs of the evaluation stages (`metrics/mini/<method>-<seed>.json`, one `cache: false` entry
per seed, since DVC cannot loop inside a stage's outs) are generated too: one entry per seed of params.yaml's `seeds`,
so the list cannot drift from the seeds a run writes.

    python tools/dvc_deps.py            rewrite dvc.yaml's dive_nb deps and per-seed outs (only those lines change)
    python tools/dvc_deps.py --check    exit 1, one line per stale stage, if a stage's deps miss a module of its closure
                                        or its per-seed outs differ from params.yaml's seeds

Then `python tools/make_paper_dvc.py` carries the deps to paper/dvc.yaml (`make deps` runs both).
"""
from __future__ import annotations
import argparse, ast, configparser, functools, json, re, shlex, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "dive_nb"
SKIP = {"_modidx.py"}


# ------------------------------------------------------------------ the package's modules and their imports

@functools.cache
def _parse(path: Path) -> ast.Module:
    "A Python file's syntax tree (each file parsed once per run)."
    return ast.parse(path.read_text(), filename=str(path))


@functools.cache
def _modules(root: Path) -> dict[str, str]:
    "Dotted module name -> file path relative to `root` (a package is its `__init__.py`)."
    out = {}
    for p in sorted((root / PKG).rglob("*.py")):
        if p.name in SKIP or "__pycache__" in p.parts: continue
        rel = p.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__": parts = parts[:-1]
        out[".".join(parts)] = rel.as_posix()
    return out


def _data_files(root: Path) -> dict[str, str]:
    "Package data files (not Python): file name -> path relative to `root`."
    return {p.name: p.relative_to(root).as_posix() for p in sorted((root / PKG).rglob("*"))
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def _is_pkg(rel: str) -> bool:
    return rel.endswith("__init__.py")


def _imported_names(tree: ast.AST | list, current: str | None, is_pkg: bool, mods: dict[str, str]) -> set[str]:
    "The dive_nb modules (dotted) that the import statements anywhere in `tree` name; `current` resolves relative ones."
    found: set[str] = set()
    for node in (tree if isinstance(tree, list) else ast.walk(tree)):  # a tree, or its nodes already walked
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None: continue  # a relative import outside the package (a notebook, a script)
                base = current.split(".") if is_pkg else current.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods}  # a submodule, not a name
    return {m for m in found if m == PKG or m.startswith(PKG + ".")}


def _files_of(names: set[str], mods: dict[str, str]) -> set[str]:
    "File paths of dotted module names, with the `__init__.py` of each package above them (`import a.b` runs a/__init__)."
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if ".".join(parts[:i]) in mods: out.add(mods[".".join(parts[:i])])
    return out


def _console_module(root: Path) -> dict[str, str]:
    "Console command -> dotted module of its entry point (settings.ini `console_scripts`, else setup.py's literal)."
    text = ""
    ini = root / "settings.ini"
    if ini.is_file():
        cp = configparser.ConfigParser(interpolation=None); cp.read(ini)
        text = cp["DEFAULT"].get("console_scripts", "")
    if not text and (root / "setup.py").is_file():
        text = " ".join(re.findall(r"['\"]([\w.-]+\s*=\s*[\w.]+:\w+)['\"]", (root / "setup.py").read_text()))
    return {k.strip(): v.split(":")[0].strip() for k, v in (e.split("=", 1) for e in text.split() if "=" in e)}


def _dispatcher_nodes(tree: ast.Module):
    "The module-level statements of a console module (function bodies left out) and its functions by name."
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    top = ast.Module(body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))], type_ignores=[])
    return top, funcs


def _reached_functions(funcs: dict, start: str) -> list:
    "The functions of one module that `start` calls or names, transitively (by name, within the module)."
    seen, todo = [], [start]
    while todo:
        f = todo.pop()
        if f in seen or f not in funcs: continue
        seen.append(f)
        todo += [n.id for n in ast.walk(funcs[f]) if isinstance(n, ast.Name) and n.id in funcs]
    return [funcs[f] for f in seen]


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    "Every dive_nb module (path relative to `root`) -> the dive_nb files it imports anywhere in the file (lazy imports too)."
    mods, data = _modules(root), _data_files(root)
    consoles = set(_console_module(root).values())
    graph = {}
    for name, rel in mods.items():
        tree = _parse(root / rel)
        nodes = list(ast.walk(tree))
        scope = _dispatcher_nodes(tree)[0] if name in consoles else [n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))]
        deps = _files_of(_imported_names(scope, name, _is_pkg(rel), mods), mods)  # the console module: see the docstring
        deps |= {data[s] for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 for s in [n.value.rsplit("/", 1)[-1]] if s in data and n.value in (s, data[s], data[s][len(PKG) + 1:])}
        deps |= _files_of({name}, mods)  # the packages above it
        graph[rel] = deps - {rel}
    return graph


def closure(starts, graph: dict[str, set[str]]) -> set[str]:
    "Every file reachable from `starts` over `graph` (the starts included)."
    seen, todo = set(), list(starts)
    while todo:
        f = todo.pop()
        if f in seen: continue
        seen.add(f)
        todo += sorted(graph.get(f, ()))
    return seen


# ------------------------------------------------------------------ what a stage's command runs

def _notebook_source(path: Path) -> str:
    "The code cells of a notebook as Python: IPython magics and shell lines (`%...`, `!...`) dropped."
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
             for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    lines = [l for c in cells for l in c.splitlines() if not l.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _segments(cmd: str) -> list[list[str]]:
    "A shell command's simple commands (split at && || ; |), each as its words."
    words = shlex.split(cmd.replace("\n", " "), posix=True)
    segs, cur = [], []
    for w in words:
        if w in ("&&", "||", ";", "|"): segs.append(cur); cur = []
        else: cur.append(w)
    return [s for s in segs + [cur] if s]


def stage_entry_modules(stage: dict, root: Path = ROOT) -> set[str]:
    "The dive_nb files a stage's `cmd` reaches directly: its notebooks', scripts' and console command's imports."
    mods = _modules(root)
    consoles = _console_module(root)
    out: set[str] = set()
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    for words in (w for c in cmds for w in _segments(c)):
        prog = Path(words[0]).name
        if prog == "papermill":
            nb = next((w for w in words[1:] if w.endswith(".ipynb")), None)  # input, then output notebook
            if nb and (root / nb).is_file():
                out |= _files_of(_imported_names(ast.parse(_notebook_source(root / nb)), None, False, mods), mods)
        elif re.fullmatch(r"python[\d.]*", prog):
            if "-m" in words:
                out |= _files_of({words[words.index("-m") + 1]} & set(mods), mods)
            else:
                script = next((w for w in words[1:] if w.endswith(".py")), None)
                if script and (root / script).is_file():
                    tree = _parse(root / script)
                    out |= _files_of(_imported_names(tree, None, False, mods), mods)
        elif prog in consoles and consoles[prog] in mods:
            out |= _console_reach(consoles[prog], words[1:], root, mods)
    return out


def _console_reach(module: str, args: list[str], root: Path, mods: dict[str, str]) -> set[str]:
    "A console command's reach: its module's module-level imports plus those of the subcommand's functions."
    rel = mods[module]
    tree = _parse(root / rel)
    top, funcs = _dispatcher_nodes(tree)
    sub = next((a for a in args if not a.startswith("-")), None)
    starts = ["main", "describe"] if sub is None else [f"cmd_{sub}", "describe"]  # describe: every command's error path
    if sub is not None and f"cmd_{sub}" not in funcs:
        starts = ["main"]  # an unknown layout: the whole command
    reached = [f for s in starts for f in (_reached_functions(funcs, s) if s != "main" else funcs.values())]
    names = _imported_names(top, module, _is_pkg(rel), mods)
    for f in reached: names |= _imported_names(f, module, _is_pkg(rel), mods)
    return {rel} | _files_of(names, mods)


def expected_deps(stage: dict, root: Path = ROOT, graph: dict | None = None) -> list[str]:
    "The sorted dive_nb files of a stage's import closure (its generated `dive_nb/...` deps)."
    graph = module_graph(root) if graph is None else graph
    entry = stage_entry_modules(stage, root)
    reach = set()
    for f in entry:  # the console module is reached per subcommand: its own entry already holds what it imports
        reach |= ({f} | closure(graph[f], graph)) if f in graph else {f}
    return sorted(reach)


# ------------------------------------------------------------------ dvc.yaml

def _is_pkg_dep(d) -> bool:
    return isinstance(d, str) and (d == PKG or d.startswith(PKG + "/"))


def missing(stage: dict, want: list[str]) -> list[str]:
    "The files of `want` that the stage's deps do not cover (a folder dep covers every file under it)."
    have = [d.rstrip("/") for d in stage.get("deps") or [] if _is_pkg_dep(d)]
    return [f for f in want if not any(f == h or f.startswith(h + "/") for h in have)]


def _load(path: Path) -> dict:
    "A dvc.yaml with the dict entries of its `vars` substituted into every stage's `cmd` (e.g. `${papermill}`)."
    import yaml
    doc = yaml.safe_load(path.read_text()) or {}
    var = {k: str(v) for d in doc.get("vars", []) if isinstance(d, dict) for k, v in d.items()}
    sub = lambda c: re.sub(r"\$\{(\w+)\}", lambda m: var.get(m.group(1), m.group(0)), c)
    for st in (doc.get("stages") or {}).values():
        if isinstance(st, dict) and "cmd" in st:
            st["cmd"] = [sub(c) for c in st["cmd"]] if isinstance(st["cmd"], list) else sub(st["cmd"])
    return doc


def rewrite_text(text: str, wanted: dict[str, list[str]]) -> str:
    """`text` (a dvc.yaml) with each stage's `dive_nb/...` deps replaced by `wanted[stage]`, by text substitution:
    the new entries take the place of the first old one (or go after the first dep), every other line is kept."""
    lines = text.splitlines(keepends=True)
    out, i, stage, in_stages = [], 0, None, False
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)(\S[^:#]*):\s*(#.*)?$", line)
        if m and not m.group(1):
            in_stages = m.group(2) == "stages"
        elif m and in_stages and len(m.group(1)) == 2:
            stage = m.group(2).strip()
        if in_stages and stage in wanted and m and m.group(2).strip() == "deps" and len(m.group(1)) > 2:
            out.append(line)
            ind = len(m.group(1))
            block, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > ind
                                      or lines[i].lstrip().startswith("- ") and len(lines[i]) - len(lines[i].lstrip()) == ind):
                block.append(lines[i]); i += 1
            items = [re.match(r"^(\s*)-\s+(['\"]?)([^'\"#\s]+)\2\s*(#.*)?$", b) for b in block]
            if not block or not all(items):
                raise ValueError(f"stage {stage}: deps are not a plain list of one-line entries; edit them by hand")
            prefix = items[0].group(1)
            new = [f"{prefix}- {f}\n" for f in wanted[stage]]
            kept, placed = [], False
            for b, it in zip(block, items):
                if _is_pkg_dep(it.group(3)):
                    if not placed: kept += new; placed = True
                else:
                    kept.append(b)
            if not placed: kept[1:1] = new
            out += kept
            continue
        out.append(line); i += 1
    return "".join(out)


SEED_OUT = re.compile(r"^(\s*)- (metrics/[\w.-]+/[^\s/:]+)-(\d+)\.json:\s*$")


def seed_outs_text(text: str, seeds: list[int]) -> str:
    """`text` (a dvc.yaml) with every run of per-seed record outs (`- metrics/<profile>/<name>-<seed>.json:` each
    followed by its option lines) replaced by one entry per seed of `seeds`, the first entry's options repeated."""
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    while i < len(lines):
        m = SEED_OUT.match(lines[i])
        if not m:
            out.append(lines[i]); i += 1; continue
        ind, stem = m.group(1), m.group(2)
        opts, j = [], i + 1
        while j < len(lines) and len(lines[j]) - len(lines[j].lstrip()) > len(ind) and lines[j].strip():
            opts.append(lines[j]); j += 1
        while j < len(lines):  # the rest of the run: the same stem, any seed, with its option lines
            mj = SEED_OUT.match(lines[j])
            if not (mj and mj.group(1) == ind and mj.group(2) == stem): break
            j += 1
            while j < len(lines) and len(lines[j]) - len(lines[j].lstrip()) > len(ind) and lines[j].strip(): j += 1
        for sd in seeds: out += [f"{ind}- {stem}-{int(sd)}.json:\n", *opts]
        i = j
    return "".join(out)


def _seeds(params: Path) -> list[int] | None:
    "params.yaml's top-level `seeds` (None without a params file)."
    import yaml
    return list((yaml.safe_load(params.read_text()) or {}).get("seeds") or []) if params.exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a stage's deps miss a module of its import closure")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this tool's)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    path = root / "dvc.yaml"
    stages = _load(path).get("stages") or {}
    graph = module_graph(root)
    wanted = {n: expected_deps(s, root, graph) for n, s in stages.items()}
    seeds = _seeds(root / "params.yaml")
    text = path.read_text()
    if args.check:
        bad = 0
        if seeds is not None and seed_outs_text(text, seeds) != text:
            bad += 1
            print(f"error: dvc.yaml: the per-seed record outs differ from params.yaml seeds {seeds} (run python tools/dvc_deps.py)")
        for n, s in stages.items():
            miss = missing(s, wanted[n])
            if miss:
                bad += 1
                print(f"error: stage {n}: deps miss {', '.join(miss)} (run python tools/dvc_deps.py)")
        return 1 if bad else 0
    new = rewrite_text(text, {n: w for n, w in wanted.items() if w or any(_is_pkg_dep(d) for d in stages[n].get("deps") or [])})
    if seeds is not None: new = seed_outs_text(new, seeds)
    if new != text:
        path.write_text(new)
        print(f"wrote {path.relative_to(root) if path.is_relative_to(root) else path}")
    else:
        print(f"{path.name}: dive_nb deps up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
