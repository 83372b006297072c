"Tests of the mini world (dive_nb.miniworld): determinism, balance, disjointness, vocabulary, styles, I/O."
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from dive_nb.miniworld import (ATTRIBUTES, STYLES, TASKS, VISIBLE, WorldConfig, build_world, fill_template,
                               load_world, make_captions, render, sample_attributes, sample_batch, save_world,
                               split_tensors, vocabulary, world_config)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.smoke())


@pytest.fixture(scope="module")
def big():
    a = sample_attributes(10000, np.random.default_rng(0), styles=STYLES)
    return a, render(a)


def _fg(imgs):
    "Foreground map: distance of each pixel from the median border colour, scaled to max 1."
    x = imgs.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
    d = np.linalg.norm(x - np.median(border, 1)[:, None, None], axis=-1)
    return d / d.max((1, 2), keepdims=True).clip(1e-6)


def test_api_shapes():
    assert list(ATTRIBUTES) == ["shape", "colour", "texture", "size", "position", "background"]
    assert len(ATTRIBUTES["shape"]) >= 8 and len(ATTRIBUTES["colour"]) == 8
    assert ATTRIBUTES["texture"] == ["solid", "striped", "dotted", "checkered"]
    assert ATTRIBUTES["size"] == ["small", "medium", "large"] and len(ATTRIBUTES["background"]) == 4
    assert STYLES[0] == "photo" and len(STYLES) >= 5 and set(VISIBLE) == set(STYLES)
    assert "shape" in TASKS and len(TASKS) >= 6


def test_render_deterministic_and_seeded(big):
    a, imgs = big
    assert imgs.shape == (10000, 32, 32, 3) and imgs.dtype == np.uint8
    assert np.array_equal(render({k: v[:300] for k, v in a.items()}), imgs[:300])
    b = sample_attributes(300, np.random.default_rng(1), styles=STYLES)
    assert not np.array_equal(render(b), imgs[:300])
    again = sample_attributes(10000, np.random.default_rng(0), styles=STYLES)
    assert all(np.array_equal(again[k], a[k]) for k in a)


def test_render_other_size():
    a = sample_attributes(20, np.random.default_rng(0), styles="photo")
    x = render(a, image_size=64)
    assert x.shape == (20, 64, 64, 3)
    # the same scene at twice the resolution, averaged down, resembles the 32 px render
    small = render(a).astype(float)
    down = x.reshape(20, 32, 2, 32, 2, 3).mean((2, 4))
    assert np.abs(down - small).mean() < 15
    other = render(sample_attributes(20, np.random.default_rng(1), styles="photo")).astype(float)
    assert np.abs(down - other).mean() > 2 * np.abs(down - small).mean()


def test_attribute_balance(big):
    a, _ = big
    for k, names in [*ATTRIBUTES.items(), ("style", STYLES)]:
        cnt = np.bincount(a[k], minlength=len(names))
        assert np.all(np.abs(cnt / 10000 * len(names) - 1) < 0.15), (k, cnt)
        assert chisquare(cnt).pvalue > 1e-4, (k, cnt)


def test_attributes_independent(big):
    a, _ = big
    # shape x colour contingency table is consistent with independence
    from scipy.stats import chi2_contingency
    tab = np.zeros((len(ATTRIBUTES["shape"]), len(ATTRIBUTES["colour"])))
    np.add.at(tab, (a["shape"], a["colour"]), 1)
    assert chi2_contingency(tab).pvalue > 1e-4


def test_styles_differ(big):
    a, imgs = big
    m = {s: imgs[a["style"] == i].astype(float) for i, s in enumerate(STYLES)}
    stats = {s: np.array([x.mean(), np.abs(np.diff(x, axis=2)).mean(), x.std((1, 2)).mean()]) for s, x in m.items()}
    for i, p in enumerate(STYLES):
        for q in STYLES[i + 1:]:
            assert (np.abs(stats[p] - stats[q]) / np.maximum(stats[p], stats[q])).max() > 0.08, (p, q)
    assert stats["sketch"][0] > stats["photo"][0] + 60
    assert abs(stats["inverted"][0] - (255 - stats["photo"][0])) < 10


def test_shapes_distinguishable():
    g = np.random.default_rng(5)
    a = sample_attributes(3000, g)
    a["size"][:] = 2
    a["texture"][:] = 0
    a["position"][:] = 1
    f = _fg(render(a)).reshape(3000, -1)
    y = a["shape"]
    cent = np.stack([f[:2000][y[:2000] == c].mean(0) for c in range(len(ATTRIBUTES["shape"]))])
    acc = (np.argmin(((f[2000:, None] - cent[None]) ** 2).sum(-1), 1) == y[2000:]).mean()
    assert acc > 0.6, acc


def test_size_and_position_visible():
    a = sample_attributes(3000, np.random.default_rng(6))
    f = _fg(render(a)) > 0.5
    area = f.sum((1, 2))
    cx = (f * np.arange(32)).sum((1, 2)) / area.clip(1)
    assert np.all(np.diff([np.median(area[a["size"] == i]) for i in range(3)]) > 20)
    assert np.all(np.diff([np.median(cx[a["position"] == i]) for i in range(3)]) > 4)


def test_every_caption_word_in_vocabulary():
    g = np.random.default_rng(11)
    a = sample_attributes(20000, g, styles=STYLES)
    caps = make_captions(a, g)
    vocab = set(vocabulary())
    words = {w for c in caps for w in c.lower().replace(".", " ").split()}
    assert words <= vocab, words - vocab
    for t in TASKS.values():
        for p in sum(t.prompts(), []):
            assert set(p.lower().replace(".", " ").split()) <= vocab, p
    # shape always named
    assert all(ATTRIBUTES["shape"][s] in c.split() for s, c in zip(a["shape"], caps))


def test_captions_name_only_visible_attributes():
    g = np.random.default_rng(12)
    a = sample_attributes(6000, g, styles=STYLES)
    caps = make_captions(a, g)
    for i, s in enumerate(STYLES):
        idx = np.flatnonzero(a["style"] == i)
        named = np.mean([ATTRIBUTES["colour"][a["colour"][j]] in caps[j].split() for j in idx])
        if "colour" in VISIBLE[s]:
            assert 0.6 < named < 0.8, (s, named)
        else:
            assert named == 0, (s, named)


def test_templates():
    assert fill_template("a {}.", "orange") == "an orange."
    for t in TASKS.values():
        assert t.classnames == ATTRIBUTES[t.attribute]
        assert 3 <= len(t.templates) <= 6 and all(x.count("{}") == 1 for x in t.templates)


def test_splits(world):
    cfg = WorldConfig.smoke()
    assert set(world) == set(cfg.splits())
    for k in ("id_train", "id_val", "id_test", "zs"):
        assert set(world[k]["style"]) == {0}
    for s in STYLES[1:]:
        assert set(world[f"ood_{s}"]["style"]) == {STYLES.index(s)}
    assert world_config(world) == cfg


def test_split_disjointness(world):
    t = {k: split_tensors(v) for k, v in world.items()}
    keys = {k: {(x.numpy().tobytes(), c) for x, c in zip(v["images"], v["captions"])} for k, v in t.items()}
    names = list(keys)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            assert not keys[p] & keys[q], (p, q)


def test_world_determinism(world):
    again = build_world(WorldConfig.smoke())
    other = build_world(WorldConfig.smoke(seed=7))
    for k in world:
        a, b = split_tensors(world[k]), split_tensors(again[k])
        assert torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    assert not torch.equal(split_tensors(world["pretrain"])["images"], split_tensors(other["pretrain"])["images"])


def test_round_trip(world, tmp_path):
    p = save_world(world, tmp_path / "w")
    assert (p / "README.md").exists()
    back = load_world(p)
    for k in world:
        a, b = split_tensors(world[k]), split_tensors(back[k])
        assert torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
        assert all(torch.equal(a[c], b[c]) for c in ["style", *ATTRIBUTES])
    x = split_tensors(back["zs"].select([3]))["images"][0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(back["zs"][3]["image"]), x)


def test_missing_world_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro world"):
        load_world(tmp_path / "absent")


def test_bad_inputs():
    with pytest.raises(ValueError, match="rng"):
        sample_attributes(3, 1)
    with pytest.raises(ValueError, match="styles"):
        sample_attributes(3, np.random.default_rng(0), styles="watercolour")
    with pytest.raises(ValueError, match="missing keys"):
        render({"shape": np.zeros(3, int)})
    with pytest.raises(ValueError, match="n_zs"):
        WorldConfig(n_zs=-5)
    with pytest.raises(ValueError, match="ds"):
        split_tensors([1, 2])


def test_sample_batch():
    b = sample_batch(32, np.random.default_rng(0), WorldConfig().mixed_styles())
    assert b["images"].shape == (32, 3, 32, 32) and b["images"].dtype == torch.uint8
    assert len(b["captions"]) == 32 and b["shape"].dtype == torch.int64
