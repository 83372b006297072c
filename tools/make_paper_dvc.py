#!/usr/bin/env python
"""Write paper/dvc.yaml from dvc.yaml: the paper profile runs the same stage notebooks with paper/params.yaml.

Differences: no `world` / `pretrain` / `worlds` stages (open_clip weights from `model:`), stages that read data depend on
`data/` (tracked by data.dvc), outputs go to artifacts|metrics|tables|figures/paper, every stage has `wdir: ..`,
and the report stage does not rebuild README.md.   Run: python tools/make_paper_dvc.py
"""
import re
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parents[1]
P = "-p params_file paper/params.yaml -p artifacts artifacts/paper -p metrics metrics/paper"
HEADER = """# The paper profile (GPU; real weights and data): `dvc repro paper/dvc.yaml`.
# The same stage notebooks as the mini profile (../dvc.yaml) with paper/params.yaml: no world or pretraining
# stage (the weights are open_clip's `model.name` / `model.pretrained`), and the stages that read data depend on
# data/, which data.dvc tracks (add it with `dvc add data` or fetch it with `dvc pull data.dvc`).
# Generated from dvc.yaml by tools/make_paper_dvc.py: edit dvc.yaml, then rerun it.
"""


def _paper(x: str) -> str:
    return x.replace("/mini", "/paper")


def convert(st: dict, name: str) -> dict:
    st = yaml.safe_load(yaml.safe_dump(st))
    cmd = st["cmd"].replace("executed/mini", "executed/paper").replace("-p params_file params.yaml -p artifacts artifacts/mini", P)
    cmd = cmd.replace("-p params_file params.yaml", P)
    cmd = cmd.replace("--params params.yaml ", "--params paper/params.yaml ")
    cmd = cmd.replace("--reference-pass fused", "--reference-pass auto")  # on a GPU: sequential where fused would not fit
    cmd = re.sub(r"--json metrics/mini/(\S+)", r"--image-size 224 --device cuda --json metrics/paper/\1", cmd)  # every benchmark run
    if name == "report":
        cmd += " -p tables tables/paper -p figures figures/paper -p readme False"
    out = {"cmd": cmd, "wdir": ".."}
    if "matrix" in st: out["matrix"] = st["matrix"]
    deps = []
    for d in st.get("deps", []):
        if d in ("artifacts/mini/world", "artifacts/mini/pretrained"):
            if "data" not in deps: deps.append("data")
        elif not (name == "report" and d in ("nbs/index.ipynb", "tools/build_readme.py")):
            deps.append(_paper(d))
    out["deps"] = deps
    params = ["model", "data"] if name == "teacher" else st.get("params", [])
    if params: out["params"] = [{"paper/params.yaml": params + ["variant", "variants"]}]  # a variant reruns every stage
    for key in ("outs", "metrics"):
        if key in st:
            items = [(_paper(o) if isinstance(o, str) else {_paper(k): v for k, v in o.items()}) for o in st[key]]
            items = [o for o in items if "README" not in str(o)]
            if items: out[key] = items
    return out


def _dvc_deps():
    "tools/dvc_deps.py as a module (it generates the per-seed record outs)."
    import importlib.util
    spec = importlib.util.spec_from_file_location("dvc_deps", ROOT / "tools" / "dvc_deps.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def doc_vars(doc: dict) -> dict:
    "The dict entries of dvc.yaml's `vars` (the papermill prefix every stage runs under)."
    return {k: v for d in doc.get("vars", []) if isinstance(d, dict) for k, v in d.items()}


def main() -> None:
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = {n: convert(s, n) for n, s in doc["stages"].items() if n not in ("world", "pretrain", "worlds")}
    out = {"vars": ["params.yaml", {"papermill": doc_vars(doc)["papermill"].replace("executed/mini", "executed/paper")}],
           "stages": stages}
    if doc.get("plots"): out["plots"] = [_paper(x) if isinstance(x, str) else {_paper(k): v for k, v in x.items()} for x in doc["plots"]]
    txt = yaml.safe_dump(out, sort_keys=False, width=120)
    txt = _dvc_deps().seed_outs_text(txt, yaml.safe_load((ROOT / "paper" / "params.yaml").read_text())["seeds"])  # per-seed outs: paper seeds
    (ROOT / "paper" / "dvc.yaml").write_text(HEADER + txt)
    print("wrote paper/dvc.yaml")


if __name__ == "__main__":
    main()
