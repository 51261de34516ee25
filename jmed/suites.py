"""The declarative Great Expectations suites (`data_checks/*.json`, shipped as package data), run on a pandas
frame of the questions or records in an ephemeral context; great_expectations is imported when a suite runs."""

from __future__ import annotations

import json
from importlib.resources import files

from jmed.data import DataError, shown
from jmed.records import visible

# The suites: the top-level `data_checks` package (data_checks/ at the repository root), shipped in the wheel
# with its JSON files as package data; found the same way from a checkout, an editable install or a wheel.
CHECKS_DIR = files("data_checks")


def question_frame(questions):
    import pandas as pd

    rows = [
        {
            "id": q.id,
            "stem": visible(q.stem),  # invisible-only text is blank
            "n_choices": len(q.choices),
            "numeric": not q.choices,
            "n_answers": max((len(a) for a in q.answer), default=0),
            "blank_choices": sum(1 for c in q.choices if not visible(c).strip()),
            "longest_choice": max(map(len, q.choices), default=0),
            "repeated_choices": len(q.choices) - len(set(visible(c).strip() for c in q.choices)),
            "points": float(q.points),
            "text_only": q.text_only,
            "year": q.year,
            "block": q.block,
            "prompted": not q.no_prompt,
            "file": q.file,
            "line": q.line,
        }
        for q in questions
    ]
    df = pd.DataFrame(
        rows,
        columns=[
            "id",
            "stem",
            "n_choices",
            "numeric",
            "n_answers",
            "blank_choices",
            "longest_choice",
            "repeated_choices",
            "points",
            "text_only",
            "year",
            "block",
            "prompted",
            "file",
            "line",
        ],
    )
    df["year"] = df["year"].astype("float64")  # None -> NaN, which GX treats as missing
    return df


def instruction_frame(records):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "id": r.id,
                "instruction": r.instruction,
                "input": r.input,
                "output": r.output,
                "file": r.file,
                "line": r.line,
            }
            for r in records
        ],
        columns=["id", "instruction", "input", "output", "file", "line"],
    )


def load_suite(name: str) -> dict:
    return json.loads(CHECKS_DIR.joinpath(f"{name}.json").read_text(encoding="utf-8"))


def run_suite(name: str, frame) -> tuple[dict, list[DataError], list[DataError]]:
    """Run suite `name` on `frame`: (summary, errors, warnings), one DataError per unexpected row naming
    file:line:field. An expectation whose meta says "severity": "warning" gives warnings."""
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    spec = load_suite(name)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    expectations = [ExpectationConfiguration(**e).to_domain_obj() for e in spec["expectations"]]
    suite = ctx.suites.add(gx.ExpectationSuite(name=spec["name"], expectations=expectations))
    batch_def = (
        ctx.data_sources.add_pandas("jmed").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    )
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "COMPLETE"}
    )
    errors, warnings = [], []
    for r in result.results:
        if r.success:
            continue
        meta = r.expectation_config.meta or {}
        out = warnings if meta.get("severity") == "warning" else errors
        fld = meta.get("field", r.expectation_config.kwargs.get("column", ""))
        message = meta.get("message", r.expectation_config.type)
        values = r.result.get("unexpected_list") or []
        for i, idx in enumerate(r.result.get("unexpected_index_list") or []):
            row = frame.loc[idx]
            value = values[i] if i < len(values) else None
            show = meta.get("show_value", True) and value is not None and not isinstance(value, tuple)
            got = f" (got {shown(value)})" if show else ""
            out.append(DataError(row["file"], int(row["line"]), fld, f"{message}{got} [{r.expectation_config.type}]"))
        if not r.result.get("unexpected_index_list"):  # a table-level failure
            out.append(DataError("", 0, fld, f"{message} [{r.expectation_config.type}]"))
    stats = result.statistics
    summary = {
        "suite": spec["name"],
        "success": not errors,
        "evaluated": int(stats["evaluated_expectations"]),
        "unsuccessful": int(stats["unsuccessful_expectations"]),
        "errors": len(errors),
        "warnings": len(warnings),
    }
    return summary, errors, warnings
