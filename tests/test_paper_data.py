"""Paper-profile data on offline stand-ins with the real schemas: an ImageFolder, webdataset shards
(CLIP_benchmark mirror layout), a save_to_disk Arrow dataset, CoOp's split file, a CLIP_benchmark
package and ObjectNet's mapping files; the class-subset logic, size checks, the up-front availability
error, and a few training steps of the tiny model on a LazySplit-backed suite."""
import importlib
import importlib.util
import io
import json
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dive_nb import paper_data as pd_
from dive_nb.data import Split
from dive_nb.paper_data import (DATASETS, DatasetSizeMismatch, DatasetSpec, DatasetUnavailable, LazySplit,
                                MetadataUnavailable, check_available, classnames_and_templates, imagenet_classnames,
                                load_split, load_wilds_split, paper_suite, project_logits, subset_accuracy)

RNG = np.random.default_rng(0)
WNIDS = [f"n{10_000_000 + 7 * i:08d}" for i in range(1000)]  # stand-in for the 1000 ordered ImageNet wnids
R_IDX = sorted(RNG.choice(1000, 200, replace=False).tolist())  # stand-in ImageNet-R subset (ImageNet indices)
A_IDX = sorted(RNG.choice(1000, 200, replace=False).tolist())


def _img(seed, w=40, h=30, fmt="PNG"):
    g = np.random.default_rng(seed)
    b = io.BytesIO()
    Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, format=fmt)
    return b.getvalue()


def _write_tar(path: Path, samples):
    "samples: list of dict ext -> bytes; keys s0000000, s0000001, ... as CLIP_benchmark writes them."
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i, s in enumerate(samples):
            for ext, data in s.items():
                ti = tarfile.TarInfo(f"s{i:07d}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def _wds_mirror(root: Path, repo_dir: str, samples, split="test", classnames=None, templates=None, n_shards=1):
    "A CLIP_benchmark webdataset mirror: <split>/<i>.tar, <split>/nshards.txt, classnames.txt, templates."
    d = root / repo_dir
    chunks = np.array_split(np.arange(len(samples)), n_shards)
    for k, ch in enumerate(chunks):
        _write_tar(d / split / f"{k}.tar", [samples[i] for i in ch])
    (d / split / "nshards.txt").write_text(str(n_shards))
    if classnames is not None: (d / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None: (d / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return d


@pytest.fixture()
def fake_clip_benchmark(tmp_path, monkeypatch):
    "A stand-in CLIP_benchmark package (same file names and literal names as clip_benchmark 1.6.2)."
    pkg = tmp_path / "site" / "clip_benchmark"
    (pkg / "datasets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('dive_nb must not import clip_benchmark')\n")
    (pkg / "datasets" / "__init__.py").write_text("")
    r = [WNIDS[i] for i in R_IDX][::-1]  # any order: the loader sorts
    a = [WNIDS[i] for i in A_IDX]
    (pkg / "datasets" / "builder.py").write_text(
        "import os\n\ndef build_dataset(name):\n"
        f"    imagenet_a_wnids = {a!r}\n    imagenet_r_wnids = {{{', '.join(map(repr, r))}}}\n    return None\n\n"
        f"all_imagenet_wordnet_ids = {WNIDS!r}\n")
    (pkg / "datasets" / "en_classnames.json").write_text(json.dumps(
        {"imagenet1k": imagenet_classnames(), "caltech101_vtab": [f"thing {i}" for i in range(102)],
         "eurosat": [f"land {i}" for i in range(10)]}))
    (pkg / "datasets" / "en_zeroshot_classification_templates.json").write_text(json.dumps(
        {"caltech101": ["a photo of a {c}.", "a painting of the {c}."], "food101": ["a photo of {c}, a type of food."],
         "eurosat": ["a centered satellite photo of {c}."]}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return pkg


@pytest.fixture()
def no_clip_benchmark(monkeypatch):
    orig = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "clip_benchmark" else orig(name, *a, **k))


# ---------------------------------------------------------------- availability

def test_check_available_lists_every_missing_set(tmp_path):
    names = ["imagenet", "imagenet_r", "objectnet", "ucf101", "cc3m"]
    with pytest.raises(DatasetUnavailable) as e:
        check_available(names, tmp_path)
    msg = str(e.value)
    assert msg.startswith("5 declared dataset(s) unavailable") and "nothing was trained" in msg
    for n in names: assert f"- {n} (" in msg
    assert "hf download clip-benchmark/wds_imagenet-r --repo-type dataset --local-dir " + str(tmp_path / "wds_imagenet-r") in msg
    assert "hf auth login" in msg and "ILSVRC/imagenet-1k" in msg  # gated set
    assert str(tmp_path / "imagenet" / "train") + "/<wnid>/<image>" in msg
    assert str(tmp_path / "objectnet" / "mappings") in msg  # the extra path ObjectNet needs
    assert "split_zhou_*.json" in msg and "dvc pull data.dvc" in msg
    assert "pixparse/cc3m-wds" in msg


def test_check_available_passes_once_present_and_flags_incomplete_shards(tmp_path):
    d = _wds_mirror(tmp_path, "wds_imagenetv2", [{"webp": _img(0, fmt="WEBP"), "cls": b"3"}], n_shards=1)
    check_available(["imagenet_v2"], tmp_path)  # no error
    (d / "test" / "nshards.txt").write_text("2")  # the second shard never arrived
    with pytest.raises(DatasetUnavailable, match="imagenet_v2"):
        check_available(["imagenet_v2"], tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-x'"):
        check_available(["imagenet-x"], tmp_path)


# ---------------------------------------------------------------- loaders

def test_webdataset_mirror_imagenet_r_labels_in_subset(tmp_path):
    names = imagenet_classnames()
    picks = list(range(3, 1000, 5))[:200]  # any 200 increasing ImageNet indices, as classnames.txt lists them
    ys = [0, 5, 199, 17, 5, 42, 100, 3, 0, 150, 199, 77]
    samples = [{"webp": _img(i, 30 + i, 40, "WEBP"), "cls": str(y).encode()} for i, y in enumerate(ys)]
    _wds_mirror(tmp_path, "wds_imagenet-r", samples, classnames=[names[i] for i in picks], n_shards=3,
                templates=["a photo of a {c}."])
    with pytest.warns(UserWarning, match="has 12 rows.*expected 30000"):
        sp = load_split("imagenet_r", tmp_path, 32, strict=False, cache_dir=tmp_path / "hf")
    assert isinstance(sp, LazySplit) and len(sp) == 12
    assert sp.labels["label"].tolist() == ys  # already 0..199: kept
    assert sp.class_groups == [[i] for i in picks]
    assert sp.classnames == [names[i] for i in picks] and len(sp.templates) == 80 and sp.templates[0] == "a bad photo of a {}."
    b = sp.take(torch.tensor([11, 0, 11]))
    assert isinstance(b, Split) and b.images.shape == (3, 3, 32, 32) and b.images.dtype == torch.uint8
    assert b.labels["label"].tolist() == [77, 0, 77] and torch.equal(b.images[0], b.images[2])
    # logits restricted to the 200-class mask == a naive loop over the subset
    g = torch.Generator().manual_seed(0)
    feats, head = torch.randn(12, 16, generator=g), torch.randn(1000, 16, generator=g)
    acc, correct = subset_accuracy(feats, head, sp.labels["label"], sp.class_groups)
    z = (feats @ head.T).tolist()
    naive = [max(range(200), key=lambda k: z[n][picks[k]]) == ys[n] for n in range(12)]
    assert correct.tolist() == naive and acc == pytest.approx(100 * sum(naive) / 12)


def test_size_mismatch_is_an_error_by_default(tmp_path):
    _wds_mirror(tmp_path, "wds_imagenet-a", [{"jpg": _img(1, fmt="JPEG"), "cls": b"0"}],
                classnames=[imagenet_classnames()[i] for i in range(0, 1000, 5)])
    with pytest.raises(DatasetSizeMismatch) as e:
        load_split("imagenet_a", tmp_path, 32, cache_dir=tmp_path / "hf")
    assert "imagenet_a (ImageNet-A" in str(e.value) and "has 1 rows" in str(e.value) and "expected 7500" in str(e.value)
    assert "strict=False" in str(e.value)


def test_subset_labels_outside_range_are_rejected(tmp_path):
    _wds_mirror(tmp_path, "wds_imagenet-r", [{"webp": _img(2, fmt="WEBP"), "cls": b"437"}],
                classnames=[imagenet_classnames()[i] for i in range(0, 1000, 5)])
    with pytest.raises(ValueError, match="labels_in_subset=True but labels span"):
        load_split("imagenet_r", tmp_path, 32, strict=False, cache_dir=tmp_path / "hf")


def test_imagefolder_of_wnids_maps_to_subset_space(tmp_path, fake_clip_benchmark):
    "A local ImageNet-R copy with only some of its 200 wnid folders still gets the right subset labels."
    chosen = [R_IDX[0], R_IDX[57], R_IDX[199]]
    root = tmp_path / "imagenet-r"
    for k, i in enumerate(chosen):
        (root / WNIDS[i]).mkdir(parents=True)
        for j in range(2): (root / WNIDS[i] / f"{j}.png").write_bytes(_img(10 * k + j))
    spec = replace(DATASETS["imagenet_r"], local="imagenet-r", local_format="imagefolder", size=6)
    sp = load_split(spec, tmp_path, 32)
    assert sp.labels["label"].tolist() == [0, 0, 57, 57, 199, 199]
    assert sp.class_groups == [[i] for i in R_IDX]
    assert sp.images[3].shape == (3, 32, 32)


def test_arrow_dataset_with_imagenet_labels(tmp_path, fake_clip_benchmark):
    "A save_to_disk dataset storing ImageNet-A labels as 1000-class indices (labels_in_subset=False)."
    import datasets
    paths = []
    for j in range(5):
        p = tmp_path / "src" / f"{j}.png"; p.parent.mkdir(exist_ok=True); p.write_bytes(_img(100 + j)); paths.append(str(p))
    ys = [A_IDX[3], A_IDX[0], A_IDX[199], A_IDX[3], A_IDX[120]]
    ds = datasets.Dataset.from_dict({"image": paths, "label": ys},
                                    features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "imagenet-a-arrow"))
    spec = replace(DATASETS["imagenet_a"], local="imagenet-a-arrow", local_format="arrow", image_keys=("image",),
                   label_key="label", labels_in_subset=False, size=5)
    sp = load_split(spec, tmp_path, 24)
    assert sp.labels["label"].tolist() == [3, 0, 199, 3, 120]
    assert sp.class_groups == [[i] for i in A_IDX]
    assert sp.take([1]).images.shape == (1, 3, 24, 24)
    # the same rows decoded from disk directly
    assert torch.equal(sp.images[2], pd_.to_uint8(paths[2], 24))
    bad = replace(spec, labels_in_subset=False)
    ds2 = datasets.Dataset.from_dict({"image": paths[:1], "label": [next(i for i in range(1000) if i not in A_IDX)]},
                                     features=ds.features)
    ds2.save_to_disk(str(tmp_path / "bad-arrow"))
    with pytest.raises(ValueError, match="outside the 200-class subset"):
        load_split(replace(bad, local="bad-arrow", size=1), tmp_path, 24)


def test_objectnet_groups_and_projection(tmp_path):
    "ObjectNet's mapping files (real names and formats) -> WiSE-FT groups; projected accuracy == naive max loop."
    m = tmp_path / "objectnet" / "mappings"; m.mkdir(parents=True)
    names = imagenet_classnames()
    folder_label = {"zebra_folder": "Zebra Thing", "alarm_clock": "Alarm clock", "banana": "Banana", "unmapped": "Chair X"}
    on_to_in = {"Alarm clock": f"{names[409]}; {names[892]}", "Banana": names[954], "Zebra Thing": names[340]}
    torch_to_2012 = {str(i): (i * 7) % 1000 for i in range(1000)}  # a permutation, as in the real file
    lines = [""] * 1000
    for t, i2012 in torch_to_2012.items(): lines[i2012] = names[int(t)]
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(folder_label))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(on_to_in))
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(torch_to_2012))
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(lines) + "\n")
    groups, cn = pd_.objectnet_groups(m)
    assert groups == [[409, 892], [954], [340]] and cn == ["alarm clock", "banana", "zebra thing"]  # sorted folders
    ys = [0, 2, 1, 0]
    _wds_mirror(tmp_path, "wds_objectnet", [{"jpg": _img(200 + i, fmt="JPEG"), "cls": str(y).encode()} for i, y in enumerate(ys)],
                classnames=cn)
    sp = load_split(replace(DATASETS["objectnet"], n_classes=3, size=4), tmp_path, 32, cache_dir=tmp_path / "hf")
    assert sp.class_groups == groups and sp.classnames == cn
    g = torch.Generator().manual_seed(1)
    feats, head = torch.randn(4, 8, generator=g), torch.randn(1000, 8, generator=g)
    _, correct = subset_accuracy(feats, head, sp.labels["label"], sp.class_groups)
    z = (feats @ head.T).tolist()
    naive = [max(range(3), key=lambda k: max(z[n][i] for i in groups[k])) == ys[n] for n in range(4)]
    assert correct.tolist() == naive
    torch.testing.assert_close(project_logits(feats @ head.T, groups)[:, 0], torch.maximum(*(feats @ head[[409, 892]].T).T))


def test_coop_split_ucf101_layout(tmp_path):
    d = tmp_path / "ucf101"
    items = {"train": [], "val": [], "test": []}
    for k, cls in enumerate(["Apply_Eye_Makeup", "Playing_Guitar"]):
        for j in range(2):
            rel = f"{cls}/v_{cls}_g0{j}_c01.jpg"
            (d / "UCF-101-midframes" / cls).mkdir(parents=True, exist_ok=True)
            (d / "UCF-101-midframes" / rel).write_bytes(_img(300 + 2 * k + j, fmt="JPEG"))
            items["test"].append([rel, k, cls.replace("_", " ").lower()])
    (d / "split_zhou_UCF101.json").write_text(json.dumps(items))
    spec = replace(DATASETS["ucf101"], n_classes=2, size=4)
    check_available([spec], tmp_path)
    sp = load_split(spec, tmp_path, 32)
    assert sp.labels["label"].tolist() == [0, 0, 1, 1]
    assert sp.classnames == ["apply eye makeup", "playing guitar"] and sp.templates == ["a photo of a person doing {}."]
    assert sp.take([3]).images.shape == (1, 3, 32, 32)


def test_clip_benchmark_names_templates_and_mirror_fallback(tmp_path, fake_clip_benchmark):
    cal = _wds_mirror(tmp_path, "wds_vtab-caltech101", [{"webp": _img(5, fmt="WEBP"), "cls": b"1"}])
    names, tpl = classnames_and_templates("caltech101", tmp_path)
    assert names == [f"thing {i}" for i in range(102)] and tpl == ["a photo of a {}.", "a painting of the {}."]
    food = _wds_mirror(tmp_path, "wds_food101", [{"webp": _img(6, fmt="WEBP"), "cls": b"0"}],
                       classnames=[f"dish {i}" for i in range(101)])
    names, tpl = classnames_and_templates("food101", tmp_path)  # not in the JSON: the mirror's classnames.txt
    assert names[:2] == ["dish 0", "dish 1"] and tpl == ["a photo of {}, a type of food."]
    w = pd_.clip_benchmark_wnids()
    assert w["all"] == WNIDS and w["imagenet-r"] == sorted(WNIDS[i] for i in R_IDX)
    assert pd_.imagenet_subset("imagenet-a").tolist() == A_IDX  # no mirror folder: CLIP_benchmark's lists
    assert "clip_benchmark" not in __import__("sys").modules  # read, never imported


def test_missing_clip_benchmark_says_how_to_install(tmp_path, no_clip_benchmark):
    _wds_mirror(tmp_path, "wds_vtab-caltech101", [{"webp": _img(5, fmt="WEBP"), "cls": b"1"}])
    with pytest.raises(MetadataUnavailable, match="pip install clip_benchmark"):
        classnames_and_templates("caltech101", tmp_path)
    with pytest.raises(MetadataUnavailable, match="pip install clip_benchmark"):
        pd_.imagenet_subset("imagenet-r")


@pytest.mark.skipif(importlib.util.find_spec("clip_benchmark") is None, reason="clip_benchmark not installed")
def test_real_clip_benchmark_subsets_match_names():
    "With the real package: the names of its 200 ImageNet-A/-R wnids map back to the same ImageNet indices."
    w = pd_.clip_benchmark_wnids()
    names = imagenet_classnames()
    for k in ("imagenet-a", "imagenet-r"):
        idx = pd_.imagenet_subset_from_wnids(w[k], w["all"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(pd_.imagenet_subset_from_names([names[i] for i in idx.tolist()]), idx)


def test_caption_shard_first_line_and_lazy_tokens(tmp_path):
    caps = ["a red car\na car parked\n3\n4\n5", "two dogs\nsecond", "one cat"]
    _wds_mirror(tmp_path, "wds_flickr30k", [{"jpg": _img(400 + i, fmt="JPEG"), "txt": c.encode()} for i, c in enumerate(caps)])
    seen = []
    def tok(texts):
        seen.append(list(texts))
        return torch.tensor([[len(t), t.count(" ")] for t in texts])
    sp = load_split(replace(DATASETS["flickr30k"], size=3), tmp_path, 16, tokenizer=tok, cache_dir=tmp_path / "hf")
    assert sp.captions[[0, 1, 2]] == ["a red car", "two dogs", "one cat"] and len(sp.tokens) == 3
    assert seen == []  # nothing tokenised before it is asked for
    b = sp.take(torch.tensor([2, 0]))
    assert b.captions == ["one cat", "a red car"] and b.tokens.tolist() == [[7, 1], [9, 2]]
    h = sp.head(2)
    assert len(h) == 2 and h.tokens[1].tolist() == [8, 1] and h.fingerprint() != sp.fingerprint()


def test_streamed_head_and_max_rows(tmp_path):
    "The first n rows of a streamed dataset become a lazy Arrow-backed split; max_rows gives a head view of a local copy."
    import datasets
    ys = [4, 1, 7, 7, 0]
    d = _wds_mirror(tmp_path, "wds_imagenetv2", [{"webp": _img(500 + i, fmt="WEBP"), "cls": str(y).encode()} for i, y in enumerate(ys)],
                    n_shards=2)
    stream = datasets.load_dataset("webdataset", data_files={"test": [str(p) for p in sorted((d / "test").glob("*.tar"))]},
                                   split="test", streaming=True)
    sp = pd_.head_of_stream(stream, 3, 16, label_key="cls", cache_dir=tmp_path / "hf")
    assert len(sp) == 3 and sp.labels["label"].tolist() == ys[:3] and sp.take([2]).images.shape == (1, 3, 16, 16)
    full = load_split("imagenet_v2", tmp_path, 16, strict=False, cache_dir=tmp_path / "hf2")
    assert torch.equal(sp.images[[0, 2]], full.images[[0, 2]])  # same pixels through both paths
    head = load_split("imagenet_v2", tmp_path, 16, max_rows=2, cache_dir=tmp_path / "hf2")  # no size error: a head view
    assert len(head) == 2 and head.labels["label"].tolist() == ys[:2] and len(head.classnames) == 1000


def _iwildcam_standin(root: Path):
    d = root / "wilds" / "iwildcam_v2.0"; (d / "train").mkdir(parents=True)
    rows = [("train", 0, 3), ("train", 2, 3), ("train", 1, 5), ("id_test", 2, 3), ("id_test", 0, 5), ("test", 1, 7),
            ("test", 2, 8), ("val", 0, 9)]
    lines = ["split,y,filename,location_remapped"]
    for i, (sp, y, loc) in enumerate(rows):
        (d / "train" / f"img{i}.jpg").write_bytes(_img(5000 + i, fmt="JPEG"))
        lines.append(f"{sp},{y},img{i}.jpg,{loc}")
    (d / "metadata.csv").write_text("\n".join(lines) + "\n")
    (d / "categories.csv").write_text("y,category_id,name\n1,10,tayassu pecari\n0,0,empty\n2,22,meleagris ocellata\n")
    return rows


def _fmow_standin(root: Path):
    d = root / "wilds" / "fmow_v1.1"; (d / "images").mkdir(parents=True)
    rows = [("train", "zoo", "USA", "2010-05-01T10:00:00Z"), ("train", "airport", "FRA", "2012-12-31T23:00:00Z"),
            ("train", "airport", "KEN", "2014-03-01T00:00:00Z"),  # a train row from the OOD-val years: in no split
            ("val", "dam", "CHN", "2011-01-01T00:00:00Z"), ("val", "zoo", "BRA", "2014-06-01T00:00:00Z"),
            ("test", "dam", "ATA", "2009-01-01T00:00:00Z"), ("test", "zoo", "KEN", "2016-02-01T00:00:00Z"),
            ("test", "airport", "AUS", "2017-07-07T00:00:00Z"), ("test", "dam", "XXX", "2018-01-01T00:00:00Z"),
            ("seq", "zoo", "USA", "2017-01-01T00:00:00Z")]
    lines = ["split,img_filename,category,country_code,timestamp"]
    for i, (sp, cat, cc, ts) in enumerate(rows):
        (d / "images" / f"rgb_img_{i}.png").write_bytes(_img(6000 + i))
        lines.append(f"{sp},rgb_img_{i}.png,{cat},{cc},{ts}")
    (d / "rgb_metadata.csv").write_text("\n".join(lines) + "\n")
    (d / "country_code_mapping.csv").write_text(
        "alpha-3,region\nUSA,Americas\nBRA,Americas\nFRA,Europe\nKEN,Africa\nCHN,Asia\nAUS,Oceania\nATA,Antarctica\n")
    return rows


def _few_classes(monkeypatch, prefix, k):
    "The stand-ins have k classes; the real sets' class counts (182, 62) stay checked everywhere else."
    for n in (f"{prefix}_train", f"{prefix}_id_test", prefix):
        monkeypatch.setitem(DATASETS, n, replace(DATASETS[n], n_classes=k))


def test_wilds_iwildcam_layout(tmp_path, monkeypatch):
    rows = _iwildcam_standin(tmp_path)
    _few_classes(monkeypatch, "iwildcam", 3)
    check_available(["iwildcam_train", "iwildcam_id_test", "iwildcam"], tmp_path)
    tr, te, ood = (load_split(n, tmp_path, 16) for n in ("iwildcam_train", "iwildcam_id_test", "iwildcam"))
    assert tr.labels["label"].tolist() == [0, 2, 1] and tr.labels["group"].tolist() == [3, 3, 5]
    assert te.labels["label"].tolist() == [2, 0] and ood.labels["label"].tolist() == [1, 2]
    assert tr.images[[0]].shape == (1, 3, 16, 16)
    assert tr.classnames == ["empty", "tayassu pecari", "meleagris ocellata"] and "{} in the wild." in tr.templates
    assert (tr.metric, te.metric, ood.metric) == ("acc1", "macro_f1", "macro_f1")


def test_wilds_fmow_time_split_and_regions(tmp_path, monkeypatch):
    rows = _fmow_standin(tmp_path)
    _few_classes(monkeypatch, "fmow", 3)
    tr, te, ood = (load_split(n, tmp_path, 16) for n in ("fmow_train", "fmow_id_test", "fmow"))
    cls = ["airport", "dam", "zoo"]  # sorted category names = WILDS' label order
    assert tr.labels["label"].tolist() == [2, 0] and tr.labels["group"].tolist() == [3, 1]  # Americas, Europe
    assert te.labels["label"].tolist() == [1] and te.labels["group"].tolist() == [-1]  # Antarctica -> Other
    assert ood.labels["label"].tolist() == [2, 0, 1] and ood.labels["group"].tolist() == [2, 4, -1]
    assert tr.classnames == cls and ood.metric == "worst_group_acc"
    val = load_wilds_split(tmp_path / "wilds" / "fmow_v1.1", "fmow", "val", 16)
    assert val.labels["label"].tolist() == [2]  # the 2014 val row; the 2011 val row is id_val
    with pytest.raises(ValueError, match="split must be one of"):
        load_wilds_split(tmp_path / "wilds" / "fmow_v1.1", "fmow", "seq", 16)


def test_wilds_missing_metadata_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailable, match=r"(?s)iwildcam_train.*wilds.get_dataset\('iwildcam'"):
        check_available(["iwildcam_train"], tmp_path)
    (tmp_path / "wilds" / "fmow_v1.1").mkdir(parents=True)
    (tmp_path / "wilds" / "fmow_v1.1" / "rgb_metadata.csv").write_text("split\n")
    with pytest.raises(DatasetUnavailable, match="fmow"):  # the region mapping is missing: incomplete
        check_available(["fmow"], tmp_path)


def test_macro_f1_and_worst_group_against_naive_loops():
    from dive_nb.evaluate import macro_f1, worst_group_accuracy
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y, p = torch.randint(0, 6, (50,), generator=g), torch.randint(0, 7, (50,), generator=g)
        f1s = []
        for c in sorted(set(y.tolist())):  # sklearn's f1_score(average="macro", labels=unique(y)) by hand
            tp = sum(int(a == c and b == c) for a, b in zip(p.tolist(), y.tolist()))
            prec = tp / max(1, sum(int(a == c) for a in p.tolist())); rec = tp / sum(int(b == c) for b in y.tolist())
            f1s.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
        assert macro_f1(p, y) == pytest.approx(100 * sum(f1s) / len(f1s))
        ok, grp = torch.rand(50, generator=g) < 0.6, torch.randint(-1, 4, (50,), generator=g)
        want = min(ok[grp == k].float().mean().item() for k in range(4) if (grp == k).any())
        assert worst_group_accuracy(ok, grp) == pytest.approx(100 * want)
    assert macro_f1(torch.tensor([1, 1]), torch.tensor([1, 1])) == 100.0
    with pytest.raises(ValueError, match="non-negative"): worst_group_accuracy(torch.ones(3, dtype=torch.bool), -torch.ones(3))


def test_evaluate_reports_the_wilds_metrics(tmp_path):
    "A split that carries `metric` gets it in the record's paper_metrics (ID test and OOD), from the same predictions."
    from dive_nb.data import Split, Suite
    from dive_nb.evaluate import evaluate, macro_f1, worst_group_accuracy
    from dive_nb.methods import FineTuneModel
    from tiny import TinyCLIP
    from types import SimpleNamespace
    torch.manual_seed(0)
    tok = lambda caps: torch.tensor([[1 + (hash(w) % 18) for w in (c.split() + ["x"] * 4)[:4]] for c in caps])
    mk = lambda n, caps=False: Split(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8),
                                     {"label": torch.arange(n) % 3, "group": torch.arange(n) % 2}, None,
                                     tok(["a b"] * n) if caps else None)
    test, ood = mk(12), mk(10)
    test.metric, ood.metric = "macro_f1", "worst_group_acc"
    task = SimpleNamespace(name="t", attribute="label", classnames=["a", "b", "c"], templates=["{}"])
    suite = Suite(task, {}, mk(6), mk(6), test, {"w": ood}, {}, mk(4, True), mk(4, True), mk(4, True))
    m = FineTuneModel(TinyCLIP(), torch.nn.functional.normalize(torch.randn(3, 8), dim=-1))
    rec, per = evaluate(m, suite, tok, lambda x: x.float() / 255, classifier="head")
    pm = rec["paper_metrics"]
    f = m.encode_image(test.images.float() / 255).detach()
    pred = (torch.nn.functional.normalize(f, dim=-1) @ m.head.weight.detach().T).argmax(1)
    assert pm["id_test.macro_f1"] == pytest.approx(macro_f1(pred, test.labels["label"]))
    assert pm["ood.w.worst_group_acc"] == pytest.approx(worst_group_accuracy(per["ood_w"], ood.labels["group"]))
    assert set(pm) == {"id_test.macro_f1", "ood.w.worst_group_acc"}


# ---------------------------------------------------------------- training through the paper-profile path

def test_tiny_model_trains_on_lazy_paper_suite(tmp_path):
    "paper_suite over stand-ins (ImageFolder ID, shard OOD, CoOp zero-shot, caption shards) -> 3 DiVE steps."
    from dive_nb.evaluate import encode
    from dive_nb.methods import FineTuneModel, get_method
    from dive_nb.models import create_model, prepare_images
    from dive_nb.tiny import _words
    from dive_nb.train import TrainConfig, class_prompt_tokens, train

    classes = ["circle", "square", "triangle"]
    for split, n in (("train", 6), ("val", 3)):
        for k, c in enumerate(classes):
            (tmp_path / "toy" / split / c).mkdir(parents=True)
            for j in range(n): (tmp_path / "toy" / split / c / f"{j}.png").write_bytes(_img(1000 + 50 * k + j, 37, 29))
    tpl = ["a photo of a {}.", "a {} shape."]
    id_tr = DatasetSpec("toy_train", "Toy", "id_train", "none", None, "train", "toy/train", "imagefolder", size=18,
                        classnames="folder", templates="mirror", n_classes=3)
    (tmp_path / "toy" / "train" / "zeroshot_classification_templates.txt").write_text("\n".join(tpl))
    (tmp_path / "toy" / "val" / "zeroshot_classification_templates.txt").write_text("\n".join(tpl))
    id_te = replace(id_tr, name="toy_val", role="id_test", split="val", local="toy/val", size=9)
    ood = DatasetSpec("toy_sketch", "Toy sketch", "ood", "wds", None, "test", "wds_toy_sketch", size=4, n_classes=3,
                      classnames="mirror", templates="mirror")
    _wds_mirror(tmp_path, "wds_toy_sketch", [{"jpg": _img(2000 + i, fmt="JPEG"), "cls": str(i % 3).encode()} for i in range(4)],
                classnames=classes, templates=["a sketch of a {c}."])
    caps = ["a red circle", "a blue square", "a green triangle", "a red square", "a blue circle", "a green circle"]
    ref = DatasetSpec("toy_ref", "Toy ref", "reference", "wds", None, "train", "wds_toy_ref", label_key=None,
                      caption_key="txt", size=6)
    _wds_mirror(tmp_path, "wds_toy_ref", [{"jpg": _img(3000 + i, fmt="JPEG"), "txt": c.encode()} for i, c in enumerate(caps)],
                split="train", n_shards=2)
    ret = replace(ref, name="toy_ret", role="retrieval", split="test", local="wds_toy_ret", size=3)
    _wds_mirror(tmp_path, "wds_toy_ret", [{"jpg": _img(4000 + i, fmt="JPEG"), "txt": c.encode()} for i, c in enumerate(caps[:3])])

    vocab = sorted({w for t in caps + classes + tpl + ["a sketch of a {}."] for w in _words(t.replace("{}", ""))})
    torch.manual_seed(0)
    clip, _, tok = create_model("dive-tiny-vit", vocab=vocab)
    S = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    assert S == 32

    sets = {"id": (id_tr, id_te), "ood": (ood,), "zeroshot": (), "reference": (ref,), "retrieval": (ret,)}
    with pytest.raises(DatasetUnavailable, match="toy_missing"):  # checked before anything is loaded
        paper_suite(tmp_path, S, tok, {**sets, "ood": (ood, replace(ood, name="toy_missing", local="nowhere"))},
                    val_size=3, cache_dir=tmp_path / "hf")
    suite = paper_suite(tmp_path, S, tok, sets, val_size=3, cache_dir=tmp_path / "hf")
    assert len(suite.id_train) == 15 and len(suite.id_val) == 3 and len(suite.id_test) == 9
    assert isinstance(suite.id_train, LazySplit) and suite.id_task.classnames == classes
    assert suite.ood["toy_sketch"].templates == ["a sketch of a {}."]
    assert len(suite.reference) == 6 and suite.reference.tokens[[0]].shape == (1, tok.context_length)

    head = torch.nn.functional.normalize(torch.randn(3, clip.text_projection.shape[1]), dim=-1)
    model = FineTuneModel(clip, head)
    with torch.no_grad():
        pre = (encode(model.encode_image, suite.reference.images, prepare_images),
               encode(model.encode_text, suite.reference.tokens))
    before = [p.detach().clone() for p in model.clip.visual.parameters()]
    prompts = class_prompt_tokens(tok, suite.id_task.classnames, suite.id_task.templates)
    cfg = TrainConfig(steps=3, batch_size=4, ref_batch_size=2, lr=1e-3, ckpt_every=0, progress=False, log_every=1)
    res = train(model, get_method("dive"), suite.id_train, "label", prompts, prepare_images, cfg, suite.reference, pre,
                out_dir=tmp_path / "run")
    assert res["steps"] == 3 and len(res["log"]) == 3
    assert all(np.isfinite(r["loss"]) and r["flyp"] > 0 for r in res["log"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.clip.visual.parameters()))
    assert (tmp_path / "run" / "model.pt").is_file()
    # evaluation-side helpers run on the lazy OOD split
    f = encode(model.encode_image, suite.ood["toy_sketch"].images, prepare_images)
    acc, _ = subset_accuracy(f, model.head.weight.detach(), suite.ood["toy_sketch"].labels["label"], None)
    assert f.shape == (4, head.shape[1]) and 0 <= acc <= 100
