"""The papers' comparison in one command: models × prompt formats × shots × protocols × (untuned, tuned).

`comparison(runs)` turns evaluate runs into one table (a row per cell, untuned and tuned side by side,
with the tuning delta); `study` fills the grid through the pipeline's reusable steps, `compare` reads
existing runs.
"""

from __future__ import annotations

from dataclasses import replace

from jmed import tracking
from jmed.config import TrainConfig
from jmed.identity import evaluation_data
from jmed.prompts import protocol_for

METRICS = ("accuracy", "score", "exact_match", "gestalt")
CELL = ("base_model", "prompt_format", "shots", "protocol", "engine", "eval_data_digest")


def _cell(run) -> tuple:
    p, t = run.data.params, run.data.tags
    return (
        t.get(tracking.BASE_TAG, p.get("model", "")),
        p.get("prompt_format", ""),
        p.get("shots", "0"),
        p.get("protocol", ""),
        p.get("engine", "") or "hf",
        p.get("eval_data_digest", "")[:12],
    )


def comparison(runs) -> list[dict]:
    """One row per evaluation cell: the newest untuned and tuned run's metrics and the deltas."""
    rows: dict[tuple, dict] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):  # newer runs overwrite older ones
        cell = _cell(run)
        tuned = run.data.tags.get(tracking.ADAPTER_RUN_TAG, "none") not in ("", "none")
        row = rows.setdefault(cell, dict(zip(CELL, cell)))
        row["data"] = evaluation_data(run.data.params)  # name, count, selection, digest (jmed.identity)
        side = "tuned" if tuned else "untuned"
        row[f"{side}_run"] = run.info.run_id
        for m in METRICS:
            value = run.data.metrics.get(f"eval/{m}")
            if value is not None:
                row[f"{side}_{m}"] = value
    for row in rows.values():
        for m in METRICS:
            if f"tuned_{m}" in row and f"untuned_{m}" in row:
                row[f"delta_{m}"] = row[f"tuned_{m}"] - row[f"untuned_{m}"]
    return [rows[k] for k in sorted(rows)]


# data: what each row was measured on (name, question count, selection, digest); cells evaluated on
# different data are different rows, and the table says so under it
COLUMNS = ["base_model", "prompt_format", "shots", "protocol", "engine", "data"] + [
    f"{side}_{m}" for m in METRICS for side in ("untuned", "tuned", "delta")
]


def caveat(rows: list[dict]) -> str:
    """A line under a table whose rows were measured on different data ("" when all share one)."""
    datas = sorted({r.get("eval_data_digest", "") for r in rows})
    if len(datas) < 2:
        return ""
    return (
        f"note: these rows were measured on {len(datas)} different evaluation data (column `data`); "
        "compare figures only between rows with the same data\n"
    )


def to_markdown(rows: list[dict]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    note = caveat(rows)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def to_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    fields = COLUMNS + ["eval_data_digest", "untuned_run", "tuned_run"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def chart(rows: list[dict], path) -> None:
    """Grouped bars: untuned vs tuned accuracy per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['base_model']}\n{r['prompt_format']} {r['shots']}-shot {r['protocol']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.get("untuned_accuracy", 0) for r in rows], 0.4, label="untuned")
    ax.bar([x + 0.2 for x in xs], [r.get("tuned_accuracy", 0) for r in rows], 0.4, label="tuned")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_runs(experiment: str = "", base_model: str = "", run_ids=None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exps = None
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no experiment named {experiment!r} in {tracking.shown_uri()}")
        exps = [exp.experiment_id]
    runs = tracking.evaluate_runs(client, exps, tracking.slug(base_model) if base_model else "")
    if run_ids is not None:
        runs = [r for r in runs if r.info.run_id in set(run_ids)]
    return runs


def log_comparison(rows: list[dict]) -> None:
    import tempfile
    from pathlib import Path

    import mlflow

    mlflow.log_text(to_markdown(rows), "comparison/comparison.md")
    mlflow.log_text(to_csv(rows), "comparison/comparison.csv")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "accuracy.png"
        chart(rows, png)
        mlflow.log_artifact(str(png), "comparison")


def study(
    models,
    prompt_formats,
    shots=(0,),
    protocols=(),
    train_overrides: dict | None = None,
    eval_data: str = "",
    force: bool = False,
    eval_settings: dict | None = None,
    preset: str | None = None,
    leakage: str = "",
) -> tuple[str, list[dict]]:
    """Run every model × prompt format × shots × protocol, untuned and tuned. Returns (parent run, table).

    `train_overrides` (+ `preset`): TrainConfig settings of every cell, which sets model and prompt
    format itself; `eval_settings`: EvalConfig overrides (`pipeline.eval_config_for`); `leakage`:
    validate's policy (jmed.leakage)."""
    from jmed import config, pipeline
    from jmed.leakage import DEFAULT_LEAKAGE

    overrides = {k: v for k, v in (train_overrides or {}).items() if k not in ("model", "prompt_format")}
    ledger = pipeline.Ledger(
        total=1 + len(models) * len(prompt_formats) * (1 + 2 * len(shots) * max(1, len(protocols)))
    )
    eval_runs = []
    for model in models:  # every cell's settings are checked before the first one trains
        for fmt in prompt_formats:
            cfg = config.build(TrainConfig, {**overrides, "model": model, "prompt_format": fmt}, preset)
            for n_shots in shots:
                for protocol in protocols or (protocol_for(fmt),):
                    pipeline.eval_config_for(cfg, eval_data, protocol, n_shots, settings=eval_settings)
    name = f"study-{len(models)}x{len(prompt_formats)}"
    with tracking.step_run("study", run_name=name) as parent:
        import mlflow

        mlflow.set_tag("mlflow.runName", name)  # also under `mlflow run`, whose run already has a random name
        tracking.log_params(
            {
                "study.models": ",".join(models),
                "study.prompt_formats": ",".join(prompt_formats),
                "study.shots": ",".join(map(str, shots)),
                "study.protocols": ",".join(protocols),
                "study.eval_data": eval_data,
                "study.leakage": leakage or DEFAULT_LEAKAGE,
            }
            | {
                f"study.train.{k}": v
                for k, v in config.flat(config.build(TrainConfig, overrides, preset=preset)).items()
                if k not in ("model", "prompt_format", "learning_rate")
            }
            | {f"study.eval.{k}": v for k, v in (eval_settings or {}).items()}
        )
        try:
            for model in models:
                for fmt in prompt_formats:
                    cfg = config.build(TrainConfig, {**overrides, "model": model, "prompt_format": fmt}, preset)
                    if not eval_runs and not ledger.steps:
                        pipeline.validate_step(
                            ledger,
                            cfg.train_data,
                            eval_data,
                            force,
                            cfg.filters,
                            pipeline.eval_config_for(cfg, eval_data, "", settings=eval_settings).filters,
                            leakage,
                        )
                    train_run = pipeline.train_step(ledger, cfg, force)
                    for n_shots in shots:
                        for protocol in protocols or (protocol_for(fmt),):
                            base = pipeline.eval_config_for(cfg, eval_data, protocol, n_shots, settings=eval_settings)
                            eval_runs.append(pipeline.evaluate_step(ledger, base, force, "evaluate-base"))
                            eval_runs.append(
                                pipeline.evaluate_step(
                                    ledger,
                                    replace(base, adapter=pipeline.adapter_uri(train_run)),
                                    force,
                                    "evaluate-adapter",
                                )
                            )
        finally:
            ledger.log()
        rows = comparison(evaluate_runs(run_ids=eval_runs))
        log_comparison(rows)
        mlflow.set_tag("mlflow.note.content", describe(models, prompt_formats, shots, eval_data, rows))
        print(to_markdown(rows))
        return parent.info.run_id, rows


def describe(models, prompt_formats, shots, eval_data: str, rows: list[dict]) -> str:
    """The study parent's description in the MLflow UI: the grid, the data, and the best tuned cell."""
    from jmed.console import pct

    tuned = [r for r in rows if r.get("tuned_accuracy") is not None]
    best = max(tuned, key=lambda r: r["tuned_accuracy"], default=None)  # rows: see `comparison`
    return (
        f"Study grid: {len(models)} model(s) ({', '.join(models)}) × {len(prompt_formats)} prompt format(s) "
        f"({', '.join(prompt_formats)}) × shots {', '.join(map(str, shots))}, each untuned and tuned, evaluated "
        f"on `{eval_data or 'the bundled sample test split'}`.\n\n"
        + (
            f"Best tuned cell: {best['base_model']} / {best['prompt_format']} / {best['shots']}-shot, accuracy "
            f"{pct(best['tuned_accuracy'])} (untuned {pct(best.get('untuned_accuracy'))}). "
            if best
            else ""
        )
        + "Table: `comparison/comparison.md`."
    )
