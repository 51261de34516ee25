"""Training tokens/s of `jmed train` against trl's SFTTrainer + peft on the same model, data and settings.

Both train the built-in tiny model with the same LoRA (r 8, alpha 16, dropout 0.05 on q/k/v/o), the same
rendered igakuqa prompt/completion pairs of the bundled train split (loss on the completion only), the same
batch size, steps, learning rate, cosine schedule and clipping, fp32 on CPU (bf16 autocast on CUDA for
jmed, bf16 for trl). Each side runs in its own fresh process, alternately (jmed, trl, jmed, trl, ...), so
imports and memory do not leak between them.

tokens/s = non-padding tokens of steps 2..N / wall time from the end of step 1 to the end of step N
(the first step's warm-up is excluded on both sides). jmed's side is a real `jmed.train.train` run
with MLflow logging into a temp store; its per-step token counts and timestamps are read back from
the run. trl's side counts the tokens its collator hands out and stamps `on_step_end`.
The headline is the best round of each (a shared machine only slows runs down), the median beside it.
Peak memory: the process's peak RSS (CPU) or torch.cuda.max_memory_allocated (CUDA), in MiB.
Efficiency (real models): achieved FLOP/s = 4 x parameters x tokens/s (LoRA: forward 2, backward
through the frozen weights 2; no weight gradients) against this machine's float32 matmul FLOP/s,
measured in the same run (torch.mm of 2048x2048 on all threads).

    .venv/bin/python benchmarks/train_throughput.py [--model tiny|smollm2-135m] [--steps 40]
        [--batch-size 8] [--max-length 512] [--rounds 2]

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


def matmul_flops(n: int = 2048, seconds: float = 3.0) -> float:
    """float32 matmul FLOP/s of this machine (best of repeated n x n products)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
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


def run_jmed(model: str, steps: int, batch: int, max_length: int) -> dict:
    import mlflow

    from jmed.config import TrainConfig
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
            )
        )
        client = mlflow.MlflowClient()
        params = int(client.get_run(run_id).data.params["total_params"])
        tokens = {m.step: (m.value, m.timestamp) for m in client.get_metric_history(run_id, "train/tokens")}
        loss = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
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
    }


def run_trl(model: str, steps: int, batch: int, max_length: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from jmed import data, models
    from jmed.prompts import render

    net, tok, _ = models.load_base(model)
    params = sum(p.numel() for p in net.parameters())
    rows = [render(q, "igakuqa", (), tok) for q in data.load_questions(data.SAMPLE_TRAIN)]
    ds = Dataset.from_list([{"prompt": r.prompt, "completion": r.target} for r in rows])
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
            bf16=cuda,
            gradient_checkpointing=False,
            completion_only_loss=True,
            max_length=max_length,
            packing=False,
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


def worker(impl: str, model: str, steps: int, batch: int, max_length: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    fn = run_jmed if impl == "jmed" else run_trl
    res = fn(model, steps, batch, max_length)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, gemma3-270m, a folder or HF id")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", choices=["jmed", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.steps, args.batch_size, args.max_length)
        return
    from jmed import models

    models.resolve_model(args.model)  # build or convert once, outside the timings
    results: dict[str, list[dict]] = {"jmed": [], "trl": []}
    for r in range(args.rounds):
        for impl in ("jmed", "trl"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    impl,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--model",
                    args.model,
                    "--max-length",
                    str(args.max_length),
                ],
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"{impl} failed:\n{out.stderr[-3000:]}")
            res = json.loads(lines[-1][7:])
            results[impl].append(res)
            print(
                f"round {r + 1} {impl:4s}: {res['tokens_per_s']:9.0f} tokens/s  ({res['tokens']:.0f} tokens in "
                f"{res['seconds']:.2f} s)  final loss {res['final_loss']:.3f}  peak {res['peak_memory_mb']:.0f} MiB",
                flush=True,
            )
    # best of the rounds is the headline (a shared machine only ever slows a run down); median beside it
    best = {k: max(x["tokens_per_s"] for x in v) for k, v in results.items()}
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in results.items()}
    mem = {k: max(x["peak_memory_mb"] for x in v) for k, v in results.items()}
    peak = matmul_flops()
    params = results["jmed"][0]["params"]
    print(
        f"\n{args.model} ({params / 1e6:.1f} M parameters), batch {args.batch_size}, max_length "
        f"{args.max_length}, {args.steps} steps, {args.rounds} alternating rounds; float32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s:"
    )
    for k, name in (("jmed", "jmed train    "), ("trl", "trl SFTTrainer")):
        achieved = 4 * params * best[k]
        print(
            f"  {name}  best {best[k]:7.0f} tokens/s  median {med[k]:7.0f}  peak memory {mem[k]:.0f} MiB  "
            f"{achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / peak:4.1f} % of matmul peak"
        )
    print(f"  ratio jmed / trl: best {best['jmed'] / best['trl']:.2f}, median {med['jmed'] / med['trl']:.2f}")


if __name__ == "__main__":
    main()
