"""Tests of dive_nb.tiny, dive_nb.models, dive_nb.zeroshot and dive_nb.teacher from outside the notebooks: tokenizer,
tiny factory, checkpoints, offline errors, WiSE-FT interpolation, zero-shot heads and the teacher cache."""
import time

import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dive_nb import models as M, teacher as TC, tiny as T, zeroshot as Z

VOCAB = [f"w{i}" for i in range(T.TINY_VOCAB_SIZE - 3)]
CFG = T.TINY_MODELS["dive-tiny-vit"]["config"]
D, WIDTH = CFG["embed_dim"], CFG["vision_cfg"]["width"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return M.create_model("dive-tiny-vit", vocab=VOCAB)


@pytest.fixture(scope="module")
def batch(tiny):
    _, _, tok = tiny
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    caps = ["w1 w2 w3", "w4", "w5 w6", "w7 w8 w9 w10", "w0", "w11 w12"]
    return imgs, caps, tok(caps)


def test_tokenizer_ids_roundtrip_and_eot_is_max():
    tok = T.WordTokenizer(["a", "red", "square", "on", "grey"], context_length=6)
    ids = tok(["A red square, on grey!", "square"])
    assert ids.tolist() == [[6, 1, 2, 3, 4, 7], [6, 3, 7, 0, 0, 0]]
    assert tok.vocab_size == 8 and tok.eot_token_id == 7 == ids.max()
    assert (ids.argmax(-1) == torch.tensor([5, 2])).all()  # argmax pooling lands on eot
    assert tok.decode(ids) == ["a red square on", "square"]  # 6 tokens: sot + 4 words + eot
    # truncation keeps eot last
    t = tok("a red square on grey a red")
    assert t[0, -1] == tok.eot_token_id and tok.decode(t) == ["a red square on"]


def test_tokenizer_unknown_word_named():
    tok = T.WordTokenizer(["a", "red"])
    with pytest.raises(ValueError, match="purple"):
        tok(["a red", "a purple"])


def test_tiny_vocab_size_matches_world():
    mw = pytest.importorskip("dive_nb.miniworld")
    assert T.TINY_VOCAB_SIZE == len(mw.vocabulary()) + 3
    assert T.WordTokenizer(mw.vocabulary()).vocab_size == T.TINY_VOCAB_SIZE


def test_tiny_builds_offline_fast_and_registered():
    assert "dive-tiny-vit" in open_clip.list_models()
    t0 = time.perf_counter()
    model, preprocess, tok = M.create_model("dive-tiny-vit", vocab=VOCAB)
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(tok, T.WordTokenizer) and tok.vocab_size == T.TINY_VOCAB_SIZE
    assert not model.training


def test_register_custom_tiny_model():
    T.register_tiny_model("dive-pytest-tiny", T.tiny_config(width=32, layers=1, context_length=10),
                          {"channels": (8, 16, 32), "depth": 2})
    model, _, tok = M.create_model("dive-pytest-tiny", vocab=VOCAB)
    assert "dive-pytest-tiny" in open_clip.list_models() and tok.context_length == 10
    assert model.visual.conv1(torch.zeros(2, 3, 32, 32)).shape == (2, 32, 4, 4)


def test_forward_shapes_norms_and_patch_tokens(tiny, batch):
    model, _, _ = tiny
    imgs, _, toks = batch
    x = M.prepare_images(imgs)
    out = model(x, toks)
    assert out["image_features"].shape == (6, D) and out["text_features"].shape == (6, D)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(6))
    model.visual.output_tokens = True
    try:
        pooled, tokens = model.visual(x)
    finally:
        model.visual.output_tokens = False
    assert tokens.shape == (6, 16, WIDTH)
    torch.testing.assert_close(F.normalize(pooled, dim=-1), out["image_features"])
    torch.testing.assert_close(Z.encode_images(model, imgs, batch_size=4), out["image_features"])
    torch.testing.assert_close(Z.encode_texts(model, toks, batch_size=4), out["text_features"])


def test_checkpoint_reload_is_exact(tiny, batch, tmp_path):
    model, _, _ = tiny
    imgs = batch[0]
    path = M.save_checkpoint(model, tmp_path / "ck.pt", note="test")
    m2, _, tok2 = M.create_model("dive-tiny-vit", pretrained=path)
    assert list(tok2.vocab) == VOCAB
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(Z.encode_images(m2, imgs), Z.encode_images(model, imgs))


def test_offline_missing_weights_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(M.PretrainedWeightsUnavailable) as e:
        M.create_model("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    for part in ("ViT-B-16", "openai", "timm/vit_base_patch16_clip_224.openai", "HF_HUB_OFFLINE is set", "pretrained="):
        assert part in msg
    assert isinstance(e.value, RuntimeError)


def test_unknown_name_and_tag():
    with pytest.raises(ValueError, match="open_clip.list_models"):
        M.create_model("not-a-model")
    with pytest.raises(ValueError, match="laion2b_s34b_b88k"):
        M.create_model("ViT-B-16", pretrained="not-a-tag")


def test_interpolate_weights():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4, 3, generator=g), "i": torch.tensor([1, 2])}
    b = {"w": torch.randn(4, 3, generator=g), "i": torch.tensor([5, 6])}
    assert torch.equal(M.interpolate_weights(a, b, 0)["w"], a["w"])
    assert torch.equal(M.interpolate_weights(a, b, 1)["w"], b["w"])
    mid = M.interpolate_weights(a, b, 0.5)
    torch.testing.assert_close(mid["w"], (a["w"] + b["w"]) / 2)
    assert torch.equal(mid["i"], b["i"])
    with pytest.raises(ValueError, match="only in theta1"):
        M.interpolate_weights(a, {**b, "extra": torch.zeros(1)}, 0.5)


def test_zeroshot_classifier_recipe():
    class Bag(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = nn.Parameter(table)

        def encode_text(self, tokens, normalize=False):
            v = self.table[tokens].sum(1)
            return F.normalize(v, dim=-1) if normalize else v

    tok = T.WordTokenizer(["a", "photo", "of", "cat", "dog"], context_length=8)
    g = torch.Generator().manual_seed(3)
    table = torch.randn(tok.vocab_size, 4, generator=g, dtype=torch.float64)
    table[[0, tok.sot_token_id, tok.eot_token_id]] = 0
    W = Z.zeroshot_classifier(Bag(table.float()), tok, ["cat", "dog"], ["a photo of a {c}", "{}"])
    for i, c in enumerate(["cat", "dog"]):
        t1 = table[tok.word_to_id["a"]] * 2 + table[tok.word_to_id["photo"]] + table[tok.word_to_id["of"]] + table[tok.word_to_id[c]]
        t2 = table[tok.word_to_id[c]]
        m = t1 / t1.norm() + t2 / t2.norm()
        torch.testing.assert_close(W[i].double(), m / m.norm(), atol=1e-6, rtol=1e-6)


def test_teacher_cache_roundtrip_and_stale(tiny, batch, tmp_path):
    model, _, tok = tiny
    imgs, caps, _ = batch
    tasks = {"t": {"classnames": ["w1", "w2", "w3"], "templates": ["w0 {c}", "{c}"]}}
    cache = TC.TeacherCache.build(model, tok, imgs, caps, tasks)
    assert cache.image_emb.shape == (6, D) and cache.class_emb["t"].shape == (3, D)
    path = cache.save(tmp_path / "teacher.pt")
    back = TC.TeacherCache.load(path, model=model)
    assert torch.equal(back.image_emb, cache.image_emb) and torch.equal(back.text_emb, cache.text_emb)
    assert torch.equal(back.class_emb["t"], cache.class_emb["t"])
    other = M.create_model("dive-tiny-vit", pretrained=M.save_checkpoint(model, tmp_path / "m.pt"))[0]
    with torch.no_grad():
        other.logit_scale.add_(1e-4)
    with pytest.raises(TC.StaleTeacherCache, match="stale"):
        TC.TeacherCache.load(path, model=other)
