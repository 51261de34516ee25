"""The vllm engine against jmed's hf engine and lm-evaluation-harness, side by side in one run.

    .venv/bin/python benchmarks/engines.py [--model smollm2-135m] [--questions 32] [--skip-serving]

1. Evaluation, questions/s, the same rendered prompts, greedy: letter (generate up to 16 tokens), text
   (medpalm, the longest answer's budget) and loglik (letters a-e); engines jmed+hf (float32, batch 8:
   what jmed did before; and bfloat16, what `auto` picks now on a CPU with bf16 units), jmed+vllm (bfloat16,
   compiled as jmed starts it, and eager; engine start reported apart), and lm-evaluation-harness's
   HF backend on the same model object when it is installed (`make bench`).
2. One adapter on vLLM: runtime LoRA on the base (vLLM's own CPU LoRA ops, and jmed's plugin's) against
   a merged copy (jmed.engine.merged_dir).
3. Serving, single-question requests at concurrency 1, 8 and 32: `jmed serve` (POST /invocations; in
   the version's own precision, `auto`, and with `--precision fp32`, as it ran when the target was
   set) and `jmed serve --engine vllm` (POST /v1/completions, the same prompt text), the same
   registered adapter; requests/s, p50 and p95 latency. Every request is a different question
   (SERVE_REQUESTS).

Questions: IgakuQA 2022 from ../shared/datasets when present (text-only), else the bundled sample.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def questions(n: int):
    from jmed.config import DataFilter
    from jmed.data import SAMPLE_TEST, SAMPLE_TRAIN, load_questions

    shared = ROOT.parent / "shared" / "datasets" / "igakuqa" / "data" / "2022"
    flt = DataFilter(text_only=True)
    qs = (
        load_questions(shared, filters=flt)
        if shared.exists()
        else load_questions(SAMPLE_TEST, filters=flt) + load_questions(SAMPLE_TRAIN, filters=flt)
    )
    return [q for q in qs if not q.numeric][:n], ("IgakuQA 2022" if shared.exists() else "the bundled sample")


# serving: requests per concurrency, each a question of its own, after SERVE_WARM warm-up requests
SERVE_REQUESTS = {1: 8, 8: 32, 32: 64}
SERVE_WARM = 8

CASES = {"letter": ("letter", "igakuqa"), "text": ("text", "medpalm"), "loglik": ("loglik", "igakuqa")}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def lm_eval_rates(model, tokenizer, qs) -> dict:
    """lm-evaluation-harness (HF backend, the same model object): loglik letters and generation."""
    try:
        from lm_eval.evaluator import evaluate as lm_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        return {}
    import logging

    import torch
    from eval_throughput import write_tasks

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    single = [q for q in qs if len(q.answer) == 1 and q.n_answers == 1 and len(q.choices) == 5]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu", max_length=2048)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tasks(Path(tmp), single, tokenizer)
        tm = TaskManager(include_path=tmp, include_defaults=False)
        for case, task in (("loglik", "jmed_ll_letters"), ("letter", "jmed_generate")):
            tasks = tm.load([task])
            with torch.inference_mode():
                _, s = timed(lambda: lm_evaluate(lm, tasks, bootstrap_iters=0, verbosity="ERROR"))
            out[case] = len(single) / s
    return out


def evaluation(args, qs) -> None:
    from jmed import engine as E
    from jmed import models
    from jmed.evaluate import run_questions

    # bf16 first: what `auto` picks on a CPU with bf16 units (emulated without them, so not run there);
    # then fp32, the baseline
    hf16 = {}
    if models.cpu_bf16_units():
        net, tok, _ = models.load_base(args.model, precision="bf16")
        for case, (p, f) in CASES.items():
            _, s = timed(functools.partial(run_questions, net, tok, qs, p, f, 0, "lenient", 8, 0, desc=None))
            hf16[case] = len(qs) / s
        del net
    net, tok, info = models.load_base(args.model, precision="fp32")
    hf, agree = {}, {}
    res_hf = {}
    for case, (p, f) in CASES.items():
        res_hf[case], s = timed(functools.partial(run_questions, net, tok, qs, p, f, 0, "lenient", 8, 0, desc=None))
        hf[case] = len(qs) / s
    lm = lm_eval_rates(net, tok, qs)
    # a random LoRA (r 8, q/k/v/o) for part 2: throughput does not depend on what it learned
    adapter_dir = Path(tempfile.mkdtemp(prefix="jmed-bench-lora-"))
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(
        net,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights="gaussian"
        ),
    )
    peft.save_pretrained(adapter_dir)
    del peft, net
    vl, starts = {}, {}
    # no prefix cache: each protocol's prompts are the same questions, and hf caches nothing between runs
    given = os.environ.get("JMED_VLLM_ARGS", "")
    os.environ["JMED_VLLM_ARGS"] = (given + " --no-enable-prefix-caching").strip()
    # compiled (jmed's default on CPU; the compile cached in $JMED_CACHE/inductor after a first start)
    # and eager (JMED_VLLM_EAGER=1)
    for mode, eager in (("compiled", "0"), ("eager", "1")):
        os.environ["JMED_VLLM_EAGER"] = eager
        with E.open_vllm(info["path"], tok) as opened:
            starts[mode] = opened.load_s
            run_questions(opened.engine, tok, args.warm, "letter", "igakuqa", 0, "lenient", 8, 0, desc=None)
            for case, (p, f) in CASES.items():
                res, s = timed(lambda: run_questions(opened.engine, tok, qs, p, f, 0, "lenient", 8, 0, desc=None))
                vl[mode, case] = len(qs) / s
                if mode == "compiled":
                    agree[case] = sum(a["parsed"] == b["parsed"] for a, b in zip(res_hf[case]["rows"], res["rows"]))
    os.environ.pop("JMED_VLLM_EAGER")
    os.environ["JMED_VLLM_ARGS"] = given  # serving (part 3) runs vLLM's defaults, as a user's server does
    print(
        f"\n1. evaluation: {len(qs)} questions of {args.source}, {args.model}, questions/s "
        f"(vLLM start, not counted: compiled {starts['compiled']:.0f} s, eager {starts['eager']:.0f} s; "
        f"a warm-up on {len(args.warm)} other questions not counted; vLLM prefix cache off; "
        f"vLLM dtype {E.vllm_dtype()})"
    )
    print(
        f"{'protocol':<10}{'hf fp32':>9}{'hf bf16':>9}{'jmed+vllm':>11}{'/fp32':>7}{'/bf16':>7}{'vllm eager':>12}"
        f"{'lm-eval hf':>12}  picks agree (vllm vs hf fp32)"
    )
    for case in CASES:
        v = vl["compiled", case]
        le = f"{lm[case]:>12.2f}" if case in lm else f"{'-':>12}"
        h16, r16 = (f"{hf16[case]:>9.2f}", f"{v / hf16[case]:>6.1f}x") if hf16 else (f"{'-':>9}", f"{'-':>7}")
        print(
            f"{case:<10}{hf[case]:>9.2f}{h16}{v:>11.2f}{v / hf[case]:>6.1f}x"
            f"{r16}{vl['eager', case]:>12.2f}{le}  {agree[case]}/{len(qs)}"
        )
    if not hf16:
        print("hf bf16 not run: this CPU has no bf16 matrix units (AMX, AVX-512 BF16), bf16 would be emulated")
    if not lm:
        print("lm-evaluation-harness not installed here (make bench installs it)")
    lora_vs_merged(args, qs, tok, info, adapter_dir)


def lora_vs_merged(args, qs, tok, info, adapter_dir) -> None:
    import requests

    from jmed import engine as E
    from jmed.evaluate import run_questions
    from jmed.server import stop_server

    p, f = CASES["letter"]
    rows = {}
    # runtime LoRA with vLLM's own CPU ops (a weight copy per token) and with jmed's plugin (vllm_plugin)
    for label, plugin in (("LoRA, vLLM ops", "0"), ("LoRA, jmed ops", "1")):
        os.environ["JMED_VLLM_PLUGIN"] = plugin
        proc, url, started = E.start_vllm(info["path"], served_names=["base"], lora_rank=8)
        try:
            t = time.perf_counter()
            r = requests.post(
                f"{url}/load_lora_adapter", json={"lora_name": "lora", "lora_path": str(adapter_dir)}, timeout=600
            )
            r.raise_for_status()
            eng = E.VLLMEngine(url, tok, "lora")
            _, first = timed(lambda: run_questions(eng, tok, args.warm, p, f, 0, "lenient", 8, 0, desc=None))
            _, steady = timed(lambda: run_questions(eng, tok, qs, p, f, 0, "lenient", 8, 0, desc=None))
            rows[label] = (started + time.perf_counter() - t - first - steady, first, steady)
        finally:
            stop_server(proc)
    os.environ.pop("JMED_VLLM_PLUGIN")
    t = time.perf_counter()
    merged = E.merged_dir(info["path"], info["revision"] + "-bench", adapter_dir)
    merge_s = time.perf_counter() - t
    with E.open_vllm(merged, tok) as opened:
        _, first = timed(lambda: run_questions(opened.engine, tok, args.warm, p, f, 0, "lenient", 8, 0, desc=None))
        _, steady = timed(lambda: run_questions(opened.engine, tok, qs, p, f, 0, "lenient", 8, 0, desc=None))
        rows["merged copy"] = (merge_s + opened.load_s, first, steady)
    print(
        f"\n2. one adapter (r 8, q/k/v/o) on vLLM, letter protocol: seconds (first pass: {len(args.warm)} "
        f"questions; steady: the {len(qs)} timed ones)"
    )
    print(f"{'':<16}{'start+load':>11}{'first pass':>12}{'steady':>8}{'q/s':>7}")
    for k, (load, first, steady) in rows.items():
        print(f"{k:<16}{load:>11.1f}{first:>12.1f}{steady:>8.1f}{len(qs) / steady:>7.2f}")


def serving(args, qs) -> None:
    import mlflow
    import requests
    from serve_latency import load_test

    from jmed.config import EvalConfig, TrainConfig
    from jmed.evaluate import evaluate
    from jmed.prompts import render
    from jmed.registry import promote
    from jmed.server import free_port, group_alive, stop_server
    from jmed.train import train

    work = Path(tempfile.mkdtemp(prefix="jmed-engines-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    os.chdir(work)
    run = train(TrainConfig(model=args.model, max_steps=2, batch_size=2, max_length=384))
    evaluate(EvalConfig(adapter=run, limit=4, compare_base=False))
    promote(args.model)
    from jmed.tracking import slug

    name = f"jmed-{slug(args.model)}"
    from jmed.models import load_tokenizer

    tok, _ = load_tokenizer(args.model)
    # every request a different question (vLLM's prefix cache then shares only the instruction, as it
    # would for a real user's traffic): a warm-up, then each concurrency's own questions
    records = [{"question": q.stem, "choices": list(q.choices)} for q in qs]
    prompts = [render(q, "igakuqa", (), tok).prompt for q in qs]
    exam = [{"dataframe_records": [r], "params": {"max_new_tokens": 16}} for r in records]
    bodies = {
        "hf": exam,
        "hf-fp32": exam,
        "vllm": [{"model": f"{name}@champion", "prompt": p, "max_tokens": 16, "temperature": 0} for p in prompts],
    }
    paths = {"hf": "/invocations", "hf-fp32": "/invocations", "vllm": "/v1/completions"}
    # `jmed serve` as it runs now (the version's own precision: `auto`, bf16 on a CPU with bf16 units)
    # and as it ran when the serving target was set (float32); vLLM's dtype follows the CPU
    flags = {
        "hf": ["--engine", "hf"],
        "hf-fp32": ["--engine", "hf", "--precision", "fp32"],
        "vllm": ["--engine", "vllm"],
    }
    results = {}
    import subprocess

    for engine in ("hf", "hf-fp32", "vllm"):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jmed",
                "serve",
                *flags[engine],
                "--model-uri",
                f"models:/{name}@champion",
                "--port",
                str(port),
            ],
            start_new_session=True,
            stdout=open(work / f"serve-{engine}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 900
            while time.time() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.5)
            url = f"http://127.0.0.1:{port}{paths[engine]}"
            every = bodies[engine]

            def take(start, n):  # the bundled sample has fewer questions than requests: they repeat
                return [every[(start + k) % len(every)] for k in range(n)]

            start = SERVE_WARM
            load_test(url, take(0, start), 4, start)  # warm up
            for c, n in SERVE_REQUESTS.items():
                results[(engine, c)] = load_test(url, take(start, n), c, n)
                start += n
        finally:
            stop_server(proc, grace=30)
            assert not group_alive(proc.pid)
    print(f"\n3. serving {args.model} + a registered adapter, single-question requests, 16 new tokens")
    print(
        f"{'concurrency':<12}{'hf fp32 rps':>12}{'p50/p95 ms':>14}{'hf auto rps':>12}{'p50/p95 ms':>14}"
        f"{'vllm rps':>9}{'p50/p95 ms':>14}{'/fp32':>7}{'/auto':>7}"
    )
    for c in SERVE_REQUESTS:
        f, h, v = results[("hf-fp32", c)], results[("hf", c)], results[("vllm", c)]
        print(
            f"{c:<12}"
            + "".join(f"{r['rps']:>{w}.2f}{r['p50']:>8.0f}/{r['p95']:<5.0f}" for r, w in ((f, 12), (h, 12), (v, 9)))
            + f"{v['rps'] / f['rps']:>6.1f}x{v['rps'] / h['rps']:>6.1f}x"
            + (
                f"  errors {f['errors']}/{h['errors']}/{v['errors']}"
                if f["errors"] or h["errors"] or v["errors"]
                else ""
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--skip-evaluation", action="store_true")
    args = ap.parse_args()
    every, args.source = questions(max(args.questions + 8, SERVE_WARM + sum(SERVE_REQUESTS.values())))
    qs, args.warm = every[: args.questions], every[args.questions : args.questions + 8]
    import torch

    from jmed.models import cpu_bf16_units

    print(
        f"engines benchmark: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"bf16 units {cpu_bf16_units() or 'none'}, {time.strftime('%Y-%m-%d')}"
    )
    if not args.skip_evaluation:
        evaluation(args, qs)
    if not args.skip_serving:
        serving(args, every)


if __name__ == "__main__":
    main()
