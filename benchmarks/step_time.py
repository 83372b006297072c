#!/usr/bin/env python
"""Step time and peak memory of every method, relative to FLYP (a benchmark, not a test).

Each method runs in its own subprocess (a process's peak RSS only grows), through the one training loop
(`dive_nb.train.train`) with random weights and random data of the right shapes: timing does not depend
on what the weights are. Prints one line per method, ending with its time ratio to FLYP, e.g. `1.18x`.

    python benchmarks/step_time.py                       # tiny model, CPU, the mini profile's batch sizes
    python benchmarks/step_time.py --methods flyp dive --steps 30 --threads 1
    python benchmarks/step_time.py --params params.yaml --repeats 3  # the pipeline's tiny model (the `cost` stage)
    python benchmarks/step_time.py --model ViT-B-16 --image-size 224 --batch 512 --device cuda   # GPU only

`bare` is a plain open_clip forward + backward + AdamW step of the same model on the ID batch (images and
their class-prompt captions, open_clip's `ClipLoss`), without dive-nb's loop: FLYP's throughput should be at
least 80% of it (the last lines print the ratio). `bare_ref` is the same bare step on the ID + reference
batch: the cost of one pass over the extra reference pairs, DiVE's floor on this device and model.

Targets (issue 3): DiVE <= 1.3x FLYP's time and <= 1.1x its peak memory with a reference batch of a
quarter of the ID batch (the DiVE paper's own run cost 1.64x the time and 2.74x the memory of FLYP).
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time

DEFAULT_METHODS = ["flyp", "bare", "bare_ref", "ft", "lp", "lpft", "flyp_replay", "snd", "dive", "dive_cos", "m2mix", "mps", "promptot", "coop", "csaligner"]


def _bare(clip, imgs, tokens, steps, prepare, dev) -> float:
    "Seconds per step of a bare open_clip forward + backward + AdamW step (no dive-nb loop)."
    import torch, open_clip
    loss_fn, opt = open_clip.ClipLoss(), torch.optim.AdamW(clip.parameters(), lr=1e-4)
    clip.train(); times = []
    for s in range(steps):
        if dev.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        x, t = prepare(imgs[s % len(imgs)]), tokens[s % len(tokens)].to(dev)
        out = clip(x, t)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if dev.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = times[2:] or times  # skip two warm-up steps when there are more
    return sum(timed) / len(timed)


def _one(a) -> dict:
    "Measure one method in this process."
    import torch
    from dive_nb.data import Split
    from dive_nb.methods import FineTuneModel, get_method
    from dive_nb.models import create_model, prepare_images
    from dive_nb.train import TrainConfig, train
    torch.manual_seed(0)
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.params:  # the pipeline's model (registers its tiny config)
        from dive_nb.experiment import load_params, _model_name
        a.model = _model_name(load_params(a.params))
    clip, _, tok = create_model(a.model, device=a.device)
    ctx = int(getattr(clip, "context_length", 16))
    vocab = int(getattr(clip, "vocab_size", 50))
    n, C = max(4 * a.batch, 512), 10
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
                      progress=False, ckpt_every=0, num_threads=a.threads)
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats()
    if a.one in ("bare", "bare_ref"):  # bare_ref: the bare step on the ID + reference batch (DiVE's floor)
        nb = a.batch + (cfg.ref_batch_size if a.one == "bare_ref" else 0)
        batches = [imgs(nb) for _ in range(2)]
        sec = _bare(clip.to(dev), batches, [rnd_tokens(nb) for _ in range(2)], a.steps,
                    lambda x: prepare_images(x.to(dev)), dev)
        import resource
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"method": a.one, "sec_per_step": sec, "peak_mb": peak, "batch": a.batch, "model": a.model}
    res = train(model, get_method(a.one), ids, "y", prompts, lambda x: prepare_images(x.to(dev)), cfg, ref, pre)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else res["peak_rss_mb"]
    return {"method": a.one, "sec_per_step": res["sec_per_step"], "peak_mb": peak, "batch": a.batch, "model": a.model}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=DEFAULT_METHODS)
    ap.add_argument("--model", default="dive-tiny-vit")
    ap.add_argument("--params", help="take the model from this parameter file (the mini pipeline's tiny model)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ref-batch", type=int, default=None, help="default: a quarter of --batch")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the methods; the median of each is reported")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a)))
        return 0
    if a.params and not a.one:  # the parameter file's model (its variant applied; registers a tiny config)
        from dive_nb.experiment import load_params, _model_name
        a.model = _model_name(load_params(a.params))
    if a.device == "cpu" and (a.image_size > 64 or not a.model.startswith("dive-tiny")):
        print(f"error: {a.model} at {a.image_size}px is a GPU benchmark; on a CPU measure the tiny model "
              f"(omit --model/--image-size) or pass --device cuda on a GPU machine", file=sys.stderr)
        return 2
    if "flyp" not in a.methods: a.methods = ["flyp"] + a.methods
    rows = []
    base = [sys.executable, __file__, "--model", a.model, "--image-size", str(a.image_size), "--batch", str(a.batch),
            "--steps", str(a.steps), "--device", a.device]
    if a.ref_batch: base += ["--ref-batch", str(a.ref_batch)]
    if a.params: base += ["--params", a.params]
    if a.threads: base += ["--threads", str(a.threads)]
    runs = {m: [] for m in a.methods}
    for _ in range(a.repeats):  # rounds over every method, so that slow drifts of the machine hit all of them alike
        for m in a.methods:
            out = subprocess.run(base + ["--one", m], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr); return out.returncode
            runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import statistics
    for m, rs in runs.items():  # the median step time and the median peak memory over the rounds
        rows.append({**rs[0], "sec_per_step": statistics.median(r["sec_per_step"] for r in rs),
                     "peak_mb": statistics.median(r["peak_mb"] for r in rs),
                     "sec_per_step_runs": [r["sec_per_step"] for r in rs], "repeats": len(rs)})
    f = next(r for r in rows if r["method"] == "flyp")
    import platform
    print(f"device: {a.device} ({platform.processor() or platform.machine()}), model {rows[0].get('model', a.model)}, {a.image_size}px, "
          f"ID batch {a.batch}, reference batch {a.ref_batch or max(1, a.batch // 4)}, {a.steps} steps, threads {a.threads}, "
          f"median of {a.repeats} round(s)")
    print(f"{'method':12s} {'s/step':>8s} {'img/s':>8s} {'peak MB':>9s} {'mem':>6s} {'time':>6s}")
    for r in rows:
        r["time_ratio"], r["mem_ratio"] = r["sec_per_step"] / f["sec_per_step"], r["peak_mb"] / f["peak_mb"]
        ips = a.batch / r["sec_per_step"] if r["sec_per_step"] > 0 else float("nan")
        print(f"{r['method']:12s} {r['sec_per_step']:8.4f} {ips:8.0f} {r['peak_mb']:9.0f} "
              f"{r['mem_ratio']:5.2f}x {r['time_ratio']:5.2f}x")
    b = next((r for r in rows if r["method"] == "bare"), None)
    if b is not None:
        print(f"FLYP throughput / bare open_clip forward+backward: {b['sec_per_step'] / f['sec_per_step']:.2f} (target >= 0.80)")
        br = next((r for r in rows if r["method"] == "bare_ref"), None)
        if br is not None:
            print(f"DiVE's floor (bare step on ID + reference batch / on ID batch): {br['sec_per_step'] / b['sec_per_step']:.2f}x")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh: json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
