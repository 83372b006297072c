#!/usr/bin/env python
"""Build README.md from nbs/index.ipynb (README has one writer: this script).

quarto (which `nbdev_readme` needs) cannot be installed offline, so this is a small converter:
markdown cells are copied, code cells are shown as ```python blocks unless they start with `#| hide`,
and the marker `<!-- results -->` is replaced by the measured tables in `tables/mini/` (written by the
pipeline's report stage; numbers are never typed by hand).

    python tools/build_readme.py           # write README.md
    python tools/build_readme.py --check   # exit 1 if README.md is stale
"""
from __future__ import annotations
import argparse, configparser, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- results -->"
# Tables inserted into README, in this order (the rest of tables/mini/ is linked).
RESULT_TABLES = ["main", "zeroshot", "geometry", "unified", "cost", "timing"]


def _settings() -> dict:
    cp = configparser.ConfigParser(delimiters=["="])
    cp.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cp["DEFAULT"])


def _cell_text(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def results_section(tables_dir: Path = ROOT / "tables" / "mini") -> str:
    "Markdown for the results section, built from the report stage's tables."
    if not tables_dir.is_dir() or not any(tables_dir.glob("*.md")):
        return "_No results yet: run `make repro` (the mini profile) to generate `tables/mini/`._"
    parts = []
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
    "The 'Open in Colab' badge, generated from settings.ini (git_url, colab_tag)."
    url = s.get("git_url", "").replace("https://github.com/", "")
    tag = s.get("colab_tag", "main")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{url}/blob/{tag}/nbs/colab.ipynb)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    a = ap.parse_args(argv)
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
