#!/usr/bin/env python
"""Where does a training step's time go? cProfile over the one loop for FLYP and DiVE, grouped (a diagnostic, not a test).

    python benchmarks/profile_step.py --params params.yaml --steps 30
    python benchmarks/profile_step.py --model ViT-B-16 --image-size 224 --batch 16 --steps 4

Prints, per group (image tower forward, text tower forward, backward, optimizer, batch preparation, DiVE's terms,
everything else in the loop), the seconds per step of each method and DiVE minus FLYP. DiVE's floor is one pass over
the extra reference images and captions (forward and backward); anything DiVE spends beyond that shows up in the
groups that are not tower passes. cProfile's own overhead inflates Python-heavy groups alike for both methods.
"""
from __future__ import annotations
import argparse, cProfile, pstats, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step_time import _one  # noqa: E402  (the benchmark's model, data and loop set-up)

GROUPS = {  # group -> substrings of "file:function" in the profile (the first match wins)
    "image tower (forward)": ["encode_image"],
    "text tower (forward)": ["encode_text"],
    "backward": ["_engine_run_backward"],
    "optimizer": ["adamw.py:step", "adamw.py:adamw", "adam.py:step"],  # torch >= 2.x: AdamW.step is Adam.step
    "batch preparation": ["models.py:prepare_images"],
    "DiVE terms (EMA, AVL, PVL, differences)": ["methods.py:_avl", "dive.py:pvl_loss", "dive.py:difference_vectors"],
}


def profile(method: str, a) -> dict:
    a.one = method
    pr = cProfile.Profile()
    pr.enable(); res = _one(a); pr.disable()
    st = pstats.Stats(pr)
    total = next(v[3] for k, v in st.stats.items() if k[2] == "train")  # cumulative seconds in train()
    out = {g: 0.0 for g in GROUPS}
    for (f, _, fn), v in st.stats.items():
        name = f"{f}:{fn}"
        for g, keys in GROUPS.items():
            if any(k in name for k in keys) and not any(k in name for k in ("__init__",)):
                out[g] = max(out[g], v[3])  # cumulative time of the outermost matching function (nested calls are not added twice)
                break
    out["whole loop"] = total
    return {k: v / a.steps for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dive-tiny-vit"); ap.add_argument("--params")
    ap.add_argument("--image-size", type=int, default=32); ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ref-batch", type=int, default=None); ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None); ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32"); ap.add_argument("--reference-pass", default="auto")
    a = ap.parse_args(argv)
    rows = {m: profile(m, a) for m in ("flyp", "dive")}
    print(f"seconds per step under cProfile ({a.model}, {a.image_size}px, ID batch {a.batch}, {a.steps} steps)")
    print(f"{'group':42s} {'flyp':>8s} {'dive':>8s} {'dive-flyp':>10s}")
    for m in rows: rows[m]["everything else in the loop"] = rows[m]["whole loop"] - sum(rows[m][g] for g in GROUPS)
    for g in [*GROUPS, "everything else in the loop", "whole loop"]:
        f, d = rows["flyp"][g], rows["dive"][g]
        print(f"{g:42s} {f:8.4f} {d:8.4f} {d - f:+10.4f}")
    print(f"DiVE / FLYP whole loop under cProfile: {rows['dive']['whole loop'] / rows['flyp']['whole loop']:.3f}; "
          f"DiVE's share of the difference in the tower passes (forward + backward): "
          f"{sum(rows['dive'][g] - rows['flyp'][g] for g in ('image tower (forward)', 'text tower (forward)', 'backward')) / (rows['dive']['whole loop'] - rows['flyp']['whole loop']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
