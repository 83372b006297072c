#!/usr/bin/env python
"""Build README.md from nbs/index.ipynb (README has one writer: this script), and keep the repository
reference of the Colab badge (index and Colab notebooks) and of the Colab notebook's install cell in step
with settings.ini (`git_url`, `colab_ref`): settings.ini is the one place that names them.

quarto (which `nbdev_readme` needs) cannot be installed offline, so this is a small converter:
markdown cells are copied, code cells are shown as ```python blocks unless they start with `#| hide`,
and the marker `<!-- results -->` is replaced by the measured tables in `tables/mini/` (written by the
pipeline's report stage; numbers are never typed by hand).

    python tools/build_readme.py           # write README.md
    python tools/build_readme.py --check   # exit 1 if README.md or a notebook's repository reference is stale
"""
from __future__ import annotations
import argparse, configparser, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- results -->"
# Tables inserted into README, in this order (the rest of tables/mini/ is linked).
RESULT_TABLES = ["regime", "claims", "worlds", "main", "zeroshot", "geometry", "unified", "cost", "timing"]


def _settings() -> dict:
    cp = configparser.ConfigParser(delimiters=["="])
    cp.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cp["DEFAULT"])


def _cell_text(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _csv(path: Path) -> list[dict]:
    import csv
    with path.open(encoding="utf-8", newline="") as f: return list(csv.DictReader(f))


def at_a_glance(tables_dir: Path = ROOT / "tables" / "mini") -> str:
    "The verdicts of the regime, claims and worlds tables as a few lines of markdown (computed, never typed)."
    lines = []
    if (tables_dir / "regime.csv").exists():
        R = _csv(tables_dir / "regime.csv")
        bad = [f"{r['id']} ({r['criterion']})" for r in R if r["pass"] not in ("True", "true", "1")]
        lines.append(f"- **Regime** (`regime.md`, baselines only): {len(R) - len(bad)} of {len(R)} criteria hold"
                     + (f"; not met: {'; '.join(bad)}." if bad else "."))
    if (tables_dir / "claims.csv").exists():
        C = _csv(tables_dir / "claims.csv")
        for paper in dict.fromkeys(r["paper"] for r in C):
            by = {}
            for r in C:
                if r["paper"] == paper: by.setdefault(r["verdict"], []).append(r["claim_id"] + (f" {r['metric']}" if r["metric"] not in ("", "-") else ""))
            judged = sum(len(v) for k, v in by.items() if k not in ("out of scope", "informational"))
            order = ("reproduced", "not reproduced", "inconclusive", "not run", "out of scope", "informational")
            lines.append(f"- **{paper}'s claims** (`claims.md`): {len(by.get('reproduced', []))} of {judged} rows reproduced; "
                         + "; ".join(f"{k}: {', '.join(by[k])}" for k in order if k in by) + ".")
    if (tables_dir / "worlds.csv").exists():
        W = _csv(tables_dir / "worlds.csv")
        for w in dict.fromkeys(r["world"] for r in W):
            rs = [r for r in W if r["world"] == w]
            ok = [r["id"] for r in rs if r["result"] in ("pass", "reproduced")]
            lines.append(f"- **{w}** (`worlds.md`): holds: {', '.join(ok) or 'none'}; does not: "
                         f"{', '.join(r['id'] + ' (' + r['result'] + ')' for r in rs if r['id'] not in ok) or 'none'}.")
    return "\n".join(["**At a glance** (computed from the tables below by `tools/build_readme.py`):", "", *lines]) if lines else ""


def results_section(tables_dir: Path = ROOT / "tables" / "mini") -> str:
    "Markdown for the results section, built from the report stage's tables."
    if not tables_dir.is_dir() or not any(tables_dir.glob("*.md")):
        return "_No results yet: run `make repro` (the mini profile) to generate `tables/mini/`._"
    parts = [g] if (g := at_a_glance(tables_dir)) else []
    names = [n for n in RESULT_TABLES if (tables_dir / f"{n}.md").exists()]
    for n in names:
        parts.append((tables_dir / f"{n}.md").read_text(encoding="utf-8").strip())
    others = sorted(p.name for p in tables_dir.glob("*.md") if p.stem not in names)
    if others:
        parts.append("Other tables: " + ", ".join(f"[`{o}`](tables/mini/{o})" for o in others) + ".")
    return "\n\n".join(parts)


def build(index: Path = ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(index.read_text(encoding="utf-8"))
    s = _settings()
    out = []
    for cell in nb["cells"]:
        text = _cell_text(cell).rstrip()
        if not text:
            continue
        if cell["cell_type"] == "markdown":
            out.append(text)
        elif cell["cell_type"] == "code":
            first = text.splitlines()[0].replace(" ", "")
            if first.startswith("#|hide") or first.startswith("#|default_exp"):
                continue
            out.append("```python\n" + text + "\n```")
    md = "\n\n".join(out) + "\n"
    md = md.replace("{{colab_badge}}", colab_badge(s))
    md = md.replace(MARKER, MARKER + "\n\n" + results_section())
    header = "<!-- Generated from nbs/index.ipynb by tools/build_readme.py: edit the notebook, not this file. -->\n\n"
    return header + md


def colab_badge(s: dict) -> str:
    "The 'Open in Colab' badge, generated from settings.ini (git_url, colab_ref)."
    url = s.get("git_url", "").replace("https://github.com/", "")
    ref = s.get("colab_ref", "main")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{url}/blob/{ref}/nbs/colab.ipynb)")


_BADGE = re.compile(r"^\[!\[Open In Colab\]\(.*$|^\{\{colab_badge\}\}$", re.M)


def synced_notebook(path: Path, s: dict) -> str:
    "The notebook's text with its Colab badge (and, in colab.ipynb, the `repo =` / `ref =` parameters) from settings.ini."
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        text = _cell_text(cell)
        new = _BADGE.sub(colab_badge(s).replace("\\", "\\\\"), text) if cell["cell_type"] == "markdown" else text
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            new = re.sub(r'^repo = "[^"]*"', f'repo = "{s.get("git_url", "")}"', new, flags=re.M)
            new = re.sub(r'^ref = "[^"]*"', f'ref = "{s.get("colab_ref", "main")}"', new, flags=re.M)
        if new != text: cell["source"] = new.splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


SYNCED = ("nbs/index.ipynb", "nbs/colab.ipynb")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    a = ap.parse_args(argv)
    s = _settings()
    nbs = {ROOT / p: synced_notebook(ROOT / p, s) for p in SYNCED}
    if a.check:
        stale = [p.relative_to(ROOT) for p, t in nbs.items() if p.read_text(encoding="utf-8") != t]
        if stale:
            print(f"error: {', '.join(map(str, stale))}: the Colab repository reference differs from settings.ini "
                  f"(git_url, colab_ref): run `python tools/build_readme.py` and commit", file=sys.stderr)
            return 1
    for p, t in nbs.items():
        if p.read_text(encoding="utf-8") != t: p.write_text(t, encoding="utf-8"); print(f"synced {p.relative_to(ROOT)}")
    md = build()
    readme = ROOT / "README.md"
    if a.check:
        if not readme.exists() or readme.read_text(encoding="utf-8") != md:
            print("error: README.md is stale: run `python tools/build_readme.py` (or `make readme`) and commit",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(md, encoding="utf-8")
    print(f"wrote {readme.relative_to(ROOT)} ({len(md.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
