"""Black-box tests of dive_nb.peft: the opened-up towers equal open_clip's, zero-length prompts and zero-initialised
adapters change nothing, deep D = 1 is shallow prompting, CoOp's identity at initialisation, MPS's branch and its
fused-logit identity, float64 gradient checks, installation on a FineTuneModel (idempotent, deepcopy-safe, reloadable)."""
import copy

import pytest
import torch
from tiny import register_c16, register_plain_c16
import torch.nn.functional as F

from dive_nb.methods import FineTuneModel
from dive_nb.miniworld import TASKS, vocabulary
from dive_nb.models import create_model
from dive_nb.zeroshot import zeroshot_classifier
from dive_nb.peft import (MPSBranch, PromptLearner, ResidualAdapter, check_vit_clip, context_init_ids, install_adapters,
                          install_mps, install_prompt_learner, mps_split, run_blocks, text_forward, vision_forward,
                          vision_head, vision_stem)

TINY = [register_c16(), register_plain_c16()]
LONG = "a small red circle with stripes at the left side on a blue background"  # 14 words: fills the 16-token context


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    torch.manual_seed(0)
    clip, _, tok = create_model(request.param, vocab=vocabulary())
    return clip, tok


def _inputs(tok, seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    t = tok(["a photo of a circle", LONG, "a", "a drawing of a blue star on a white background"][:n])
    return x, t


def _fresh(clip, tok):
    head = zeroshot_classifier(clip, tok, TASKS["shape"].classnames, TASKS["shape"].templates)
    return FineTuneModel(copy.deepcopy(clip), head)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_towers_equal_open_clip(tiny, seed):
    clip, tok = tiny
    x, t = _inputs(tok, seed)
    with torch.no_grad():
        pooled, tokens = vision_forward(clip.visual, x, tokens=True)
        assert torch.equal(pooled, clip.encode_image(x))
        torch.testing.assert_close(tokens[:, 0], pooled)
        assert tokens.shape == (4, 17, clip.visual.proj.shape[1])
        assert torch.equal(text_forward(clip, t), clip.encode_text(t))
        assert torch.equal(text_forward(clip, t, manual=True), clip.encode_text(t))
        T = clip.visual.transformer
        h = vision_stem(clip.visual, x)
        assert torch.equal(run_blocks(T, run_blocks(T, h, T.resblocks[:1]), T.resblocks[1:]), T(h))


def test_run_blocks_sequence_first_layout(tiny):
    "A tower built with batch_first=False (older open_clip) gets its blocks in (L, N, D)."
    clip, _ = tiny
    T = copy.deepcopy(clip.visual.transformer)
    x = torch.randn(2, 17, T.width)
    with torch.no_grad():
        want = run_blocks(T, x, T.resblocks)
        T.batch_first = False
        for b in T.resblocks: b.attn.batch_first = False
        torch.testing.assert_close(run_blocks(T, x, T.resblocks), want)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_zero_length_prompts_change_nothing(tiny, depth):
    clip, tok = tiny
    x, t = _inputs(tok)
    z = PromptLearner(clip, n_text=0, n_vision=0, depth=depth, init_text=None)
    assert sum(p.numel() for p in z.parameters()) == 0
    with torch.no_grad():
        assert torch.equal(z.encode_image(clip, x), clip.encode_image(x))
        assert torch.equal(z.encode_text(clip, t), clip.encode_text(t))
        m = _fresh(clip, tok)
        install_prompt_learner(m, n_text=0, n_vision=0, depth=depth, init_text=None)
        assert torch.equal(m.encode_image(x), F.normalize(clip.encode_image(x), dim=-1))
        assert torch.equal(m.encode_text(t), F.normalize(clip.encode_text(t), dim=-1))


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_one_is_shallow(tiny, seed):
    clip, tok = tiny
    x, t = _inputs(tok, seed)
    torch.manual_seed(seed)
    sh = PromptLearner(clip, n_vision=3, depth=1)
    assert len(sh.text_deep) == 0 and len(sh.vision_deep) == 0
    with torch.no_grad():
        assert torch.equal(sh.encode_image(clip, x, manual=True), sh.encode_image(clip, x))
        assert torch.equal(sh.encode_text(clip, t, manual=True), sh.encode_text(clip, t))
        # the shallow path is open_clip's transformer on the prompted token sequence
        h = clip.visual.transformer(vision_stem(clip.visual, x, sh.vision))
        assert torch.equal(sh.encode_image(clip, x), vision_head(clip.visual, h, n_prompts=3)[0])


def test_deep_prompts_replace_the_prompt_positions(tiny):
    clip, tok = tiny
    x, t = _inputs(tok)
    torch.manual_seed(0)
    d = PromptLearner(clip, n_vision=2, depth=3)
    n_txt, n_vis = len(clip.transformer.resblocks), len(clip.visual.transformer.resblocks)
    assert len(d.text_deep) == min(3, n_txt) - 1 and len(d.vision_deep) == min(3, n_vis) - 1
    with torch.no_grad():
        # image oracle: overwrite the last Q tokens before blocks 1..D-1, by hand
        v, T = clip.visual, clip.visual.transformer
        h = vision_stem(v, x, d.vision)
        for i, blk in enumerate(T.resblocks):
            if 1 <= i <= len(d.vision_deep):
                h = h.clone(); h[:, -2:] = d.vision_deep[i - 1]
            h = blk(h)
        torch.testing.assert_close(d.encode_image(clip, x), vision_head(v, h, n_prompts=2)[0])
        # text: injecting exactly the hidden states of positions 1..P after block 0 (they see only SOT and the context,
        # so they are the same for every caption) reproduces the shallow output
        seq = torch.cat([clip.token_embedding(t)[:, :1], d.text.expand(len(t), -1, -1)], 1) + clip.positional_embedding[:5]
        h1 = run_blocks(clip.transformer, seq, clip.transformer.resblocks[:1], clip.attn_mask[:5, :5])
        torch.testing.assert_close(h1[0], h1[-1])
        d.text_deep[0].copy_(h1[0, 1:5])
        shallow = PromptLearner(clip, n_vision=0, depth=1)
        torch.testing.assert_close(d.encode_text(clip, t), shallow.encode_text(clip, t))


def test_coop_initialisation_is_the_hand_written_prompt(tiny):
    clip, tok = tiny
    coop = PromptLearner(clip, n_vision=0)
    assert coop.n_text == 4 and torch.equal(coop.text, clip.token_embedding.weight[context_init_ids(tok, "a photo of a")])
    names = sorted({c for task in TASKS.values() for c in task.classnames})
    with torch.no_grad():
        got = coop.encode_text(clip, tok(names))
        want = clip.encode_text(tok([f"a photo of a {c}" for c in names]))
    assert torch.equal(got, want)


def test_long_captions_keep_their_end_of_text_token(tiny):
    clip, tok = tiny
    t = tok([LONG, "a circle"])
    ctx = torch.randn(3, clip.token_embedding.weight.shape[1])
    with torch.no_grad():
        got = text_forward(clip, t, ctx)
        # oracle: drop the caption's last 3 words by hand, then the plain tower with the context spliced in
        short = tok([" ".join(LONG.split()[:-3]), "a circle"])
        emb = clip.token_embedding(short)
        seq = torch.cat([emb[:, :1], ctx.expand(2, -1, -1), emb[:, 1:13]], 1) + clip.positional_embedding
        h = clip.ln_final(clip.transformer(seq, attn_mask=clip.attn_mask))
        pos = short.argmax(-1) + 3
        torch.testing.assert_close(got, h[torch.arange(2), pos] @ clip.text_projection)
    with pytest.raises(ValueError, match="need P <= 14"):
        text_forward(clip, t, torch.zeros(15, ctx.shape[1]))


def test_prompt_gradients_in_float64(tiny):
    clip, tok = tiny
    c64 = copy.deepcopy(clip).double()
    _, t = _inputs(tok, n=2)
    ctx = (0.1 * torch.randn(2, c64.token_embedding.weight.shape[1], dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: text_forward(c64, t, c).sum(-1), (ctx,), fast_mode=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    vp = (0.1 * torch.randn(2, c64.visual.class_embedding.shape[0], dtype=torch.float64)).requires_grad_()
    f = lambda p: vision_head(c64.visual, c64.visual.transformer(vision_stem(c64.visual, x, p)), n_prompts=2)[0].sum(-1)
    assert torch.autograd.gradcheck(f, (vp,), fast_mode=True)


def test_prompt_learner_errors(tiny):
    clip, tok = tiny
    with pytest.raises(ValueError, match="has 4 tokens"): PromptLearner(clip, n_text=2)
    with pytest.raises(ValueError, match="depth must be an int >= 1"): PromptLearner(clip, depth=0)
    with pytest.raises(ValueError, match="n_vision must be >= 0"): PromptLearner(clip, n_vision=-1)
    with pytest.raises(ValueError, match="unknown word"): PromptLearner(clip, init_text="a photo of a zebra")
    with pytest.raises(ValueError, match="non-empty `context`"): text_forward(clip, tok(["a"]), None, [torch.zeros(1, 64)])
    bad = copy.deepcopy(clip); bad.visual.attn_pool = torch.nn.Identity()
    with pytest.raises(ValueError, match="attn_pool"): check_vit_clip(bad)


def test_install_prompt_learner(tiny):
    clip, tok = tiny
    x, t = _inputs(tok)
    m = _fresh(clip, tok)
    torch.manual_seed(0)
    pl = install_prompt_learner(m, n_vision=4, depth=3)
    assert install_prompt_learner(m, n_vision=4, depth=3) is pl
    with pytest.raises(ValueError, match="already has a 'prompts' module"): install_prompt_learner(m, n_vision=2)
    ps = m.set_trainable(("prompts",))
    assert {id(p) for p in ps} == {id(p) for p in pl.parameters()} and not any(p.requires_grad for p in m.clip.parameters())
    keys = {k for k in m.state_dict() if k.startswith("state.prompts.")}
    assert keys == {"state.prompts.text", "state.prompts.vision", "state.prompts.text_deep.0", "state.prompts.vision_deep.0",
                    "state.prompts.vision_deep.1"} - (set() if len(clip.visual.transformer.resblocks) >= 3 else {"state.prompts.vision_deep.1"})
    (m.encode_image(x).sum() + m.encode_text(t).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pl.parameters())
    # deep copies and reloaded copies encode with their own prompts
    with torch.no_grad():
        m2 = copy.deepcopy(m)
        for p in m2.state["prompts"].parameters(): p.add_(torch.randn_like(p))
        assert not torch.allclose(m2.encode_image(x), m.encode_image(x))
        m3 = _fresh(clip, tok); install_prompt_learner(m3, n_vision=4, depth=3)
        m3.load_state_dict(m2.state_dict())
        torch.testing.assert_close(m3.encode_image(x), m2.encode_image(x))
        torch.testing.assert_close(m3.encode_text(t), m2.encode_text(t))


def test_mps_split():
    assert mps_split(12) == (4, 4, 4) and mps_split(3) == (1, 1, 1) and mps_split(4) == (1, 1, 2) and mps_split(2) == (0, 0, 2)
    assert mps_split(12, 6, 2) == (6, 2, 4) and mps_split(3, 0, 3) == (0, 3, 0)
    for bad in [(-1, 1), (1, -1), (2, 2)]:
        with pytest.raises(ValueError, match="n_early"): mps_split(3, *bad)


@pytest.mark.parametrize("split", [(None, None), (0, 1), (2, 1), (0, 3)])
def test_mps_branch(tiny, split):
    clip, tok = tiny
    x, _ = _inputs(tok)
    m = _fresh(clip, tok)
    br = install_mps(m, *split)
    e, mid, late = mps_split(len(clip.visual.transformer.resblocks), *split)
    assert (br.n_early, br.n_mid, len(br.late)) == (e, mid, late)
    w, d = clip.visual.class_embedding.shape[0], clip.visual.proj.shape[1]
    n_block = sum(p.numel() for p in clip.visual.transformer.resblocks[0].parameters())
    assert sum(p.numel() for p in m.parts("mps")) == mid * w * w + late * n_block + 2 * w + w * d
    with torch.no_grad():
        o = br(clip.visual, x, tokens=True)
        assert torch.equal(o["ft"], o["zs"]) and torch.equal(o["ft_tokens"], o["zs_tokens"])  # zero adapters, exact copies
        torch.testing.assert_close(m.encode_image(x), F.normalize(clip.encode_image(x), dim=-1), atol=1e-6, rtol=0)
        torch.manual_seed(1)
        for p in br.parameters(): p.add_(0.05 * torch.randn_like(p))
        # oracle, block by block: frozen early blocks, middle blocks + parallel adapters, the trained copies
        T = clip.visual.transformer
        h = vision_stem(clip.visual, x)
        for blk in T.resblocks[:e]: h = blk(h)
        for blk, a in zip(T.resblocks[e:e + mid], br.adapters): h = blk(h) + h @ a.weight.T
        for blk in br.late: h = blk(h)
        torch.testing.assert_close(br(clip.visual, x, frozen=False)["ft"], br.ln_post(h)[:, 0] @ br.proj)
        assert torch.equal(br(clip.visual, x)["zs"], clip.encode_image(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.3, 0.0, 1.0])
def test_mps_fused_logit_identity(tiny, seed, alpha):
    "s * encode_image(x) @ W.T equals alpha * (fine-tuned logits) + (1 - alpha) * (zero-shot logits)."
    clip, tok = tiny
    x, _ = _inputs(tok, seed)
    m = _fresh(clip, tok)
    br = install_mps(m, alpha=alpha)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in br.parameters(): p.add_(0.1 * torch.randn_like(p))
        o = br(clip.visual, x)
        W, s = m.head.weight, m.scale
        lft, lzs = s * F.normalize(o["ft"], dim=-1) @ W.T, s * F.normalize(o["zs"], dim=-1) @ W.T
        torch.testing.assert_close(s * m.encode_image(x) @ W.T, alpha * lft + (1 - alpha) * lzs)
        assert (lft - lzs).abs().max() > 1e-2
    with pytest.raises(ValueError, match="alpha must be in"): MPSBranch(clip.visual, alpha=-0.1)


def test_mps_gradients_in_float64(tiny):
    clip, tok = tiny
    c64 = copy.deepcopy(clip).double()
    br = MPSBranch(c64.visual).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    a0 = (0.01 * torch.randn_like(br.adapters[0].weight)).requires_grad_()
    f = lambda a: torch.func.functional_call(br, {"adapters.0.weight": a}, (c64.visual, x), {"frozen": False})["ft"].sum(-1)
    assert torch.autograd.gradcheck(f, (a0,), fast_mode=True)


def test_residual_adapters(tiny):
    clip, tok = tiny
    x, t = _inputs(tok)
    m = _fresh(clip, tok)
    ad = install_adapters(m)
    assert install_adapters(m) is ad
    with pytest.raises(ValueError, match="already has a 'adapters' module"): install_adapters(m, hidden=8)
    d = clip.visual.proj.shape[1]
    assert sum(p.numel() for p in m.parts("adapters")) == 2 * (2 * d * d + 2 * d)
    with torch.no_grad():
        assert torch.equal(m.encode_image(x), F.normalize(clip.encode_image(x), dim=-1))
        assert torch.equal(m.encode_text(t), F.normalize(clip.encode_text(t), dim=-1))
    m.set_trainable(("adapters",))
    (m.encode_image(x) @ m.encode_text(t).T).sum().backward()
    assert ad["text"].up.weight.grad.abs().sum() > 0 and ad["text"].down.weight.grad.abs().sum() == 0
    assert all(p.grad is None for p in m.clip.parameters())
    small = ResidualAdapter(d, 3)
    assert sum(p.numel() for p in small.parameters()) == d * 3 + 3 + 3 * d + d
    with pytest.raises(ValueError, match="hidden must be >= 1"): ResidualAdapter(d, 0)


def test_tokenizer_is_read_from_the_model(tiny):
    clip, tok = tiny
    assert torch.equal(context_init_ids(tok, "a photo of a"), torch.tensor([vocabulary().index(w) + 1 for w in "a photo of a".split()]))
    bare = copy.deepcopy(clip); bare.dive_nb_info = {}
    with pytest.raises(ValueError, match="pass `tokenizer=`"): PromptLearner(bare)
    assert PromptLearner(bare, tokenizer=tok).n_text == 4


@pytest.mark.slow
def test_vit_b16_random_init():
    "The same code on open_clip's ViT-B/16 (random weights, no download): 12 blocks, 197 tokens, BPE tokenizer."
    torch.manual_seed(0)
    clip, _, tok = create_model("ViT-B-16")
    x, t = torch.randn(1, 3, 224, 224), tok(["a photo of a dog.", "a diagram of a wing"])
    with torch.no_grad():
        pooled, tokens = vision_forward(clip.visual, x, tokens=True)
        assert torch.equal(pooled, clip.encode_image(x)) and tokens.shape == (1, 197, 512)
        assert torch.equal(text_forward(clip, t), clip.encode_text(t))
        coop = PromptLearner(clip, n_vision=0)
        assert torch.equal(coop.encode_text(clip, tok(["dog."])), clip.encode_text(tok(["a photo of a dog."])))
        ivlp = PromptLearner(clip, n_vision=4, depth=12)
        assert (len(ivlp.text_deep), len(ivlp.vision_deep), sum(p.numel() for p in ivlp.parameters())) == (11, 11, 61440)
        assert ivlp.encode_image(clip, x).shape == (1, 512)
        br = MPSBranch(clip.visual)
        assert (br.n_early, br.n_mid, len(br.late)) == (4, 4, 4)
        o = br(clip.visual, x, tokens=True)
        assert torch.equal(o["ft"], o["zs"]) and o["ft_tokens"].shape == (1, 197, 512)
