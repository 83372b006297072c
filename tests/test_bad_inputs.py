"""Bad inputs and faults through the `dive-nb` command: each ends with one line `error: ...` naming what is wrong and
what to do, a non-zero exit status, no traceback, and no work done before the check (nbs/28_config, nbs/29_cli)."""
import contextlib
import copy
import errno
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dive_nb.cli import main

SMOKE = yaml.safe_load((Path(__file__).parent / "smoke_params.yaml").read_text())
PAPER = Path(__file__).parents[1] / "paper" / "params.yaml"


def cli(*argv):
    "(exit status, stdout, stderr) of `dive-nb argv` run in this process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_line(err: str, *wants: str, rc: int = 1, got_rc=None):
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert got_rc == rc, (got_rc, err)
    assert last.startswith("error: "), err
    assert "Traceback" not in err, err
    for w in wants:
        assert w in last, (w, last)


def with_(base: dict, **dotted) -> dict:
    "A copy of `base` with dotted keys set (`finetune__lr='x'` sets finetune.lr); value DELETE removes the key."
    q = copy.deepcopy(base)
    for key, v in dotted.items():
        *path, last = key.split("__")
        d = q
        for k in path:
            d = d.setdefault(k, {})
        if v is DELETE:
            d.pop(last, None)
        else:
            d[last] = v
    return q


DELETE = object()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    "A tiny world, pre-trained model and teacher under root/a/mini, made by the command itself."
    d = tmp_path_factory.mktemp("bad")
    p = d / "params.yaml"
    p.write_text(yaml.safe_dump(SMOKE))
    for stage in ("world", "pretrain", "teacher"):
        rc, out, err = cli(stage, "--params", p, "--root", d / "a")
        assert rc == 0, err
    return d


def write(d: Path, name: str, params) -> Path:
    f = d / name
    f.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    return f


# ---- 1. the parameter file: checked whole, before any work ------------------------------------------------------
PARAM_CASES = [  # (id, params or raw text, the words the one line must hold)
    ("empty file", "", "is empty"),
    ("not yaml", "seeds: [0, 1\nmodel: {}\n", "is not valid YAML at line"),
    ("top level list", "- a\n- b\n", "holds a list, not a mapping"),
    ("misspelt section", with_(SMOKE, finetun={"steps": 3}), "unknown key 'finetun' in the top level (did you mean 'finetune'?)"),
    ("missing section", with_(SMOKE, finetune=DELETE), "missing section(s) finetune"),
    ("unknown top-level key", with_(SMOKE, epochs=3), "unknown key 'epochs' in the top level"),
    ("lr a word", with_(SMOKE, finetune__lr="fast"), "finetune.lr = 'fast': expected a number"),
    ("lr negative", with_(SMOKE, finetune__lr=-1e-3), "finetune.lr = -0.001: must be > 0"),
    ("lr zero", with_(SMOKE, finetune__lr=0), "finetune.lr = 0: must be > 0"),
    ("lr nan", "x", None),  # replaced below (yaml .nan)
    ("steps fractional", with_(SMOKE, finetune__steps=2.5), "finetune.steps = 2.5: expected an integer"),
    ("steps a word", with_(SMOKE, finetune__steps="three"), "finetune.steps = 'three': expected an integer"),
    ("steps zero", with_(SMOKE, finetune__steps=0), "finetune.steps = 0: must be >= 1"),
    ("batch negative", with_(SMOKE, finetune__batch_size=-4), "finetune.batch_size = -4: must be >= 1"),
    ("seeds empty", with_(SMOKE, seeds=[]), "seeds is an empty list"),
    ("seeds scalar", with_(SMOKE, seeds=0), "seeds = 0: expected a list"),
    ("seed negative", with_(SMOKE, seeds=[0, -1]), "seeds[1] = -1: must be >= 0"),
    ("lam negative", with_(SMOKE, methods__dive__lam=-1), "methods.dive.lam = -1: must be >= 0"),
    ("alpha above 1", with_(SMOKE, methods__dive__alpha=1.5), "methods.dive.alpha = 1.5: must be >= 0 and <= 1"),
    ("hyperparameter typo", with_(SMOKE, methods__dive__lamda=1), "unknown key 'lamda' in methods.dive (did you mean 'lam'?)"),
    ("method typo", with_(SMOKE, methods__divee={}), "unknown key 'divee' in methods (no such method) (did you mean 'dive'?)"),
    ("main_methods typo", with_(SMOKE, main_methods=["ft", "flpy"]), "unknown key 'flpy' in main_methods (no such method)"),
    ("device gpu0", with_(SMOKE, device="gpu0"), "device = 'gpu0': expected auto, cpu, mps, cuda or cuda:N"),
    ("reference_pass", with_(SMOKE, finetune__reference_pass="both"), "finetune.reference_pass = 'both': expected one of auto, fused, sequential"),
    ("precision fp16", with_(SMOKE, finetune__precision="fp16"), "expected one of fp32, bf16"),
    ("world of size 0", with_(SMOKE, world__n_id_train=0), "world.n_id_train = 0: must be >= 1"),
    ("photo share 2", with_(SMOKE, world__pretrain_photo_frac=2), "world.pretrain_photo_frac = 2: must be >= 0 and <= 1"),
    ("stem norm", with_(SMOKE, model__stem={"norm": "batch"}), "model.stem.norm = 'batch': expected one of group, layer, none"),
    ("tiny key typo", with_(SMOKE, model__tiny={"widht": 64}), "unknown key 'widht' in model.tiny (did you mean 'width'?)"),
    ("betas length", with_(SMOKE, finetune__betas=[0.9, 0.98, 0.99]), "finetune.betas = [0.9, 0.98, 0.99]: expected 2 values, got 3"),
    ("warmup 1", with_(SMOKE, finetune__warmup_frac=1.0), "finetune.warmup_frac = 1.0: must be >= 0 and < 1"),
    ("unknown variant", with_(SMOKE, variant="vit_h"), "unknown variant 'vit_h'"),
    ("variant bad key", with_(SMOKE, variant="x", variants={"x": {"finetun.lr": 1.0}}), "'finetun.lr' does not name a setting"),
    ("select grid empty", with_(SMOKE, select={"lr": []}), "select.lr is an empty list"),
    ("sweep alpha", with_(SMOKE, sweeps__alpha=[1.5]), "sweeps.alpha[0] = 1.5: must be >= 0 and <= 1"),
    ("prompt-ot classes", with_(SMOKE, papers__promptot__n_classes=1), "papers.promptot.n_classes = 1: must be >= 2"),
    ("profile", with_(SMOKE, profile="large"), "profile = 'large': expected one of mini, paper"),
    ("boolean as text", with_(SMOKE, finetune__progress="yes"), "finetune.progress = 'yes': expected true or false"),
    ("null value", with_(SMOKE, finetune__lr=None), "finetune.lr is empty (null): give a value"),
    ("threads zero", with_(SMOKE, threads=0), "threads = 0: must be >= 1"),
]


@pytest.mark.parametrize("case", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_bad_parameter_file(case, tmp_path):
    name, params, want = case
    if name == "lr nan":
        params, want = yaml.safe_dump(SMOKE).replace("lr: 0.0005", "lr: .nan"), "finetune.lr = nan: expected a finite number"
    f = write(tmp_path, "p.yaml", params)
    rc, out, err = cli("check", "--params", f)
    assert_one_line(err, str(f), want, got_rc=rc)
    # every command validates first: `run` stops with the same line, before looking for any input
    rc2, _, err2 = cli("run", "--params", f, "--root", tmp_path / "nothing-here")
    assert rc2 == 1 and err2 == err


def test_params_file_missing_or_a_folder(tmp_path):
    rc, _, err = cli("check", "--params", tmp_path / "nope.yaml")
    assert_one_line(err, f"parameter file {tmp_path / 'nope.yaml'} not found", got_rc=rc)
    rc, _, err = cli("check", "--params", tmp_path)
    assert_one_line(err, "is a folder", got_rc=rc)


def test_yaml_5e_4_is_a_number(tmp_path):
    "PyYAML reads 5e-4 (no dot) as a string; the check coerces it instead of failing later inside the scheduler."
    f = write(tmp_path, "p.yaml", yaml.safe_dump(SMOKE).replace("lr: 0.0005", "lr: 5e-4"))
    assert yaml.safe_load(f.read_text())["finetune"]["lr"] == "5e-4"
    rc, out, err = cli("check", "--params", f)
    assert rc == 0 and out.startswith("ok: "), err
    from dive_nb.config import load_params
    assert load_params(f)["finetune"]["lr"] == 5e-4


def test_methods_on_the_command_line_checked_first(root, tmp_path):
    "A typo in the second of two methods stops before the first trains (today it was caught after the first finished)."
    f = write(tmp_path, "p.yaml", SMOKE)
    rc, _, err = cli("run", "--params", f, "--root", root / "a", "--metrics", tmp_path / "m", "--methods", "ft", "dvie")
    assert_one_line(err, "unknown key 'dvie' in --methods (no such method) (did you mean 'dive'?)", got_rc=rc)
    f2 = write(tmp_path, "p2.yaml", with_(SMOKE, methods__dive__lam=-1))
    rc, _, err = cli("run", "--params", f2, "--root", root / "a", "--metrics", tmp_path / "m", "--methods", "ft", "dive")
    assert_one_line(err, "methods.dive.lam = -1", got_rc=rc)
    assert not (root / "a" / "mini" / "runs" / "ft-0").exists() and not (tmp_path / "m").exists()


# ---- 2. inputs: missing, damaged or stale ----------------------------------------------------------------------
def test_missing_inputs_name_the_stage(root, tmp_path):
    f = write(tmp_path, "p.yaml", SMOKE)
    a = tmp_path / "a" / "mini"
    rc, _, err = cli("run", "--params", f, "--root", tmp_path / "a")
    assert_one_line(err, f"the mini world not found at {a / 'world'}: make it with `dive-nb world --params {f}`", got_rc=rc)
    shutil.copytree(root / "a" / "mini" / "world", a / "world")
    rc, _, err = cli("run", "--params", f, "--root", tmp_path / "a")
    assert_one_line(err, f"the pre-trained model not found at {a / 'pretrained' / 'model.pt'}", "`dive-nb pretrain", got_rc=rc)
    shutil.copytree(root / "a" / "mini" / "pretrained", a / "pretrained")
    rc, _, err = cli("run", "--params", f, "--root", tmp_path / "a")
    assert_one_line(err, f"the teacher cache not found at {a / 'teacher'}", "`dvc repro teacher`", got_rc=rc)
    rc, _, err = cli("pretrain", "--params", f, "--root", tmp_path / "b")
    assert_one_line(err, "the mini world not found", got_rc=rc)
    rc, _, err = cli("teacher", "--params", f, "--root", tmp_path / "b", "--world", a / "world")
    assert_one_line(err, "the pre-trained model not found", got_rc=rc)


def test_unwritable_output_folder_before_work(root, tmp_path):
    f = write(tmp_path, "p.yaml", SMOKE)
    (tmp_path / "blocked").write_text("a file where the metrics folder should be")
    rc, _, err = cli("run", "--params", f, "--root", root / "a", "--metrics", tmp_path / "blocked", "--methods", "ft")
    assert_one_line(err, f"output folder {tmp_path / 'blocked' / 'mini'} is not writable", "--metrics", got_rc=rc)
    assert not (root / "a" / "mini" / "runs" / "ft-0").exists()


def test_damaged_world_named_with_rebuild(root, tmp_path):
    f = write(tmp_path, "p.yaml", SMOKE)
    w = tmp_path / "world"
    shutil.copytree(root / "a" / "mini" / "world", w)
    arrow = next((w / "id_train").glob("*.arrow"))
    arrow.write_bytes(b"\x00garbage" * 16)
    rc, _, err = cli("run", "--params", f, "--root", root / "a", "--metrics", tmp_path / "m", "--world", w, "--methods", "ft")
    assert_one_line(err, f"the mini world at {w}", "damaged", "dvc repro world", got_rc=rc)


def test_world_rebuilt_with_another_seed_stops_at_the_teacher(root, tmp_path):
    "The silent case: a new world with the old teacher cache used to train and report RSA -0.015."
    f = write(tmp_path, "p.yaml", with_(SMOKE, world__seed=1))
    rc, _, err = cli("world", "--params", f, "--out", tmp_path / "w1")
    assert rc == 0, err
    rc, _, err = cli("run", "--params", f, "--root", root / "a", "--metrics", tmp_path / "m", "--world", tmp_path / "w1", "--methods", "ft")
    assert_one_line(err, "teacher", got_rc=rc)
    assert "reference" in err.lower() and "repro teacher" in err


def test_bad_checkpoints(root, tmp_path):
    f = write(tmp_path, "p.yaml", SMOKE)
    r = tmp_path / "r"
    shutil.copytree(root / "a" / "mini", r / "mini", ignore=shutil.ignore_patterns("runs"))
    run = lambda: cli("run", "--params", f, "--root", r, "--metrics", tmp_path / "m", "--methods", "ft", "--seeds", "0")
    rc, _, err = run()
    assert rc == 0, err
    ck = r / "mini" / "runs" / "ft-0" / "ckpt.pt"
    good = ck.read_bytes()
    ck.write_bytes(good[: len(good) // 3])  # truncated
    (ck.parent / "model.pt").unlink()
    rc, _, err = run()
    assert_one_line(err, f"checkpoint {ck} cannot be read", "delete it", got_rc=rc)
    shutil.copyfile(r / "mini" / "pretrained" / "model.pt", ck)  # another file's weights as the checkpoint
    rc, _, err = run()
    assert_one_line(err, f"{ck} is not a dive-nb training checkpoint", got_rc=rc)
    ck.write_bytes(good)
    f2 = write(tmp_path, "p2.yaml", with_(SMOKE, finetune__lr=1e-3))  # another configuration, same folder
    rc, _, err = cli("run", "--params", f2, "--root", r, "--metrics", tmp_path / "m", "--methods", "ft", "--seeds", "0")
    assert_one_line(err, f"{ck} was written by a different run configuration", "delete", got_rc=rc)


def test_full_disk_during_a_checkpoint(root, tmp_path, monkeypatch):
    import torch
    f = write(tmp_path, "p.yaml", SMOKE)
    real = torch.save

    def full(obj, path, *a, **k):
        if str(path).endswith("ckpt.pt.tmp"):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    rc, _, err = cli("run", "--params", f, "--root", root / "a", "--metrics", tmp_path / "m", "--methods", "ft", "--seeds", "1")
    ck = root / "a" / "mini" / "runs" / "ft-1" / "ckpt.pt"
    assert_one_line(err, f"no space left on the device while writing {ck}", "free space and rerun", got_rc=rc)
    assert not ck.with_suffix(".pt.tmp").exists()
    shutil.rmtree(ck.parent)


def test_paper_profile_inputs(tmp_path):
    p = yaml.safe_load(PAPER.read_text())
    f = write(tmp_path, "paper.yaml", with_(p, data__root=str(tmp_path / "no-data")))
    rc, _, err = cli("run", "--params", f, "--root", tmp_path / "a", "--methods", "flyp")
    assert_one_line(err, f"data root {tmp_path / 'no-data'} not found", "data.root", got_rc=rc)
    (tmp_path / "data").mkdir()
    f = write(tmp_path, "paper2.yaml", with_(p, data__root=str(tmp_path / "data"), model__pretrained="weights/missing.pt"))
    rc, _, err = cli("teacher", "--params", f, "--root", tmp_path / "a")
    assert_one_line(err, "model.pretrained = weights/missing.pt: no such file", got_rc=rc)
    rc, _, err = cli("world", "--params", f)
    assert_one_line(err, "`world` builds the mini profile's world", got_rc=rc)


# ---- 3. the command line itself ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,want", [(["fly"], "invalid choice: 'fly'"), (["run", "--seeds", "abc"], "invalid int value: 'abc'"),
                                      (["run", "--epochs", "3"], "unrecognized arguments: --epochs 3"), ([], "the following arguments are required: COMMAND")])
def test_bad_command_lines(argv, want):
    rc, _, err = cli(*argv)
    assert rc == 2 and want in err and "Traceback" not in err


def test_real_process_exit_status_and_no_traceback(tmp_path):
    f = write(tmp_path, "p.yaml", with_(SMOKE, finetune__lr="fast"))
    for argv, want in [(["check", "--params", f], "finetune.lr = 'fast'"),
                       (["run", "--params", write(tmp_path, "ok.yaml", SMOKE), "--root", tmp_path / "a"], "the mini world not found"),
                       (["check", "--params", tmp_path / "missing.yaml"], "not found")]:
        r = subprocess.run([sys.executable, "-m", "dive_nb.cli", *map(str, argv)], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and want in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
