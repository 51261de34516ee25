"""The `jmed` command line: a click group; each command builds a config and calls one function.

Heavy modules (torch, peft, mlflow, great_expectations) are imported inside the commands, so
`jmed --help` stays fast.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

import jmed
from jmed import readers
from jmed.batcher import DEFAULT_MAX_ROWS, DEFAULT_WAIT_S
from jmed.config import EXAM_KINDS, EXTRACTIONS, MAX_BATCH_TOKENS, PRECISIONS, PROTOCOLS
from jmed.config import FALSE_WORDS as FALSE
from jmed.config import TRUE_WORDS as TRUE
from jmed.contract import DEFAULT_POLL_S, MAX_NEW_TOKENS_LIMIT
from jmed.server import REQUEST_TIMEOUT_S


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _stack(f, options):
    """Apply click options in the order listed (decorators apply bottom-up)."""
    for opt in reversed(options):
        f = opt(f)
    return f


def writable_file(path: str, option: str) -> None:
    """An output file is checked before the work that fills it: its folder is made, and must take a file."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create the folder {folder}: {exc.strerror or exc}", param_hint=option)
    existed = Path(path).exists()
    try:  # the only sure test is to open it (root passes os.access on read-only file systems)
        open(path, "a").close()
        if not existed:
            os.unlink(path)
    except OSError as exc:
        raise click.BadParameter(f"{path} cannot be written: {exc.strerror or exc}", param_hint=option)


def config_options(cls, names=None, exclude=(), rename=None) -> list:
    """click options generated from a config's fields (jmed.config): `--lora-r` for `lora_r`, with the
    field's help and default. Every value is a string and "" means "not given", so an unset option never
    overrides a preset or the adapter's own setting, and `mlflow run` parameters left empty stay unset.
    Returns (field name, option) pairs in field order; `rename` maps a field to another option name."""
    from dataclasses import fields

    from jmed.config import help_text

    rename = rename or {}
    out = []
    for fld in fields(cls):
        if (names is not None and fld.name not in names) or fld.name in exclude:
            continue
        if fld.name == "filters":
            out.append((fld.name, filter_options))
            continue
        flag = "--" + rename.get(fld.name, fld.name).replace("_", "-")
        out.append((fld.name, click.option(flag, default="", help=help_text(fld))))
    return out


def _filter_option(fld, prefix: str = ""):
    from jmed.config import help_text

    name = prefix + fld.name.replace("_", "-")
    if fld.type in (bool, "bool"):  # a flag pair; None = not given
        return click.option(f"--{name}/--no-{name}", default=None, help=help_text(fld))
    return click.option(f"--{name}", default="", help=help_text(fld))


def filter_options(f):
    """The data filters every step accepts, from jmed.config.DataFilter."""
    from dataclasses import fields

    from jmed.config import DataFilter

    return _stack(f, [_filter_option(fld) for fld in fields(DataFilter)])


def build_filter(**given):
    """A DataFilter from filter option values (flags None, lists "" when not given)."""
    from jmed.config import DataFilter, build

    return build(DataFilter, {k: v for k, v in given.items() if v is not None})


def strict_json(value) -> str:
    """Valid JSON always: NaN and ±Infinity (which json.dumps writes bare) become null."""
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), ensure_ascii=False, allow_nan=False, default=str)


class Number(click.ParamType):
    """A number as people write one (jmed.config's forms: ASCII digits, no "1_0", nan or inf) in [lo, hi]."""

    def __init__(self, typ: type, lo: float | None = None, hi: float | None = None):
        self.typ, self.lo, self.hi = typ, lo, hi
        self.name = "integer" if typ is int else "number"

    def convert(self, value, param, ctx):
        from jmed.config import _coerce

        if not isinstance(value, (int, float)) or isinstance(value, bool):
            try:
                value = _coerce(str(value), self.typ)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            bounds = f"from {self.lo} to {self.hi}" if self.hi is not None else f"at least {self.lo}"
            self.fail(f"{value} is not {bounds}", param, ctx)
        return value


def _leakage_option():
    from jmed.leakage import DEFAULT_LEAKAGE, LEAKAGE_POLICIES

    return click.option(
        "--leakage",
        default=DEFAULT_LEAKAGE,
        show_default=True,
        type=click.Choice(LEAKAGE_POLICIES),
        help="Near-duplicates between training and test data: warn (list them, go on) or fail (errors: "
        "validation fails, a pipeline stops before training).",
    )


leakage_option = _leakage_option()

dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Print the resolved configuration as JSON and exit (nothing runs or is logged)."
)


def echo_config(**configs) -> None:
    """`--dry-run`: the resolved configs (defaults < preset < options), as the run would log them."""
    from jmed.config import flat

    click.echo(strict_json({k: flat(v) if not isinstance(v, dict) else v for k, v in configs.items()}))
    from jmed.tracking import mark_launcher_run

    if marked := mark_launcher_run():  # nothing ran; the run `mlflow run` opened goes at the next jmed step
        click.echo(
            f"[jmed] dry run: run {marked}, opened by mlflow run, is marked; the next jmed command deletes it", err=True
        )


# The evaluation settings of `pipeline` and `study` (EvalConfig fields; the evaluation's own question
# selection is --eval-years/--eval-blocks/--eval-ids, since --years etc. select training questions).
EVAL_SETTINGS = ("limit", "sample", "max_new_tokens", "batch_size", "engine", "engine_url")
EVAL_RENAME = {"batch_size": "eval_batch_size"}
EVAL_FILTERS = ("years", "blocks", "ids")


def eval_options(f):
    """Evaluation settings of `pipeline` and `study`. text-only / five-choices / scored-only (the train
    options) apply to the evaluation data too."""
    from dataclasses import fields

    from jmed.config import DataFilter, EvalConfig

    opts = [_filter_option(fld, "eval-") for fld in fields(DataFilter) if fld.name in EVAL_FILTERS]
    opts += [opt for _, opt in config_options(EvalConfig, names=EVAL_SETTINGS, rename=EVAL_RENAME)]
    return _stack(f, opts)


def eval_settings(options: dict) -> dict:
    """Pop the eval options out of a command's options: EvalConfig overrides ("" = not given)."""
    out = {name: options.pop(EVAL_RENAME.get(name, name)) for name in EVAL_SETTINGS}
    out |= {name: options.pop(f"eval_{name}") for name in EVAL_FILTERS}
    return {k: v for k, v in out.items() if v not in ("", ())}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(jmed.__version__, prog_name="jmed")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Show third-party warnings, MLflow's info lines and progress bars (also JMED_VERBOSE=1).",
)
def main(verbose):
    """jmed: adapt open LLMs to Japanese medicine — validate, train, evaluate, promote, serve."""
    from jmed.console import quiet

    quiet(verbose)  # before any command imports mlflow, which reads its log level once


# ---- validate -----------------------------------------------------------------------------------


@main.command()
@click.argument("data", nargs=-1)
@click.option("--data", "data_opt", multiple=True, help="Same as DATA (for `mlflow run . -e validate -P data=…`).")
@click.option("--against", multiple=True, help="Test data to check for leakage against DATA (repeatable).")
@click.option("--report", "report_path", default="", help="Write the JSON report here (and an .html page beside it).")
@click.option("--format", "fmt", default="auto", help=f"auto | {' | '.join(readers.names())} (jmed/readers/).")
@click.option(
    "--threshold",
    default=90.0,
    show_default=True,
    type=Number(float, 0, 100),
    help="Leakage: rapidfuzz ratio (0-100) of near-duplicate stems.",
)
@leakage_option
@click.option("--log/--no-log", default=True, show_default=True, help="Log an MLflow run (jmed.step=validate).")
@dry_run_option
def validate(data, data_opt, against, report_path, fmt, threshold, leakage, log, dry_run):
    """Validate question/instruction data: formats, GX suites, answer checks, train/test leakage.

    DATA: files, folders or a whole IgakuQA data/ tree (comma-separated lists work too). None given:
    the bundled sample's train split, checked against its test split. Exit 1 when there is any error.
    """
    from jmed import data as jdata

    def paths(values):
        return [p.strip() for v in values for p in str(v).split(",") if p.strip()]

    data_paths, against_paths = paths(data + data_opt), paths(against)
    if not data_paths:
        data_paths = [str(jdata.SAMPLE_TRAIN)]
        against_paths = against_paths or [str(jdata.SAMPLE_TEST)]
    fmt = fmt.strip() or "auto"
    if report_path and Path(report_path).is_dir():
        raise click.BadParameter(
            f"{report_path} is a folder; name the report file (e.g. {Path(report_path) / 'report.json'})",
            param_hint="--report",
        )
    if report_path:
        writable_file(report_path, "--report")
    if fmt not in ("auto", *jdata.FORMATS):
        raise click.BadParameter(f"choose auto or one of: {', '.join(jdata.FORMATS)}", param_hint="--format")
    if dry_run:
        return echo_config(
            validate={
                "data": data_paths,
                "against": against_paths,
                "report": report_path,
                "format": fmt,
                "threshold": threshold,
                "leakage": leakage,
                "log": log,
            }
        )
    from jmed.checks import log_report
    from jmed.checks import validate as run_validation

    report = run_validation(data_paths, against_paths, fmt=fmt, threshold=threshold, leakage=leakage)
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
            click.echo(f"mlflow run: {run.info.run_id} ({tracking.shown_uri()})")
            if not report.success:
                raise click.exceptions.Exit(1)
    if not report.success:
        sys.exit(1)


# ---- score --------------------------------------------------------------------------------------


@main.command("score")
@click.option("--data", default="", help="Question data (file, folder or IgakuQA data/ tree).")
@click.option("--predictions", default="", help="Predictions JSONL file, or a folder of *.jsonl.")
@click.option(
    "--protocol",
    default="letter",
    show_default=True,
    type=click.Choice(("letter", "text")),
    help="letter reads `prediction`; text reads `response`.",
)
@click.option(
    "--parsing",
    default="official",
    show_default=True,
    type=click.Choice(("official", "lenient")),
    help="Letter answers: official (IgakuQA's reference) or lenient.",
)
@click.option(
    "--extraction",
    default="last-block",
    show_default=True,
    type=click.Choice(EXTRACTIONS),
    help="Text protocol: how the authors' harness reads the answer out of `response`: last-block (as "
    "published, June 2024) or first-line (from July 2024).",
)
@click.option(
    "--format",
    "data_format",
    default="auto",
    help=f"Data format: auto (detected) | {' | '.join(readers.names())} (jmed/readers/).",
)
@click.option(
    "--exam-kind",
    default="",
    type=click.Choice(("",) + EXAM_KINDS),
    help="The exam (jmed/exams/; default: the reader's, IgakuQA is medical): corrections, years and "
    "pass rules follow it.",
)
@click.option("--name", default="", help="A name for the scored system (run name with --log).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--log", "log_run", is_flag=True, help="Log an MLflow run (tag jmed.step=score).")
@filter_options
@dry_run_option
def score_cmd(
    data,
    predictions,
    protocol,
    parsing,
    extraction,
    data_format,
    exam_kind,
    name,
    as_json,
    log_run,
    dry_run,
    **filter_kw,
):
    """Score predictions made elsewhere against question data (every question of the data counts)."""
    from jmed.score import format_summary, log_score, score

    if not data:
        raise click.UsageError("--data is required")
    if not predictions:
        raise click.UsageError("--predictions is required")
    try:
        filters = build_filter(**filter_kw) if any(v not in (None, "") for v in filter_kw.values()) else None
    except ValueError as e:
        raise click.UsageError(str(e))
    if dry_run:
        return echo_config(
            score={
                "data": data,
                "predictions": predictions,
                "protocol": protocol or "letter",
                "parsing": parsing or "official",
                "extraction": extraction,
                "exam_kind": exam_kind,
                "format": data_format or "auto",
                "name": name,
                "json": as_json,
                "log": log_run,
            },
            filters=filters if filters is not None else {},
        )
    try:
        summary, questions, rows = score(
            data,
            predictions,
            protocol or "letter",
            parsing or "official",
            filters=filters,
            data_format=data_format or "auto",
            name=name,
            extraction=extraction,
            exam_kind=exam_kind,
        )
    except (ValueError, FileNotFoundError) as e:  # ScoreError and DataLoadError are ValueErrors
        raise click.ClickException(str(e))
    if log_run:
        summary["run_id"] = log_score(summary, questions, rows)
    if as_json:
        click.echo(strict_json(summary))
    else:
        click.echo(format_summary(summary))
        if log_run:
            click.echo(f"logged run {summary['run_id']}")


# ---- train --------------------------------------------------------------------------------------


def train_options(f=None, exclude: tuple[str, ...] = ()):
    """Decorate a command with every TrainConfig option (minus `exclude`: study sets model and format
    per cell). Shared by `train`, `pipeline` and `study`."""
    from jmed.config import TrainConfig

    if f is None:
        return lambda g: train_options(g, exclude)
    return _stack(f, [opt for _, opt in config_options(TrainConfig, exclude=exclude)])


FILTER_FIELDS = ("text_only", "five_choices", "scored_only", "years", "blocks", "ids", "exclude_ids")


def config_overrides(options: dict) -> dict:
    """Config overrides from CLI values: the filter options become one `filters` entry when any is given."""
    given = {k: options.pop(k) for k in FILTER_FIELDS if k in options}
    overrides = dict(options)
    if any(v not in (None, "") for v in given.values()):
        overrides["filters"] = build_filter(**given)
    return overrides


def train_config(**options):
    """TrainConfig from CLI strings: defaults < preset < explicit options."""
    from jmed.config import TrainConfig, build

    overrides = config_overrides(options)
    return build(TrainConfig, overrides, preset=overrides.pop("preset", None))


@main.command("train")
@train_options
@dry_run_option
def train_cmd(dry_run, **options):
    """LoRA / QLoRA-tune a base model; logs one MLflow run (tag jmed.step=train) with adapter/."""
    try:
        cfg = train_config(**options)
        if dry_run:
            return echo_config(train=cfg)
        from jmed.train import train

        run_id = train(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"train run: {run_id}")


# ---- evaluate -----------------------------------------------------------------------------------


def evaluate_options(f):
    from jmed.config import EvalConfig

    return _stack(f, [opt for _, opt in config_options(EvalConfig)])


@main.command("evaluate")
@evaluate_options
@dry_run_option
def evaluate_cmd(dry_run, **options):
    """Evaluate a base model or an adapter on exam questions; logs one MLflow run (tag jmed.step=evaluate)."""
    from jmed.config import EvalConfig, build

    try:
        cfg = build(EvalConfig, config_overrides(options))
        if dry_run:
            return echo_config(evaluate=cfg)
        from jmed.evaluate import evaluate

        run_id = evaluate(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"evaluate run: {run_id}")


# ---- promote / serve / predict ------------------------------------------------------------------


@main.command()
@click.option("--base-model", default="", help="Base model (HF id, folder or tiny); default: every base model.")
@click.option("--metric", default="eval/accuracy", show_default=True, help="Metric that ranks adapters.")
@click.option(
    "--min-delta", default="0", show_default=True, help="Move champion only when the best beats it by more than this."
)
@click.option(
    "--bundle-base/--no-bundle-base",
    default=None,
    help="Copy the base model into the served model (default: only for tiny and local bases).",
)
@click.option(
    "--evaluation",
    default="",
    help="Rank on this evaluation from now on: an evaluate run id, or data (evaluated with the champion's "
    "settings). The champion is evaluated there first unless it already was.",
)
@dry_run_option
def promote(base_model, metric, min_delta, bundle_base, evaluation, dry_run):
    """Register the best evaluated adapter per base model and move the `champion` alias to it.

    Versions are compared on one evaluation (data digest, protocol, prompt format, shots): the one the
    first promotion declared, or the one chosen with --evaluation."""
    from jmed.registry import promote as run_promote

    try:
        delta = float(min_delta or 0)
    except ValueError:
        raise click.BadParameter(f"{min_delta!r} is not a number", param_hint="--min-delta")
    if dry_run:
        return echo_config(
            promote={
                "base_model": base_model,
                "metric": metric or "eval/accuracy",
                "min_delta": delta,
                "bundle_base": bundle_base,
                "evaluation": evaluation,
            }
        )
    try:
        run_promote(
            base_model=base_model or "",
            metric=metric or "eval/accuracy",
            min_delta=delta,
            bundle_base=bundle_base,
            evaluation=evaluation.strip(),
        )
    except ValueError as exc:  # data errors (jmed.data.DataLoadError) included
        raise click.ClickException(str(exc)) from exc


def bind_check(host: str, port: int) -> None:
    """A usage error now if the server could not listen on host:port (in use, not this machine's, no right)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise click.BadParameter(f"{host!r}: {exc.strerror or exc}", param_hint="--host")
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="--port")


@main.command()
@click.option("--base-model", default="", help="Serve the champion of this base model (default: the only one).")
@click.option("--model-uri", default="", help="Serve this model instead (models:/…, runs:/…).")
@click.option("--port", default=5000, show_default=True, type=Number(int, 1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=Number(int, 1),
    help="Processes, each with its own copy of the model (batching works within each).",
)
@click.option(
    "--timeout",
    default=REQUEST_TIMEOUT_S,
    show_default=True,
    type=Number(int, 1),
    help="Seconds per request (longer than --batch-wait-ms).",
)
@click.option(
    "--poll-seconds",
    default=DEFAULT_POLL_S,
    show_default=True,
    type=Number(float, 0),
    help="Served from models:/…@alias: check the alias this often and follow it (0: never).",
)
@click.option(
    "--max-batch-rows",
    default=DEFAULT_MAX_ROWS,
    show_default=True,
    type=Number(int, 1),
    help="Questions answered together from concurrent requests.",
)
@click.option(
    "--batch-wait-ms",
    default=DEFAULT_WAIT_S * 1000,
    show_default=True,
    type=Number(float, 0),
    help="How long a batch waits for more requests when the server is idle.",
)
@click.option(
    "--batch-tokens",
    default=MAX_BATCH_TOKENS,
    show_default=True,
    type=Number(int, 1),
    help="Padded prompt tokens one engine batch holds at most (bounds memory: a long prompt runs with few others).",
)
@click.option(
    "--engine",
    default="hf",
    show_default=True,
    type=click.Choice(["hf", "vllm"]),
    help="hf: the exam endpoint (POST /invocations, MLflow's scoring app). vllm: vLLM's OpenAI API "
    "(/v1/completions, /v1/chat/completions, /v1/models), every registered version a LoRA on one base.",
)
@click.option(
    "--precision",
    default="",
    type=click.Choice(["", *PRECISIONS]),
    help="hf engine: the base model's precision (default: the served version's own, as it was trained).",
)
def serve(
    base_model,
    model_uri,
    port,
    host,
    workers,
    timeout,
    poll_seconds,
    max_batch_rows,
    batch_wait_ms,
    batch_tokens,
    engine,
    precision,
):
    """Serve the champion (POST /invocations) with MLflow's scoring app, as `mlflow models serve` does,
    behind jmed's front: a request without Content-Type, nested too deeply or with unknown params gets
    415/400 instead of MLflow's 500 or silence.

    Concurrent requests are batched; a `models:/…@alias` is followed when it moves; requests may ask
    for another registered version with the `version` or `alias` param."""
    import os

    from jmed.registry import champion_uri
    from jmed.server import serve_command, serve_env

    if precision and engine == "vllm":  # vLLM's dtype follows the machine (jmed.engine.vllm_dtype)
        raise click.BadParameter(
            "--precision is for the hf engine; vLLM runs bfloat16 where the CPU has bf16 units, else "
            "float32, and its own choice on a GPU",
            param_hint="--precision",
        )
    if batch_wait_ms >= timeout * 1000:  # every request would wait out its own timeout: 504 for all
        raise click.BadParameter(
            f"{timeout} s is not longer than --batch-wait-ms {batch_wait_ms:g}: every request would time out",
            param_hint="--timeout",
        )
    bind_check(host, port)  # before the model loads: a port in use is named now, not after a minute
    try:
        uri = model_uri or champion_uri(base_model)
    except ValueError as e:
        raise click.ClickException(str(e))
    if engine == "vllm":
        from jmed import llm_serve
        from jmed.serving import parse_models_uri

        if not parse_models_uri(uri)[0]:
            raise click.BadParameter(
                f"{uri}: the vllm engine serves registered versions (models:/jmed-<slug>@alias or /<version>)",
                param_hint="--model-uri",
            )
        click.echo(f"[jmed] serving {uri} through vLLM on http://{host}:{port}/v1 (OpenAI API)", err=True)
        try:
            llm_serve.serve(uri, host, port, poll_seconds)
        except ValueError as e:
            raise click.ClickException(str(e))
        return
    cmd = serve_command(uri, port=port, host=host, workers=workers, front=True)
    env = serve_env(
        uri,
        {
            "JMED_SERVE_POLL_S": poll_seconds,
            "JMED_SERVE_MAX_ROWS": max_batch_rows,
            "JMED_SERVE_WAIT_MS": batch_wait_ms,
            "JMED_SERVE_BATCH_TOKENS": batch_tokens,
            "JMED_SERVE_PRECISION": precision,
            "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": timeout,
        },
    )
    click.echo(f"[jmed] serving {uri} on http://{host}:{port}/invocations", err=True)
    sys.stderr.flush()
    # the server replaces this process: SIGTERM from kill, systemd or Kubernetes reaches it directly, and
    # no child is left behind when jmed is stopped
    os.execve(cmd[0], cmd, env)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model-uri", default="", help="models:/jmed-tiny@champion, runs:/…; default: the champion.")
@click.option("--base-model", default="", help="With no --model-uri: the champion of this base model.")
@click.option("--protocol", default=None, type=click.Choice(PROTOCOLS), help="Default: the adapter's own.")
@click.option(
    "--max-new-tokens", default=0, type=Number(int, 0, MAX_NEW_TOKENS_LIMIT), help="Default (0): the served model's."
)
@click.option("--batch-size", default=8, show_default=True, type=Number(int, 1))
@click.option("--output", "-o", default="-", help="JSONL output (default: stdout).")
@click.option(
    "--engine",
    default="hf",
    show_default=True,
    type=click.Choice(["hf", "vllm"]),
    help="hf: jmed's own loop; vllm: a vLLM server started for the file (the adapter merged).",
)
def predict(file, model_uri, base_model, protocol, max_new_tokens, batch_size, output, engine):
    """Answer a JSONL file of questions ({question, choices[, n_answers, id]}) offline with a served model.

    Output lines carry `problem_id` and `prediction`, so `jmed score --predictions` reads them."""
    import json

    from mlflow.exceptions import MlflowException

    from jmed.registry import champion_uri, predict_file

    if output != "-":
        if Path(output).is_dir():
            raise click.BadParameter(f"{output} is a folder; name the output file", param_hint="--output")
        writable_file(output, "--output")
    try:
        uri = model_uri or champion_uri(base_model)
        rows = list(predict_file(uri, file, protocol or "", max_new_tokens, batch_size, engine))
    except ValueError as e:
        raise click.ClickException(str(e))
    except MlflowException as e:  # a URI that names no served model, a run or version that does not exist
        if e.error_code == "INVALID_PARAMETER_VALUE":  # the served model refused the request (as HTTP 400)
            raise click.ClickException(e.message)
        raise click.ClickException(
            f"{model_uri or 'the champion'}: {e.message} (predict needs a served model: "
            "models:/jmed-<slug>@champion or /<version>, or the runs:/… of a logged one; "
            "an adapter becomes one with `jmed promote`)"
        )
    with click.open_file(output, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- pipeline / study / compare / reproduce -----------------------------------------------------


def _true(value: str) -> bool:
    """--force: "" is false; otherwise jmed's one boolean parser."""
    from jmed.config import parse_bool

    try:
        return bool(value) and parse_bool(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("pipeline")
@train_options
@eval_options
@click.option("--protocol", default="", help="Evaluation protocol (default: the prompt format's own).")
@click.option("--force", default="false", help="true: rerun steps even when identical finished runs exist.")
@leakage_option
@dry_run_option
def pipeline_cmd(protocol, force, leakage, eval_data, dry_run, **options):
    """validate → train → evaluate (base and adapter) → promote, as child runs of one parent run.

    Takes every `train` option; --eval-data is the evaluation data (default: the sample's test split).
    """
    from jmed.pipeline import PipelineFailed, eval_config_for, main_pipeline

    try:
        settings = eval_settings(options)
        cfg = train_config(**options)
        if dry_run:
            return echo_config(
                train=cfg,
                evaluate=eval_config_for(cfg, eval_data, protocol, settings=settings),
                pipeline={"force": _true(force), "leakage": leakage},
            )
        main_pipeline(
            cfg, eval_data=eval_data, protocol=protocol, force=_true(force), eval_settings=settings, leakage=leakage
        )
    except (PipelineFailed, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("study")
@click.option("--models", default="tiny", help="Comma-separated base models.")
@click.option("--prompt-formats", default="alpaca_med,medpalm", help="Comma-separated prompt formats.")
@click.option("--shots", default="0", help="Comma-separated shot counts, e.g. 0,1.")
@click.option("--protocols", default="", help="Comma-separated protocols (default: each format's own).")
@train_options(exclude=("model", "prompt_format", "shots"))
@eval_options
@click.option("--force", default="false", help="true: rerun steps even when identical finished runs exist.")
@leakage_option
@dry_run_option
def study_cmd(models, prompt_formats, shots, protocols, eval_data, force, leakage, dry_run, **options):
    """The papers' grid: every model × prompt format × shots × protocol, untuned and tuned, compared.

    Takes every `train` option (for each cell's training) and the evaluation options of `pipeline`."""
    from jmed.study import study

    if not _csv(models) or not _csv(prompt_formats):
        raise click.UsageError("--models and --prompt-formats each need at least one value")
    try:
        shot_list = tuple(int(s) for s in _csv(shots) or ("0",))
    except ValueError:
        raise click.BadParameter(f"{shots!r}: expected comma-separated whole numbers, e.g. 0,1", param_hint="--shots")
    try:
        settings = eval_settings(options)
        overrides = config_overrides(options)
        preset = overrides.pop("preset", None)
        from jmed.config import TrainConfig, build

        cfg = build(TrainConfig, overrides, preset=preset)  # checked once here; each cell sets model and format
        if dry_run:
            from jmed.pipeline import eval_config_for

            return echo_config(
                train=cfg,
                evaluate=eval_config_for(cfg, eval_data, "", settings=settings),
                study={
                    "models": _csv(models),
                    "prompt_formats": _csv(prompt_formats),
                    "shots": shot_list,
                    "protocols": _csv(protocols),
                    "force": _true(force),
                    "leakage": leakage,
                },
            )
        study(
            _csv(models),
            _csv(prompt_formats),
            shot_list,
            _csv(protocols),
            overrides,
            eval_data=eval_data,
            force=_true(force),
            eval_settings=settings,
            preset=preset,
            leakage=leakage,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("compare")
@click.option("--experiment", default="", help="Only runs of this experiment (default: all).")
@click.option("--base-model", default="", help="Only this base model.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of markdown.")
def compare_cmd(experiment, base_model, as_csv):
    """Print the untuned/tuned comparison table from existing evaluate runs."""
    from jmed import tracking
    from jmed.study import comparison, evaluate_runs, to_csv, to_markdown

    tracking.setup()
    try:
        rows = comparison(evaluate_runs(experiment, base_model))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not rows:
        raise click.ClickException(f"no finished evaluate runs in {tracking.shown_uri()}")
    click.echo(to_csv(rows) if as_csv else to_markdown(rows), nl=False)


@main.command("reproduce")
@click.argument("model_uri")
@click.option(
    "--engine",
    default="",
    type=click.Choice(["", "hf", "vllm"]),
    help="Evaluate with this engine (default: the one the version was evaluated with).",
)
def reproduce_cmd(model_uri, engine):
    """Retrain and re-evaluate a registered version (models:/jmed-<slug>@champion) and compare."""
    from mlflow.exceptions import MlflowException

    from jmed.reproduce import ReproduceError, reproduce

    try:
        report = reproduce(model_uri, engine)
    except (ReproduceError, MlflowException) as exc:
        raise click.ClickException(f"{model_uri}: {getattr(exc, 'message', str(exc))}") from exc
    click.echo(
        f"adapter bytes: {'identical' if report.adapter_match else 'DIFFERENT'} "
        f"({report.adapter_sha256[:16]}… vs {report.new_adapter_sha256[:16]}…)"
    )
    for name, (old, new) in report.metrics.items():
        click.echo(f"  {name}: logged {old} reproduced {new}")
    if not report.match:
        for problem in report.problems:
            click.echo(f"MISMATCH: {problem}", err=True)
        sys.exit(1)
    click.echo(f"reproduced {model_uri} on {report.device}: match")


@main.group("runs")
def runs_group():
    """Housekeeping of the tracking store's runs."""


@runs_group.command("reap")
def reap_cmd():
    """End as KILLED the RUNNING runs of this host whose process is gone (every jmed step does this too).

    Runs of other hosts, and runs whose process is alive, are never touched."""
    from jmed import tracking

    tracking.setup()
    ended = tracking.reap()
    if not ended:
        click.echo(f"no abandoned runs of this host in {tracking.shown_uri()}")


def _dashed(arg: str) -> str:
    """`--lora_r` -> `--lora-r`: `mlflow run -P lora_r=4` appends undeclared parameters that way."""
    name, eq, value = arg.partition("=")
    if re.fullmatch(r"--[A-Za-z][A-Za-z0-9_-]*", name):
        return name.replace("_", "-") + eq + value
    return arg


def _flags(command: click.Command) -> dict[str, tuple[str, str | None]]:
    """Boolean flags of a command: option name -> (the name that sets it, the name that clears it)."""
    out = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.is_flag:
            on, off = p.opts[0], (p.secondary_opts[0] if p.secondary_opts else None)
            for name in p.opts + p.secondary_opts:
                out[name] = (on, off) if name in p.opts else (off, on)
    return out


def mlflow_args(args: list[str]) -> list[str]:
    """What `mlflow run -P name=value` appends (`--name value`) made into what click reads: dashes for
    underscores, and a boolean flag given a value becomes the flag or its negation (`--text_only
    true` -> `--text-only`, `--text_only false` -> `--no-text-only`)."""
    args = [_dashed(a) for a in args]
    command = main.commands.get(args[0]) if args else None
    if command is None:
        return args
    flags, out, i = _flags(command), [args[0]], 1
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in flags and not eq and i + 1 < len(args) and args[i + 1].lower() in TRUE + FALSE:
            value, eq = args[i + 1], "="
            i += 1
        if name in flags and eq:
            if value.lower() not in TRUE + FALSE:
                raise click.UsageError(f"{name}: expected true or false, got {value!r}")
            chosen = flags[name][0 if value.lower() in TRUE else 1]
            out += [chosen] if chosen else []
        else:
            out.append(args[i])
        i += 1
    return out


def _terminated(signum, frame):
    # `kill` (SIGTERM) and a closed terminal (SIGHUP) unwind like Ctrl-C: runs end KILLED, locks and
    # leases are released.
    raise SystemExit(128 + signum)


def handle_signals() -> None:
    """SIGTERM, and SIGHUP (the terminal or SSH session closed), end a step like Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _terminated)


def _mlflow_run_ancestor() -> tuple[int, str] | None:
    """(pid, start time) of the `mlflow run` process this one descends from (Linux /proc), else None."""
    pid = os.getppid()
    for _ in range(8):  # mlflow run -> bash -c (or the conda activation) -> jmed
        if pid <= 1:
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        if any(a.endswith(b"mlflow") for a in args[:2]) and b"run" in args[1:3]:
            return pid, fields[19]  # field 22 of stat: the start time, so a reused pid is not taken for it
        pid = int(fields[1])
    return None


def watch_mlflow_run(poll_s: float = 1.0) -> None:
    """Under `mlflow run`: when it is gone (a scheduler's SIGTERM ends it, and MLflow passes nothing on),
    this step is sent SIGTERM too, so it ends like Ctrl-C and its run is KILLED, not left RUNNING."""
    import signal
    import threading
    import time

    if not os.environ.get("MLFLOW_RUN_ID") or not Path("/proc/self/stat").exists():
        return
    ancestor = _mlflow_run_ancestor()
    if ancestor is None:
        return
    pid, started = ancestor

    def alive() -> bool:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        return fields[19] == started and fields[0] != "Z"

    def watch():
        while alive():
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="jmed-watch-mlflow-run", daemon=True).start()


def run():
    """Console entry point (`jmed`, `python -m jmed`)."""
    handle_signals()
    watch_mlflow_run()
    try:
        sys.argv[1:] = mlflow_args(sys.argv[1:])
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    from jmed.tracking import StoreError

    try:
        main()
    except StoreError as exc:  # one line, not MLflow's chained tracebacks
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
