"""Black-box tests of dive_nb.other_methods: the registered methods (m2mix, mps, promptot, coop, csaligner) through the
one loop (what trains, what stays frozen, two processes equal one, exact resume with caches), the one evaluation path
(fused MPS logits, reloaded runs), the terms against the losses they name, and the experiment helpers (K-shot subsets,
base-to-novel splits, harmonic mean, expected calibration error)."""
import contextlib
import copy
import dataclasses
import functools
import math

import pytest
import torch
from tiny import register_c16
import torch.nn.functional as F

import dive_nb.other_methods as om  # registers the methods
from dive_nb.evaluate import expected_calibration_error
import dive_nb.train as train_mod
from dive_nb.data import Split
from dive_nb.distributed import cleanup_distributed, run_local_processes, setup_distributed
from dive_nb.losses.contrastive import clip_loss, zeroshot_ce_loss
from dive_nb.losses.cs import cs_divergence
from dive_nb.losses.gram import gram_alignment_loss, sculpt_loss
from dive_nb.losses.mixup import m2mix_loss, sample_mix_lambda
from dive_nb.losses.ot import prompt_ot_loss
from dive_nb.methods import METHODS, TERMS, FineTuneModel, StepContext, get_method
from dive_nb.miniworld import TASKS, vocabulary
from dive_nb.models import create_model, prepare_images
from dive_nb.zeroshot import zeroshot_classifier
from dive_nb.train import TrainConfig, class_prompt_tokens, train

NEW = ["m2mix", "m2mix_pairs", "clip_pairs", "mps", "promptot", "coop", "csaligner", "csaligner_adapters"]
PARAMS = {"m2mix": 498272, "m2mix_pairs": 498272, "clip_pairs": 498272, "mps": 127392, "promptot": 1664, "coop": 256,
          "csaligner": 498272, "csaligner_adapters": 16640}
TASK = TASKS["shape"]
CAPS = ["a photo of a red circle", "a drawing of a blue star on a white background", "a small green square", "a big heart"]


@contextlib.contextmanager
def loop_with_prompts(prompts):
    "Hand the class prompts to the loop's StepContext, until the loop does it itself (requested change)."
    if "prompt_tokens" in {f.name for f in dataclasses.fields(StepContext)}:
        yield
        return
    @dataclasses.dataclass
    class _SC(StepContext):
        prompt_tokens: torch.Tensor | None = None
    old = train_mod.StepContext
    train_mod.StepContext = functools.partial(_SC, prompt_tokens=prompts)
    try:
        yield
    finally:
        train_mod.StepContext = old


@functools.lru_cache(maxsize=None)
def _world():
    torch.manual_seed(0)
    clip, _, tok = create_model(register_c16(), vocab=vocabulary())
    head = zeroshot_classifier(clip, tok, TASK.classnames, TASK.templates)
    prompts = class_prompt_tokens(tok, TASK.classnames, TASK.templates)
    g = torch.Generator().manual_seed(0)
    ids = Split(torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8), {"shape": torch.arange(40) % 10})
    caps = CAPS * 4
    ref = Split(torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8), {}, caps, tok(caps))
    return clip, tok, head, prompts, ids, ref


def _model(name, **over):
    clip, _, head, *_ = _world()
    m, meth = FineTuneModel(copy.deepcopy(clip), head.clone()), get_method(name, **over)
    torch.manual_seed(0)
    meth.init_state(m)
    m.set_trainable(meth.phases[0].train)
    return m, meth


def _ctx(m, meth, rows=(0, 3, 5, 6, 11, 12, 27, 39), step=0, total=10, seed=0):
    _, _, _, prompts, ids, ref = _world()
    idx = torch.tensor(rows)
    y = ids.labels["shape"][idx]
    c = StepContext(m, prepare_images(ids.images[idx]), y, prompts[step % 5, y], prepare_images(ref.images[:4]), ref.tokens[:4],
                    hp=meth.hparams, generator=torch.Generator().manual_seed(seed), step=step, total_steps=total, id_index=idx,
                    cache=meth.precompute(m, ids, prepare_images) if meth.precompute else {})
    c.prompt_tokens = prompts
    return c


def _trained_names(m, meth):
    ids_ = {id(p) for n in meth.phases[0].train for p in m.parts(n)}
    return {k for k, p in m.named_parameters() if id(p) in ids_}


def _train(name, steps=2, out_dir=None, prepare=prepare_images, **over):
    _, _, _, prompts, ids, ref = _world()
    m, meth = _model(name, **over)
    cfg = TrainConfig(steps=steps, batch_size=8, ref_batch_size=4, lr=1e-3, progress=False, ckpt_every=2 if out_dir else 0)
    with loop_with_prompts(prompts):
        res = train(m, meth, ids, "shape", prompts, prepare, cfg, reference=ref, out_dir=out_dir)
    return m, meth, res


def test_registered_with_parameter_counts():
    for name in NEW:
        assert name in METHODS
        m, meth = _model(name)
        assert sum(p.numel() for n in meth.phases[0].train for p in m.parts(n)) == PARAMS[name], name
    assert {"clip_fixed", "m2mix", "clip_fixed_pairs", "m2mix_pairs", "mps_ce", "mps_gram", "mps_sculpt", "prompt_ce", "prompt_ot", "csa_nce", "csa_cs"} <= set(TERMS)
    assert [n for n in NEW if get_method(n).needs_reference] == ["m2mix_pairs", "clip_pairs", "csaligner", "csaligner_adapters"]
    assert not any(get_method(n).needs_pre for n in NEW)
    with pytest.raises(ValueError, match="no hyperparameter"): get_method("promptot", lamda=1.0)


def test_reimport_replaces_its_own_registrations():
    "Running the notebook again (re-registering the same methods) must not fail or duplicate them."
    n = len(METHODS)
    m = METHODS["mps"]
    om.replace_method(m)
    assert len(METHODS) == n and METHODS["mps"] is m


@pytest.mark.parametrize("name", NEW)
def test_terms_finite_and_gradients_reach_only_trained_parts(name):
    m, meth = _model(name)
    ph = meth.phases[0]
    c = _ctx(m, meth)
    w = meth.weights(ph)
    for grp in ("id", "ref"):  # the loop's order: ID terms' backward first, then the reference terms'
        vals = {t: TERMS[t].fn(c) for t in ph.terms if TERMS[t].batch == grp}
        for t, v in vals.items(): assert v.ndim == 0 and torch.isfinite(v), (t, v)
        if vals: sum(w[t] * v for t, v in vals.items()).backward()
    trained = _trained_names(m, meth)
    for k, p in m.named_parameters():
        if k in trained: assert p.grad is not None and torch.isfinite(p.grad).all(), k
        else: assert p.grad is None, k
    assert sum(float(p.grad.abs().sum()) for k, p in m.named_parameters() if k in trained) > 0


@pytest.mark.parametrize("name", NEW)
def test_two_steps_move_only_trained_parts(name):
    m0, _ = _model(name)
    before = {k: v.clone() for k, v in m0.state_dict().items()}
    m, meth, res = _train(name)
    after = m.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and changed <= _trained_names(m, meth), sorted(changed - _trained_names(m, meth))[:5]
    assert all(math.isfinite(v) for r in res["log"] for k, v in r.items() if k not in ("phase", "step"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_m2mix_terms(seed):
    m, meth = _model("m2mix")
    for step, we in ((0, 1.0), (3, 1 / 3), (9, 1 / 9)):
        c = _ctx(m, meth, step=step, total=10, seed=seed)
        lam = sample_mix_lambda(0.5, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(TERMS["clip_fixed"].fn(c), clip_loss(c.id_img, c.id_txt, 100.0))
        torch.testing.assert_close(TERMS["m2mix"].fn(c), we * m2mix_loss(c.id_img, c.id_txt, lam, 0.07))
    for step, we in ((0, 1.0), (9, 1 / 9)):  # the pair variants: the same terms on the reference batch
        c = _ctx(m, meth, step=step, total=10, seed=seed)
        lam = sample_mix_lambda(0.5, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(TERMS["clip_fixed_pairs"].fn(c), clip_loss(c.ref_img, c.ref_txt, 100.0))
        torch.testing.assert_close(TERMS["m2mix_pairs"].fn(c), we * m2mix_loss(c.ref_img, c.ref_txt, lam, 0.07))
    c = _ctx(m, meth.resolve(schedule=False, tau2=0.2, beta=2.0), step=9, seed=seed)
    lam = sample_mix_lambda(2.0, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(TERMS["m2mix"].fn(c), m2mix_loss(c.id_img, c.id_txt, lam, 0.2))
    assert om.M2MIX_GRID == (0.05, 0.01, 0.005, 0.001) and meth.hparams["w"] in om.M2MIX_GRID


def test_m2mix_epoch_weight():
    assert [om.m2mix_epoch_weight(s, 9) for s in range(9)] == [1 / (e + 1) for e in range(9)]
    assert [om.m2mix_epoch_weight(s, 100, epochs=2) for s in (0, 49, 50, 99)] == [1.0, 1.0, 0.5, 0.5]
    assert om.m2mix_epoch_weight(5, 10, schedule=False) == 1.0
    with pytest.raises(ValueError, match="epochs and total_steps"): om.m2mix_epoch_weight(0, 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_mps_terms(seed):
    m, meth = _model("mps")
    c = _ctx(m, meth, seed=seed)
    assert TERMS["mps_gram"].fn(c).item() < 1e-6  # at initialisation the branch is the frozen tower
    with torch.no_grad():
        torch.manual_seed(seed)
        for p in m.state["mps"].parameters(): p.add_(0.05 * torch.randn_like(p))
    W, s = m.head.weight, m.scale
    for cached in (True, False):
        for step, tau in ((0, 0.1), (5, 0.075), (10, 0.05)):
            c = _ctx(m, meth.resolve(cache_frozen=cached), step=step, total=10)
            o = m.state["mps"](m.clip.visual, c.id_images, tokens=True)
            ft, z0 = F.normalize(o["ft"], dim=-1), F.normalize(o["zs"], dim=-1)
            logits = 0.3 * s * ft @ W.T + 0.7 * s * z0 @ W.T
            torch.testing.assert_close(TERMS["mps_ce"].fn(c), F.cross_entropy(logits, c.id_labels))
            torch.testing.assert_close(TERMS["mps_gram"].fn(c), gram_alignment_loss(ft, z0) + gram_alignment_loss(o["ft_tokens"], o["zs_tokens"]))
            torch.testing.assert_close(TERMS["mps_sculpt"].fn(c), sculpt_loss(ft, c.id_labels, W, tau))
    for over, want in (({"gram_local": 0.0}, lambda ft, z0, o: gram_alignment_loss(ft, z0)),
                       ({"gram_global": 0.0, "gram_p": 2}, lambda ft, z0, o: gram_alignment_loss(o["ft_tokens"], o["zs_tokens"], 2))):
        c = _ctx(m, meth.resolve(**over))
        o = m.state["mps"](m.clip.visual, c.id_images, tokens=True)
        torch.testing.assert_close(TERMS["mps_gram"].fn(c), want(F.normalize(o["ft"], dim=-1), F.normalize(o["zs"], dim=-1), o))


def test_mps_cache_is_the_frozen_tower():
    from dive_nb.peft import vision_forward
    m, meth = _model("mps")
    _, _, _, _, ids, _ = _world()
    cache = om.mps_precompute(m, ids, prepare_images)
    assert cache["mps_zs"].shape == (40, 64) and cache["mps_zs_tokens"].shape == (40, 17, 64)
    with torch.no_grad():
        zs, tok = vision_forward(m.clip.visual, prepare_images(ids.images), tokens=True)
    torch.testing.assert_close(cache["mps_zs"], F.normalize(zs, dim=-1))
    torch.testing.assert_close(cache["mps_zs_tokens"], tok)
    c = _ctx(m, meth); c.cache = {}
    c.hp = {**meth.hparams, "cache_frozen": True}
    TERMS["mps_ce"].fn(c)  # an empty cache falls back to the live frozen branch
    c = _ctx(m, meth); c.id_index = None
    with pytest.raises(ValueError, match="needs ctx.id_index"): TERMS["mps_ce"].fn(c)


@pytest.mark.parametrize("name", ["promptot", "coop"])
def test_prompt_terms(name):
    _, _, _, prompts, _, _ = _world()
    m, meth = _model(name)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in m.state["prompts"].parameters(): p.add_(0.1 * torch.randn_like(p))
    c = _ctx(m, meth)
    img = m.encode_image(c.id_images)
    e = m.encode_text(prompts.reshape(-1, prompts.shape[-1])).view(*prompts.shape[:2], -1)
    w = F.normalize(F.normalize(e, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(TERMS["prompt_ce"].fn(c), zeroshot_ce_loss(img, w, c.id_labels, m.scale))
    if name == "promptot":
        y = c.id_labels
        with torch.no_grad(): f0 = F.normalize(m.clip.encode_image(c.id_images), dim=-1)
        z, z0 = torch.cat([img, w[y]], 1), torch.cat([f0, m.head.weight[y]], 1)
        exact = TERMS["prompt_ot"].fn(c)
        torch.testing.assert_close(exact, prompt_ot_loss(z, z0))
        c2 = _ctx(m, meth.resolve(eps=0.02, eta=0.5))
        assert TERMS["prompt_ot"].fn(c2).item() >= exact.item() - 1e-5  # an entropic plan costs at least the optimal one
        torch.testing.assert_close(TERMS["prompt_ot"].fn(_ctx(m, meth.resolve(eta=2.0))), 4 * exact)
    c3 = _ctx(m, meth); del c3.prompt_tokens
    with pytest.raises(ValueError, match="need ctx.prompt_tokens"): TERMS["prompt_ce"].fn(c3)


@pytest.mark.parametrize("over", [{}, {"lam": 0.25, "ref_images": True}, {"ref_text": False, "sigma": 0.7}])
def test_csaligner_terms_sum_to_the_objective(over):
    m, meth = _model("csaligner_adapters", **over)
    with torch.no_grad():
        torch.manual_seed(2)
        for p in m.state["adapters"].parameters(): p.add_(0.1 * torch.randn_like(p))
    c, h = _ctx(m, meth), meth.hparams
    img, txt = m.encode_image(c.id_images), m.encode_text(c.id_prompt_tokens)
    pool_i = torch.cat([img] + ([m.encode_image(c.ref_images)] if h["ref_images"] else []))
    pool_t = torch.cat([txt] + ([m.encode_text(c.ref_tokens)] if h["ref_text"] else []))
    nce = TERMS["csa_nce"].fn(c)
    torch.testing.assert_close(nce, clip_loss(img, txt, m.scale))
    torch.testing.assert_close(nce + h["lam"] * TERMS["csa_cs"].fn(c), nce + h["lam"] * cs_divergence(pool_i, pool_t, h["sigma"]))


def test_csaligner_with_trainable_encoders_recomputes():
    "If the encoders were trainable, the CS term must not reuse graph-free encoder outputs."
    m, meth = _model("csaligner_adapters")
    m.set_trainable(("adapters", "visual"))
    c = _ctx(m, meth)
    TERMS["csa_nce"].fn(c).backward()
    TERMS["csa_cs"].fn(c).backward()
    assert "csa_id_img" not in c._memo and "csa_id_txt" in c._memo
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.clip.visual.parameters())


@pytest.mark.parametrize("over", [{}, {"ref_images": True}, {"ref_text": False, "sigma": 0.7}])
def test_csaligner_protocol_term_is_cs_of_finetuned_features(over):
    "Under the DiVE protocol the CS term reads the fine-tuned ID features (FLYP's) plus the reference batch, and trains both towers."
    from dive_nb.losses.cs import cs_divergence
    m, meth = _model("csaligner", **over)
    assert meth.phases[0].train == ("visual", "text") and TERMS["csa_cs_ft"].batch == "both"
    c, h = _ctx(m, meth), meth.hparams
    got = TERMS["csa_cs_ft"].fn(c)
    imgs = [m.encode_image(c.id_images)] + ([m.encode_image(c.ref_images)] if h["ref_images"] else [])
    txts = [m.encode_text(c.id_prompt_tokens)] + ([m.encode_text(c.ref_tokens)] if h["ref_text"] else [])
    torch.testing.assert_close(got, cs_divergence(torch.cat(imgs), torch.cat(txts), h["sigma"]))
    (TERMS["flyp"].fn(c) + h["lam"] * got).backward()  # one graph: the CS term reuses FLYP's ID features
    for part in ("visual", "text"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parts(part)), part


def _worker(name, out_dir, world):
    from dive_nb.distributed import rank_and_world
    setup_distributed()
    try:  # (only rank 0 gets the folder: `train` saves the final weights on every rank, and two renames can race)
        _train(name, steps=3, out_dir=out_dir if rank_and_world()[0] == 0 else None)
    finally:
        cleanup_distributed()


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_two_processes_equal_one(tmp_path, name):
    one, _, _ = _train(name, steps=3, out_dir=tmp_path / "one")
    run_local_processes(_worker, nprocs=2, args=(name, str(tmp_path / "two"), 2))
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    a = one.state_dict()
    assert a.keys() == two.keys()
    for k in a:
        x, y = two[k].clone(), a[k].clone()
        if k.endswith("attn.in_proj_bias"):
            # the key bias has zero gradient in exact arithmetic (softmax ignores a shift common to all keys): Adam turns
            # rounding noise into steps of up to lr, so it is compared at that scale, the rest tightly
            w = len(x) // 3
            torch.testing.assert_close(x[w:2 * w], y[w:2 * w], rtol=0, atol=3e-3)
            x[w:2 * w] = y[w:2 * w] = 0
        # float rounding differs between one gathered batch and two shards; three Adam steps can amplify it in a
        # handful of entries to ~2e-5 (seen on the CI machine), far below what a wrong gather or gradient sum gives
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert any(not torch.equal(v, _model(name)[0].state_dict()[k]) for k, v in two.items())


class _Crash(Exception):
    pass


@pytest.mark.parametrize("name", ["mps", "promptot", "csaligner_adapters", "csaligner"])
def test_resume_after_crash_is_exact(tmp_path, name):
    full, _, _ = _train(name, steps=4, out_dir=tmp_path / "full")
    calls = [0]
    csa = name.startswith("csaligner")
    n_per_step = 2 if csa else 1  # prepare calls per step (ID, reference)
    n_pre = 1  # precompute prepares the 40 ID images in one batch (0 for csaligner, which has no precompute)
    def crashing(x):
        calls[0] += 1
        if calls[0] > (0 if csa else n_pre) + 3 * n_per_step: raise _Crash("simulated failure")
        return prepare_images(x)
    with pytest.raises(_Crash): _train(name, steps=4, out_dir=tmp_path / "crashed", prepare=crashing)
    assert torch.load(tmp_path / "crashed" / "ckpt.pt", weights_only=False)["step"] == 2
    resumed, _, _ = _train(name, steps=4, out_dir=tmp_path / "crashed")
    a, b = full.state_dict(), resumed.state_dict()
    for k in a: assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    import dive_nb.miniworld as mw
    from dive_nb.data import mini_suite
    d = tmp_path_factory.mktemp("world")
    cfg = mw.WorldConfig.smoke()
    mw.save_world(mw.build_world(cfg), d, cfg)
    return mini_suite(d, _world()[1])


@pytest.mark.parametrize("name", NEW)
def test_evaluate_and_reload(suite, name):
    "The one evaluation path scores the trained model; a fresh model + setup + load_state_dict scores the same."
    from dive_nb.evaluate import encode, evaluate
    m, meth, _ = _train(name, steps=2)
    tok = _world()[1]
    metrics, per = evaluate(m, suite, tok, prepare_images, classifier=meth.classifier, with_val=False)
    assert 0 <= metrics["id_acc"] <= 100 and 0 <= metrics["zs_acc"]["avg"] <= 100
    assert all(0 <= v <= 100 for v in metrics["retrieval"].values())
    m2, _ = _model(name)
    m2.load_state_dict(m.state_dict())
    metrics2, per2 = evaluate(m2, suite, tok, prepare_images, classifier=meth.classifier, with_val=False)
    assert metrics2["id_acc"] == metrics["id_acc"] and metrics2["zs_acc"] == metrics["zs_acc"]
    torch.testing.assert_close(per2["probe_img"], per["probe_img"])
    if name == "mps":  # the evaluation path's ID accuracy is that of MPS's fused logits
        x = suite.id_test.images
        with torch.no_grad():
            o = m.state["mps"](m.clip.visual, prepare_images(x))
            W = m.head.weight
            fused = 0.3 * F.normalize(o["ft"], dim=-1) @ W.T + 0.7 * F.normalize(o["zs"], dim=-1) @ W.T
        acc = 100 * (fused.argmax(1) == suite.id_test.labels["shape"]).float().mean().item()
        assert math.isclose(metrics["id_acc"], acc, abs_tol=1e-9)
    if name in ("promptot", "coop"):  # the prompted model, not the frozen one, is what is evaluated
        with torch.no_grad():
            f = encode(m.encode_text, suite.probe.tokens)
            f0 = encode(lambda t: F.normalize(m.clip.encode_text(t), dim=-1), suite.probe.tokens)
        torch.testing.assert_close(per["probe_txt"], f)
        assert (f - f0).abs().max() > 1e-4


@pytest.mark.parametrize("seed", range(5))
def test_few_shot_indices(seed):
    g = torch.Generator().manual_seed(seed)
    C = 3 + seed
    lab = torch.randint(0, C, (50 + 20 * seed,), generator=g)
    n_c = torch.bincount(lab, minlength=C)
    prev = set()
    for k in (1, 2, 4, 8, 16):
        s = om.few_shot_indices(lab, k, seed)
        assert torch.equal(s, om.few_shot_indices(lab, k, seed)) and torch.equal(s, torch.sort(s.unique()).values)
        assert torch.equal(torch.bincount(lab[s], minlength=C), n_c.clamp(max=k))
        assert prev <= set(s.tolist())  # nested in k
        prev = set(s.tolist())
    draws = {tuple(om.few_shot_indices(lab, 2, sd).tolist()) for sd in range(6)}
    assert len(draws) > 1  # the seed matters
    # every example is picked with the same probability: over many seeds, 1-shot picks are spread within a class
    rows = (lab == 0).nonzero().flatten().tolist()
    picks = {int(om.few_shot_indices(lab, 1, sd)[lab[om.few_shot_indices(lab, 1, sd)] == 0]) for sd in range(60)}
    assert picks <= set(rows) and len(picks) >= min(len(rows), 3)


def test_few_shot_split_and_errors():
    _, _, _, _, ids, _ = _world()
    s = om.few_shot_split(ids, "shape", 3, seed=1)
    assert len(s) == 30 and torch.equal(torch.bincount(s.labels["shape"]), torch.full((10,), 3))
    rest = set(range(len(ids))) - set(om.few_shot_indices(ids.labels["shape"], 3, 1).tolist())
    assert len(rest) == 10
    with pytest.raises(ValueError, match="k must be an int >= 1"): om.few_shot_indices(torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="1-D integer tensor"): om.few_shot_indices(torch.zeros(3, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="no label column"): om.few_shot_split(ids, "size", 1)


@pytest.mark.parametrize("C", [2, 3, 10, 11, 1000])
def test_base_novel_split(C):
    names = [f"c{i}" for i in range(C)]
    b, n = om.base_novel_split(names)
    assert b == list(range(math.ceil(C / 2))) and n == list(range(math.ceil(C / 2), C))
    for seed in range(4):
        b, n = om.base_novel_split(names, seed)
        assert (b, n) == om.base_novel_split(names, seed)
        assert not set(b) & set(n) and sorted(b + n) == list(range(C)) and len(b) == math.ceil(C / 2)
    if C > 3:
        assert len({tuple(om.base_novel_split(names, s)[0]) for s in range(4)}) > 1


def test_subsample_classes_and_harmonic_mean():
    _, _, _, _, ids, _ = _world()
    b, n = om.base_novel_split(TASK.classnames)
    sb, sn = om.subsample_classes(ids, "shape", b), om.subsample_classes(ids, "shape", n)
    assert len(sb) + len(sn) == len(ids)
    y = ids.labels["shape"]
    for cls, s in ((b, sb), (n, sn)):
        for j, c in enumerate(cls):
            assert torch.equal(s.images[s.labels["shape"] == j], ids.images[y == c])
    rev = om.subsample_classes(ids, "shape", [7, 2])
    assert set(rev.labels["shape"].tolist()) == {0, 1} and torch.equal(rev.images[rev.labels["shape"] == 0], ids.images[y == 7])
    with pytest.raises(ValueError, match="without repeats"): om.subsample_classes(ids, "shape", [])
    assert math.isclose(om.harmonic_mean(80.0, 60.0), 480 / 7) and om.harmonic_mean(0, 0) == 0.0
    assert om.harmonic_mean(90, 10) < (90 + 10) / 2 and om.harmonic_mean(42, 42) == 42
    with pytest.raises(ValueError, match=">= 0"): om.harmonic_mean(-1, 3)


def _ece_oracle(logits, labels, n_bins):
    p = logits.double().softmax(-1).tolist()
    total, n = 0.0, len(p)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = [i for i in range(n) if lo < max(p[i]) <= hi]
        if not sel: continue
        acc = sum(p[i].index(max(p[i])) == int(labels[i]) for i in sel) / len(sel)
        conf = sum(max(p[i]) for i in sel) / len(sel)
        total += len(sel) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_oracle(seed, n_bins):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(200, 2 + seed, generator=g) * (0.5 + seed)
    y = torch.randint(0, 2 + seed, (200,), generator=g)
    got = expected_calibration_error(L, y, n_bins)
    assert 0 <= got <= 1 and math.isclose(got, _ece_oracle(L, y, n_bins), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(expected_calibration_error(L.float(), y, n_bins), got, rel_tol=1e-5)  # float32 input


def test_ece_known_values_and_errors():
    assert expected_calibration_error(torch.tensor([[30.0, -30.0]] * 5), torch.zeros(5, dtype=torch.long)) < 1e-12
    assert math.isclose(expected_calibration_error(torch.tensor([[30.0, -30.0]] * 4), torch.ones(4, dtype=torch.long)), 1.0)
    # 1 bin: |accuracy - mean confidence|
    L = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    conf = L.softmax(-1).max(-1).values.mean().item()
    assert math.isclose(expected_calibration_error(L, torch.tensor([0, 0, 0]), 1), abs(2 / 3 - conf), rel_tol=1e-6)
    with pytest.raises(ValueError, match="non-empty"): expected_calibration_error(torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match="labels must have shape"): expected_calibration_error(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="n_bins"): expected_calibration_error(torch.zeros(2, 3), torch.zeros(2), n_bins=0)
