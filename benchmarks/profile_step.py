"""Where one training step goes: `torch.profiler` over jmed's own optimiser steps (jmed.train.setup and
optimizer_step, the code `jmed train` runs), CPU time split into matmul, attention, cross-entropy,
optimiser, data and the rest.

    .venv/bin/python benchmarks/profile_step.py [--model smollm2-135m] [--precision auto] [--steps 3]
        [--batch-size 4] [--max-length 512] [--group-by-length]

The first step is a warm-up and is not profiled. Operators are put in the first category whose
pattern their name contains; self CPU time is summed, so nothing is counted twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CATEGORIES = (  # (name, operator-name fragments), first match wins
    ("cross-entropy", ("log_softmax", "nll_loss", "cross_entropy")),
    ("attention", ("scaled_dot_product", "attention", "softmax", "flash")),
    ("optimiser", ("adam", "_foreach", "clip_grad", "norm_", "Optimizer")),
    ("matmul", ("mm", "linear", "matmul", "bmm", "addmm", "dot")),
    ("data", ("collate", "tensor", "copy_", "to", "full", "zeros")),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--group-by-length", action="store_true")
    args = ap.parse_args()

    import torch
    from accelerate import Accelerator
    from torch.profiler import ProfilerActivity, profile

    from jmed.config import TrainConfig
    from jmed.train import optimizer_step, setup

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        cfg = TrainConfig(
            model=args.model,
            precision=args.precision,
            max_steps=args.steps + 1,
            batch_size=args.batch_size,
            max_length=args.max_length,
            group_by_length=args.group_by_length,
        )
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        s = setup(cfg, accelerator)
        s.model.train()
        optimizer_step(s, accelerator)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                with torch.profiler.record_function("Optimizer.step#jmed"):
                    optimizer_step(s, accelerator)
    totals: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    totals["other"] = 0.0
    for ev in prof.key_averages():
        if ev.key.startswith("Optimizer.step#jmed"):
            continue
        name = ev.key.lower()
        cat = next((c for c, frags in CATEGORIES if any(f.lower() in name for f in frags)), "other")
        totals[cat] += ev.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    print(
        f"{args.model}, precision {args.precision} ({s.info['precision_resolved']}), batch {args.batch_size}, "
        f"max_length {args.max_length}, {args.steps} profiled steps: self CPU time by category"
    )
    for cat, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:14s} {us / 1e6 / args.steps:7.2f} s/step  {100 * us / whole:5.1f} %")
    print("\ntop operators:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
