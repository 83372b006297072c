"""Black-box tests of the report (dive_nb.report, .stats, .paper_numbers, .tables, .figures) on synthetic run records: loading, mean ± std by hand, the paired bootstrap
against exact enumeration and literal index resampling, every table's values, figures, skipping, determinism."""
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dive_nb.figures import FIGURES, PAPER_FIGURES
from dive_nb.paper_numbers import PAPER, method_order, paper_cost_ratio, paper_rows, paper_value
from dive_nb.report import build_report
from dive_nb.records import load_records, load_sweep
from dive_nb.stats import aggregate, fmt_mean_std, paired_bootstrap, summarise
from dive_nb.tables import PAPER_TABLES, TABLES

OOD, ZS = ("resampled", "sketch", "inverted"), ("colour", "texture")
RATES = {"zeroshot": (0.5, 0.4, 0.6), "ft": (0.8, 0.45, 0.35), "wiseft": (0.75, 0.5, 0.45), "flyp": (0.8, 0.5, 0.4),
         "flyp_replay": (0.78, 0.52, 0.5), "snd": (0.8, 0.52, 0.48), "dive_avl": (0.8, 0.55, 0.55),
         "dive_pvl": (0.8, 0.54, 0.54), "dive_alpha0": (0.8, 0.53, 0.55), "dive_cos": (0.8, 0.52, 0.5),
         "dive": (0.82, 0.57, 0.58), "mps": (0.7, 0.5, 0.5)}
N_EX, N_PROBE, DIM = 50, 30, 6


def fabricate(path: Path, method: str, seed: int, extra: dict | None = None) -> dict:
    "Write one record (JSON + .preds.pt) of the documented schema; deterministic in (method, seed, path name)."
    g = np.random.default_rng([seed, sum(map(ord, method)), sum(map(ord, path.name))])
    r_id, r_ood, r_zs = RATES[method]
    preds = {"id_test": g.random(N_EX) < r_id}
    preds |= {f"ood_{s}": g.random(N_EX) < r_ood for s in OOD}
    preds |= {f"zs_{t}": g.random(N_EX) < r_zs for t in ZS}
    pre = np.random.default_rng(42).normal(size=(2, N_PROBE, DIM))
    if method == "zeroshot":
        emb = pre
    elif method.startswith("dive"):
        emb = pre + 1.0 + 0.01 * g.normal(size=pre.shape)  # one translation: concentrated difference vectors
    else:
        emb = pre + g.normal(size=pre.shape)
    acc = {k: 100.0 * v.mean() for k, v in preds.items()}
    rec = {"method": method, "seed": seed, "id_acc": acc["id_test"], "id_val_acc": acc["id_test"] - 1,
           "ood_acc": {**{s: acc[f"ood_{s}"] for s in OOD}, "avg": float(np.mean([acc[f"ood_{s}"] for s in OOD]))},
           "zs_acc": {**{t: acc[f"zs_{t}"] for t in ZS}, "avg": float(np.mean([acc[f"zs_{t}"] for t in ZS]))},
           "retrieval": {f"{d}_r{k}": float(g.uniform(0, 100)) for d in ("i2t", "t2i") for k in (1, 5, 10)},
           "geometry": {k: float(g.uniform(0.6, 1.0)) for k in ("rsa", "rsa_img", "rsa_txt", "cka", "cka_img",
                                                                "cka_txt", "modality_gap", "alignment", "uniformity")},
           "trainable_params": 0 if method == "zeroshot" else 5000 + len(method),
           "config": {"hparams": {"alpha": 0.0 if method == "dive_alpha0" else 0.99} if "dive" in method else {},
                      "train": None if method in ("zeroshot", "wiseft") else {"lr": 1e-3, "steps": 10}},
           "overrides": {}, "version": "0.1.0", "git_rev": "abc"}
    if method not in ("zeroshot", "wiseft"):
        rec["cost"] = {"sec_per_step": float(g.uniform(0.1, 0.2)), "peak_rss_mb": float(g.uniform(800, 900))}
    if method == "wiseft":
        rec["curve"] = [{"alpha": a, "id_acc": 50 + 30 * a, "ood_avg": 40 + 8 * a * (1 - a), "zs_avg": 60 - 20 * a,
                         "rsa": 1 - 0.3 * a} for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    rec |= extra or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    torch.save({k: torch.from_numpy(v) for k, v in preds.items()}
               | {"probe_img": torch.tensor(emb[0], dtype=torch.float32),
                  "probe_txt": torch.tensor(emb[1], dtype=torch.float32)}, path.with_suffix(".preds.pt"))
    return rec


def fabricate_profile(root: Path, methods=tuple(RATES), seeds=(0, 1, 2), sweeps=True) -> Path:
    for m in methods:
        for s in seeds:
            fabricate(root / f"{m}-{s}.json", m, s)
    if sweeps:
        sw = root / "sweeps"
        for a in (0.0, 0.5, 0.9, 0.99, 0.999):
            fabricate(sw / "alpha" / f"dive-{a}-0.json", "dive", 0, {"overrides": {"alpha": a}})
        for n in (64, 256, 1024):
            fabricate(sw / "refsize" / f"dive-{n}-0.json", "dive", 0, {"overrides": {"reference_size": n}})
        for m in ("dive", "dive_cos"):
            for lam in (0.1, 1, 10, 100):
                fabricate(sw / "lam" / f"{m}-{lam}-0.json", m, 0, {"overrides": {"lam": lam}})
        for m, bend in (("dive", 2.0), ("flyp", -2.0)):
            curve = [{"alpha": a, "id_acc": 60 + 20 * a, "ood_avg": 45 + bend * a, "zs_avg": 60 - 10 * a,
                      "rsa": 1 - 0.1 * a} for a in np.linspace(0, 1, 6).tolist()]
            fabricate(sw / "wise" / f"{m}-wise-0.json", m, 0, {"curve": curve})
    bench = [{"method": m, "sec_per_step": 0.1 + 0.01 * i, "peak_mb": 500.0 + 10 * i, "batch": 8}
             for i, m in enumerate(("flyp", "ft", "lp", "snd", "dive"))]
    (root / "cost.json").write_text(json.dumps(bench))  # benchmarks/step_time.py --json (not a run record)
    return root


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*.json")) if p.name != "cost.json"]


def by(recs, method):
    return sorted((r for r in recs if r["method"] == method), key=lambda r: r["seed"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    metrics = fabricate_profile(root / "metrics" / "toy")
    written = build_report(metrics, root / "tables", root / "figures", n_boot=500, verbose=False)
    return root, metrics, written


def read_csv(root, name):
    return pd.read_csv(root / "tables" / "toy" / f"{name}.csv")


# ---------------------------------------------------------------- the paper's numbers (typed from papers.md)

def test_paper_numbers_match_the_digest():
    im = PAPER["imagenet"]
    assert im["Zero-shot CLIP"] == dict(id=68.3, v2=61.9, r=77.7, a=50.0, sketch=48.3, objectnet=55.4, ood_avg=58.7)
    assert (im["FT"]["id"], im["FT"]["ood_avg"]) == (81.3, 54.9)
    assert (im["LP-FT"]["id"], im["LP-FT"]["ood_avg"]) == (81.7, 60.3)
    assert (im["FLYP"]["id"], im["FLYP"]["ood_avg"]) == (82.2, 59.5)
    assert (im["SnD"]["id"], im["SnD"]["ood_avg"]) == (82.4, 60.7)
    assert im["DiVE"] == dict(id=82.5, v2=73.8, r=77.3, a=54.9, sketch=52.9, objectnet=56.9, ood_avg=63.2)
    zs = PAPER["zeroshot"]
    assert [zs[r]["avg"] for r in ("Zero-shot CLIP", "FLYP", "ARF", "SnD", "DiVE")] == [63.2, 49.5, 55.6, 54.4, 63.7]
    assert zs["DiVE"]["flowers102"] == 66.0 and zs["FLYP"]["aircraft"] == 8.0
    assert PAPER["rsa"] == {"FLYP": 0.825, "FLYP+replay": 0.850, "SnD": 0.847, "FLYP+AVL": 0.978,
                            "FLYP+PVL": 0.976, "DiVE": 0.981, "cosine constraint": 0.949}
    assert PAPER["ablation_gain"] == {"FLYP+AVL": {"ood_avg": 3.4, "zs_avg": 13.4},
                                      "FLYP+PVL": {"ood_avg": 3.1, "zs_avg": 13.2},
                                      "DiVE": {"ood_avg": 3.7, "zs_avg": 14.2}}
    assert PAPER["ema_alpha_ood_avg"] == {0.0: 61.7, 0.99: 62.9}
    assert PAPER["weight_ensembling"]["DiVE + weight ensembling"] == {"id": 82.6, "ood_avg": 63.5, "zs_avg": 64.6}
    assert PAPER["wilds"]["DiVE"]["iwildcam"] == {"id": 53.1, "ood": 37.2, "zs": 65.3}
    assert PAPER["vitl14"]["DiVE"] == {"id": 86.1, "ood_avg": 74.5, "zs_avg": 70.1}
    assert PAPER["lam"]["chosen"] == 1000 and 1000 in PAPER["lam"]["grid"]
    assert f"{paper_cost_ratio('time'):.2f}" == "1.64" and f"{paper_cost_ratio('memory'):.2f}" == "2.74"


def test_paper_rows_are_internally_consistent():
    for row, v in PAPER["imagenet"].items():  # OOD avg = mean of the five OOD sets (to rounding)
        assert abs(np.mean([v[k] for k in ("v2", "r", "a", "sketch", "objectnet")]) - v["ood_avg"]) <= 0.05 + 1e-9, row
    for row, v in PAPER["zeroshot"].items():
        assert len(v) == 11 and abs(np.mean([x for k, x in v.items() if k != "avg"]) - v["avg"]) <= 0.05 + 1e-9, row


def test_paper_value_mapping():
    assert paper_value("dive", "imagenet", "id") == 82.5 and paper_value("lpft", "imagenet", "ood_avg") == 60.3
    assert paper_value("zeroshot", "zeroshot", "avg") == 63.2 and paper_value("dive_cos", "rsa") == 0.949
    assert paper_value("dive_avl", "ablation_gain", "zs_avg") == 13.4
    for m in ("lp", "wiseft", "dive_alpha0", "mps", "m2mix"):
        assert paper_value(m, "imagenet", "id") is None
    assert paper_value("flyp_replay", "imagenet", "id") is None and paper_value("flyp_replay", "rsa") == 0.85
    assert set(paper_rows()) <= set(RATES) | {"lpft"}
    with pytest.raises(ValueError, match="table"):
        paper_value("dive", "nope", "id")
    with pytest.raises(ValueError, match="kind"):
        paper_cost_ratio("energy")


# ---------------------------------------------------------------- loading

def test_load_records_flattens_and_orders(tmp_path):
    fabricate(tmp_path / "mps-1.json", "mps", 1)
    fabricate(tmp_path / "dive-0.json", "dive", 0)
    fabricate(tmp_path / "wiseft-0.json", "wiseft", 0)
    fabricate(tmp_path / "zeroshot-0.json", "zeroshot", 0)
    df = load_records(tmp_path)
    assert list(df["method"]) == ["zeroshot", "wiseft", "dive", "mps"] and list(df["seed"]) == [0, 0, 0, 1]
    for c in ("ood_acc.sketch", "ood_acc.avg", "zs_acc.avg", "geometry.rsa", "retrieval.i2t_r1", "cost.sec_per_step",
              "config.hparams.alpha", "name", "path"):
        assert c in df.columns, c
    assert isinstance(df.loc[df.method == "wiseft", "curve"].iloc[0], list)
    assert math.isnan(df.loc[df.method == "zeroshot", "cost.sec_per_step"].iloc[0])
    assert load_records(tmp_path / "missing").empty
    (tmp_path / "cost.json").write_text(json.dumps([{"method": "flyp", "sec_per_step": 0.1}]))  # not a run record
    (tmp_path / "selection.json").write_text("{}")
    assert len(load_records(tmp_path)) == 4


def test_load_records_rejects_bad_files(tmp_path):
    (tmp_path / "broken-0.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken-0.json"):
        load_records(tmp_path)
    (tmp_path / "broken-0.json").write_text(json.dumps({"id_acc": 1.0}))
    with pytest.raises(ValueError, match="'method' and 'seed'"):
        load_records(tmp_path)


def test_load_sweep_parses_values(tmp_path):
    d = tmp_path / "sweeps" / "lam"
    for v in ("10", "1e-05", "0.5", "2"):
        fabricate(d / f"dive_cos-{v}-0.json", "dive_cos", 0)
        fabricate(d / f"dive-{v}-0.json", "dive", 0)
    df = load_sweep(tmp_path, "lam")
    assert list(df["method"]) == ["dive_cos"] * 4 + ["dive"] * 4 and set(df["sweep"]) == {"lam"}
    assert list(df["value"])[:4] == [1e-05, 0.5, 2, 10]
    assert load_sweep(tmp_path, "alpha").empty
    fabricate(tmp_path / "sweeps" / "refsize" / "dive-small-0.json", "dive", 0)
    assert list(load_sweep(tmp_path, "refsize")["value"]) == ["small"]
    fabricate(tmp_path / "sweeps" / "bad" / "flyp-1-0.json", "dive", 0)
    with pytest.raises(ValueError, match="the name says flyp"):
        load_sweep(tmp_path, "bad")
    fabricate(tmp_path / "sweeps" / "bad2" / "dive.json", "dive", 0)
    with pytest.raises(ValueError, match="<method>-<value>-<seed>"):
        load_sweep(tmp_path, "bad2")


def test_method_order_is_generic():
    assert method_order(["promptot", "dive", "coop", "flyp", "flyp", "zeroshot", "csaligner"]) == \
        ["zeroshot", "flyp", "dive", "coop", "csaligner", "promptot"]


# ---------------------------------------------------------------- mean ± std

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summarise_equals_hand_computation(seed):
    g = np.random.default_rng(seed)
    df = pd.DataFrame({"method": ["b", "a", "b", "a", "b", "c"], "seed": [0, 0, 1, 1, 2, 0],
                       "x": g.uniform(0, 100, 6), "geometry.rsa": g.uniform(0, 1, 6)})
    s, a = summarise(df, ["x", "geometry.rsa"]), aggregate(df, ["x", "geometry.rsa"])
    assert list(s.index) == ["b", "a", "c"] and list(s["n"]) == [3, 2, 1]
    for m in ("a", "b"):
        xs, rs = list(df.loc[df.method == m, "x"]), list(df.loc[df.method == m, "geometry.rsa"])
        assert s.loc[m, "x"] == f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"
        assert s.loc[m, "geometry.rsa"] == f"{statistics.mean(rs):.3f} ± {statistics.stdev(rs):.3f}"
        assert abs(a.loc[m, ("x", "std")] - statistics.stdev(xs)) < 1e-9
    assert s.loc["c", "x"] == f"{df.x.iloc[5]:.1f}"  # one seed: the mean alone


def test_fmt_mean_std():
    assert fmt_mean_std(3.0, 0.5, 3, 1, signed=True) == "+3.0 ± 0.5"
    assert fmt_mean_std(-1.25, float("nan"), 1, 2, signed=True) == "-1.25"
    assert fmt_mean_std(12345.0, 0.0, 3, 0) == "12,345 ± 0" and fmt_mean_std(float("nan"), 1.0, 3) == ""


# ---------------------------------------------------------------- paired bootstrap

def test_bootstrap_identical_inputs():
    x = torch.rand(3, 80, generator=torch.Generator().manual_seed(0)) < 0.5
    r = paired_bootstrap(x, x.clone(), n_boot=1000)
    assert (r["diff"], r["ci_low"], r["ci_high"], r["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def _exact(d: np.ndarray):
    "Exact bootstrap distribution of the resampled mean: every one of the n^n index tuples."
    n = len(d)
    return np.array([100 * d[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])


@pytest.mark.parametrize("a,b", [([1, 1, 0, 1, 0], [0, 1, 0, 0, 0]), ([1, 0, 1, 1, 0], [0, 1, 1, 0, 0]),
                                 ([[1, 0, 1, 1], [1, 1, 0, 1]], [[0, 0, 1, 0], [1, 0, 0, 0]])])
def test_bootstrap_against_exact_enumeration(a, b):
    A, B = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    exact = _exact((A - B).mean(0))
    r = paired_bootstrap(a, b, n_boot=400_000, seed=11)
    assert abs(r["diff"] - 100 * (A.mean() - B.mean())) < 1e-9
    step = 100 / A.shape[1] / A.shape[0]  # quantiles can only fall on this grid (up to interpolation)
    assert abs(r["ci_low"] - np.quantile(exact, 0.025)) <= step + 1e-9
    assert abs(r["ci_high"] - np.quantile(exact, 0.975)) <= step + 1e-9
    tail = (exact <= 0).mean() if r["diff"] > 0 else (exact >= 0).mean()
    assert abs(r["p_value"] - min(1.0, 2 * tail)) < 0.005


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_against_index_resampling(seed):
    g = np.random.default_rng(seed)
    A, B = g.random((3, 120)) < 0.7, g.random((3, 120)) < 0.6
    idx = np.random.default_rng(100 + seed).integers(0, 120, (40_000, 120))
    boot = 100 * (A[:, idx].mean((0, 2)) - B[:, idx].mean((0, 2)))  # same indices for both methods and every seed
    r = paired_bootstrap(torch.from_numpy(A), torch.from_numpy(B), n_boot=40_000, seed=seed)
    assert abs(r["ci_low"] - np.quantile(boot, 0.025)) < 0.6 and abs(r["ci_high"] - np.quantile(boot, 0.975)) < 0.6
    p_oracle = min(1.0, 2 * ((boot <= 0).mean() if r["diff"] > 0 else (boot >= 0).mean()))
    assert abs(r["p_value"] - p_oracle) < 0.01
    assert r["n"] == 120 and r["n_seeds"] == 3 and r["n_boot"] == 40_000


def test_bootstrap_extreme_and_inputs():
    r = paired_bootstrap(np.ones(30, bool), np.zeros(30, bool), n_boot=999)
    assert r["diff"] == 100.0 and r["ci_low"] == r["ci_high"] == 100.0 and r["p_value"] == pytest.approx(2 / 1000)
    a, b = np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0])
    assert paired_bootstrap(a, b, 500, 3) == paired_bootstrap(torch.tensor(a).bool(), torch.tensor(b).bool(), 500, 3)
    with pytest.raises(ValueError, match="correct_b"):
        paired_bootstrap(np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="0/1"):
        paired_bootstrap(np.full(4, 0.3), np.ones(4))
    with pytest.raises(ValueError, match="n >= 1"):
        paired_bootstrap(np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=0)


# ---------------------------------------------------------------- the report

def test_report_writes_every_table_and_figure(built):
    root, _, written = built
    # the paper-experiment tables and figures need metrics/<profile>/papers/, the timing table executed/<profile>/:
    # the synthetic records have neither, so those are skipped (and tested in test_experiment.py / the smoke pipeline)
    # every table but the other papers', the regime (the toy records have no lp / lpft: the regime needs every baseline)
    # and the other worlds (no metrics/<profile>/worlds/)
    expected = {root / "tables" / "toy" / f"{n}.{e}" for n in TABLES if n not in (*PAPER_TABLES, "regime", "worlds") for e in ("md", "csv")}
    expected |= {root / "figures" / "toy" / f"{n}.png" for n in FIGURES if n not in PAPER_FIGURES}
    assert set(written) == expected and all(p.stat().st_size > 0 for p in expected)
    assert len(TABLES) - len(PAPER_TABLES) == 15 and len(FIGURES) - len(PAPER_FIGURES) == 8 and set(PAPER_TABLES) <= set(TABLES)
    for n in (n for n in TABLES if n not in (*PAPER_TABLES, "regime", "worlds")):
        text = (root / "tables" / "toy" / f"{n}.md").read_text()
        first = text.splitlines()[0]
        assert first.startswith("**Table: ") and first.endswith("**") and text.splitlines()[2].startswith("| ")
    for n in (n for n in FIGURES if n not in PAPER_FIGURES):
        assert (root / "figures" / "toy" / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_table_values(built):
    root, metrics, _ = built
    recs, t = records(metrics), read_csv(root, "main").set_index("method")
    assert list(t.index) == [m for m in method_order(RATES)]
    md = (root / "tables" / "toy" / "main.md").read_text()
    for m in ("flyp", "dive", "mps"):
        for key in ("id_acc", "ood_acc.sketch", "ood_acc.avg"):
            xs = [r[key] if "." not in key else r[key.split(".")[0]][key.split(".")[1]] for r in by(recs, m)]
            assert abs(t.loc[m, f"{key}_mean"] - statistics.mean(xs)) < 1e-9
            assert abs(t.loc[m, f"{key}_std"] - statistics.stdev(xs)) < 1e-9
            assert f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" in md
    assert t.loc["dive", "paper_id"] == 82.5 and t.loc["zeroshot", "paper_ood_avg"] == 58.7
    assert t["paper_id"].isna().sum() == sum(paper_value(m, "imagenet", "id") is None for m in t.index)
    header = md.splitlines()[2]
    assert "paper (ViT-B/16) ID" in header and "paper (ViT-B/16) OOD avg" in header and "| resampled |" in header


def test_zeroshot_geometry_unified_tables(built):
    root, metrics, _ = built
    recs = records(metrics)
    z, g, u = (read_csv(root, n).set_index("method") for n in ("zeroshot", "geometry", "unified"))
    d = by(recs, "dive")
    assert abs(z.loc["dive", "zs_acc.colour_mean"] - statistics.mean(r["zs_acc"]["colour"] for r in d)) < 1e-9
    assert z.loc["flyp", "paper_zs_avg"] == 49.5 and z.loc["zeroshot", "paper_zs_avg"] == 63.2
    assert abs(g.loc["snd", "geometry.rsa_txt_mean"] - statistics.mean(r["geometry"]["rsa_txt"] for r in by(recs, "snd"))) < 1e-9
    assert g.loc["dive_cos", "paper_rsa"] == 0.949 and math.isnan(g.loc["mps", "paper_rsa"])
    assert u.loc["dive", "trainable_params_mean"] == 5004 and u.loc["zeroshot", "trainable_params_mean"] == 0
    assert abs(u.loc["ft", "retrieval.i2t_r1_std"] - statistics.stdev(r["retrieval"]["i2t_r1"] for r in by(recs, "ft"))) < 1e-9
    md = (root / "tables" / "toy" / "geometry.md").read_text()
    rs = [r["geometry"]["rsa"] for r in d]
    assert f"{statistics.mean(rs):.3f} ± {statistics.stdev(rs):.3f}" in md and "| 0.981 |" in md
    assert "| 5,004 |" in (root / "tables" / "toy" / "unified.md").read_text()


def test_ablation_gains_are_paired_by_seed(built):
    root, metrics, _ = built
    recs, t = records(metrics), read_csv(root, "ablation").set_index("method")
    assert list(t.index) == ["flyp", "dive_avl", "dive_pvl", "dive"]
    f = {r["seed"]: r for r in by(recs, "flyp")}
    for m in ("dive_avl", "dive_pvl", "dive"):
        for key in ("ood_acc", "zs_acc"):
            d = [r[key]["avg"] - f[r["seed"]][key]["avg"] for r in by(recs, m)]
            assert abs(t.loc[m, f"gain_{key}.avg_mean"] - statistics.mean(d)) < 1e-9
            assert abs(t.loc[m, f"gain_{key}.avg_std"] - statistics.stdev(d)) < 1e-9
    assert (t.loc["dive_avl", "paper_gain_ood_avg"], t.loc["dive", "paper_gain_zs_avg"]) == (3.4, 14.2)
    assert "+3.7" in (root / "tables" / "toy" / "ablation.md").read_text()


def test_sweep_tables(built):
    root, metrics, _ = built
    a = read_csv(root, "alpha")
    sweep = a[a.source == "sweep"]
    assert list(sweep["alpha"]) == [0.0, 0.5, 0.9, 0.99, 0.999] and (sweep["n"] == 1).all()
    main = a[a.source == "main runs"].set_index("method")
    assert main.loc["dive_alpha0", "alpha"] == 0.0 and main.loc["dive", "alpha"] == 0.99 and main.loc["dive", "n"] == 3
    assert main.loc["dive_alpha0", "paper_ood_avg"] == 61.7 and main.loc["dive", "paper_ood_avg"] == 62.9
    x = json.loads((metrics / "sweeps" / "alpha" / "dive-0.9-0.json").read_text())
    assert sweep.set_index("alpha").loc[0.9, "ood_acc.avg_mean"] == pytest.approx(x["ood_acc"]["avg"])
    r = read_csv(root, "refsize")
    assert list(r["reference_size"]) == [64, 256, 1024] and list(r["paper_analogue"]) == ["Flickr8K", "COCO", "CC3M"]
    assert "| dive | 1024 | CC3M |" in (root / "tables" / "toy" / "refsize.md").read_text()
    assert "| dive_cos | 10 |" in (root / "tables" / "toy" / "lam.md").read_text()
    lam = read_csv(root, "lam")
    assert list(lam["method"]) == ["dive_cos"] * 4 + ["dive"] * 4 and list(lam["lam"])[:4] == [0.1, 1, 10, 100]
    c = read_csv(root, "cosine").set_index("method")
    assert list(c.index) == ["flyp", "dive_cos", "dive"] and c.loc["dive", "paper_rsa"] == 0.981


def test_wise_table_collects_every_curve(built):
    root, metrics, _ = built
    w = read_csv(root, "wise")
    assert list(dict.fromkeys(w["method"])) == ["ft (WiSE-FT)", "flyp", "dive"]
    assert w.groupby("method").size().to_dict() == {"ft (WiSE-FT)": 5, "flyp": 6, "dive": 6}
    ws = w[w.method == "ft (WiSE-FT)"]
    assert list(ws["id_acc"]) == [50 + 30 * a for a in (0.0, 0.25, 0.5, 0.75, 1.0)] and (ws["seed"] == 0).all()
    assert "82.5 → 82.6" in (root / "tables" / "toy" / "wise.md").read_text()


def test_cost_ratios(built):
    root, metrics, _ = built
    recs, t = records(metrics), read_csv(root, "cost").set_index("method")
    assert "zeroshot" not in t.index and "wiseft" not in t.index and "lp" in t.index  # lp: benchmark only
    assert math.isnan(t.loc["lp", "cost.sec_per_step_mean"]) and t.loc["lp", "n"] == 0
    bench = {r["method"]: r for r in json.loads((metrics / "cost.json").read_text())}
    assert t.loc["dive", "benchmark_peak_mb_ratio_flyp"] == pytest.approx(bench["dive"]["peak_mb"] / bench["flyp"]["peak_mb"])
    assert t.loc["snd", "benchmark_sec_per_step_ratio_flyp"] == pytest.approx(bench["snd"]["sec_per_step"] / 0.1)
    assert math.isnan(t.loc["mps", "benchmark_sec_per_step"])
    mean = lambda m, k: statistics.mean(r["cost"][k] for r in by(recs, m))
    assert abs(t.loc["dive", "sec_per_step_ratio_flyp"] - mean("dive", "sec_per_step") / mean("flyp", "sec_per_step")) < 1e-9
    assert abs(t.loc["snd", "peak_rss_mb_ratio_flyp"] - mean("snd", "peak_rss_mb") / mean("flyp", "peak_rss_mb")) < 1e-9
    assert t.loc["flyp", "sec_per_step_ratio_flyp"] == 1.0
    assert round(t.loc["dive", "paper_time_ratio"], 2) == 1.64 and round(t.loc["dive", "paper_memory_ratio"], 2) == 2.74


def test_significance_equals_bootstrap_of_stacked_predictions(built):
    root, metrics, _ = built
    t = read_csv(root, "significance")
    assert set(t["baseline"]) == set(RATES) - {"dive"} and set(t["set"]) == {"ID", "OOD (pooled)", "ZS (pooled)"}
    ld = lambda m, s: torch.load(metrics / f"{m}-{s}.preds.pt", weights_only=True)
    for base in ("flyp", "snd"):
        for set_name, keys in (("ID", ["id_test"]), ("OOD (pooled)", [f"ood_{s}" for s in sorted(OOD)]),
                               ("ZS (pooled)", [f"zs_{x}" for x in sorted(ZS)])):
            A = torch.stack([torch.cat([ld("dive", s)[k] for k in keys]) for s in range(3)])
            B = torch.stack([torch.cat([ld(base, s)[k] for k in keys]) for s in range(3)])
            ref = paired_bootstrap(A, B, n_boot=500, seed=0)
            row = t[(t.baseline == base) & (t.set == set_name)].iloc[0]
            for k in ("diff", "ci_low", "ci_high", "p_value"):
                assert row[k] == pytest.approx(ref[k], abs=1e-12), (base, set_name, k)
            assert row["n"] == N_EX * len(keys) and row["seeds"] == "0, 1, 2"
            accs = 100 * A.float().mean(1).numpy()
            assert row["dive_mean"] == pytest.approx(accs.mean()) and row["dive_std"] == pytest.approx(accs.std(ddof=1))


def test_report_is_deterministic(built, tmp_path):
    root, metrics, written = built
    again = build_report(metrics, tmp_path / "tables", tmp_path / "figures", n_boot=500, verbose=False)
    assert len(again) == len(written)
    for p in again:
        q = root / p.relative_to(tmp_path)
        assert p.read_bytes() == q.read_bytes(), p.name


def test_missing_inputs_are_skipped(tmp_path, capsys):
    metrics = fabricate_profile(tmp_path / "metrics" / "mini", methods=("zeroshot", "flyp"), seeds=(0,), sweeps=False)
    for p in metrics.glob("flyp-*.preds.pt"):
        p.unlink()
    out = build_report(metrics, tmp_path / "tables", tmp_path / "figures", n_boot=100)
    names = {p.name for p in out}
    assert {"main.md", "main.csv", "zeroshot.md", "geometry.md", "cost.md", "unified.md"} <= names
    for n in ("ablation", "alpha", "cosine", "refsize", "wise", "lam", "significance"):
        assert f"{n}.md" not in names, n
    for n in ("wise_curves", "lam_sweep", "diffvec", "embedding_geometry"):
        assert f"{n}.png" not in names, n
    printed = capsys.readouterr().out
    assert "skipped table ablation" in printed and "skipped figure diffvec" in printed
    rows = [r for r in (tmp_path / "tables" / "mini" / "main.md").read_text().splitlines() if r.startswith("| zeroshot")]
    assert len(rows) == 1 and "±" not in rows[0]  # one seed: the mean alone
    # nothing at all: no error, nothing but the world picture
    none = build_report(tmp_path / "metrics" / "empty", tmp_path / "tables", tmp_path / "figures", verbose=False)
    assert [p.name for p in none] in ([], ["world.png"])


def test_stale_outputs_are_removed_and_preds_dir_is_searched(tmp_path):
    metrics = fabricate_profile(tmp_path / "metrics" / "toy", methods=("zeroshot", "flyp", "dive"), seeds=(0, 1))
    build_report(metrics, tmp_path / "tables" / "toy", tmp_path / "figures" / "toy", n_boot=100, verbose=False,
                 only=["lam", "significance", "lam_sweep"])
    assert (tmp_path / "tables" / "toy" / "lam.md").exists() and (tmp_path / "figures" / "toy" / "lam_sweep.png").exists()
    assert not (tmp_path / "tables" / "toy" / "toy").exists()  # a tables_dir named after the profile is used as is
    # predictions moved to a separate folder, laid out as the pipeline does (main runs under <method>/, sweeps
    # under sweeps/<sweep>/); the lam sweep removed
    preds = tmp_path / "preds"
    for p in sorted(metrics.rglob("*.preds.pt")):
        rel = p.relative_to(metrics)
        dst = preds / (rel if rel.parent != Path(".") else Path(p.name.split("-")[0]) / p.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dst)
    for p in (metrics / "sweeps" / "lam").glob("*"):
        p.unlink()
    out = build_report(metrics, tmp_path / "tables", tmp_path / "figures", preds_dir=preds, n_boot=100, verbose=False,
                       only=["lam", "significance", "lam_sweep", "diffvec"])
    assert {p.name for p in out} == {"significance.md", "significance.csv", "diffvec.png"}
    assert not (tmp_path / "tables" / "toy" / "lam.md").exists() and not (tmp_path / "figures" / "toy" / "lam_sweep.png").exists()
    with pytest.raises(ValueError, match="only"):
        build_report(metrics, tmp_path / "t", tmp_path / "f", only=["nonexistent"])


def test_cost_table_from_runs_or_benchmark_alone(tmp_path):
    m = tmp_path / "metrics" / "toy"
    fabricate(m / "flyp-0.json", "flyp", 0, {"cost": {"sec_per_step": 0.2}})  # the pipeline records no peak memory
    fabricate(m / "flyp-1.json", "flyp", 1, {"cost": {"sec_per_step": 0.4}})
    fabricate(m / "dive-0.json", "dive", 0, {"cost": {"sec_per_step": 0.5}})
    build_report(m, tmp_path / "tables", tmp_path / "figures", only=["cost"], verbose=False)
    t = read_csv(tmp_path, "cost").set_index("method")
    assert t.loc["dive", "sec_per_step_ratio_flyp"] == pytest.approx(0.5 / 0.3) and "cost.peak_rss_mb_mean" not in t
    md = (tmp_path / "tables" / "toy" / "cost.md").read_text()
    assert "| flyp | 0.300 ± 0.141 |" in md and "benchmark" not in md.splitlines()[2]
    for f in m.glob("*.json"):
        f.unlink()
    (m / "cost.json").write_text(json.dumps([{"method": "dive", "sec_per_step": 0.3, "peak_mb": 300},
                                             {"method": "flyp", "sec_per_step": 0.2, "peak_mb": 200}]))
    build_report(m, tmp_path / "tables", tmp_path / "figures", only=["cost"], verbose=False)
    t = read_csv(tmp_path, "cost").set_index("method")
    assert list(t.index) == ["flyp", "dive"] and t.loc["dive", "benchmark_peak_mb_ratio_flyp"] == pytest.approx(1.5)
    assert "sequential_time_ratio" not in t
    # both reference-pass modes: the sequential benchmark's ratios beside the fused one's
    (m / "cost_sequential.json").write_text(json.dumps([{"method": "dive", "sec_per_step": 0.4, "time_ratio": 1.35, "mem_ratio": 1.03},
                                                        {"method": "flyp", "sec_per_step": 0.3, "time_ratio": 1.0, "mem_ratio": 1.0}]))
    build_report(m, tmp_path / "tables", tmp_path / "figures", only=["cost"], verbose=False)
    t = read_csv(tmp_path, "cost").set_index("method")
    assert t.loc["dive", "sequential_time_ratio"] == pytest.approx(1.35) and t.loc["dive", "sequential_mem_ratio"] == pytest.approx(1.03)
    assert "memory ×flyp (sequential)" in (tmp_path / "tables" / "toy" / "cost.md").read_text()
    (m / "cost.json").write_text(json.dumps({"flyp": 1}))
    with pytest.raises(ValueError, match="cost.json"):
        build_report(m, tmp_path / "tables", tmp_path / "figures", only=["cost"], verbose=False)


def test_world_figure_skips_without_miniworld(tmp_path, monkeypatch, capsys):
    import dive_nb
    monkeypatch.setitem(sys.modules, "dive_nb.miniworld", None)  # import now raises ImportError
    monkeypatch.delattr(dive_nb, "miniworld", raising=False)
    out = build_report(tmp_path / "metrics" / "toy", tmp_path / "tables", tmp_path / "figures", only=["world"])
    assert out == [] and "skipped figure world" in capsys.readouterr().out


def test_diffvec_figure_separates_dive_from_flyp(built):
    "The figure's statistics: DiVE's difference vectors (one translation) are equal and paired, FLYP's are not."
    from dive_nb.figures import _probe_triplet, diffvec_stats
    from dive_nb.report import ReportInputs
    root, metrics, written = built
    pre, got = _probe_triplet(ReportInputs(metrics))
    st = {m: diffvec_stats(pre, e) for m, (_, e) in got.items()}
    assert st["dive"]["spread"] < 0.1 * st["flyp"]["spread"] and st["dive"]["pair_gap"] < 0.1 * st["flyp"]["pair_gap"], st
    assert st["dive"]["shift"] > 0.5 * st["flyp"]["shift"]  # both moved: the difference is in how, not how far
    # a pure translation: no spread, no pair gap, shift = its length
    p = (np.zeros((4, 3)), np.ones((4, 3)))
    s = diffvec_stats(p, (p[0] + [0, 0, 2], p[1] + [0, 0, 2]))
    assert s == {"shift": 2.0, "spread": 0.0, "pair_gap": 0.0}
    assert "diffvec.png" in {q.name for q in written}
