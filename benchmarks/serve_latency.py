"""Serving latency (issue 5 §5): jmed's pyfunc model against the same adapter merged and logged with
MLflow's transformers flavour, both served by `mlflow models serve --env-manager local`.

    .venv/bin/python benchmarks/serve_latency.py [--model tiny] [--requests 30] [--steps 20] [--max-new-tokens 4]

Trains one adapter (--model: tiny, or smollm2-135m for real scale) in a throw-away sqlite store, logs it both ways, starts both servers (time until
/ping answers), then sends 1- and 8-question requests alternately to the two servers (so that load on a
shared machine hits both alike) and prints p50 / p95 latency. Target: jmed's p50 no slower.
Both generate greedily with the same max_new_tokens from the same rendered prompts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def log_transformers_model(model: str, adapter_dir: Path, max_new_tokens: int) -> str:
    """The comparison: base + adapter merged (merge_and_unload) and logged with mlflow.transformers.
    Explicit pip_requirements (the default ones pull torchvision; stack-probe §4)."""
    import mlflow

    from jmed.models import load_adapter, load_base

    base, tok, _ = load_base(model)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    reqs = [f"{p}=={version(p).split('+')[0]}" for p in ("mlflow", "torch", "transformers", "tokenizers",
                                                            "safetensors", "accelerate")]
    info = mlflow.transformers.log_model(
        transformers_model={"model": merged, "tokenizer": tok}, name="merged", task="text-generation",
        pip_requirements=reqs,
        input_example=(["問題：どれか。\na. 甲\nb. 乙\n\n答え："],
                       {"max_new_tokens": max_new_tokens, "do_sample": False}),
    )
    return info.model_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, gemma3-270m, a folder or HF id")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per server and batch size")
    ap.add_argument("--steps", type=int, default=20, help="training steps of the adapter")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jmed-serve-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.chdir(work)
    import mlflow
    import requests

    from jmed.config import TrainConfig
    from jmed.data import SAMPLE_TEST, load_questions
    from jmed.prompts import render_prompt
    from jmed.registry import log_serving_model
    from jmed.server import free_port, start_server, stop_server
    from jmed.train import train

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    run = train(TrainConfig(model=args.model, max_steps=args.steps, batch_size=4, max_length=384))
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=run, artifact_path="adapter", dst_path=str(work)))
    with mlflow.start_run(run_name="serve-latency"):
        jmed_uri = log_serving_model(adapter).model_uri
        hf_uri = log_transformers_model(args.model, adapter, args.max_new_tokens)

    qs = [q for q in load_questions(SAMPLE_TEST) if q.choices][:8]
    records = [{"question": q.stem, "choices": list(q.choices)} for q in qs]
    prompts = [render_prompt(q.stem, q.choices, "igakuqa", max(1, q.n_answers)) for q in qs]
    bodies = {
        "jmed": {n: {"dataframe_records": records[:n], "params": {"max_new_tokens": args.max_new_tokens}}
                 for n in (1, 8)},
        "transformers": {n: {"inputs": prompts[:n], "params": {"max_new_tokens": args.max_new_tokens,
                                                                 "do_sample": False}} for n in (1, 8)},
    }
    servers, ready, ports = {}, {}, {}
    try:
        for name, uri in (("jmed", jmed_uri), ("transformers", hf_uri)):
            ports[name] = free_port()
            servers[name], ready[name] = start_server(uri, ports[name], log_path=work / f"{name}.log")
        times = {(name, n): [] for name in servers for n in (1, 8)}
        for i in range(args.requests + 2):  # the first two are warm-up
            for n in (1, 8):
                for name in (("jmed", "transformers") if i % 2 == 0 else ("transformers", "jmed")):
                    t = time.perf_counter()
                    r = requests.post(f"http://127.0.0.1:{ports[name]}/invocations", json=bodies[name][n], timeout=120)
                    dt = time.perf_counter() - t
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:500]}")
                    if i >= 2:
                        times[(name, n)].append(dt)
    finally:
        for proc in servers.values():
            stop_server(proc)

    print(f"serve latency, {args.model}, max_new_tokens={args.max_new_tokens}, {args.requests} requests each, "
          f"{os.cpu_count()} CPUs visible")
    for name in servers:
        print(f"  {name:<13} ready (/ping) {ready[name]:6.2f} s")
    for n in (1, 8):
        for name in servers:
            xs = [x * 1000 for x in times[(name, n)]]
            print(f"  {name:<13} {n} question(s): p50 {statistics.median(xs):7.1f} ms   "
                  f"p95 {percentile(xs, 0.95):7.1f} ms")
        ratio = statistics.median(times[("transformers", n)]) / statistics.median(times[("jmed", n)])
        print(f"  p50 transformers / jmed at {n}: {ratio:.2f}x  (target >= 1.0)")
    print(f"(work folder {work})")


if __name__ == "__main__":
    main()
