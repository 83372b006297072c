"""The Colab notebook, run by papermill with its parameters cell set to the mini profile (as a CPU user would)."""
import json, os, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_colab_notebook_mini_profile(tmp_path):
    pm = pytest.importorskip("papermill")
    work = tmp_path / "work"
    out = tmp_path / "colab.ipynb"
    pm.execute_notebook(str(ROOT / "nbs" / "colab.ipynb"), str(out), cwd=str(ROOT), kernel_name="python3",
                        parameters={"profile": "mini", "mini_params": str(ROOT / "tests" / "smoke_params.yaml"),
                                    "steps": 3, "workdir": str(work), "methods": ["flyp", "dive"]},
                        progress_bar=False)
    root = work / "mini"
    recs = {m: json.loads((root / "metrics" / f"{m}-0.json").read_text()) for m in ("zeroshot", "flyp", "dive")}
    assert recs["zeroshot"]["geometry"]["rsa"] == pytest.approx(1.0)
    assert all(0 <= r["id_acc"] <= 100 for r in recs.values())
    assert (root / "runs" / "dive-0" / "model.pt").exists()
    csv = (root / "result.csv").read_text().splitlines()
    assert csv[0].startswith("method,ID,OOD") and [l.split(",")[0] for l in csv[1:]] == ["zeroshot", "flyp", "dive"]
    # the table is the notebook's last output
    nb = json.loads(out.read_text())
    last = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])][-1]
    assert "dive" in json.dumps(last)


def test_colab_notebook_is_skipped_by_nbdev_test():
    "The first markdown cell's frontmatter tells nbdev_test to skip the notebook (it installs packages and needs a GPU by default)."
    from nbdev.frontmatter import _md2dict
    nb = json.loads((ROOT / "nbs" / "colab.ipynb").read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _md2dict("".join(first["source"]))["skip_exec"] is True
    assert all(c["cell_type"] != "raw" for c in nb["cells"])  # Colab shows raw cells as text
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "".join(params["source"])
    assert 'profile = "paper"' in src and 'experiment = "iwildcam"' in src


def test_colab_repository_reference_comes_from_settings(tmp_path):
    "settings.ini names the repository and the branch or tag once; the badge and the install cell follow it."
    import configparser, importlib.util
    spec = importlib.util.spec_from_file_location("build_readme", ROOT / "tools" / "build_readme.py")
    br = importlib.util.module_from_spec(spec); spec.loader.exec_module(br)
    s = br._settings()
    nb = json.loads((ROOT / "nbs" / "colab.ipynb").read_text())
    params = "".join(next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
    assert f'repo = "{s["git_url"]}"' in params and f'ref = "{s["colab_ref"]}"' in params
    assert br.colab_badge(s) in "".join(nb["cells"][0]["source"])
    assert br.colab_badge(s) in (ROOT / "README.md").read_text() and "{{colab_badge}}" not in (ROOT / "nbs" / "index.ipynb").read_text()
    # a release: changing colab_ref in settings.ini rewrites both lines of the notebook
    new = br.synced_notebook(ROOT / "nbs" / "colab.ipynb", {**s, "colab_ref": "v9.9.9"})
    assert 'ref = \\"v9.9.9\\"' in new and "blob/v9.9.9/nbs/colab.ipynb" in new


def test_colab_gated_data_only_in_the_imagenet_experiment():
    "The default experiment's datasets are public; the ImageNet one is gated (the notebook logs in only then)."
    from dive_nb.paper_data import DATASETS
    nb = json.loads((ROOT / "nbs" / "colab.ipynb").read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    ns = {}
    exec(src[src.index("EXPERIMENTS = {"):src.index("root = Path(workdir)")], ns)
    ids = lambda e: [ns["EXPERIMENTS"][e]["id"]] if isinstance(ns["EXPERIMENTS"][e]["id"], str) else ns["EXPERIMENTS"][e]["id"]
    public = [*ids("iwildcam"), *ns["EXPERIMENTS"]["iwildcam"]["ood"], "dtd", "eurosat", "cc3m_val"]
    assert not any(DATASETS[n].gated for n in public) and DATASETS[ids("imagenet")[0]].gated
    assert "notebook_login()" in src and all(DATASETS[n].download_gb for n in public)
