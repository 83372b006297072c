"""Experiment-level behaviour that needs real (tiny) artefacts: a world, a pretrained model and a teacher cache."""
from pathlib import Path

import pytest
import torch
import yaml

from dive_nb.experiment import finetune_many, stage_pretrain, stage_teacher, stage_world

SMOKE = Path(__file__).parent / "smoke_params.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    params = yaml.safe_load(SMOKE.read_text())
    world = stage_world(params, d / "world")
    pre = stage_pretrain(params, world, d / "pretrained")
    teacher = stage_teacher(params, world, pre, d / "teacher")
    return params, world, pre, teacher, d


def _weights(run_dir):
    return torch.load(Path(run_dir) / "model.pt", weights_only=True)


def test_finetune_many_two_workers_equal_one(tiny):
    "Two spawned workers (one thread each) train exactly what one process trains, seed by seed."
    params, world, pre, teacher, d = tiny
    one = finetune_many(params, world, pre, teacher, [("dive", s, d / "one" / f"dive-{s}", {}) for s in (0, 1)], workers=1)
    two = finetune_many(params, world, pre, teacher, [("dive", s, d / "two" / f"dive-{s}", {}) for s in (0, 1)], workers=2)
    assert [Path(p).name for p in one] == [Path(p).name for p in two] == ["dive-0", "dive-1"]
    for a, b in zip(one, two):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} and {b} differ"
    # and the two seeds really are different runs (the comparison above could not pass vacuously)
    w0, w1 = _weights(one[0]), _weights(one[1])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_paper_experiments_end_to_end(tiny):
    "Each paper experiment selects its rates on validation data, runs every arm on every seed through the loop and the evaluation; the report makes its tables, figures and claims rows."
    import json
    from dive_nb.other_methods import harmonic_mean
    from dive_nb.paper_experiments import run_experiment
    from dive_nb.report import build_report
    params, world, pre, teacher, d = tiny
    params = {**params, "workers": 1,
              "papers": {"seeds": [0, 1], "m2mix": {"steps": 2, "pair_batch_size": 16, "lr": [1e-4, 1e-3]},
                         "mps": {"steps": 2, "shots": [1, 2], "val_shots": 2, "lr": [1e-3]},
                         "promptot": {"steps": 2, "shots": 2, "n_classes": 10, "lr": [1e-3]},
                         "csaligner": {"steps": 2, "pair_batch_size": 16, "n_paired": 10, "captions_per_image": 2, "lr": [1e-3]}}}
    metrics = d / "metrics" / "mini"
    rows, recs = {}, {}
    for exp in ("m2mix", "mps", "promptot", "csaligner"):
        rows[exp] = run_experiment(params, exp, world, pre, teacher, d / "papers", metrics / "papers" / f"{exp}.json",
                                   d / "preds" / "papers")
        recs[exp] = json.loads((metrics / "papers" / f"{exp}.json").read_text())
        assert recs[exp]["rows"] == rows[exp] and {r["seed"] for r in rows[exp]} == {0, 1}
    # m2mix: both trained arms selected over the two rates on validation pairs; the chosen rate is the best one seen
    sel = recs["m2mix"]["selection"]
    assert sorted((r["arm"], r["lr"]) for r in sel) == [(a, lr) for a in ("clip_pairs", "m2mix_pairs") for lr in (1e-4, 1e-3)]
    for arm, lr in recs["m2mix"]["lr"].items():
        assert max((r["val"], -r["lr"]) for r in sel if r["arm"] == arm) == (next(r["val"] for r in sel if r["arm"] == arm and r["lr"] == lr), -lr)
    m2 = {(r["arm"], r["seed"]): r for r in rows["m2mix"]}
    assert {a for a, _ in m2} == {"pretrained", "clip_pairs", "m2mix_pairs"} and all(0 <= r["ece"] <= 100 for r in m2.values())
    assert m2["pretrained", 0]["trainable_params"] == 0 and m2["clip_pairs", 1]["trainable_params"] > 0
    assert all(0 <= r["pairs.i2t_r1"] <= 100 and 0 <= r["arith_acc"] <= 100 for r in m2.values())
    mps = rows["mps"]
    assert sorted({(r["method"], r["shots"]) for r in mps if r.get("variant") == "main"}) == sorted((m, k) for m in ("mps", "coop", "lp") for k in (1, 2))
    assert len(mps) == 2 * (1 + 6 + 5) and not recs["mps"]["selection"]  # one rate: nothing to select
    for r in rows["promptot"]:
        assert abs(r["hm"] - harmonic_mean(r["base_acc"], r["novel_acc"])) < 1e-3
    cs = [r["arm"] for r in rows["csaligner"] if r["seed"] == 0]
    assert cs == ["pretrained", "nce", "nce_cs", "nce_cs_tokens", "paired_10", "paired_10_unpaired_20", "paired_20", "paired_10_captions_3"]
    assert all(r["geometry.modality_gap"] >= 0 for r in rows["csaligner"])
    written = build_report(metrics, d / "tables", d / "figures", preds_dir=d / "preds", verbose=False)
    names = {p.name for p in written}
    for t in ("m2mix_retrieval", "mps_fewshot", "mps_ablation", "promptot_base2novel", "csaligner", "papers_selection"):
        assert f"{t}.md" in names and (d / "tables" / "mini" / f"{t}.md").read_text().startswith("**Table"), t
    assert {"mps_fewshot.png", "csaligner_gap.png", "csaligner_pairs.png", "promptot_base2novel.png", "m2mix_reliability.png"} <= names


def _train(tiny, method, name, **over):
    from dive_nb.experiment import ProfileContext, finetune
    params, world, pre, teacher, d = tiny
    ctx = ProfileContext(params, world, pre, teacher)
    model = finetune(ctx, method, 0, d / "opts" / name, {"steps": 3, **over})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, \
        __import__("json").loads((d / "opts" / name / "train_log.json").read_text())["log"]


def _close(a, b, atol):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def test_gradient_accumulation(tiny):
    "Two micro-batches equal the whole batch for a per-example loss (CE); contrastive terms see fewer negatives."
    full, _ = _train(tiny, "ft", "ft-a1")
    acc, _ = _train(tiny, "ft", "ft-a2", accum_steps=2)
    assert _close(full, acc, 1e-5)
    f1, _ = _train(tiny, "flyp", "flyp-a1")
    f2, _ = _train(tiny, "flyp", "flyp-a2", accum_steps=2)
    assert not _close(f1, f2, 1e-6)
    import pytest
    with pytest.raises(ValueError, match="divisible"):
        _train(tiny, "flyp", "flyp-a3", accum_steps=3)


def test_grad_checkpointing_and_bf16(tiny):
    "Checkpointing recomputes activations exactly; bf16 autocast trains to a nearby, finite result."
    base, log = _train(tiny, "flyp", "flyp-base")
    ck, _ = _train(tiny, "flyp", "flyp-ckpt", grad_checkpointing=True)
    assert _close(base, ck, 1e-6)
    bf, blog = _train(tiny, "dive", "dive-bf16", precision="bf16")
    assert all(torch.isfinite(v.float()).all() for v in bf.values())
    ref, rlog = _train(tiny, "dive", "dive-fp32")
    assert abs(blog[-1]["loss"] - rlog[-1]["loss"]) < 0.1 * abs(rlog[-1]["loss"])
    assert not _close(bf, ref, 0.0)  # autocast really changed the arithmetic


def test_grad_checkpointing_engages(tiny, monkeypatch):
    "enable_grad_checkpointing really routes every block of both towers through torch's checkpoint."
    import open_clip.transformer as T
    from dive_nb.experiment import ProfileContext
    from dive_nb.train import enable_grad_checkpointing
    params, world, pre, teacher, d = tiny
    model = ProfileContext(params, world, pre, teacher).model()
    calls = []
    orig = T.checkpoint
    monkeypatch.setattr(T, "checkpoint", lambda *a, **k: calls.append(1) or orig(*a, **k))
    model.train()
    x, t = torch.randn(2, 3, 32, 32), torch.randint(1, 20, (2, model.clip.context_length))
    model.encode_image(x); model.encode_text(t)
    assert not calls
    enable_grad_checkpointing(model)
    model.encode_image(x); model.encode_text(t)
    n_blocks = len(model.clip.visual.transformer.resblocks) + len(model.clip.transformer.resblocks)
    assert len(calls) == n_blocks


def _cli(argv):
    from dive_nb.cli import main
    assert main(argv) == 0


def test_cli_run_under_two_processes(tiny, tmp_path):
    "`dive-nb run` under torchrun's environment: both processes train, rank 0 writes one record; same weights as one process."
    from dive_nb.distributed import run_local_processes
    params, world, pre, teacher, d = tiny
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({**params, "finetune": {**params["finetune"], "steps": 3}}))
    args = lambda root: ["run", "--params", str(p), "--root", str(tmp_path / root), "--metrics", str(tmp_path / root / "m"),
                         "--methods", "flyp", "--seeds", "0", "--world", str(world), "--pretrained", str(pre),
                         "--teacher", str(teacher)]
    run_local_processes(_cli, 2, (args("two"),))
    _cli(args("one"))
    rec = tmp_path / "two" / "m" / "mini" / "flyp-0.json"
    assert rec.exists() and __import__("json").loads(rec.read_text())["method"] == "flyp"
    a, b = _weights(tmp_path / "two" / "mini" / "runs" / "flyp-0"), _weights(tmp_path / "one" / "mini" / "runs" / "flyp-0")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_select_applies_the_rule_to_every_candidate(tiny):
    "dive-nb select: every (method, lr) and (method, weight) candidate is trained and scored; the choices follow the rule."
    from dive_nb.experiment import ProfileContext, evaluate_run
    from dive_nb.selection import select, choose_weight
    params, world, pre, teacher, d = tiny
    params = {**params, "workers": 2, "select": {"seed": 0, "lr": [1e-4, 1e-2], "weight": [0.1, 10.0], "tolerance": 1.0}}
    chosen, rows = select(params, world, pre, teacher, d / "select", ["lp", "ft", "lpft", "flyp", "dive", "dive_avl"])
    got = {(r["method"], r["knob"], r["value"]): r["id_val_acc"] for r in rows}
    assert {(m, "lr", v) for m in ("lp", "ft", "lpft", "flyp") for v in (1e-4, 1e-2)} | {("dive", "lam", w) for w in (0.1, 10.0)} == set(got)
    # each score is the run's own ID validation accuracy (the run folder is re-evaluated here in this process)
    ctx = ProfileContext(params, world, pre, teacher)
    assert evaluate_run(ctx, "ft", 0, d / "select" / "ft-lr0.01", overrides={"lr": 0.01})["id_val_acc"] == got["ft", "lr", 0.01]
    for b, members in (("lp", ["lp"]), ("ft", ["ft"]), ("lpft", ["lpft"]), ("flyp", ["flyp", "dive", "dive_avl"])):
        best = max((1e-4, 1e-2), key=lambda v: got[b, "lr", v])
        assert all(chosen[m]["lr"] == best for m in members), (b, chosen)
    ref = max(got["flyp", "lr", v] for v in (1e-4, 1e-2))
    assert chosen["dive"]["lam"] == choose_weight({w: got["dive", "lam", w] for w in (0.1, 10.0)}, ref, 1.0)
    assert chosen["dive_avl"]["lam"] == chosen["dive"]["lam"]  # ablations inherit DiVE's weight
