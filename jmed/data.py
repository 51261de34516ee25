"""Reading any registered dataset (`jmed.readers`) into `Question`s; filters, samples, splits, digests.

Loaders never drop input silently: a malformed record becomes a `DataError` naming file, line and
field; a known, documented kind (image question, numeric entry, points 0) stays in the data and is
counted by `exclusions()`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from jmed import exams, readers
from jmed.exams import exam_year  # noqa: F401  (re-exported: callers read years from here)
from jmed.readers.jmle2026 import split_jmle_choices  # noqa: F401  (re-exported)
from jmed.records import (  # noqa: F401  (re-exported: the record types are part of this module's API)
    LETTERS,
    MAX_CHOICES,
    MAX_TEXT_CHARS,
    NOT_REGULAR,
    DataError,
    DataLoadError,
    Dataset,
    InstructionRecord,
    Question,
    bad_text,
    data_files,
    jsonl_objects,
    length_errors,
    shown,
    unknown_field_warnings,
    unreadable_entries,
)

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_TRAIN = SAMPLE_DIR / "train.jsonl"
SAMPLE_TEST = SAMPLE_DIR / "test.jsonl"
SAMPLE_INSTRUCTIONS = SAMPLE_DIR / "instructions.jsonl"

FORMATS = readers.names()  # every registered reader (jmed/readers/<name>.py)


def with_exam_kind(questions, kind: str) -> list:
    """The questions as exam `kind` (`--exam-kind`): corrections and the year mapping follow the kind;
    a year the data states itself (IgakuQA metadata, a year folder) is kept. (IgakuQA119's 119E28 rule
    is its own scorer's, read with that medical dataset only.)"""
    import dataclasses

    accept_any = exams.get(kind).accept_any
    out = []
    for q in questions:
        if not isinstance(q, Question) or q.exam_kind == kind:
            out.append(q)
            continue
        derived = q.year is None or q.year == exam_year(q.exam, q.exam_kind)
        out.append(
            dataclasses.replace(
                q, exam_kind=kind, accept_any=q.id in accept_any, year=exam_year(q.exam, kind) if derived else q.year
            )
        )
    return out


def detect_format(path) -> str:
    """The registered reader whose test fits a folder (as a whole, e.g. an IgakuQA119 checkout) or a
    file (a folder's first data file), tried by priority, highest first."""
    path = Path(path)
    if path.is_dir():
        for r in readers.by_priority():
            if r.folder and r.folder(path):
                return r.name
        files = data_files(path)
        if not files:
            raise ValueError(f"{path}: no .jsonl, .json or .csv files in this folder")
        path = files[0]
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    try:
        probe = readers.probe(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    for r in readers.by_priority():
        if r.detect(probe):
            return r.name
    raise ValueError(f"{path}: cannot detect the format; pass one of {', '.join(FORMATS)}")


def read_dataset(path, fmt: str = "auto", translate: bool = False) -> Dataset:
    """Read a file, a folder or a whole IgakuQA data/ tree. Never raises on bad input: a path that
    does not exist or cannot be detected becomes an error too."""
    if fmt != "auto":
        readers.get(fmt)  # an unknown format names the known ones
    if not str(path).strip():  # never read the working directory by accident
        ds = Dataset(path="", format=fmt)
        ds.errors.append(DataError("", 0, "", "no data path given"))
        return ds
    path = Path(path)
    ds = Dataset(path=str(path), format=fmt)
    if not path.exists():
        ds.errors.append(DataError(str(path), 0, "", "no such file or folder"))
        return ds
    if not path.is_dir() and not path.is_file():
        ds.errors.append(DataError(str(path), 0, "", NOT_REGULAR))
        return ds
    if fmt == "auto":
        try:
            ds.format = detect_format(path)
        except ValueError as exc:
            ds.errors.append(DataError(str(path), 0, "", str(exc).removeprefix(f"{path}: ")))
            return ds
    reader = readers.get(ds.format)
    files = reader.files(path, ds) if path.is_dir() else [path]  # a checkout holds more than its questions
    if path.is_dir():
        odd = unreadable_entries(path)
        if odd:
            ds.warnings.append(
                DataError(
                    str(path),
                    0,
                    "",
                    f"{len(odd)} entr{'y' if len(odd) == 1 else 'ies'} not read: "
                    + ", ".join(f"{p.relative_to(path)} ({why})" for p, why in odd[:5])
                    + (", …" if len(odd) > 5 else ""),
                )
            )
    if fmt == "auto" and path.is_dir() and len(files) > 1:
        kinds: dict[str, list[str]] = {}
        for f in files:
            try:
                kinds.setdefault(detect_format(f), []).append(f.name)
            except ValueError:
                pass  # the reader reports an unreadable file itself
        if len(kinds) > 1:  # read as one format, every file of the others would fail line by line
            ds.errors.append(
                DataError(
                    str(path),
                    0,
                    "",
                    "this folder mixes formats: "
                    + "; ".join(
                        f"{k} ({', '.join(v[:3])}{', …' if len(v) > 3 else ''})" for k, v in sorted(kinds.items())
                    )
                    + "; pass the files (or --format) separately",
                )
            )
            return ds
    if not files:
        ds.errors.append(DataError(str(path), 0, "", "no data files in this folder"))
    ds.known_fields = reader.fields
    for f in files:
        ds.files.append(str(f))
        reader.read(f, ds, translate)
    ds.warnings.extend(unknown_field_warnings(ds))
    too_long = {id(q): errs for q in ds.questions if (errs := length_errors(q))}
    if too_long:  # refused here, once: evaluation and training never see them
        ds.errors.extend(e for errs in too_long.values() for e in errs)
        ds.items = [q for q in ds.items if id(q) not in too_long]
    ds.errors.extend(duplicate_ids(ds.items))
    if fmt == "auto" and not ds.items and len(ds.errors) >= MANY_ERRORS:
        ds = _no_reader_fits(path, ds, translate)
    if not ds.items and not ds.errors:  # "OK: 0 questions" would pass an empty file on to training
        excluded = sum(len(v) for v in ds.skipped.values())
        ds.errors.append(
            DataError(
                str(path),
                0,
                "",
                "no questions or records in the data" + (f" ({excluded} excluded)" if excluded else ""),
            )
        )
    order = {f: i for i, f in enumerate(ds.files)}
    ds.errors.sort(key=lambda e: (order.get(e.file, -1), e.file, e.line))
    return ds


MANY_ERRORS = 20  # an auto-detected reader that reads nothing and fails this often is the wrong reader


def _no_reader_fits(path: Path, detected: Dataset, translate: bool) -> Dataset:
    """The detected reader read nothing: try the others. One that reads the data wins; else a single error
    names every format tried and its most common problem, before the detected reader's first errors."""
    from collections import Counter

    tried = []
    for fmt in FORMATS:
        ds = detected if fmt == detected.format else read_dataset(path, fmt, translate)
        if ds.items and not ds.errors:
            return ds
        top = Counter((e.field, re.sub(r"\b\d+\b", "N", e.message)) for e in ds.errors).most_common(1)
        why = (
            f"{top[0][0][0] + ': ' if top[0][0][0] else ''}{top[0][0][1]} ({top[0][1]} of {len(ds.errors)} errors)"
            if top
            else "read nothing"
        )
        tried.append(f"{fmt}: {why}")
    detected.errors = [
        DataError(str(path), 0, "", "no reader fits this data; formats tried: " + "; ".join(tried))
    ] + detected.errors[:5]
    return detected


def duplicate_ids(items) -> list[DataError]:
    """An error for every record whose id was already used (naming where it was first seen)."""
    first: dict[str, object] = {}
    errors = []
    for it in items:
        key = same_id(it.id)
        if key in first:
            f = first[key]
            where = f"line {f.line}" if f.file == it.file else f"{f.file}:{f.line}"
            fld = "problem_id" if isinstance(it, Question) and it.source in ("igakuqa", "jjsimqa") else "id"
            errors.append(DataError(it.file, it.line, fld, f"duplicate id {shown(it.id)} (first at {where})"))
        else:
            first[key] = it
    return errors


def check_ids(questions, filters, path) -> None:
    """--ids / --exclude-ids naming no question of the data (a typo) are errors: they would change nothing."""
    known = {same_id(q.id) for q in questions}
    for name in ("ids", "exclude_ids"):
        unknown = [i for i in getattr(filters, name) if same_id(i) not in known]
        if unknown:
            raise ValueError(
                f"--{name.replace('_', '-')}: {', '.join(unknown[:10])} "
                f"{'is' if len(unknown) == 1 else 'are'} no question of {path}"
            )


def same_id(value: str) -> str:
    """An id as compared: NFKC (full-width "１１６Ａ１" is 116A1) without invisible characters (a
    zero-width space does not make a new id)."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKC", value) if unicodedata.category(c) != "Cf")


def read_questions(path, fmt: str = "auto") -> tuple[list[Question], list[DataError]]:
    """Questions and errors; never raises on bad records."""
    ds = read_dataset(path, fmt)
    if ds.format in FORMATS and not readers.get(ds.format).questions:
        return [], ds.errors + [DataError(str(path), 0, "", "holds instruction records, not questions")]
    return ds.questions, ds.errors


def load_questions(path, fmt: str = "auto", filters=None) -> list[Question]:
    """Questions from a file, folder or data/ tree; raises DataLoadError listing every error."""
    questions, errors = read_questions(path, fmt)
    if errors:
        raise DataLoadError(errors)
    return apply_filters(questions, filters)


def load_instructions(path) -> list[InstructionRecord]:
    ds = read_dataset(path, "instructions")
    if ds.errors:
        raise DataLoadError(ds.errors)
    return ds.items


def load_training_items(path, fmt: str = "auto") -> list:
    """Questions or instruction records, whichever the path holds; raises DataLoadError on any error."""
    ds = read_dataset(path, fmt)
    if ds.errors:
        raise DataLoadError(ds.errors)
    return ds.items


def _canonical(item) -> dict:
    if isinstance(item, InstructionRecord):
        return {"id": item.id, "instruction": item.instruction, "input": item.input, "output": item.output}
    return {
        "id": item.id,
        "stem": item.stem,
        "choices": list(item.choices),
        "answer": [list(a) for a in item.answer],
        "points": float(item.points),
        "block": item.block,
        "exam": item.exam,
        "year": item.year,
        "text_only": item.text_only,
        "kinki": list(item.kinki),
        "category": item.category,
        "accept_any": item.accept_any,
        **({"no_prompt": item.no_prompt} if item.no_prompt else {}),
    }  # digests of earlier data unchanged


def digest(items) -> str:
    """sha256 of the records' content: independent of order, file paths, line numbers and machine."""
    lines = sorted(json.dumps(_canonical(it), ensure_ascii=False, sort_keys=True) for it in items)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def filter_reason(q, filters) -> str | None:
    """Why a DataFilter leaves `q` out (the option that does), or None when it keeps it."""
    if filters is None:
        return None
    if filters.ids and same_id(q.id) not in {same_id(i) for i in filters.ids}:
        return "not in --ids"
    if same_id(q.id) in {same_id(i) for i in filters.exclude_ids}:
        return "--exclude-ids"
    if isinstance(q, Question):
        if filters.text_only and not q.text_only:
            return "--text-only (has images)"
        if filters.five_choices and len(q.choices) != 5:
            return "--five-choices (not 5 choices)"
        if filters.scored_only and q.points <= 0:
            return "--scored-only (unscored)"
        if filters.years and q.year not in set(filters.years):
            return "not in --years"
        if filters.blocks and q.block not in set(filters.blocks):
            return "not in --blocks"
    return None


def apply_filters(questions, filters=None) -> list:
    """Keep what a DataFilter allows (None or an empty filter keeps everything)."""
    return [q for q in questions if filter_reason(q, filters) is None]


def left_out_counts(questions, filters) -> dict[str, int]:
    """{reason: questions} for what a DataFilter leaves out (every question counted once, by its first reason)."""
    out: dict[str, int] = {}
    for q in questions:
        why = filter_reason(q, filters)
        if why:
            out[why] = out.get(why, 0) + 1
    return out


def sample_questions(questions, n: int, seed: int) -> list:
    """A fixed random subset of `n` questions (all when n <= 0 or n >= len): the same ids for the same
    data and seed on every machine and in every order of reading; kept in the data's order. Unlike
    taking the first N (block A first), every block and year is represented."""
    questions = list(questions)
    if n <= 0 or n >= len(questions):
        return questions
    import random

    ids = sorted(q.id for q in questions)
    keep = set(random.Random(f"jmed-sample:{seed}").sample(ids, n))
    return [q for q in questions if q.id in keep]


def split_by_year(questions, test_years) -> tuple[list, list]:
    """(train, test): test holds the questions of `test_years`; train the rest (unknown year too)."""
    years = {int(test_years)} if isinstance(test_years, (int, str)) else {int(y) for y in test_years}
    test = [q for q in questions if q.year in years]
    train = [q for q in questions if q.year not in years]
    return train, test


EXCLUSION_REASONS = ("image", "numeric_answer", "not_scored", "not_five_choices")


def promptable(questions) -> tuple[list, dict[str, int]]:
    """(the questions a prompt can be made of, {reason: count} of the rest): what evaluate, train and
    predict use. `score` grades every question with a gold answer."""
    kept, left = [], {}
    for q in questions:
        why = getattr(q, "no_prompt", "")
        if why:
            left[f"no prompt ({why})"] = left.get(f"no prompt ({why})", 0) + 1
        else:
            kept.append(q)
    return kept, left


def exclusion_reasons(q: Question) -> list[str]:
    reasons = [q.no_prompt] if q.no_prompt else []
    if not q.text_only:
        reasons.append("image")
    if not q.choices:
        reasons.append("numeric_answer")
    if q.points <= 0:
        reasons.append("not_scored")
    if len(q.choices) != 5:
        reasons.append("not_five_choices")
    return reasons


def exclusions(questions) -> dict[str, int]:
    """Counts by reason; a question counts under every reason that applies."""
    counts = dict.fromkeys(EXCLUSION_REASONS, 0)
    for q in questions:
        if isinstance(q, Question):
            for r in exclusion_reasons(q):
                counts[r] = counts.get(r, 0) + 1
    return counts
