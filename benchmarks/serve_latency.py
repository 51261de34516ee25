"""Serving: jmed's pyfunc model against the same adapter merged and logged with
MLflow's transformers flavour, both served by `mlflow models serve --env-manager local`; and jmed's
model behind `jmed serve`'s front (jmed.front: MLflow's scoring app with its request checks).

    .venv/bin/python benchmarks/serve_latency.py [--model tiny] [--requests 30] [--steps 20] [--max-new-tokens 4]
                                                 [--no-registry]

Trains adapters (--model: tiny, or smollm2-135m for real scale) in a throw-away sqlite store and prints:

1. Latency: 1- and 8-question requests sent alternately to the two servers (so that load on a shared
   machine hits both alike), p50 / p95.
2. Load: single-question requests at concurrency 1 and 8 to each server: requests/s and p50/p95/p99;
   the ratio c8/c1 (target >= 4x on tiny: jmed batches concurrent requests).
3. Memory: one jmed server holding 4 registered versions (per-request `version`) against 4 servers.
4. Alias switch under load: 4 clients send requests while `champion` moves; failed requests and the
   time from the move to the first answer by the new version.

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


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (the mlflow CLI and uvicorn), MB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                status = (stat.parent / "status").read_text()
                total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
        except (OSError, StopIteration, IndexError):
            continue
    return total / 1024


def load_test(url: str, bodies: list, concurrency: int, total: int) -> dict:
    """`total` requests, `concurrency` at a time, cycling through `bodies`; rps and latency percentiles."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    session_for = {}

    def one(i):
        import threading

        s = session_for.setdefault(threading.get_ident(), requests.Session())
        t = time.perf_counter()
        r = s.post(url, json=bodies[i % len(bodies)], timeout=300)
        return time.perf_counter() - t, r.status_code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res = list(pool.map(one, range(total)))
    wall = time.perf_counter() - t0
    lat = [x * 1000 for x, _ in res]
    return {
        "rps": total / wall,
        "p50": percentile(lat, 0.5),
        "p95": percentile(lat, 0.95),
        "p99": percentile(lat, 0.99),
        "errors": sum(1 for _, c in res if c != 200),
    }


def log_transformers_model(model: str, adapter_dir: Path, max_new_tokens: int) -> str:
    """The comparison: base + adapter merged (merge_and_unload) and logged with mlflow.transformers.
    Explicit pip_requirements (the default ones pull torchvision, measured)."""
    import mlflow

    from jmed.models import load_adapter, load_base

    base, tok, _ = load_base(model)
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    reqs = [
        f"{p}=={version(p).split('+')[0]}"
        for p in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate")
    ]
    info = mlflow.transformers.log_model(
        transformers_model={"model": merged, "tokenizer": tok},
        name="merged",
        task="text-generation",
        pip_requirements=reqs,
        input_example=(
            ["問題：どれか。\na. 甲\nb. 乙\n\n答え："],
            {"max_new_tokens": max_new_tokens, "do_sample": False},
        ),
    )
    return info.model_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, gemma3-270m, a folder or HF id")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per server and batch size")
    ap.add_argument("--steps", type=int, default=20, help="training steps of the adapter")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--load-requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--no-registry", action="store_true", help="skip parts 3 and 4 (memory, alias switch)")
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
        "jmed": {
            n: {"dataframe_records": records[:n], "params": {"max_new_tokens": args.max_new_tokens}} for n in (1, 8)
        },
        "transformers": {
            n: {"inputs": prompts[:n], "params": {"max_new_tokens": args.max_new_tokens, "do_sample": False}}
            for n in (1, 8)
        },
    }
    bodies["jmed serve"] = bodies["jmed"]  # the same model behind jmed's front
    servers, ready, ports = {}, {}, {}
    try:
        for name, uri, front in (
            ("jmed", jmed_uri, False),
            ("jmed serve", jmed_uri, True),
            ("transformers", hf_uri, False),
        ):
            ports[name] = free_port()
            servers[name], ready[name] = start_server(
                uri, ports[name], log_path=work / f"{name.replace(' ', '-')}.log", front=front
            )
        names = list(servers)
        times = {(name, n): [] for name in servers for n in (1, 8)}
        for i in range(args.requests + 2):  # the first two are warm-up
            for n in (1, 8):
                for name in names[i % 3 :] + names[: i % 3]:  # each server first in turn
                    t = time.perf_counter()
                    r = requests.post(f"http://127.0.0.1:{ports[name]}/invocations", json=bodies[name][n], timeout=120)
                    dt = time.perf_counter() - t
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:500]}")
                    if i >= 2:
                        times[(name, n)].append(dt)
        load = {}
        for c in (1, 8):  # one server at a time: the other is idle
            for name in servers:
                url = f"http://127.0.0.1:{ports[name]}/invocations"
                singles = (
                    [{"dataframe_records": [r], "params": {"max_new_tokens": args.max_new_tokens}} for r in records]
                    if name.startswith("jmed")
                    else [
                        {"inputs": [p], "params": {"max_new_tokens": args.max_new_tokens, "do_sample": False}}
                        for p in prompts
                    ]
                )
                load[(name, c)] = load_test(url, singles, c, args.load_requests)
    finally:
        for proc in servers.values():
            stop_server(proc)

    print(
        f"serve latency, {args.model}, max_new_tokens={args.max_new_tokens}, {args.requests} requests each, "
        f"{os.cpu_count()} CPUs visible"
    )
    for name in servers:
        print(f"  {name:<13} ready (/ping) {ready[name]:6.2f} s")
    for n in (1, 8):
        for name in servers:
            xs = [x * 1000 for x in times[(name, n)]]
            print(
                f"  {name:<13} {n} question(s): p50 {statistics.median(xs):7.1f} ms   "
                f"p95 {percentile(xs, 0.95):7.1f} ms"
            )
        ratio = statistics.median(times[("transformers", n)]) / statistics.median(times[("jmed", n)])
        print(f"  p50 transformers / jmed at {n}: {ratio:.2f}x  (target >= 1.0)")
        front = statistics.median(times[("jmed serve", n)]) / statistics.median(times[("jmed", n)])
        print(f"  p50 jmed serve (front) / mlflow models serve at {n}: {front:.2f}x  (the front's cost)")
    print(f"concurrent load: single-question requests, {args.load_requests} per level")
    for name in servers:
        c1, c8 = load[(name, 1)], load[(name, 8)]
        for c, m in ((1, c1), (8, c8)):
            print(
                f"  {name:<13} concurrency {c}: {m['rps']:6.1f} req/s  p50 {m['p50']:7.1f}  p95 {m['p95']:7.1f}  "
                f"p99 {m['p99']:7.1f} ms  errors {m['errors']}"
            )
        print(
            f"  {name:<13} throughput c8 / c1: {c8['rps'] / c1['rps']:.2f}x"
            + ("  (target >= 4x on tiny)" if name == "jmed" else "")
        )
    print(
        f"  jmed / transformers throughput at concurrency 8: {load[('jmed', 8)]['rps'] / load[('transformers', 8)]['rps']:.2f}x"
    )
    for c in (1, 8):
        print(
            f"  jmed serve (front) / mlflow models serve throughput at concurrency {c}: "
            f"{load[('jmed serve', c)]['rps'] / load[('jmed', c)]['rps']:.2f}x"
        )
    if not args.no_registry:
        registry_part(args, work, records)
    print(f"(work folder {work})")


def registry_part(args, work: Path, records: list) -> None:
    """Memory of 4 adapters on one base vs 4 servers; an alias switch under load."""
    import threading

    import mlflow
    import requests
    from mlflow import MlflowClient

    from jmed.config import TrainConfig
    from jmed.registry import log_serving_model
    from jmed.server import free_port, start_server, stop_server
    from jmed.train import train

    client, name = MlflowClient(), "jmed-bench"
    for seed in range(4):
        run = train(TrainConfig(model=args.model, max_steps=2, batch_size=4, max_length=384, seed=seed))
        adapter = Path(
            mlflow.artifacts.download_artifacts(run_id=run, artifact_path="adapter", dst_path=str(work / f"a{seed}"))
        )
        with mlflow.start_run(run_name=f"serve-bench-{seed}"):
            mlflow.register_model(log_serving_model(adapter).model_uri, name)
    client.set_registered_model_alias(name, "champion", "1")
    body = {"dataframe_records": records[:1], "params": {"max_new_tokens": args.max_new_tokens}}

    port = free_port()
    proc, _ = start_server(
        f"models:/{name}@champion", port, log_path=work / "multi.log", env={"JMED_SERVE_POLL_S": "0.2"}
    )
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        one_adapter = group_rss_mb(proc.pid)
        for v in "1234":
            r = requests.post(url, json={**body, "params": {**body["params"], "version": v}}, timeout=300)
            assert r.status_code == 200 and r.json()["predictions"][0]["model_version"] == v, r.text[:300]
        four_adapters = group_rss_mb(proc.pid)

        statuses, seen, stop = [], [], threading.Event()

        def client_loop():
            s = requests.Session()
            while not stop.is_set():
                r = s.post(url, json=body, timeout=300)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    seen.append((time.perf_counter(), r.json()["predictions"][0]["model_version"]))

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        moved = time.perf_counter()
        client.set_registered_model_alias(name, "champion", "3")
        deadline = moved + 60
        while not any(v == "3" for _, v in seen) and time.perf_counter() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        first_new = min((t for t, v in seen if v == "3"), default=float("nan")) - moved
    finally:
        stop_server(proc)
    separate = []
    try:
        for v in "1234":
            p, _ = start_server(f"models:/{name}/{v}", free_port(), log_path=work / f"single{v}.log")
            separate.append(p)
        four_servers = sum(group_rss_mb(p.pid) for p in separate)
    finally:
        for p in separate:
            stop_server(p)
    print("memory: one server holding 4 registered versions vs 4 servers")
    print(
        f"  one server, 1 adapter {one_adapter:7.0f} MB; after loading 4: {four_adapters:7.0f} MB "
        f"(+{four_adapters - one_adapter:.0f} MB for 3 adapters)"
    )
    print(f"  4 servers: {four_servers:7.0f} MB  ->  {four_servers / four_adapters:.2f}x the memory of one")
    print("alias switch under load (4 clients, poll 0.2 s)")
    print(
        f"  requests {len(statuses)}, failed {sum(1 for c in statuses if c != 200)}; "
        f"first answer by the new version {first_new:.2f} s after the move"
    )


if __name__ == "__main__":
    main()
