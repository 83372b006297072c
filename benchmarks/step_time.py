#!/usr/bin/env python
"""Step time and peak memory of every method relative to FLYP, and DiVE's distance to its floor (a benchmark, not a test).

Each method runs in its own subprocess (a process's peak RSS only grows), through the one training loop
(`dive_nb.train.train`) with random weights and random data of the right shapes: timing does not depend on
what the weights are. Rounds interleave the methods (round 1: every method once, round 2: again, ...) so that
slow drifts of a shared machine hit all of them alike; ratios are taken within a round, then summarised over
rounds (median, and a bootstrap interval of the mean over rounds).

    python benchmarks/step_time.py                                   # the tiny model, CPU, the mini batch sizes
    python benchmarks/step_time.py --params params.yaml --repeats 5  # the pipeline's tiny model (the `cost` stage)
    python benchmarks/step_time.py --methods flyp dive --reference-pass sequential
    python benchmarks/step_time.py --model ViT-B-16 --image-size 224 --batch 16 --steps 6   # the paper's size on a CPU (slow)
    python benchmarks/step_time.py --model ViT-B-16 --image-size 224 --batch 512 --device cuda --precision bf16

`bare` is a plain open_clip forward + backward + AdamW step on the ID batch (images and class-prompt captions,
open_clip's `ClipLoss`) without dive-nb's loop; `bare_ref` the same bare step on the ID + reference batch. Their
ratio is DiVE's floor: what one pass over the extra reference pairs costs on this device and model, since the
frozen model's embeddings are cached. The benchmark prints DiVE/FLYP minus that floor with its interval.

Memory is the peak *above* the process's baseline after the model and data are built (CPU: peak RSS minus the
RSS at that point, which excludes the ~800 MB every torch process holds; GPU: the allocator's peak minus what
was allocated then), so that the ratio measures the method, not the interpreter.
"""
from __future__ import annotations
import argparse, json, os, random, statistics, subprocess, sys, time

DEFAULT_METHODS = ["flyp", "bare", "bare_ref", "ft", "lp", "lpft", "flyp_replay", "snd", "dive", "dive_cos", "m2mix", "mps", "promptot", "coop", "csaligner"]


def _rss_mb() -> float:
    "This process's resident set now (Linux /proc; falls back to the high-water mark)."
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    except OSError: pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bare(clip, imgs, tokens, steps, prepare, dev, autocast) -> float:
    "Seconds per step of a bare open_clip forward + backward + AdamW step (no dive-nb loop)."
    import torch, open_clip
    loss_fn, opt = open_clip.ClipLoss(), torch.optim.AdamW(clip.parameters(), lr=1e-4)
    clip.train(); times = []
    for s in range(steps):
        if dev.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        x, t = prepare(imgs[s % len(imgs)]), tokens[s % len(tokens)].to(dev)
        with autocast():
            out = clip(x, t)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if dev.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = times[2:] or times  # skip two warm-up steps when there are more
    return sum(timed) / len(timed)


def _one(a) -> dict:
    "Measure one method in this process."
    import contextlib
    import torch
    from dive_nb.data import Split
    from dive_nb.methods import FineTuneModel, get_method
    from dive_nb.models import create_model, prepare_images
    from dive_nb.train import TrainConfig, train
    torch.manual_seed(0)
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.params:  # the pipeline's model (registers its tiny config)
        from dive_nb.experiment import load_params, model_name_of
        a.model = model_name_of(load_params(a.params))
    from dive_nb.tiny import TINY_MODELS
    from dive_nb.miniworld import vocabulary
    clip, _, tok = create_model(a.model, device=a.device, vocab=vocabulary() if a.model in TINY_MODELS else None)
    ctx = int(getattr(clip, "context_length", 16))
    vocab = int(getattr(clip, "vocab_size", 50))
    n, C = max(4 * a.batch, 64), 10
    g = torch.Generator().manual_seed(0)
    rnd_tokens = lambda m: torch.randint(1, vocab - 1, (m, ctx), generator=g)
    imgs = lambda m: torch.randint(0, 256, (m, 3, a.image_size, a.image_size), generator=g, dtype=torch.uint8)
    ids = Split(imgs(n), {"y": torch.randint(0, C, (n,), generator=g)})
    ref = Split(imgs(n), {}, None, rnd_tokens(n))
    with torch.no_grad():
        d = clip.encode_text(rnd_tokens(2).to(dev)).shape[1]
    head = torch.nn.functional.normalize(torch.randn(C, d), dim=-1).to(dev)
    model = FineTuneModel(clip, head).to(dev)
    pre = (torch.nn.functional.normalize(torch.randn(n, d), dim=-1), torch.nn.functional.normalize(torch.randn(n, d), dim=-1))
    prompts = rnd_tokens(3 * C).view(3, C, ctx)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, ref_batch_size=a.ref_batch or max(1, a.batch // 4), lr=1e-4,
                      progress=False, ckpt_every=0, num_threads=a.threads, reference_pass=a.reference_pass,
                      precision=a.precision)
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated() / 2**20
    else: base = _rss_mb()  # baseline: interpreter, torch, model and data, before the first step
    peak = lambda: (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_mb())
    row = {"method": a.one, "batch": a.batch, "model": a.model, "reference_pass": a.reference_pass, "baseline_mb": base}
    if a.one in ("bare", "bare_ref"):  # bare_ref: the bare step on the ID + reference batch (DiVE's floor)
        nb = a.batch + (cfg.ref_batch_size if a.one == "bare_ref" else 0)
        ac = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
        sec = _bare(clip.to(dev), [imgs(nb) for _ in range(2)], [rnd_tokens(nb) for _ in range(2)], a.steps,
                    lambda x: prepare_images(x.to(dev)), dev, ac)
        return {**row, "sec_per_step": sec, "peak_mb": peak(), "peak_above_mb": peak() - base}
    res = train(model, get_method(a.one), ids, "y", prompts, lambda x: prepare_images(x.to(dev)), cfg, ref, pre)
    return {**row, "sec_per_step": res["sec_per_step"], "peak_mb": peak(), "peak_above_mb": peak() - base,
            "reference_pass": res.get("reference_pass", a.reference_pass)}


def bootstrap_mean(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    "Mean and 95% percentile-bootstrap interval of the mean (resampling the rounds)."
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(n))
    return statistics.fmean(xs), means[int(0.025 * n)], means[int(0.975 * n) - 1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, help="methods to time (flyp, bare and bare_ref are always added)")
    ap.add_argument("--model", default="dive-tiny-vit", help="any open_clip model name or a dive-nb tiny model")
    ap.add_argument("--params", help="take the model from this parameter file (the mini pipeline's tiny model)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128, help="ID batch")
    ap.add_argument("--ref-batch", type=int, default=None, help="reference batch (default: a quarter of --batch)")
    ap.add_argument("--steps", type=int, default=25, help="steps per run (the first two are not timed)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reference-pass", default="auto", choices=["auto", "fused", "sequential"],
                    help="TrainConfig.reference_pass of the methods with a reference batch")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds over the methods (at least 5 for an interval)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a)))
        return 0
    if a.params:  # the parameter file's model (its variant applied; registers a tiny config)
        from dive_nb.experiment import load_params, model_name_of
        a.model = model_name_of(load_params(a.params))
    if a.device == "cpu" and (a.image_size > 64 or not a.model.startswith("dive-tiny")):
        print(f"warning: {a.model} at {a.image_size}px on a CPU is slow (minutes per method per round); "
              f"keep --batch and --steps small", file=sys.stderr)
    if a.repeats < 5: print(f"warning: {a.repeats} round(s): the interval over rounds needs at least 5", file=sys.stderr)
    a.methods = list(dict.fromkeys(["flyp", "bare", "bare_ref"] + a.methods))
    base = [sys.executable, __file__, "--model", a.model, "--image-size", str(a.image_size), "--batch", str(a.batch),
            "--steps", str(a.steps), "--device", a.device, "--precision", a.precision, "--reference-pass", a.reference_pass]
    if a.ref_batch: base += ["--ref-batch", str(a.ref_batch)]
    if a.params: base += ["--params", a.params]
    if a.threads: base += ["--threads", str(a.threads)]
    runs = {m: [] for m in a.methods}
    for k in range(a.repeats):
        for m in a.methods:
            out = subprocess.run(base + ["--one", m], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr); return out.returncode
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {k + 1}/{a.repeats} done", file=sys.stderr, flush=True)
    R = a.repeats
    ratio = lambda m, key: [runs[m][k][key] / runs["flyp"][k][key] for k in range(R)]  # within-round ratios
    floor = [runs["bare_ref"][k]["sec_per_step"] / runs["bare"][k]["sec_per_step"] for k in range(R)]
    rows = []
    for m, rs in runs.items():
        tr = ratio(m, "sec_per_step"); mr = ratio(m, "peak_above_mb")
        row = {**rs[0], "sec_per_step": statistics.median(r["sec_per_step"] for r in rs),
               "peak_mb": statistics.median(r["peak_mb"] for r in rs), "peak_above_mb": statistics.median(r["peak_above_mb"] for r in rs),
               "time_ratio": statistics.median(tr), "mem_ratio": statistics.median(mr), "sec_per_step_runs": [r["sec_per_step"] for r in rs],
               "time_ratio_runs": tr, "repeats": R}
        if R >= 2:
            d = [t - f for t, f in zip(tr, floor)]
            row["above_floor"], row["above_floor_lo"], row["above_floor_hi"] = bootstrap_mean(d)
        rows.append(row)
    import platform
    print(f"device: {a.device} ({platform.processor() or platform.machine()}), model {a.model}, {a.image_size}px, {a.precision}, "
          f"ID batch {a.batch}, reference batch {a.ref_batch or max(1, a.batch // 4)}, {a.steps} steps, threads {a.threads}, "
          f"reference pass {a.reference_pass}, {R} interleaved round(s)")
    fl, fl_lo, fl_hi = bootstrap_mean(floor) if R >= 2 else (floor[0],) * 3
    print(f"floor (bare step on ID + reference / on ID): {statistics.median(floor):.3f}x (mean {fl:.3f}, 95% CI {fl_lo:.3f}-{fl_hi:.3f})")
    print(f"{'method':12s} {'s/step':>8s} {'img/s':>7s} {'MB above':>9s} {'mem':>6s} {'time':>6s}  {'time - floor [95% CI]':>24s}")
    for r in rows:
        ips = a.batch / r["sec_per_step"] if r["sec_per_step"] > 0 else float("nan")
        dist = f"{r['above_floor']:+.3f} [{r['above_floor_lo']:+.3f}, {r['above_floor_hi']:+.3f}]" if "above_floor" in r else ""
        print(f"{r['method']:12s} {r['sec_per_step']:8.4f} {ips:7.0f} {r['peak_above_mb']:9.0f} {r['mem_ratio']:5.2f}x "
              f"{r['time_ratio']:5.2f}x  {dist:>24s}")
    b, f = next(r for r in rows if r["method"] == "bare"), next(r for r in rows if r["method"] == "flyp")
    print(f"FLYP throughput / bare open_clip step: {b['sec_per_step'] / f['sec_per_step']:.2f}")
    dv = next((r for r in rows if r["method"] == "dive"), None)
    if dv is not None and "above_floor" in dv:
        print(f"DiVE / FLYP time - floor: {dv['above_floor']:+.3f} (95% CI {dv['above_floor_lo']:+.3f} to {dv['above_floor_hi']:+.3f}; "
              f"target: upper bound <= 0.05); DiVE / FLYP memory above baseline: {dv['mem_ratio']:.2f}x")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        for r in rows: r.update(floor=statistics.median(floor), floor_runs=floor, device=a.device, precision=a.precision, threads=a.threads)
        with open(a.json, "w") as fh: json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
