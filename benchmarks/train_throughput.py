"""Training tokens/s of `jmed train` against trl's SFTTrainer + peft on the same model, data and settings,
in float32 and in bfloat16, and the padding share of jmed's batches with and without --group-by-length.

Both train the built-in tiny model with the same LoRA (r 8, alpha 16, dropout 0.05 on q/k/v/o), the same
rendered igakuqa prompt/completion pairs of the bundled train split (loss on the completion only), the same
batch size, steps, learning rate, cosine schedule and clipping. Variants, each in its own fresh process,
alternately round after round, so that imports and memory do not leak between them and load on a shared
machine hits all alike: jmed fp32; jmed bf16 (base weights bf16, LoRA fp32: what `auto` picks on a CPU
with bf16 units); jmed bf16 with --group-by-length; trl fp32; trl bf16 (its CPU autocast); trl bf16 with
each of its own ways to cut padding (length-grouped sampler, padding_free, bfd packing).

tokens/s = non-padding tokens of steps 2..N / wall time from the end of step 1 to the end of step N
(the first step's warm-up is excluded on both sides). jmed's side is a real `jmed.train.train` run
with MLflow logging into a temp store; its per-step token counts and timestamps are read back from
the run. trl's side counts the tokens its collator hands out and stamps `on_step_end`.
The headline is the best round of each (a shared machine only slows runs down), the median beside it.
Peak memory: the process's peak RSS (CPU) or torch.cuda.max_memory_allocated (CUDA), in MiB.
Efficiency (real models): achieved FLOP/s = 4 x parameters x tokens/s (LoRA: forward 2, backward
through the frozen weights 2; no weight gradients) against this machine's matmul FLOP/s in the same
precision, measured in the same run (torch.mm of 2048x2048 on all threads).
Padding (`--data`, e.g. IgakuQA 2018-2021 with `--years 2018,2019,2020,2021`): the share of the token
positions one epoch of batches computes that are padding, random order against --group-by-length, from
the tokenised data alone (no training).

    .venv/bin/python benchmarks/train_throughput.py [--model tiny|smollm2-135m] [--steps 40]
        [--batch-size 8] [--max-length 512] [--rounds 2] [--data PATH --years 2018,...] [--no-trl]

Needs the `bench` extra (trl).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SEED = 42


def rate(model: str) -> float:
    from jmed.config import TrainConfig

    return TrainConfig(model=model).learning_rate  # jmed's default for this model, on both sides


def matmul_flops(n: int = 2048, seconds: float = 3.0, dtype: str = "float32") -> float:
    """Matmul FLOP/s of this machine in `dtype` (best of repeated n x n products)."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _years(years: str) -> tuple[int, ...]:
    return tuple(int(y) for y in years.split(",") if y)


def run_jmed(model: str, steps: int, batch: int, max_length: int, precision: str, group: bool, data: str) -> dict:
    import mlflow

    from jmed.config import DataFilter, TrainConfig
    from jmed.train import train

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)
        run_id = train(
            TrainConfig(
                model=model,
                max_steps=steps,
                batch_size=batch,
                learning_rate=rate(model),
                seed=SEED,
                max_length=max_length,
                precision=precision,
                group_by_length=group,
                train_data=data,
                filters=DataFilter(years=_years(os.environ.get("BENCH_YEARS", ""))),
            )
        )
        client = mlflow.MlflowClient()
        params = int(client.get_run(run_id).data.params["total_params"])
        tokens = {m.step: (m.value, m.timestamp) for m in client.get_metric_history(run_id, "train/tokens")}
        loss = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
        padding = client.get_run(run_id).data.metrics.get("data/padding_share", 0.0)
    n = sum(tokens[s][0] for s in range(2, steps + 1))
    seconds = (tokens[steps][1] - tokens[1][1]) / 1000
    return {
        "impl": "jmed",
        "tokens_per_s": n / seconds,
        "tokens": n,
        "seconds": seconds,
        "final_loss": loss[steps],
        "peak_memory_mb": peak_mb(),
        "params": params,
        "padding_share": padding,
    }


def _keep_tail(tok, prompt: str, completion: str, max_length: int) -> str:
    """The prompt cut from the front so that prompt + answer fit max_length, as jmed's default
    overlength policy (truncate_prompt) does; trl itself would cut the answer's end."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    room = max_length - len(tok(completion, add_special_tokens=False)["input_ids"]) - 2  # BOS/EOS
    return prompt if len(ids) <= room else tok.decode(ids[len(ids) - max(room, 1) :])


def run_trl(model: str, steps: int, batch: int, max_length: int, precision: str, mode: str, data: str) -> dict:
    """trl's SFTTrainer; `mode`: "" (pads each random batch), "grouped" (its length-grouped sampler),
    "padding-free" (each batch flattened into one row with position_ids) or "packed" (its bfd packing:
    rows of max_length filled with whole examples). transformers 5.24 reads sequence starts from
    position_ids and keeps sdpa attention within each example, so the last two compute what the others do."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from jmed import data as D
    from jmed import models
    from jmed.prompts import render

    net, tok, _ = models.load_base(model, precision="fp32")  # trl's bf16 is its autocast
    params = sum(p.numel() for p in net.parameters())
    from jmed.config import DataFilter

    filters = DataFilter(years=_years(os.environ.get("BENCH_YEARS", "")))
    questions = D.apply_filters(D.load_questions(data or D.SAMPLE_TRAIN), filters)
    rows = [render(q, "igakuqa", (), tok) for q in questions if not q.no_prompt]
    ds = Dataset.from_list(
        [{"prompt": _keep_tail(tok, r.prompt, r.target, max_length), "completion": r.target} for r in rows]
    )
    counted: list[int] = []
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=rate(model),
            lr_scheduler_type="cosine",
            warmup_steps=0,
            max_grad_norm=1.0,
            weight_decay=0.0,
            seed=SEED,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not cuda,
            bf16=precision == "bf16",
            gradient_checkpointing=False,
            completion_only_loss=True,
            max_length=None if mode == "padding-free" else max_length,  # trl: not enforced there; cut above
            packing=mode == "packed",
            padding_free=mode in ("padding-free", "packed"),
            train_sampling_strategy="group_by_length" if mode == "grouped" else "random",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=net, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[Stamp()]
        )
        collate = trainer.data_collator

        def counting(examples):
            out = collate(examples)
            counted.append(
                int(out["attention_mask"].sum()) if "attention_mask" in out else int(out["input_ids"].numel())
            )
            return out

        trainer.data_collator = counting
        trainer.train_dataset = trainer.train_dataset  # collator is read when the dataloader is built
        result = trainer.train()
    n = sum(counted[1:steps])
    seconds = stamps[steps - 1] - stamps[0]
    return {
        "impl": "trl",
        "tokens_per_s": n / seconds,
        "tokens": n,
        "seconds": seconds,
        "final_loss": trainer.state.log_history[-2].get("loss", result.training_loss),
        "peak_memory_mb": peak_mb(),
        "params": params,
    }


VARIANTS = {  # name: (implementation, precision, batching: "" random and padded, or what cuts padding)
    "jmed fp32": ("jmed", "fp32", ""),
    "jmed bf16": ("jmed", "bf16", ""),
    "jmed bf16 grouped": ("jmed", "bf16", "grouped"),
    "trl fp32": ("trl", "fp32", ""),
    "trl bf16": ("trl", "bf16", ""),
    "trl bf16 grouped": ("trl", "bf16", "grouped"),
    "trl bf16 padding-free": ("trl", "bf16", "padding-free"),
    "trl bf16 packed": ("trl", "bf16", "packed"),
}


def worker(variant: str, model: str, steps: int, batch: int, max_length: int, data: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    impl, precision, mode = VARIANTS[variant]
    if impl == "jmed":
        res = run_jmed(model, steps, batch, max_length, precision, mode == "grouped", data)
    else:
        res = run_trl(model, steps, batch, max_length, precision, mode, data)
    print("RESULT " + json.dumps(res))


def padding_shares(model: str, data: str, years: str, batch: int, max_length: int) -> dict[str, float]:
    """One epoch of batches over `data`, tokenised as training does: padding share, random and grouped."""
    from jmed import models
    from jmed.config import DataFilter, TrainConfig
    from jmed.data import apply_filters, load_questions
    from jmed.train import batch_indices, tokenize

    _, tok, _ = models.load_base(model, precision="fp32")
    filters = DataFilter(years=_years(years))
    qs = [q for q in apply_filters(load_questions(data), filters) if not q.no_prompt]
    examples, _ = tokenize(qs, TrainConfig(model=model, max_length=max_length), tok)
    lengths = [len(e.input_ids) for e in examples]
    out = {"examples": len(examples)}
    for name, group in (("random", None), ("grouped", lengths)):
        idx = batch_indices(len(examples), SEED, len(examples), 0, group)
        real = computed = 0
        for start in range(0, len(idx), batch):
            chunk = [lengths[i] for i in idx[start : start + batch]]
            real, computed = real + sum(chunk), computed + max(chunk) * len(chunk)
        out[name] = 1 - real / computed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, gemma3-270m, a folder or HF id")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default="", help="training data (default: the bundled sample's train split)")
    ap.add_argument("--years", default="", help="with --data: exam years to keep, e.g. 2018,2019,2020,2021")
    ap.add_argument("--no-trl", action="store_true", help="jmed's variants only (trl not installed)")
    ap.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.steps, args.batch_size, args.max_length, args.data)
        return
    from jmed import models

    models.resolve_model(args.model)  # build or convert once, outside the timings
    args.data = str(Path(args.data).resolve()) if args.data else ""  # the workers run in a temp folder
    os.environ["BENCH_YEARS"] = args.years  # the workers' filter, as the padding figure's
    if args.data:
        shares = padding_shares(args.model, args.data, args.years, args.batch_size, args.max_length)
        print(
            f"padding share of one epoch, {shares['examples']} examples of {args.data} {args.years}, batch "
            f"{args.batch_size}: random {shares['random']:.1%}, --group-by-length {shares['grouped']:.1%} "
            f"(computed tokens {1 / (1 - shares['random']) / (1 / (1 - shares['grouped'])):.2f}x fewer)",
            flush=True,
        )
    variants = [v for v in VARIANTS if not (args.no_trl and VARIANTS[v][0] == "trl")]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, __file__, "--worker", v, "--steps", str(args.steps)]
            cmd += ["--batch-size", str(args.batch_size), "--model", args.model, "--max-length", str(args.max_length)]
            out = subprocess.run(cmd + (["--data", args.data] if args.data else []), capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
            res = json.loads(lines[-1][7:])
            results[v].append(res)
            print(
                f"round {r + 1} {v:22s}: {res['tokens_per_s']:8.0f} tokens/s  ({res['tokens']:.0f} tokens in "
                f"{res['seconds']:.2f} s)  final loss {res['final_loss']:.3f}  peak {res['peak_memory_mb']:.0f} MiB"
                + (f"  padding {res['padding_share']:.1%}" if "padding_share" in res else ""),
                flush=True,
            )
    # best of the rounds is the headline (a shared machine only ever slows a run down); median beside it
    best = {k: max(x["tokens_per_s"] for x in v) for k, v in results.items()}
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in results.items()}
    peak = {d: matmul_flops(dtype=d) for d in ("float32", "bfloat16")}
    params = results["jmed fp32"][0]["params"]
    print(
        f"\n{args.model} ({params / 1e6:.1f} M parameters), batch {args.batch_size}, max_length "
        f"{args.max_length}, {args.steps} steps, {args.rounds} alternating rounds; matmul peak "
        f"{peak['float32'] / 1e9:.0f} GFLOP/s float32, {peak['bfloat16'] / 1e9:.0f} bfloat16:"
    )
    for v in variants:
        achieved = 4 * params * best[v]
        top = peak["bfloat16" if VARIANTS[v][1] == "bf16" else "float32"]
        print(
            f"  {v:22s} best {best[v]:7.0f} tokens/s  median {med[v]:7.0f}  {best[v] / best['jmed fp32']:4.2f}x jmed fp32"
            f"  {achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / top:4.1f} % of its matmul peak"
        )
    for prec in ("fp32", "bf16"):
        if f"trl {prec}" in best:
            print(f"  jmed / trl at {prec}: {best[f'jmed {prec}'] / best[f'trl {prec}']:.2f}")
    if "trl bf16 grouped" in best:  # each side's best way to cut padding
        fastest = max(("trl bf16 grouped", "trl bf16 padding-free", "trl bf16 packed"), key=best.get)
        print(f"  jmed bf16 grouped / {fastest} (trl's fastest): {best['jmed bf16 grouped'] / best[fastest]:.2f}")


if __name__ == "__main__":
    main()
