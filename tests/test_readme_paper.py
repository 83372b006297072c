"""README's paper-profile commands (section '## The paper profile (GPU)'), read from README.md and run offline: the
data check (`dive-nb check --params paper/params.yaml --data`) and `-m dive_nb.cli run --params
paper/params.yaml --methods flyp dive`, in a scratch copy of the repository's `paper/` folder, on a fresh clone
(no data, no weights), on stand-in datasets in the real layouts, and end to end on a tiny stand-in model. When
README changes its commands, these tests run the new ones (or fail to find them)."""
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dive_nb.paper_data import DATASETS, WILDS_TEMPLATES, sets_from_params
from test_bad_inputs import cli
from test_paper_data import _few_classes, _img, _wds_mirror, _write_tar

REPO = Path(__file__).parents[1]
PAPER = yaml.safe_load((REPO / "paper" / "params.yaml").read_text())
SECTION = "## The paper profile (GPU)"


# ---------------------------------------------------------------- the commands, as README spells them

def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^" + re.escape(SECTION) + r"\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no section {SECTION!r}"
    return m.group(1)


def bash_block() -> list[list[str]]:
    "The section's ```bash block, one argv per command (continuation lines joined, comments dropped)."
    m = re.search(r"```bash\n(.*?)```", readme_section(), re.S)
    assert m, f"no ```bash block in README's {SECTION!r}"
    lines = [shlex.split(l, comments=True) for l in m.group(1).replace("\\\n", "").splitlines()]
    return [a for a in lines if a]


def data_check_argv() -> list[str]:
    "The `dive-nb check ... --data` command, run by this interpreter (`python -m dive_nb.cli`)."
    hits = [a for a in bash_block() if a[:2] == ["dive-nb", "check"] and "--data" in a]
    assert len(hits) == 1, f"README's bash block should hold one `dive-nb check ... --data` command: {bash_block()}"
    assert hits[0][hits[0].index("--params") + 1] == "paper/params.yaml", hits[0]
    return [sys.executable, "-m", "dive_nb.cli", *hits[0][1:]]


def run_argv() -> list[str]:
    "The `torchrun ... -m dive_nb.cli run ...` sentence, as the module's own argv (one process: `python -m`)."
    m = re.search(r"`(torchrun\s[^`]*)`", readme_section())
    assert m, f"no `torchrun ...` command in README's {SECTION!r}"
    argv = shlex.split(" ".join(m.group(1).split()))
    i = argv.index("-m")
    assert argv[i + 1:i + 3] == ["dive_nb.cli", "run"], argv
    return argv[i + 2:]  # run --params paper/params.yaml --methods flyp dive


# ---------------------------------------------------------------- a scratch repository and stand-in data

def offline_env(tmp: Path) -> dict:
    "Offline, with empty caches: HF_HOME and HOME (open_clip's ~/.cache/clip) inside tmp."
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf-home"), "HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1", "DIVE_NB_DEBUG": "0"}


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    "A fresh clone as far as the README's commands see it: paper/params.yaml and paper/dvc.yaml, no data/, no weights."
    (tmp_path / "paper").mkdir()
    for f in ("params.yaml", "dvc.yaml"): shutil.copy(REPO / "paper" / f, tmp_path / "paper" / f)
    import huggingface_hub.constants as hc  # in-process runs: an empty hub cache, not this machine's
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(repo: Path, **dotted) -> dict:
    "paper/params.yaml in the scratch copy with dotted keys changed (`data__root='x'` sets data.root)."
    p = copy.deepcopy(PAPER)
    for key, v in dotted.items():
        *path, last = key.split("__")
        d = p
        for k in path: d = d[k]
        d[last] = v
    (repo / "paper" / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return p


def declared(params: dict) -> list[str]:
    return [n for v in sets_from_params(params["data"]).values() for n in v]


def standin_sets(root: Path, names) -> None:
    "Each named set in its registry layout under root (ImageFolder of wnids, CLIP_benchmark shards, CoOp files, extras)."
    for n in names:
        s = DATASETS[n]
        f = s.folder(root)
        if s.local_format == "imagefolder":
            (f / "n01440764").mkdir(parents=True, exist_ok=True)
            (f / "n01440764" / "0.png").write_bytes(_img(1))
        elif s.local_format == "wds" and s.shard_glob:  # e.g. CC3M: cc3m-train-*.tar
            _write_tar(f / s.shard_glob.replace("*", "0000"), [{"jpg": _img(2, fmt="JPEG"), "txt": b"a photo"}])
        elif s.local_format == "wds":
            row = {"jpg": _img(3, fmt="JPEG"), **({"txt": b"a photo"} if s.caption_key else {"cls": b"0"})}
            _wds_mirror(root, s.local, [row], split=s.split, classnames=["thing"])
        elif s.local_format == "coop":
            (f / "images" / "a").mkdir(parents=True, exist_ok=True)
            (f / "images" / "a" / "0.jpg").write_bytes(_img(4, fmt="JPEG"))
            (f / "split_zhou_UCF101.json").write_text('{"train": [], "val": [], "test": [["a/0.jpg", 0, "a"]]}')
        else:
            raise AssertionError(f"no stand-in for {n}'s layout {s.local_format!r}: add one")
        for e in s.extra:  # e.g. ObjectNet's mappings/ folder
            if not (root / e).exists(): (root / e).mkdir(parents=True)


# ---------------------------------------------------------------- what README names exists

def test_readme_commands_name_what_exists():
    "The bash block's stage target, the run sentence's methods and parameter file are the repository's own."
    argv = run_argv()
    assert argv == ["run", "--params", "paper/params.yaml", "--methods", "flyp", "dive"], argv
    rc, out, err = cli("check", *argv[1:])
    assert rc == 0 and out.startswith("ok: paper/params.yaml: profile paper"), err
    cmds = bash_block()
    assert ["dvc", "repro", "paper/dvc.yaml"] in cmds, cmds
    targets = re.findall(r"dvc repro (paper/dvc\.yaml:(\w+)@(\w+))", readme_section())
    assert targets, "README names no single-stage target"
    dvc = yaml.safe_load((REPO / "paper" / "dvc.yaml").read_text())
    for _, stage, method in targets:
        assert stage in dvc["stages"] and dvc["stages"][stage]["matrix"]["method"] == "${main_methods}", stage
        assert method in PAPER["main_methods"], method
    data_check_argv()


# ---------------------------------------------------------------- the data check

def test_readme_data_check_offline_names_every_missing_set(scratch):
    r = subprocess.run(data_check_argv(), cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    names = declared(PAPER)
    root = PAPER["data"]["root"]
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"error: {len(names)} declared dataset(s) unavailable under "
                               f"data_root={root} (HF offline mode on); nothing was trained:"), r.stderr[:300]
    for n in names:
        s = DATASETS[n]
        assert f"- {n} ({s.title}, split {s.split!r}): not found at {s.folder(root)}" in r.stderr, n
        assert f"provide it: {s.command(root)}" in r.stderr, n


def test_readme_data_check_reports_without_traceback(scratch):
    "One `error:` line and nothing on stdout; the mini profile is refused with its own line."
    r = subprocess.run(data_check_argv(), cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and r.stdout == "", r.stderr
    rc, out, err = cli("check", "--params", REPO / "params.yaml", "--data")  # the mini profile
    assert rc == 1 and err.startswith("error: --data checks the paper profile's datasets"), err


def test_readme_data_check_passes_on_standins_and_names_the_one_missing(scratch):
    names = declared(PAPER)
    standin_sets(scratch / PAPER["data"]["root"], names)
    r = subprocess.run(data_check_argv(), cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == (f"ok: paper/params.yaml: profile paper, {len(PAPER['methods'])} method sections, seeds {PAPER['seeds']}, "
                        f"{len(names)} declared datasets on disk or downloadable\n"), r.stdout
    for f in (scratch / "data" / DATASETS["cc3m"].local).glob("*.tar"): f.unlink()  # the CC3M shard never arrived
    r = subprocess.run(data_check_argv(), cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "1 declared dataset(s) unavailable under data_root=data" in r.stderr, r.stderr
    assert "- cc3m (CC3M, split 'train'): not found at data/cc3m-wds" in r.stderr and "- imagenet " not in r.stderr


# ---------------------------------------------------------------- the run command

def test_readme_run_offline_fresh_clone(scratch):
    "The command itself in a process: no data root, then no weights (offline, empty cache): one `error:` line each."
    argv = [sys.executable, "-m", "dive_nb.cli", *run_argv()]
    r = subprocess.run(argv, cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"error: data root {PAPER['data']['root']} not found: set data.root in paper/params.yaml "
                        f"(see README 'The paper profile')\n"), r.stderr
    (scratch / PAPER["data"]["root"]).mkdir()
    r = subprocess.run(argv, cwd=scratch, env=offline_env(scratch), capture_output=True, text=True, timeout=300)
    name, tag = PAPER["model"]["name"], PAPER["model"]["pretrained"]
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: Pretrained weights for model {name!r} with tag {tag!r} are not available. "), r.stderr
    assert "HF_HUB_OFFLINE is set" in r.stderr and "cause: not in the local cache and offline mode is on" in r.stderr
    assert "teacher" not in r.stderr and "dataset(s) unavailable" not in r.stderr  # the weights come first


def test_readme_run_reads_the_profiles_paths_in_order(scratch):
    "data.root and model.pretrained from the parameter file (not under --root), then every dataset, then the teacher."
    data, weights = scratch / "elsewhere" / "data", scratch / "weights" / "ViT-B-16.pt"
    p = write_params(scratch, data__root=str(data), model__pretrained=str(weights))
    argv = run_argv()

    def err_line(*extra):
        rc, out, err = cli(*argv, *extra)
        assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (rc, err)
        return err[len("error: "):-1]

    assert err_line() == f"data root {data} not found: set data.root in paper/params.yaml (see README 'The paper profile')"
    assert err_line("--root", scratch / "other") == err_line()  # --root moves artifacts, not the data
    data.mkdir(parents=True)
    assert err_line() == f"model.pretrained = {weights}: no such file (give an open_clip tag such as openai, or a checkpoint path)"
    weights.parent.mkdir(); weights.write_bytes(b"stand-in")  # a weights file: only its existence is checked up front
    names = declared(p)
    e = err_line()
    assert e.startswith(f"{len(names)} declared dataset(s) unavailable under data_root={data} (HF offline mode on)"), e
    for n in names: assert f"- {n} ({DATASETS[n].title}, split {DATASETS[n].split!r}): not found at {DATASETS[n].folder(data)}" in e
    standin_sets(data, names)
    assert err_line() == ("the teacher cache not found at artifacts/paper/teacher: make it with "
                          "`dive-nb teacher --params paper/params.yaml` (or `dvc repro paper/dvc.yaml:teacher`)")
    assert err_line("--root", scratch / "other").startswith(f"the teacher cache not found at {scratch / 'other' / 'paper' / 'teacher'}:")
    assert not (scratch / "artifacts").exists() and not (scratch / "metrics").exists()  # nothing was written


# ---------------------------------------------------------------- end to end on a tiny stand-in

def _iwildcam(root: Path, n_train: int = 12) -> list[str]:
    "iWildCam in WILDS' layout (wilds/iwildcam_v2.0: train/ images, metadata.csv, categories.csv), 3 classes."
    d = root / "wilds" / "iwildcam_v2.0"; (d / "train").mkdir(parents=True)
    rows = [("train", i % 3, i % 4) for i in range(n_train)] + [("id_test", i % 3, 1) for i in range(6)] + \
           [("test", i % 3, 9 + i % 2) for i in range(6)]
    lines = ["split,y,filename,location_remapped"]
    for i, (sp, y, loc) in enumerate(rows):
        (d / "train" / f"img{i}.jpg").write_bytes(_img(7000 + i, fmt="JPEG"))
        lines.append(f"{sp},{y},img{i}.jpg,{loc}")
    (d / "metadata.csv").write_text("\n".join(lines) + "\n")
    names = ["empty", "tayassu pecari", "meleagris ocellata"]
    (d / "categories.csv").write_text("y,category_id,name\n" + "".join(f"{y},{10 * y},{n}\n" for y, n in enumerate(names)))
    return names


def test_readme_run_end_to_end_on_tiny_standins(scratch, monkeypatch):
    """paper/params.yaml with its `iwildcam` variant (README: DiVE's other tables), the model swapped for the tiny tower
    and a local weights file, stand-in data under data.root: `teacher`, then README's run command, writes both records."""
    from dive_nb.models import create_model, save_checkpoint
    from dive_nb.teacher import TeacherCache, model_fingerprint
    data, weights = scratch / "standin-data", scratch / "weights" / "tiny.pt"
    classes = _iwildcam(data)
    caps = ["a deer in the wild", "an empty photo", "a bird on grass", "a pig at night", "a photo of a bird", "a deer"]
    _write_tar(data / "cc3m-wds" / "cc3m-train-0000.tar", [{"jpg": _img(8000 + i, fmt="JPEG"), "txt": c.encode()}
                                                           for i, c in enumerate(caps)])
    _wds_mirror(data, "wds_mscoco_captions", [{"jpg": _img(9000 + i, fmt="JPEG"), "txt": f"{c}\nsecond line".encode()}
                                              for i, c in enumerate(caps[:4])])
    _few_classes(monkeypatch, "iwildcam", 3)  # the real sets' class and row counts stay checked everywhere else
    monkeypatch.setitem(DATASETS, "mscoco_captions", replace(DATASETS["mscoco_captions"], size=4))
    words = sorted({w for t in caps + ["second line"] + classes + WILDS_TEMPLATES["iwildcam"]
                    for w in re.findall(r"[a-z]+", t.lower())})
    clip, _, _ = create_model("dive-tiny-vit", vocab=words)
    save_checkpoint(clip, weights)
    p = copy.deepcopy(PAPER)
    p["variants"]["iwildcam"].update({"finetune.steps": 3, "finetune.batch_size": 4, "finetune.ref_batch_size": 2,
                                      "finetune.lr": 1e-4, "finetune.ckpt_every": 1000})
    p.update(variant="iwildcam", seeds=[0], threads=1, device="cpu")
    p["model"] = {"name": "dive-tiny-vit", "pretrained": str(weights)}
    p["data"]["root"] = str(data)
    (scratch / "paper" / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

    rc, out, err = cli("teacher", "--params", "paper/params.yaml")
    assert rc == 0 and "reference pairs" in out, err
    cache = TeacherCache.load(scratch / "artifacts" / "paper" / "teacher" / "teacher.pt")
    assert cache.fingerprint == model_fingerprint(create_model("dive-tiny-vit", pretrained=str(weights))[0])  # the file's weights
    rc, out, err = cli(*run_argv())
    assert rc == 0, err
    for m in ("flyp", "dive"):
        assert re.search(rf"^{m}\s+seed 0: ID \S+ OOD \S+ ZS \S+ RSA", out, re.M), out
        rec = json.loads((scratch / "metrics" / "paper" / f"{m}-0.json").read_text())
        assert rec["method"] == m and rec["config"]["profile"] == "paper" and rec["config"]["model"] == "dive-tiny-vit"
        assert rec["config"]["train"]["steps"] == 3 and set(rec["ood_acc"]) >= {"iwildcam"}
        assert {"id_test.macro_f1", "ood.iwildcam.macro_f1"} <= set(rec["paper_metrics"])  # the WILDS stand-in was read
        assert (scratch / "artifacts" / "paper" / "runs" / f"{m}-0" / "model.pt").is_file()
