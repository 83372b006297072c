"""The `dive-nb` command on tiny artefacts: export a run for open_clip, score any checkpoint with the same evaluation path."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from test_bad_inputs import SMOKE, cli


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    "World, pre-trained model, teacher and one finished ft run, all made by the command."
    d = tmp_path_factory.mktemp("cli")
    (d / "p.yaml").write_text(yaml.safe_dump(SMOKE))
    for argv in (["world"], ["pretrain"], ["teacher"], ["run", "--methods", "ft", "--seeds", "0"]):
        rc, out, err = cli(*argv, "--params", d / "p.yaml", "--root", d / "a", "--metrics", d / "m")
        assert rc == 0, err
    return d


def test_subcommand_help_is_its_own():
    rc_g, out_g, _ = cli("--help")
    rc_r, out_r, _ = cli("run", "--help")
    assert rc_g == rc_r == 0 and out_g != out_r and "usage: dive-nb run" in out_r and "COMMAND" in out_g


def test_export_then_open_clip_loads_it(done):
    import open_clip
    from dive_nb.models import create_model
    run = done / "a" / "mini" / "runs" / "ft-0"
    rc, out, err = cli("export", "--params", done / "p.yaml", "--run", run, "--out", done / "exp")
    assert rc == 0 and "merged: true" in out, err
    info = json.loads((done / "exp" / "export.json").read_text())
    assert info["extras"] == ["head"] and info["merged"]
    m, _, _ = create_model(info["model_name"], vocab=json.loads((done / "exp" / "vocab.json").read_text()))
    open_clip.load_checkpoint(m, str(done / "exp" / "open_clip_model.pt"))
    sd = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(v, sd["clip." + k]) for k, v in m.state_dict().items())


def test_evaluate_any_checkpoint(done):
    "A run folder, the same towers exported, and the pre-trained checkpoint: one evaluation path, one record format."
    rec = {}
    for name, pre, extra in (("run", done / "a" / "mini" / "runs" / "ft-0", []),
                             ("exported", done / "exp" / "open_clip_model.pt", ["--vocab", done / "exp" / "vocab.json"]),
                             ("pretrained", done / "a" / "mini" / "pretrained" / "model.pt", [])):
        if name == "exported" and not pre.exists():
            rc, _, err = cli("export", "--params", done / "p.yaml", "--run", done / "a" / "mini" / "runs" / "ft-0", "--out", done / "exp")
            assert rc == 0, err
        rc, out, err = cli("evaluate", "--params", done / "p.yaml", "--root", done / "a", "--pretrained", pre, *extra,
                           "--out", done / f"{name}.json")
        assert rc == 0 and "ID " in out, err
        rec[name] = json.loads((done / f"{name}.json").read_text())
    assert rec["run"]["id_acc"] == rec["exported"]["id_acc"] and rec["run"]["ood_acc"] == rec["exported"]["ood_acc"]
    zs = json.loads((done / "a" / "mini" / "pretrained" / "zeroshot.json").read_text())  # written by the pretrain stage
    assert rec["pretrained"]["id_acc"] == zs["id_acc"] and rec["pretrained"]["zs_acc"] == zs["zs_acc"]
    assert {"id_acc", "ood_acc", "zs_acc", "retrieval", "geometry", "method", "pretrained"} <= set(rec["run"])
    rc, _, err = cli("evaluate", "--params", done / "p.yaml", "--root", done / "a", "--pretrained", done / "none.pt")
    assert rc == 1 and "no such file" in err
