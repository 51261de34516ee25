"""Data validation: the Great Expectations suites (jmed.suites), the checks GX cannot express (answer
letters, 「Nつ選べ」 counts, unique ids, same stem with different choices), the train/test leakage check
(jmed.leakage), and the loader every step reads its data through (`load_valid`). `validate()` returns a
`Report`.

great_expectations and rapidfuzz are imported inside functions: `jmed --help` stays fast.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jmed.data import (
    LETTERS,
    DataError,
    DataLoadError,
    Dataset,
    Question,
    apply_filters,
    digest,
    duplicate_ids,
    exclusions,
    read_dataset,
    shown,
)
from jmed.identity import data_label, data_name
from jmed.leakage import (  # noqa: F401
    DEFAULT_LEAKAGE,
    LEAKAGE_POLICIES,
    LEAKAGE_THRESHOLD,
    leakage_pairs,
    leakage_pairs_bruteforce,
    norm_stem,
)
from jmed.metrics import SELECT_RE, stated_count
from jmed.records import BIDI_CONTROLS
from jmed.suites import CHECKS_DIR, instruction_frame, load_suite, question_frame, run_suite  # noqa: F401

LEAKAGE_FIELD = "leakage"  # the field of a leakage pair's error or warning (listed apart in the summary)


@dataclass
class Report:
    success: bool = True
    questions: int = 0
    errors: list[dict] = field(default_factory=list)  # {file, line, field, message}
    warnings: list[dict] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    leakage: list[dict] = field(default_factory=list)  # {train_id, test_id, score, train_file, ...}
    datasets: list[dict] = field(default_factory=list)  # {path, role, format, digest, questions, files}
    expectations: list[dict] = field(default_factory=list)  # GX suite results per dataset
    leakage_threshold: float = LEAKAGE_THRESHOLD
    leakage_policy: str = DEFAULT_LEAKAGE

    def __post_init__(self):
        self.loaded: dict[str, Dataset] = {}  # path -> what was read (not part of the JSON report)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def summary(self, max_errors: int = 20, max_listed: int = 10) -> str:
        """A short human summary: one line of counts, the datasets, then the first errors, warnings and
        leakage pairs (each list cut at its limit with "and N more in report.json")."""
        excl = ", ".join(f"{k} {v}" for k, v in self.excluded.items() if v) or "none"
        what = "records" if any(d["format"] == "instructions" for d in self.datasets) else "questions"
        lines = [
            f"{'OK' if self.success else 'FAILED'}: {self.questions} {what} in {len(self.datasets)} dataset(s); "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s); excluded: {excl}; "
            f"leakage pairs: {len(self.leakage)}"
        ]
        for d in self.datasets:
            label = data_label(data_name(d["path"]), d["questions"], None, d["digest"], what="records")
            lines.append(f"  {d['role']}: {label} ({d['format']}, every record of {d['path']})")

        def listed(kind: str, items: list, limit: int, show) -> None:
            lines.extend(f"  {kind}: {show(x)}" for x in items[:limit])
            if len(items) > limit:
                lines.append(f"  … and {len(items) - limit} more {kind}s in report.json (--report PATH writes it)")

        def own(items):  # leakage pairs are counted there and listed below, with both sides
            return [e for e in items if e["field"] != LEAKAGE_FIELD]

        listed("error", own(self.errors), max_errors, lambda e: str(DataError(**e)))
        listed("warning", own(self.warnings), max_listed, lambda e: str(DataError(**e)))
        listed(
            "leakage",
            self.leakage,
            max_listed,
            lambda p: (
                f"train {p['train_id']} ~ test {p['test_id']} (similarity {p['score']:g}; "
                f"{p['train_file']}:{p['train_line']} ~ {p['test_file']}:{p['test_line']})"
            ),
        )
        if self.leakage:
            ids = ",".join(sorted({p["test_id"] for p in self.leakage}))
            lines.append(
                f"  leakage policy {self.leakage_policy}: "
                + (
                    f"near-duplicates (similarity >= {self.leakage_threshold:g}) are errors"
                    if self.leakage_policy == "fail"
                    else f"near-duplicates (similarity >= {self.leakage_threshold:g}) are warnings. A test question "
                    f"seen in training inflates its score: leave it out of the evaluation (--exclude-ids "
                    f"{ids[:200]}), or stop on leakage with --leakage fail"
                )
            )
        return "\n".join(lines)

    def to_html(self) -> str:
        """A readable, self-contained HTML page of the report."""
        esc = html.escape

        def table(rows: list[dict], cols: list[str]) -> str:
            if not rows:
                return "<p>none</p>"
            head = "".join(f"<th>{esc(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{esc(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
            return f"<table><tr>{head}</tr>{body}</table>"

        status = "passed" if self.success else "FAILED"
        parts = [
            "<!doctype html><html lang='ja'><head><meta charset='utf-8'><title>jmed data validation</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
            ".ok{color:#070}.bad{color:#b00}</style></head><body>",
            f"<h1>Data validation: <span class='{'ok' if self.success else 'bad'}'>{status}</span></h1>",
            f"<p>{self.questions} questions; {len(self.errors)} errors; {len(self.warnings)} warnings; "
            f"{len(self.leakage)} leakage pairs (threshold {self.leakage_threshold:g}).</p>",
            "<h2>Datasets</h2>",
            table(self.datasets, ["role", "path", "format", "questions", "digest"]),
            "<h2>Excluded (counted, kept in the data)</h2>",
            table([{"reason": k, "questions": v} for k, v in self.excluded.items()], ["reason", "questions"]),
            "<h2>Errors</h2>",
            table(self.errors, ["file", "line", "field", "message"]),
            "<h2>Warnings</h2>",
            table(self.warnings, ["file", "line", "field", "message"]),
            "<h2>Leakage (near-duplicate stems, training vs test)</h2>",
            table(self.leakage, ["score", "train_id", "test_id", "train_stem", "test_stem", "train_file", "test_file"]),
            "<h2>Great Expectations suites</h2>",
            table(
                self.expectations, ["dataset", "suite", "success", "evaluated", "unsuccessful", "errors", "warnings"]
            ),
            "</body></html>",
        ]
        return "\n".join(parts)

    def write(self, json_path) -> tuple[Path, Path]:
        """Write the JSON report and an HTML page beside it (same name, .html)."""
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        html_path = json_path.with_suffix(".html")
        html_path.write_text(self.to_html(), encoding="utf-8")
        return json_path, html_path


def check_answers(questions) -> list[DataError]:
    """Every answer letter names one of the question's choices (numeric questions: one number)."""
    errors = []
    for q in questions:
        if not q.answer:
            errors.append(DataError(q.file, q.line, "answer", "no answer"))
            continue
        if q.numeric:
            continue
        allowed = LETTERS[: len(q.choices)]
        for s in q.answer:
            bad = [a for a in s if a not in allowed or len(a) != 1]
            if bad:
                errors.append(
                    DataError(q.file, q.line, "answer", f'letter "{bad[0]}" outside {len(q.choices)} choices')
                )
                break
    return errors


def check_select_counts(questions) -> list[DataError]:
    """The number in 「Nつ選べ」 equals the number of answers of every acceptable answer set."""
    errors = []
    for q in questions:
        n = stated_count(q.stem)
        if n is None or q.numeric or q.accept_any:
            continue
        wrong = [s for s in q.answer if len(s) != n]
        if wrong:
            m = SELECT_RE.search(q.stem)
            errors.append(
                DataError(
                    q.file,
                    q.line,
                    "answer",
                    f"stem says 「{m.group(0)}」 but the answer has {len(wrong[0])} letter(s): {','.join(wrong[0])}",
                )
            )
    return errors


def check_bidi(questions) -> list[DataError]:
    """Warnings: bidi overrides or isolates in a stem or a choice (what is shown is not what is read)."""
    out = []
    for q in questions:
        for fld, text in [("problem_text", q.stem)] + [(f"choices[{i}]", c) for i, c in enumerate(q.choices)]:
            found = sorted(BIDI_CONTROLS & set(text))
            if found:
                out.append(
                    DataError(
                        q.file,
                        q.line,
                        fld,
                        f"{q.id}: bidi control character(s) "
                        + ", ".join(f"U+{ord(c):04X}" for c in found)
                        + ": the text displays in another order than it is read",
                    )
                )
                break
    return out


def check_same_stem(questions) -> list[DataError]:
    """Warnings: the same stem with different choices (real IgakuQA has such pairs across years), and
    the same stem with the same choices under another id (a duplicate question)."""
    by_stem: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        if norm_stem(q.stem):  # a blank stem (its reader warned already) is not the same question as another
            by_stem[norm_stem(q.stem)].append(q)
    warnings = []
    for group in by_stem.values():
        first = group[0]
        for q in group[1:]:
            same = [norm_stem(c) for c in q.choices] == [norm_stem(c) for c in first.choices]
            what = "same stem and choices as" if same else "same stem as"
            tail = "" if same else " but different choices"
            warnings.append(
                DataError(q.file, q.line, "problem_text", f"{what} {first.id} ({first.file}:{first.line}){tail}")
            )
    return warnings


# A choice holding another choice's label ("肺炎 c. 結核", "ｂ．腎炎"): choices merged in the source
# (IgakuQA119 119A22, 119C5, 119C19); its gold text would come out garbled.
# Lower-case labels with a space after the dot only: "C.difficile" and "(immunoglobulin E)" are not labels.
_MERGED = re.compile(r"(?:^|\s)[a-e]\.\s+\S")


def check_merged_choices(questions) -> list[DataError]:
    """Warnings: a question whose choices look merged (a choice text carries another choice label)."""
    out = []
    for q in questions:
        for i, c in enumerate(q.choices):
            if i and _MERGED.search(unicodedata.normalize("NFKC", c)):
                out.append(
                    DataError(
                        q.file,
                        q.line,
                        f"choices[{i}]",
                        f"{q.id}: choice {LETTERS[i]} holds another choice label ({shown(c)}): "
                        f"choices merged in the source? ({len(q.choices)} choices)",
                    )
                )
                break
    return out


def _as_dicts(errors: list[DataError]) -> list[dict]:
    return [asdict(e) for e in errors]


def _split_paths(paths) -> list[str]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [p for p in paths if str(p).strip()]


def validate(
    paths,
    against=(),
    fmt: str = "auto",
    threshold: float = LEAKAGE_THRESHOLD,
    filters=None,
    against_filters=None,
    leakage: str = DEFAULT_LEAKAGE,
) -> Report:
    """Validate every dataset in `paths` (and `against`, the test data), check leakage from `paths` to
    `against`. Never raises on bad data: every problem is in the report.

    Every record read is checked; the checks across datasets (repeated ids, leakage) see only the
    questions a step will use: `filters` / `against_filters` (DataFilter), e.g. a whole IgakuQA tree
    trained on with years 2018–2021 and tested on 2022. `leakage`: LEAKAGE_POLICIES (jmed.leakage)."""
    if leakage not in LEAKAGE_POLICIES:
        raise ValueError(f"leakage policy {leakage!r}: choose one of {', '.join(LEAKAGE_POLICIES)}")
    report = Report(leakage_threshold=threshold, leakage_policy=leakage)
    errors: list[DataError] = []
    warnings: list[DataError] = []
    loaded: dict[str, list] = {"data": [], "against": []}
    skipped: dict[str, int] = {}
    for role, group in (("data", _split_paths(paths)), ("against", _split_paths(against))):
        for p in group:
            ds: Dataset = read_dataset(p, fmt)
            errors += ds.errors
            warnings += ds.warnings
            for reason, ids in ds.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + len(ids)
            questions = ds.questions
            loaded[role] += apply_filters(ds.items, filters if role == "data" else against_filters)
            report.loaded[str(p)] = ds
            report.datasets.append(
                {
                    "path": str(p),
                    "role": role,
                    "format": ds.format,
                    "digest": digest(ds.items),
                    "questions": ds.records,
                    "files": len(ds.files),
                }
            )
            report.questions += ds.records
            if ds.items:
                if ds.format == "instructions":
                    summary, gx_errors, gx_warnings = run_suite("instructions", instruction_frame(ds.items))
                else:
                    summary, gx_errors, gx_warnings = run_suite("questions", question_frame(questions))
                report.expectations.append({"dataset": str(p), **summary})
                errors += gx_errors
                warnings += gx_warnings
            errors += check_answers(questions) + check_select_counts(questions)
    everything = loaded["data"] + loaded["against"]
    # ids repeated within one dataset were reported by the reader; here, repeats across datasets too
    known = set(errors)
    errors += [e for e in duplicate_ids(everything) if e not in known]
    qs = [q for q in everything if isinstance(q, Question)]
    warnings += check_same_stem(qs) + check_merged_choices(qs) + check_bidi(qs)
    train = [q for q in loaded["data"] if isinstance(q, Question)]
    test = [q for q in loaded["against"] if isinstance(q, Question)]
    report.leakage = leakage_pairs(train, test, threshold)
    for p in report.leakage:
        if not (p["score"] >= 100 and p["same_choices"]):  # a pair counts as the policy says
            (errors if leakage == "fail" else warnings).append(
                DataError(
                    p["test_file"],
                    p["test_line"],
                    LEAKAGE_FIELD,
                    f"test question {p['test_id']} is a near-duplicate of training question {p['train_id']} "
                    f"({p['train_file']}:{p['train_line']}, similarity {p['score']:g}); --leakage {leakage}",
                )
            )
        if p["score"] >= 100 and p["same_choices"]:
            errors.append(
                DataError(
                    p["test_file"],
                    p["test_line"],
                    "problem_text",
                    f"test question {p['test_id']} is also in the training data as "
                    f"{p['train_id']} ({p['train_file']}:{p['train_line']})",
                )
            )
    report.excluded = {**exclusions(qs), **skipped}
    if "choices_unparsed" not in report.excluded:
        report.excluded["choices_unparsed"] = 0
    report.errors = _as_dicts(errors)
    report.warnings = _as_dicts(warnings)
    report.success = not errors
    return report


def load_valid(
    path, fmt: str = "auto", questions_only: bool = False, exclude_ids=(), excluded: dict | None = None
) -> list:
    """What a step reads, after the checks of `jmed validate` (formats, suites, answers, 「Nつ選べ」):
    its items, or DataLoadError naming every error (file:line: field:) before any model is loaded.
    Errors of records the user excluded by id (`exclude_ids`) do not block the rest. `excluded` (a dict)
    receives {id: reason} for records the reader itself left out (no official answer, …)."""
    report = validate([str(path)], fmt=fmt)
    if excluded is not None:
        excluded.update({pid: why for ds in report.loaded.values() for why, ids in ds.skipped.items() for pid in ids})
    items = [it for ds in report.loaded.values() for it in ds.items]
    skipped = {(it.file, it.line) for it in items if it.id in set(exclude_ids)}
    errors = [DataError(**e) for e in report.errors if (e["file"], e["line"]) not in skipped]
    if errors:
        bad_ids = sorted({it.id for it in items if (it.file, it.line) in {(e.file, e.line) for e in errors}})
        hint = (
            [
                DataError(
                    str(path), 0, "", f"to use the rest, leave these out with --exclude-ids {','.join(bad_ids)[:200]}"
                )
            ]
            if bad_ids
            else []
        )
        raise DataLoadError(errors + hint)
    if questions_only and any(not isinstance(it, Question) for it in items):
        raise DataLoadError([DataError(str(path), 0, "", "holds instruction records, not exam questions")])
    return items


def log_report(report: Report, requested_format: str = "auto") -> None:
    """Log a report into the active MLflow run: params, metrics, dataset inputs, report.json/.html."""
    import tempfile

    import mlflow

    from jmed import tracking

    params: dict = {
        "requested_format": requested_format,
        "leakage_threshold": report.leakage_threshold,
        "leakage_policy": report.leakage_policy,
    }
    loaded = report.loaded
    for role in ("data", "against"):
        sets = [d for d in report.datasets if d["role"] == role]
        if not sets:
            continue
        for d in sets:
            if d["path"] not in loaded:
                loaded[d["path"]] = read_dataset(d["path"], d["format"])
        items = [it for d in sets for it in loaded[d["path"]].items]
        params.update(
            {
                f"{role}_paths": ",".join(d["path"] for d in sets),
                f"{role}_format": ",".join(sorted({d["format"] for d in sets})),
                f"{role}_digest": digest(items),
                f"{role}_questions": sum(d["questions"] for d in sets),
            }
        )
    # under `mlflow run` the entry point's own parameters (data, against, format) are already logged
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    tracking.log_params({k: v for k, v in params.items() if k not in logged})
    metrics = {
        "data/questions": report.questions,
        "data/errors": len(report.errors),
        "data/warnings": len(report.warnings),
        "data/leakage_pairs": len(report.leakage),
    }
    metrics.update({f"data/excluded/{k}": v for k, v in report.excluded.items()})
    mlflow.log_metrics(metrics)
    for d in report.datasets:
        ds = loaded.get(d["path"])
        if ds is not None and ds.items:
            tracking.log_dataset(
                ds.items,
                name="/".join(Path(d["path"]).parts[-2:]),
                path=d["path"],
                digest=d["digest"],
                context=d["role"],
            )
    with tempfile.TemporaryDirectory() as tmp:
        json_path, html_path = report.write(Path(tmp) / "report.json")
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(html_path))
    mlflow.set_tags({"jmed.validation": "passed" if report.success else "failed"})
    mlflow.set_tag("mlflow.note.content", report.summary())
