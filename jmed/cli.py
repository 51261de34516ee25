"""The `jmed` command line: a click group; each command builds a config and calls one function.

Heavy modules (torch, peft, mlflow, great_expectations) are imported inside the commands, so
`jmed --help` stays fast.
"""
from __future__ import annotations

import sys

import click

import jmed


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def filter_options(f):
    """The data filters every step accepts (DESIGN.md §3)."""
    opts = [
        click.option("--text-only/--no-text-only", default=None, help="Keep only questions without figures."),
        click.option("--five-choices/--no-five-choices", default=None, help="Keep only 5-choice questions."),
        click.option("--scored-only/--no-scored-only", default=None, help="Drop questions worth 0 points."),
        click.option("--years", default="", help="Comma-separated exam years to keep, e.g. 2018,2019."),
        click.option("--blocks", default="", help="Comma-separated blocks to keep, e.g. B,E."),
        click.option("--ids", default="", help="Comma-separated question ids to keep."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_filter(text_only=None, five_choices=None, scored_only=None, years="", blocks="", ids=""):
    from jmed.config import DataFilter

    return DataFilter(
        text_only=bool(text_only), five_choices=bool(five_choices), scored_only=bool(scored_only),
        years=tuple(int(y) for y in _csv(years)), blocks=_csv(blocks), ids=_csv(ids),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(jmed.__version__, prog_name="jmed")
def main():
    """jmed: adapt open LLMs to Japanese medicine — validate, train, evaluate, promote, serve."""


# ---- validate (issue 2) -------------------------------------------------------------------------

@main.command()
@click.argument("data", nargs=-1)
@click.option("--against", multiple=True, help="Test data to check for leakage against DATA (repeatable).")
@click.option("--report", "report_path", default="", help="Write the JSON report here (and an .html page beside it).")
@click.option("--format", "fmt", default="auto", help="auto | igakuqa | jmle2026 | jjsimqa | jmmlu | instructions.")
@click.option("--threshold", default=90.0, show_default=True, help="Leakage: rapidfuzz ratio (0-100) of near-duplicate stems.")
@click.option("--log/--no-log", default=True, show_default=True, help="Log an MLflow run (jmed.step=validate).")
def validate(data, against, report_path, fmt, threshold, log):
    """Validate question/instruction data: formats, GX suites, answer checks, train/test leakage.

    DATA: files, folders or a whole IgakuQA data/ tree (comma-separated lists work too). None given:
    the bundled sample's train split, checked against its test split. Exit 1 when there is any error.
    """
    from jmed import data as jdata

    def paths(values):
        return [p.strip() for v in values for p in str(v).split(",") if p.strip()]

    data_paths, against_paths = paths(data), paths(against)
    if not data_paths:
        data_paths = [str(jdata.SAMPLE_TRAIN)]
        against_paths = against_paths or [str(jdata.SAMPLE_TEST)]
    fmt = fmt.strip() or "auto"
    if fmt not in ("auto", *jdata.FORMATS):
        raise click.BadParameter(f"choose auto or one of: {', '.join(jdata.FORMATS)}", param_hint="--format")
    from jmed.checks import log_report, validate as run_validation

    report = run_validation(data_paths, against_paths, fmt=fmt, threshold=threshold)
    if report_path:
        json_path, html_path = report.write(report_path)
    summary = report.summary()
    click.echo(summary)
    if report_path:
        click.echo(f"report: {json_path} and {html_path}")
    if log:
        from jmed import tracking

        # a failed validation ends the run FAILED (step_run), with the summary as its description
        with tracking.step_run("validate", run_name="validate") as run:
            log_report(report, fmt)
            click.echo(f"mlflow run: {run.info.run_id} ({tracking.tracking_uri()})")
            if not report.success:
                raise click.exceptions.Exit(1)
    if not report.success:
        sys.exit(1)


# ---- score (issue 4) ----------------------------------------------------------------------------


@main.command("score")
@click.option("--data", default="", help="Question data (file, folder or IgakuQA data/ tree).")
@click.option("--predictions", default="", help="Predictions JSONL file, or a folder of *.jsonl.")
@click.option("--protocol", default="", help="letter (reads `prediction`, default) | text (reads `response`).")
@click.option("--parsing", default="", help="Letter answers: official (IgakuQA reference, default) | lenient.")
@click.option("--format", "data_format", default="auto", help="Data format (auto-detected by default).")
@click.option("--name", default="", help="A name for the scored system (run name with --log).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--log", "log_run", is_flag=True, help="Log an MLflow run (tag jmed.step=score).")
@filter_options
def score_cmd(data, predictions, protocol, parsing, data_format, name, as_json, log_run, **filter_kw):
    """Score predictions made elsewhere against question data (every question of the data counts)."""
    import json as _json

    from jmed.data import DataLoadError
    from jmed.score import ScoreError, format_summary, log_score, score

    if not data:
        raise click.UsageError("--data is required")
    if not predictions:
        raise click.UsageError("--predictions is required")
    filters = build_filter(**filter_kw) if any(v not in (None, "") for v in filter_kw.values()) else None
    try:
        summary, questions, rows = score(data, predictions, protocol or "letter", parsing or "official",
                                         filters=filters, data_format=data_format or "auto", name=name)
    except (ScoreError, DataLoadError, FileNotFoundError) as e:
        raise click.ClickException(str(e))
    if log_run:
        summary["run_id"] = log_score(summary, questions, rows)
    if as_json:
        click.echo(_json.dumps(summary, ensure_ascii=False))
    else:
        click.echo(format_summary(summary))
        if log_run:
            click.echo(f"logged run {summary['run_id']}")

# ---- train (issue 3) ----------------------------------------------------------------------------

# ---- evaluate (issue 4) -------------------------------------------------------------------------


@main.command("evaluate")
@click.option("--model", default="", help="Base model: tiny, an HF id or a local folder (default: the adapter's, else tiny).")
@click.option("--adapter", default="", help="Train run id, runs:/<id>/adapter, models:/<name>/<version|@alias>, or a folder.")
@click.option("--eval-data", default="", help="Questions to evaluate (default: the bundled sample's test split).")
@click.option("--data-format", default="", help="Data format (default: auto-detected).")
@filter_options
@click.option("--protocol", default="", help="letter | text | loglik (default: the prompt format's own).")
@click.option("--prompt-format", default="", help="Prompt format (default: the adapter's, else igakuqa).")
@click.option("--shots", default="", help="0 or 1 solved examples before each question (default: the adapter's, else 0).")
@click.option("--parsing", default="", help="official | lenient answer parsing (default: lenient).")
@click.option("--limit", default="", help="Evaluate only the first N questions (0 = all).")
@click.option("--batch-size", default="", help="Questions per batch (default: 8).")
@click.option("--max-new-tokens", default="", help="Generation length (letter/text protocols; default: 16).")
@click.option("--precision", default="", help="auto | fp32 | bf16 | fp16.")
@click.option("--quantization", default="", help="none | 8bit | 4bit.")
@click.option("--seed", default="", help="Random seed (default: 42).")
@click.option("--compare-base", default="", help="true | false: also record the delta against the base model (default: true).")
def evaluate_cmd(model, adapter, eval_data, data_format, protocol, prompt_format, shots, parsing, limit, batch_size,
                 max_new_tokens, precision, quantization, seed, compare_base, **filters):
    """Evaluate a base model or an adapter on exam questions; logs one MLflow run (tag jmed.step=evaluate)."""
    from jmed.config import EvalConfig, build
    from jmed.evaluate import evaluate

    def num(name, value, kind=int):
        try:
            return kind(value) if value != "" else None
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint=f"--{name}") from None

    def flag(name, value):
        if value == "":
            return None
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise click.BadParameter(f"{value!r}: expected true or false", param_hint=f"--{name}")

    overrides = {
        "model": model or ("" if adapter else None), "adapter": adapter or None, "eval_data": eval_data or None,
        "data_format": data_format or None, "protocol": protocol or None, "prompt_format": prompt_format or None,
        "shots": num("shots", shots) if shots != "" else -1, "parsing": parsing or None,
        "limit": num("limit", limit), "batch_size": num("batch-size", batch_size),
        "max_new_tokens": num("max-new-tokens", max_new_tokens), "precision": precision or None,
        "quantization": quantization or None, "seed": num("seed", seed),
        "compare_base": flag("compare-base", compare_base), "filters": build_filter(**filters),
    }
    try:
        run_id = evaluate(build(EvalConfig, overrides))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"evaluate run: {run_id}")


# ---- promote / serve / predict (issue 5) --------------------------------------------------------

# ---- pipeline / study / compare / reproduce (issue 6) -------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
