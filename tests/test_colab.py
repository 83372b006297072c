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
    "The notebook's frontmatter tells nbdev_test to skip it (it installs packages and needs a GPU by default)."
    nb = json.loads((ROOT / "nbs" / "colab.ipynb").read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "raw" and "skip_exec: true" in "".join(first["source"])
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert 'profile = "paper"' in "".join(params["source"])
