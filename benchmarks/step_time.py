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
    python benchmarks/step_time.py --model ViT-B-16 --image-size 224 --batch 16 --methods dive --steps 13 --block 2 --floor-apart  # the paper's size on a CPU (slow)
    python benchmarks/step_time.py --model ViT-B-16 --image-size 224 --batch 512 --device cuda --precision bf16 --design interleaved

`bare` is a plain open_clip forward + backward + AdamW step on the ID batch (images and class-prompt captions,
open_clip's `ClipLoss`) without dive-nb's loop; `bare_ref` the same bare step on the ID + reference batch. Their
ratio is DiVE's floor: what one pass over the extra reference pairs costs on this device and model, since the
frozen model's embeddings are cached. The benchmark prints DiVE/FLYP minus that floor with its interval.

`--design lockstep` (the default) runs every method's process side by side, one step at a time: the script tells each
process in turn (a fresh random order every round) to take its next step and reads back that step's seconds, so
consecutive steps of DiVE, FLYP and the two bare steps are measured within a fraction of a second of each other
and a slow drift of a shared machine cancels in the within-round ratios. Ratios are ratios of summed seconds over blocks of
`--block` consecutive rounds (robust to one slow step), and the interval is a bootstrap over those blocks. `--design interleaved` is
for when the processes do not fit in memory at once (several large models on one GPU): each method's whole run in
turn, `--repeats` rounds, ratios within a round.

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


class _Baton:
    """A lockstep child's side of the protocol (stdin / stdout): say `ready <steps>` once set up, read `rounds <R>`, then
    before each of the first R steps wait for `go` and after it print `step <seconds>`; steps past R run freely."""
    def __init__(self, on: bool): self.on, self.rounds, self.n = on, 0, 0
    def wait(self) -> None:
        if sys.stdin.readline().strip() != "go": raise SystemExit("lockstep: the parent stopped")
    def start(self, steps: int) -> None:
        if not self.on: return
        print(f"ready {steps}", flush=True)
        msg = sys.stdin.readline().split()
        if len(msg) != 2 or msg[0] != "rounds": raise SystemExit("lockstep: the parent stopped")
        self.rounds = int(msg[1])
        if self.rounds > 0: self.wait()
    def step_done(self, seconds: float) -> None:
        if not self.on or self.n >= self.rounds: return
        print(f"step {seconds!r}", flush=True); self.n += 1
        if self.n < self.rounds: self.wait()


def _hook_train_loop(baton: _Baton) -> None:
    """Lockstep inside dive_nb's one loop, with no change to it: `_progress_bar` runs once before the first step and
    `_write_checkpoint` right after each step's timing, so they are where the child waits and reports. The loop's own
    per-step seconds (`run.t_all`) are what is reported."""
    import dive_nb.train as T
    for name in ("_progress_bar", "_write_checkpoint"):
        if not hasattr(T, name): raise SystemExit(f"error: dive_nb.train.{name} is gone: update benchmarks/step_time.py's lockstep hooks")
    bar, ckpt, seen = T._progress_bar, T._write_checkpoint, {"t": 0.0}
    def progress_bar(run):
        baton.start(run.total - run.done); return bar(run)
    def write_checkpoint(run, *args):
        dt = run.t_all - seen["t"]; seen["t"] = run.t_all
        ckpt(run, *args)
        baton.step_done(dt)
    T._progress_bar, T._write_checkpoint = progress_bar, write_checkpoint


def _bare(clip, imgs, tokens, steps, prepare, dev, autocast, baton: _Baton | None = None) -> float:
    "Seconds per step of a bare open_clip forward + backward + AdamW step (no dive-nb loop)."
    import torch, open_clip
    loss_fn, opt = open_clip.ClipLoss(), torch.optim.AdamW(clip.parameters(), lr=1e-4)
    clip.train(); times = []
    baton = baton or _Baton(False)
    baton.start(steps)
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
        baton.step_done(times[-1])
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
    baton = _Baton(bool(getattr(a, "child_lockstep", False)))
    if baton.on: _hook_train_loop(baton)
    row = {"method": a.one, "batch": a.batch, "model": a.model, "reference_pass": a.reference_pass, "baseline_mb": base}
    if a.one in ("bare", "bare_ref"):  # bare_ref: the bare step on the ID + reference batch (DiVE's floor)
        nb = a.batch + (cfg.ref_batch_size if a.one == "bare_ref" else 0)
        ac = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
        sec = _bare(clip.to(dev), [imgs(nb) for _ in range(2)], [rnd_tokens(nb) for _ in range(2)], a.steps,
                    lambda x: prepare_images(x.to(dev)), dev, ac, baton)
        return {**row, "sec_per_step": sec, "peak_mb": peak(), "peak_above_mb": peak() - base}
    res = train(model, get_method(a.one), ids, "y", prompts, lambda x: prepare_images(x.to(dev)), cfg, ref, pre)
    return {**row, "sec_per_step": res["sec_per_step"], "peak_mb": peak(), "peak_above_mb": peak() - base,
            "reference_pass": res.get("reference_pass", a.reference_pass)}


def _interval(draw, n: int, seed: int) -> tuple[float, float]:
    "95% percentile interval of n bootstrap replicates `draw(rng)`."
    rng = random.Random(seed)
    d = sorted(draw(rng) for _ in range(n))
    return d[int(0.025 * n)], d[int(0.975 * n) - 1]


def bootstrap_mean(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    "Mean and 95% percentile-bootstrap interval of the mean (resampling the rounds, or the blocks of rounds)."
    return (statistics.fmean(xs), *_interval(lambda r: statistics.fmean(r.choices(xs, k=len(xs))), n, seed))


def bootstrap_diff(xs: list[float], ys: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    "mean(xs) - mean(ys) and its 95% percentile-bootstrap interval, the two samples resampled independently (unpaired)."
    draw = lambda r: statistics.fmean(r.choices(xs, k=len(xs))) - statistics.fmean(r.choices(ys, k=len(ys)))
    return (statistics.fmean(xs) - statistics.fmean(ys), *_interval(draw, n, seed))


def blocks(xs: list[float], block: int) -> list[list[float]]:
    "Consecutive blocks of `block` values (a last, shorter block is dropped)."
    return [xs[i:i + block] for i in range(0, len(xs) - block + 1, block)]


def _child(base: list[str], m: str, lockstep: bool = False):
    "One method's process: a lockstep child (stepped through its stdin), or a whole run to completion."
    if lockstep:
        return subprocess.Popen(base + ["--one", m, "--child-lockstep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    return subprocess.run(base + ["--one", m], capture_output=True, text=True)


def _interleaved(a, base: list[str]) -> tuple[dict, dict]:
    "Whole runs, method after method, `--repeats` rounds: method -> seconds per step of each round, and each round's record."
    runs = {m: [] for m in a.methods}
    for k in range(a.repeats):
        for m in a.methods:
            out = _child(base, m)
            if out.returncode != 0: raise SystemExit(out.stderr + f"\nerror: the {m} run failed (its output is above)")
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {k + 1}/{a.repeats} done", file=sys.stderr, flush=True)
    return {m: [r["sec_per_step"] for r in rs] for m, rs in runs.items()}, runs


def _lockstep(a, base: list[str], methods: list[str] | None = None) -> tuple[dict, dict]:
    "Every method's process at once, one step each per round in a random order: method -> seconds of each timed step, and its record."
    methods = methods or a.methods
    procs = {m: _child(base, m, lockstep=True) for m in methods}
    steps = {m: [] for m in methods}
    rng = random.Random(0)
    try:
        totals = {}
        for m, p in procs.items():  # every process set up (model, data, optimizer) before the first timed step
            msg = p.stdout.readline().split()
            if len(msg) != 2 or msg[0] != "ready": raise SystemExit(f"error: the {m} process stopped while setting up (its error is above)")
            totals[m] = int(msg[1])
        R = min(a.steps, *totals.values())  # a method with phases may round its step count
        for p in procs.values(): p.stdin.write(f"rounds {R}\n"); p.stdin.flush()
        for k in range(R):
            order = list(procs); rng.shuffle(order)
            for m in order:
                p = procs[m]
                p.stdin.write("go\n"); p.stdin.flush()
                line = p.stdout.readline().split()
                if len(line) != 2 or line[0] != "step":
                    raise SystemExit(f"error: the {m} process stopped at step {k} (its error is above)")
                steps[m].append(float(line[1]))
            if (k + 1) % 10 == 0 or k + 1 == R: print(f"round {k + 1}/{R}", file=sys.stderr, flush=True)
        rec = {}
        for m, p in procs.items():
            p.stdin.close(); out = p.stdout.read(); p.wait()  # the same buffered reader as the steps' lines
            if p.returncode != 0: raise SystemExit(f"error: the {m} process failed (its error is above)")
            rec[m] = [json.loads(out.strip().splitlines()[-1])]
    finally:
        for p in procs.values():
            if p.poll() is None: p.kill()
    w = min(a.warmup, R - 1)
    return {m: t[w:] for m, t in steps.items()}, rec


def summarise(T: dict, recs: dict, block: int = 1, paired: bool = True) -> tuple[list[dict], list[float]]:
    """Per method: median seconds per step, time ratio to FLYP, memory ratio, and distance to DiVE's floor with its interval.
    Ratios are taken within each block of `block` consecutive rounds as a ratio of summed seconds (robust to a single slow
    step), then averaged and bootstrapped over the blocks; `block` 1 is a ratio per round. `paired`: the floor's bare
    steps ran in the same rounds as the methods (the distance is bootstrapped per block); otherwise in rounds of their own
    (`--floor-apart`: the two means are bootstrapped independently)."""
    B = lambda m: [sum(b) for b in blocks(T[m], block)]
    ratio = lambda num, den: [x / y for x, y in zip(B(num), B(den))]
    floor = ratio("bare_ref", "bare")
    mem = {m: statistics.median(r["peak_above_mb"] for r in rs) for m, rs in recs.items()}
    rows = []
    for m in T:
        tr = ratio(m, "flyp")
        row = {**recs[m][0], "sec_per_step": statistics.median(T[m]), "peak_mb": statistics.median(r["peak_mb"] for r in recs[m]),
               "peak_above_mb": mem[m], "time_ratio": statistics.median(tr), "mem_ratio": mem[m] / mem["flyp"],
               "sec_per_step_runs": T[m], "time_ratio_blocks": tr, "rounds": len(T[m]), "block": block}
        if len(tr) >= 2:
            row["above_floor"], row["above_floor_lo"], row["above_floor_hi"] = (
                bootstrap_mean([t - f for t, f in zip(tr, floor)]) if paired else bootstrap_diff(tr, floor))
        rows.append(row)
    return rows, floor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, help="methods to time (flyp, bare and bare_ref are always added)")
    ap.add_argument("--model", default="dive-tiny-vit", help="any open_clip model name or a dive-nb tiny model")
    ap.add_argument("--params", help="take the model from this parameter file (the mini pipeline's tiny model)")
    ap.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=128, help="ID batch")
    ap.add_argument("--ref-batch", type=int, default=None, help="reference batch (default: a quarter of --batch)")
    ap.add_argument("--steps", type=int, default=25, help="steps per run (lockstep: rounds, the first --warmup not timed; else the first two)")
    ap.add_argument("--warmup", type=int, default=3, help="lockstep: rounds not timed")
    ap.add_argument("--block", type=int, default=10, help="lockstep: consecutive rounds per bootstrap block")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the forward pass's precision")
    ap.add_argument("--reference-pass", default="auto", choices=["auto", "fused", "sequential"],
                    help="TrainConfig.reference_pass of the methods with a reference batch")
    ap.add_argument("--design", default="lockstep", choices=["lockstep", "interleaved"],
                    help="lockstep: every method's process alive at once, one step each per round (needs the memory of all of "
                         "them at once); interleaved: whole runs, one method after another, --repeats rounds")
    ap.add_argument("--floor-apart", action="store_true",
                    help="lockstep: time the two bare steps (the floor) in rounds of their own, after the methods, so that "
                         "only half the processes are alive at once (large models on a small machine)")
    ap.add_argument("--repeats", type=int, default=5, help="--no-lockstep: interleaved rounds over the methods (at least 5 for an interval)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--child-lockstep", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.lockstep = a.design == "lockstep"
    if a.one:
        print(json.dumps(_one(a)), flush=True)
        return 0
    if a.params:  # the parameter file's model (its variant applied; registers a tiny config)
        from dive_nb.experiment import load_params, model_name_of
        a.model = model_name_of(load_params(a.params))
    if a.device == "cpu" and (a.image_size > 64 or not a.model.startswith("dive-tiny")):
        print(f"warning: {a.model} at {a.image_size}px on a CPU is slow (seconds to minutes per step); "
              f"keep --batch and --steps small", file=sys.stderr)
    if a.lockstep and a.steps - a.warmup < 5 * a.block:
        print(f"error: --steps {a.steps} leaves {a.steps - a.warmup} timed rounds after --warmup {a.warmup}: give at least "
              f"5 x --block ({5 * a.block}) for an interval over blocks", file=sys.stderr); return 2
    if not a.lockstep and a.repeats < 5: print(f"warning: {a.repeats} round(s): the interval over rounds needs at least 5", file=sys.stderr)
    a.methods = list(dict.fromkeys(["flyp", "bare", "bare_ref"] + a.methods))
    base = [sys.executable, __file__, "--model", a.model, "--image-size", str(a.image_size), "--batch", str(a.batch),
            "--steps", str(a.steps), "--device", a.device, "--precision", a.precision, "--reference-pass", a.reference_pass]
    if a.ref_batch: base += ["--ref-batch", str(a.ref_batch)]
    if a.params: base += ["--params", a.params]
    if a.threads: base += ["--threads", str(a.threads)]
    apart = a.lockstep and a.floor_apart
    if apart:  # the methods (FLYP among them) in lockstep, then the floor's two bare steps in lockstep
        T, recs = _lockstep(a, base, [m for m in a.methods if m not in ("bare", "bare_ref")])
        T2, recs2 = _lockstep(a, base, ["bare", "bare_ref"])
        T, recs = {**T, **T2}, {**recs, **recs2}
    else:
        T, recs = (_lockstep if a.lockstep else _interleaved)(a, base)
    block = a.block if a.lockstep else 1
    rows, floor = summarise(T, recs, block, paired=not apart)
    R = len(T["flyp"])
    import platform
    design = (f"lockstep: every method's process takes one step per round, in a random order, {R} timed rounds after {a.warmup} "
              f"warm-up; ratios of summed seconds over blocks of {block} rounds, interval a bootstrap over the blocks"
              + ("; the floor's two bare steps in rounds of their own (unpaired interval)" if apart else "") if a.lockstep
              else f"{R} interleaved round(s) of whole {a.steps}-step runs; ratios within a round, interval a bootstrap over rounds")
    print(f"device: {a.device} ({platform.processor() or platform.machine()}), model {a.model}, {a.image_size}px, {a.precision}, "
          f"ID batch {a.batch}, reference batch {a.ref_batch or max(1, a.batch // 4)}, threads {a.threads}, "
          f"reference pass {a.reference_pass}, {design}")
    fl, fl_lo, fl_hi = bootstrap_mean(floor) if len(floor) >= 2 else (floor[0],) * 3
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
        for r in rows: r.update(floor=statistics.median(floor), floor_runs=floor, device=a.device, precision=a.precision, threads=a.threads,
                                design=design)
        with open(a.json, "w") as fh: json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
