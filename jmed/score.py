"""`jmed score`: score predictions made elsewhere (IgakuQA baseline files, another harness) against
question data, with the same metrics as `jmed evaluate`, and optionally log them as an MLflow run.

Predictions are JSONL lines `{"problem_id": …, "prediction": "d,e"}` (letter protocol) or
`{"problem_id": …, "response": "…"}` (text protocol); a folder is read whole (*.jsonl, by name).
A reasoning model's output is read without its "<think>…</think>" part (metrics.strip_reasoning). Letter
protocol: a record may also carry the model's reasoning apart, as vLLM and OpenAI-style APIs return it
(`reasoning_content`, else `reasoning`); where `prediction` gives no answer under the parsing used (empty,
null, absent or unreadable), the answer is read from the reasoning instead, if it gives one there.
Every question of the data is scored: one without a prediction counts as wrong and is listed. A
prediction for an id the data lacks, a malformed line or a repeated id is an error naming file:line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jmed import config, metrics
from jmed.data import jsonl_objects, shown

# Predictions made elsewhere come as letters or as text; loglik scores need the model.
PROTOCOLS = tuple(p for p in config.PROTOCOLS if p != "loglik")
FIELDS = {"letter": "prediction", "text": "response"}
# Where the reasoning is returned apart from the answer, first found first (vLLM/OpenAI: reasoning_content).
REASONING_FIELDS = ("reasoning_content", "reasoning")


class ScoreError(ValueError):
    """Bad predictions or arguments; carries every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n".join(errors[:20])
        more = f"\n… and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} error(s) in the predictions:\n{shown}{more}")


def prediction_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise ScoreError([f"{p}: no *.jsonl files in this folder"])
        return files
    if not p.is_file():
        raise ScoreError([f"{p}: no such file or folder"])
    return [p]


def read_predictions(
    path: str | Path, protocol: str = "letter", reasoning: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Predictions by question id, and where each was read ("file:line"); raises ScoreError. Letter protocol:
    `reasoning`, when given, is filled with the reasoning field of the records that have one
    (REASONING_FIELDS); such a record's `prediction` may be null or absent (read as "")."""
    field = FIELDS[protocol]
    values: dict[str, str] = {}
    where: dict[str, str] = {}
    errors: list[str] = []
    for f in prediction_files(path):
        objects, bad = jsonl_objects(f)
        errors += [str(e) for e in bad]
        for n, rec in objects:
            loc = f"{f}:{n}"
            pid = rec.get("problem_id")
            if isinstance(pid, int) and not isinstance(pid, bool):  # the medLLM harness writes MMLU's 12 for "12"
                pid = str(pid)
            if not isinstance(pid, str) or not pid:
                errors.append(f"{loc}: problem_id: missing or not a non-empty string")
                continue
            think_field = (
                next((k for k in REASONING_FIELDS if rec.get(k) is not None), None) if protocol == "letter" else None
            )
            if think_field is not None:
                if not isinstance(rec[think_field], str):
                    errors.append(f"{loc}: {think_field}: must be a string, got {shown(rec[think_field])}")
                    continue
                if rec.get(field) is None:  # all of the output was reasoning (content null in vLLM)
                    rec = {**rec, field: ""}
            if field not in rec:
                other = "response" if field == "prediction" else "prediction"
                hint = (
                    f" (it has `{other}`: use --protocol {'text' if other == 'response' else 'letter'})"
                    if other in rec
                    else ""
                )
                errors.append(f"{loc}: {field}: missing for {pid}; the {protocol} protocol reads `{field}`{hint}")
                continue
            value = rec[field]
            if not isinstance(value, str):
                errors.append(f"{loc}: {field}: must be a string, got {shown(value)}")
                continue
            if pid in values:
                errors.append(f"{loc}: problem_id: {pid} is already predicted at {where[pid]}")
                continue
            values[pid] = value
            where[pid] = loc
            if think_field is not None and reasoning is not None:
                reasoning[pid] = rec[think_field]
    if errors:
        raise ScoreError(errors)
    return values, where


def with_reasoning(questions, values: dict[str, str], reasoning: dict[str, str], parsing: str) -> dict[str, str]:
    """The predictions to score: a prediction that gives no answer is replaced by its reasoning where that
    gives one (some models, e.g. Qwen3-Swallow, leave the answer only there); otherwise it stays."""
    out = dict(values)
    for q in questions:
        if (
            q.id in reasoning
            and metrics.parse_answer(q, values[q.id], parsing) is None
            and metrics.parse_answer(q, reasoning[q.id], parsing) is not None
        ):
            out[q.id] = reasoning[q.id]
    return out


def predictions_digest(values: dict[str, str]) -> str:
    """sha256 of the predictions' content (sorted by id): independent of file names and line order."""
    canon = json.dumps(sorted(values.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def score(
    data: str,
    predictions: str,
    protocol: str = "letter",
    parsing: str = "official",
    filters=None,
    data_format: str = "auto",
    name: str = "",
    extraction: str = "last-block",
    exam_kind: str = "",
) -> tuple[dict, list, list[dict]]:
    """Score a predictions file or folder against question data.

    Returns (summary, questions scored, per-question rows). Unknown ids are checked against the
    whole data; filters (a DataFilter, optional) then narrow what is scored.
    """
    from jmed import data as jdata

    if protocol not in PROTOCOLS:
        raise ScoreError([f"--protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}"])
    if parsing not in metrics.PARSINGS:
        raise ScoreError([f"--parsing: {parsing!r} is not one of {', '.join(metrics.PARSINGS)}"])
    from jmed.checks import load_valid

    skipped: dict = {}
    questions = load_valid(
        data,
        data_format,
        questions_only=True,  # the checks of `jmed validate`
        exclude_ids=getattr(filters, "exclude_ids", ()),
        excluded=skipped,
    )
    if exam_kind:  # corrections, years and pass rules of that exam (`--exam-kind`)
        questions = jdata.with_exam_kind(questions, exam_kind)
    reasoning: dict[str, str] = {}
    values, where = read_predictions(predictions, protocol, reasoning)
    known = {q.id for q in questions}
    # questions the reader itself left out (no official answer, choices it cannot read) are not unknown:
    # their predictions are set aside and counted
    set_aside = {pid: skipped[pid] for pid in values if pid not in known and pid in skipped}
    values = {pid: v for pid, v in values.items() if pid not in set_aside}
    unknown = [f"{where[pid]}: problem_id: {pid} is not a question of {data}" for pid in values if pid not in known]
    if unknown:
        raise ScoreError(unknown)
    if filters is not None:
        jdata.check_ids(questions, filters, data)  # an id typo would change nothing, silently
        kept = jdata.apply_filters(questions, filters)
        if not kept:
            counts = jdata.left_out_counts(questions, filters)
            raise ValueError(
                f"no question of {data} is left to score after the filters ("
                + ", ".join(f"{why}: {n}" for why, n in counts.items())
                + ")"
            )
        questions = kept
    if protocol == "letter":
        values = with_reasoning(questions, values, reasoning, parsing)  # the digest is of what is scored
        rows = metrics.letter_rows(questions, values, parsing)
        summary = metrics.letter_summary(questions, values, parsing)
    else:
        rows = metrics.text_rows(questions, values, extraction)
        summary = metrics.text_summary(questions, values, extraction)
        summary["parsing"] = parsing  # not used by the text protocol; kept for the record
    summary.update(
        {
            "name": name,
            "data": str(data),
            "data_digest": jdata.digest(questions),
            "predictions": str(predictions),
            "predictions_digest": predictions_digest(values),
            "predictions_count": len(values),
            "set_aside": set_aside,  # predictions of questions the data's reader excluded, with why
        }
    )
    return summary, questions, rows


def run_metrics(summary: dict) -> dict[str, float]:
    """The summary as MLflow metrics: eval/<name> and eval/<year>/<name>."""
    keys = (
        (
            "accuracy",
            "score",
            "required_score",
            "general_score",
            "unparsed",
            "count_mismatch",
            "missing",
            "kinki_selected",
            "correct",
            "points",
            "questions",
        )
        if summary["protocol"] == "letter"
        else ("exact_match", "gestalt", "gestalt_accuracy", "missing", "questions")
    )
    out = {f"eval/{k}": float(summary[k]) for k in keys}
    for year, ys in summary["by_year"].items():
        for k in keys:
            if k in ys:
                out[f"eval/{year}/{k}"] = float(ys[k])
        if ys.get("passed") is not None:
            out[f"eval/{year}/passed"] = float(ys["passed"])
    return out


def log_score(summary: dict, questions: list, rows: list[dict]) -> str:
    """Log a score run (tag jmed.step=score): params, metrics, the JSON summary, the per-question
    table and the data as a run input. Returns the run id."""
    from jmed import tracking

    name = summary.get("name") or ""
    run_name = name or f"score-{Path(summary['predictions']).stem}"
    with tracking.step_run("score", run_name=run_name) as run:
        import mlflow

        params = {
            "data": summary["data"],
            "eval_data_digest": summary["data_digest"],
            "predictions": summary["predictions"],
            "predictions_digest": summary["predictions_digest"],
            "protocol": summary["protocol"],
            "parsing": summary.get("parsing", ""),
            "name": name,
        }
        # Under `mlflow run` the entry point's parameters are already logged (an empty one as "''"):
        # params cannot change, so only the ones not there yet are added.
        logged = mlflow.get_run(run.info.run_id).data.params
        tracking.log_params({k: v for k, v in params.items() if k not in logged})
        mlflow.log_metrics(run_metrics(summary))
        mlflow.log_dict(summary, "score.json")
        mlflow.set_tag(
            "mlflow.note.content",
            f"Scored predictions `{summary['predictions']}` against "
            f"`{summary['data']}` (data digest `{summary['data_digest'][:12]}`).\n\n" + format_summary(summary),
        )
        table = [
            {k: ("" if v is None else v) if not isinstance(v, tuple) else ",".join(map(str, v)) for k, v in r.items()}
            for r in rows
        ]
        if table:
            mlflow.log_table({k: [r[k] for r in table] for k in table[0]}, "predictions.json")
        tracking.log_dataset(
            questions,
            name=Path(summary["data"]).name or "data",
            path=summary["data"],
            digest=summary["data_digest"],
            context="eval",
        )
        return run.info.run_id


def format_summary(summary: dict, max_missing: int = 20) -> str:
    """A short human-readable report."""
    lines = []
    if summary["protocol"] == "letter":
        s = summary
        lines.append(
            f"{s['questions']} questions, parsing {s['parsing']}: {s['correct']} correct, "
            f"accuracy {s['accuracy']:.4f}, score {s['points']}/{s['points_total']} ({s['score']:.4f})"
        )
        lines.append(
            f"required (B,E) {s['required_points']}/{s['required_total']} ({s['required_score']:.4f}); "
            f"unparsed {s['unparsed']}; wrong letter count {s['count_mismatch']}; missing {s['missing']}; kinki selected {s['kinki_selected']}"
        )
        for year, y in s["by_year"].items():
            verdict = y.get("verdict") or {True: "PASS", False: "FAIL", None: "-"}[y["passed"]]
            lines.append(
                f"  {year}: accuracy {y['accuracy']:.4f} ({y['correct']}/{y['questions']}), "
                f"required {y['required_points']}/{y['required_total']}, "
                f"general {y['general_points']}/{y['general_total']} (line {y['general_line']:.3f}), "
                f"kinki {y['kinki_selected']}: {verdict}"
            )
    else:
        s = summary
        lines.append(
            f"{s['questions']} questions (numeric-entry excluded: {s['excluded_numeric']}): "
            f"exact match {s['exact_match']:.4f}, gestalt {s['gestalt']:.4f}, "
            f"gestalt accuracy {s['gestalt_accuracy']:.4f}; missing {s['missing']}"
        )
        for year, y in s["by_year"].items():
            lines.append(
                f"  {year}: exact {y['exact_match']:.4f}, gestalt {y['gestalt']:.4f}, "
                f"gestalt accuracy {y['gestalt_accuracy']:.4f} ({y['questions']} questions)"
            )
    if summary.get("set_aside"):
        lines.append(
            f"set aside: {len(summary['set_aside'])} prediction(s) of questions the data's reader excluded ("
            + ", ".join(f"{pid}: {why}" for pid, why in list(summary["set_aside"].items())[:10])
            + ")"
        )
    missing = summary["missing_ids"]
    if missing:
        shown = ", ".join(missing[:max_missing]) + (
            f", … ({len(missing) - max_missing} more)" if len(missing) > max_missing else ""
        )
        lines.append(f"no prediction (counted wrong): {shown}")
    return "\n".join(lines)
