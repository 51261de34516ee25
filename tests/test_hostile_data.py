"""Every data file gets a verdict, never a traceback or a hang: hostile files as a
regression corpus (built here: a named pipe and a symlink loop cannot live in git), and property-based
fuzzing of every reader with hypothesis."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmed import checks, data

GOOD = {
    "problem_id": "990A1",
    "problem_text": "どれか。",
    "choices": ["甲", "乙", "丙", "丁", "戊"],
    "text_only": True,
    "answer": ["a"],
    "points": "1",
}
JMLE = {
    "question_id": "120A-1",
    "block": "A",
    "number": 1,
    "question_type": "multiple_choice",
    "question_text": "1　どれか。\n\na　甲\nb　乙",
    "requires_image": False,
    "answer": ["a"],
}
HEADER = "question,optionA,optionB,optionC,optionD,answer\n"


def corpus(root):
    """(name, path, the one expected error message) for each hostile case."""

    def put(name, text):
        (root / name).write_text(text, encoding="utf-8")
        return root / name

    def jmle(name, **fields):
        return put(name, json.dumps([{**JMLE, **fields}], ensure_ascii=False))

    pipe = root / "pipe-990-A.jsonl"
    os.mkfifo(pipe)
    (root / "loop").mkdir()
    os.symlink("../loop", root / "loop" / "self")
    (root / "tree" / "x.jsonl").mkdir(parents=True)
    surrogate = json.dumps(GOOD, ensure_ascii=False).replace("どれか。", "\\ud800")
    return [
        (
            "deep JSON lines",
            put("deep-990-A.jsonl", "{" + '"a":{' * 100_000 + "}" * 100_001 + "\n"),
            ":1: invalid JSON: nested too deeply (about a thousand levels of [ or { or more)",
        ),
        (
            "deep JSON list",
            put("deep.json", "[" * 100_000 + "]" * 100_000),
            ":1: invalid JSON: nested too deeply (about a thousand levels of [ or { or more); the file cannot be read further",
        ),
        (
            "lone surrogate",
            put("sur-990-A.jsonl", surrogate + "\n"),
            ":1: problem_text: not valid Unicode: lone surrogate \\ud800",
        ),
        (
            "surrogate instruction",
            put("inst.jsonl", '{"instruction": "\\udc00", "output": "a"}\n'),
            ":1: instruction: not valid Unicode: lone surrogate \\udc00",
        ),
        (
            "named pipe",
            pipe,
            ": not a regular file (a named pipe, device or socket); jmed reads only files and folders",
        ),
        ("symlink loop", root / "loop", f": {root / 'loop' / 'self'}: symlink loop (it leads back to {root / 'loop'})"),
        ("folder named like data", root / "tree", ": no .jsonl, .json or .csv files in this folder"),
        (
            "serial_group a string",
            jmle("sg.json", serial_group="x"),
            ":1: serial_group: expected an object or null, got a string",
        ),
        (
            "context_text a number",
            jmle("ct.json", serial_group={"context_text": 5}),
            ":1: serial_group.context_text: expected a string, got a number",
        ),
        (
            "points true",
            put("pt-990-A.jsonl", json.dumps({**GOOD, "points": True}, ensure_ascii=False) + "\n"),
            ":1: points: expected a number or a numeric string, got a boolean (true)",
        ),
        (
            "essay",
            jmle("essay.json", question_type="essay"),
            ':1: question_type: "essay" is not one of multiple_choice, calculation',
        ),
        (
            "select 2, answer 1",
            jmle("sel.json", num_choices_to_select=2),
            ":1: answer: num_choices_to_select is 2 but the answer has 1 letter(s): a",
        ),
        (
            "select a string",
            jmle("sels.json", num_choices_to_select="2"),
            ':1: num_choices_to_select: expected an integer of at least 1, got "2"',
        ),
        ("empty list", put("empty.json", "[]"), ": no questions or records in the data"),
        ("header-only CSV", put("head.csv", HEADER), ": no questions or records in the data"),
        (
            "NUL in a CSV cell",
            put("nul.csv", HEADER + "ど\x00れ,甲,乙,丙,丁,A\n"),
            ":2: question: contains a NUL character (\\u0000)",
        ),
    ]


def test_every_hostile_file_gets_its_error_and_validate_exits_1(tmp_path):
    from click.testing import CliRunner

    from jmed.cli import main

    for name, path, message in corpus(tmp_path):
        report = checks.validate([str(path)])
        assert not report.success, name
        assert [str(data.DataError(**e)) for e in report.errors] == [f"{path}{message}"], name
    res = CliRunner().invoke(main, ["validate", "--no-log", str(tmp_path / "pipe-990-A.jsonl")])
    assert res.exit_code == 1 and "not a regular file" in res.output and res.exception.__class__ is SystemExit


# ---- fuzzing: any bytes, every reader -------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = sorted(set(GOOD) | set(JMLE) | {"instruction", "input", "output", "serial_group", "num_choices_to_select"})
record = st.dictionaries(st.sampled_from(KEYS), json_value, max_size=9)
contents = st.one_of(
    st.binary(max_size=400),
    st.lists(record, max_size=4).map(lambda rs: "\n".join(json.dumps(r) for r in rs).encode()),
    st.lists(record, max_size=4).map(lambda rs: json.dumps(rs).encode()),
    st.lists(st.lists(st.text(max_size=6), min_size=6, max_size=6), max_size=3).map(
        lambda rows: (HEADER + "\n".join(",".join(r) for r in rows)).encode("utf-8", "surrogatepass")
    ),
)
NAMES = {
    "igakuqa": "990-A.jsonl",
    "jmle2026": "x.json",
    "jmmlu": "x.csv",
    "instructions": "x.jsonl",
    "jjsimqa": "107_888.jsonl",
}


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=contents, fmt=st.sampled_from(["auto", *data.FORMATS]))
def test_any_bytes_read_by_any_reader_give_records_or_errors_never_an_exception(tmp_path, raw, fmt):
    path = tmp_path / NAMES.get(fmt, "990-A.jsonl")
    path.write_bytes(raw)
    ds = data.read_dataset(path, fmt)
    assert ds.items or ds.errors  # a verdict: something read, or said why not
    for e in ds.errors:
        assert str(e).startswith(str(path)) and str(e).strip()


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=contents, suffix=st.sampled_from(sorted(set(NAMES.values()))))
def test_any_bytes_through_validate_give_a_report(tmp_path, raw, suffix):
    path = tmp_path / suffix
    path.write_bytes(raw)
    report = checks.validate([str(path)])
    assert report.success == (not report.errors)
    report.summary().encode("utf-8")  # printable: no lone surrogate reaches the terminal
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("name", ["deep JSON lines", "lone surrogate", "points true"])
def test_training_and_scoring_refuse_them_too(tmp_path, name):
    from jmed.checks import load_valid
    from jmed.data import DataLoadError

    path = {n: p for n, p, _ in corpus(tmp_path)}[name]
    with pytest.raises(DataLoadError, match=str(path)):
        load_valid(path)
