"""What a training run reports: its setup (config, LoRA, versions, digests, datasets), metrics flushed in
batches, system metrics, the loss curve, and the run's description and summary line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import jmed
from jmed.config import flat

if TYPE_CHECKING:
    from jmed.train import Setup

log = logging.getLogger("jmed.train")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"jmed_version": jmed.__version__}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "mlflow"):
        try:
            out[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            out[f"{pkg}_version"] = ""
    from jmed.tracking import git_commit

    out["git_commit"] = git_commit()
    return out


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def log_setup(s: Setup) -> None:
    """Rank 0: every resolved setting, digest and version as params; the datasets; data metrics."""
    from jmed import data
    from jmed.tracking import log_dataset, log_params

    cfg, counts, info = s.cfg, s.counts, s.info
    train_digest = data.digest(s.items)
    log_params(
        {
            **flat(cfg),
            "train_data_path": s.train_path,
            "train_data_digest": train_digest,
            "train_items": len(s.items),
            "train_examples": counts["examples"],
            "overlength_examples": counts["overlength_examples"],
            "dropped_examples": counts["dropped_examples"],
            "eval_data_digest": data.digest(s.eval_items) if s.eval_items else "",
            "base_model": cfg.model,
            "base_revision": info["revision"],
            "base_architecture": info["architecture"],
            "tokenizer_hash": info["tokenizer_hash"],
            "lora_targets": ",".join(s.targets) if isinstance(s.targets, list) else s.targets,
            "trainable_params": info["trainable"],
            "total_params": info["total"],
            "resolved_max_steps": s.max_steps,
            "world_size": s.world,
            "distributed_type": info["distributed_type"],
            "sharded": info["sharded"],
            "fsdp_units": info["fsdp_units"],
            "rank0_params": info["rank0_params"],
            "device": s.device,
            "dtype": info["dtype"],
            "precision_resolved": info["precision_resolved"],
            "precision_reason": info["precision_reason"],
            "cpu_bf16_units": info["cpu_bf16_units"],
            **versions(),
        }
    )
    log_dataset(s.items, "train", s.train_path, train_digest, "training")
    if s.eval_items:
        log_dataset(s.eval_items, "eval", s.eval_path, data.digest(s.eval_items), "evaluation")
    s.mlflow.log_metrics(
        {
            f"data/{k}": counts[k]
            for k in ("overlength_examples", "dropped_examples", "overlength_median_tokens", "overlength_max_tokens")
        },
        step=0,
    )
    if counts["overlength_examples"]:
        log.warning(
            "%d of %d example(s) longer than max_length=%d, by %d tokens (median), %d (max): "
            'policy %s, %d dropped; see README "Choosing max_length"',
            counts["overlength_examples"],
            len(s.items),
            cfg.max_length,
            counts["overlength_median_tokens"],
            counts["overlength_max_tokens"],
            cfg.overlength,
            counts["dropped_examples"],
        )


def description(s: Setup, run_id: str, stopped: bool) -> str:
    """The run's description in the MLflow UI: what was trained, on what data, and how it ended."""
    cfg, last = s.cfg, (s.losses[-1][1] if s.losses else None)
    method = "4-bit QLoRA" if cfg.quantization == "4bit" else "LoRA"
    return (
        f"{method} (r {cfg.lora_r}, alpha {cfg.lora_alpha}) of `{cfg.model}`, prompt format `{cfg.prompt_format}`, "
        f"on `{s.train_path}` ({len(s.items)} items, {len(s.examples)} examples) for {s.step} of {s.max_steps} "
        f"steps; final loss {'n/a' if last is None else f'{last:.4f}'}"
        + ("" if s.eval_loss is None else f", eval loss {s.eval_loss:.4f}")
        + ".\n\n"
        + (
            "Stopped early: no adapter; resume with `--resume-from`."
            if stopped
            else f"Adapter: `runs:/{run_id}/adapter` (evaluate it with `jmed evaluate --adapter {run_id}`)."
        )
    )


def summary(s: Setup, run_id: str, stopped: bool) -> str:
    """What the terminal shows when training ends: final loss and throughput, and what was left out."""
    from jmed import data
    from jmed.console import block
    from jmed.identity import data_label, data_name

    last = [loss for _, loss in s.losses[-10:]]
    dropped = s.counts.get("dropped_examples", 0)
    return block(
        f"train {s.cfg.model} ({s.cfg.prompt_format}): {'stopped at' if stopped else 'finished'} "
        f"step {s.step} of {s.max_steps}",
        [
            (
                "final loss",
                f"{last[-1]:.4f} (mean of the last {len(last)} steps {sum(last) / len(last):.4f})" if last else None,
            ),
            ("eval loss", None if s.eval_loss is None else f"{s.eval_loss:.4f} on {len(s.eval_examples)} examples"),
            (
                "padding",
                f"{1 - s.real / s.computed:.1%} of computed tokens"
                + ("" if s.cfg.group_by_length else " (--group-by-length batches similar lengths)")
                if s.computed
                else None,
            ),
            ("precision", f"{s.info['precision_resolved']} ({s.info['precision_reason']})"),
            (
                "tokens/s",
                f"{s.tokens / s.seconds:,.0f} ({s.tokens:,.0f} tokens in {s.seconds:.1f} s)" if s.seconds else None,
            ),
            (
                "examples",
                f"{len(s.examples)} from {len(s.items)} items"
                + (
                    f"; {dropped} left out: longer than max_length={s.cfg.max_length} (--overlength drop)"
                    if dropped
                    else ""
                ),
            ),
            ("data", data_label(data_name(s.train_path), len(s.items), None, data.digest(s.items), what="records")),
            (
                "adapter",
                "not written (stopped early; resume with --resume-from)" if stopped else f"runs:/{run_id}/adapter",
            ),
            ("run", run_id),
        ],
    )


def _flush(mlflow, run_id: str, pending: list, final: bool = False) -> None:
    """Send the pending step metrics, oldest first, removing what was sent. A tracking server that stays
    unreachable after MLflow's own retries keeps the rest pending for the next flush (training goes
    on, nothing is lost); only the `final` flush raises."""
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    while pending:
        chunk = pending[:100]  # at most 100 steps x 6 metrics: under MLflow's 1000 per batch
        try:
            client.log_batch(
                run_id, metrics=[Metric(k, float(v), int(ts * 1000), s) for s, ts, d in chunk for k, v in d.items()]
            )
        except Exception as exc:  # noqa: BLE001 - the server is away: keep the metrics, say so
            if final:
                raise
            log.warning(
                "tracking server unreachable (%s); %d step(s) of metrics kept for the next flush",
                str(exc)[:200],
                len(pending),
            )
            return
        del pending[: len(chunk)]


def _system_metrics(run_id: str):
    """MLflow system metrics (CPU, memory, GPU) for the run, where psutil is available."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1)
        monitor.start()
        return monitor
    except Exception as exc:  # optional: psutil missing, unsupported platform
        log.info("system metrics unavailable: %s", exc)
        return None


def _loss_curve(losses: list, folder: Path, mlflow) -> None:
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (answer tokens)")
    ax.set_title("jmed train")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "loss_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    mlflow.log_artifact(str(path), "plots")
