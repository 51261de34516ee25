"""Hostile data, round two: one rule per input class, each a case that was wrongly accepted, wrongly
refused or silently lost before. Every case states the exact verdict."""

import json
import os

from jmed import checks, data

GOOD = {
    "problem_id": "990A1",
    "problem_text": "どれか。",
    "choices": ["甲", "乙", "丙", "丁", "戊"],
    "text_only": True,
    "answer": ["a"],
    "points": "1",
}


def _line(**over) -> str:
    return json.dumps({**GOOD, **over}, ensure_ascii=False)


def _errors(path) -> list[str]:
    return [str(e) for e in data.read_dataset(path).errors]


def test_a_key_named_twice_in_one_object_is_an_error(tmp_path):
    f = tmp_path / "990-A.jsonl"
    f.write_text(_line().replace('"answer": ["a"]', '"answer": ["a"], "answer": ["b"]') + "\n", encoding="utf-8")
    assert _errors(f) == [f'{f}:1: answer: the key "answer" appears twice in one object (JSON would keep the last)']
    jmle = tmp_path / "jmle.json"
    jmle.write_text('[\n{"question_id": "120A-1", "question_id": "120A-2"}\n]', encoding="utf-8")
    assert _errors(jmle) == [
        f'{jmle}:2: question_id: the key "question_id" appears twice in one object (JSON would keep the last)'
    ]


def test_line_separators_inside_strings_are_text_not_line_ends(tmp_path):
    f = tmp_path / "990-A.jsonl"
    raw = _line(problem_text="どれか。\u2028改行\u0085つづき") + "\n" + _line(problem_id="990A2") + "\r\n"
    f.write_text(raw, encoding="utf-8")
    ds = data.read_dataset(f)
    assert ds.errors == [] and [(q.id, q.line) for q in ds.items] == [("990A1", 1), ("990A2", 2)]
    assert ds.items[0].stem == "どれか。\u2028改行\u0085つづき"


def test_numbers_only_in_the_forms_exams_write(tmp_path):
    f = tmp_path / "990-A.jsonl"
    rows = [
        _line(problem_id="990A1", points="1_0"),
        _line(problem_id="990A2", points="１"),
        _line(problem_id="990A3", choices=[], answer=["1,,,.."]),
        _line(problem_id="990A4", choices=[], answer=["２６"]),
        _line(problem_id="990A5", points="2.5"),
        _line(problem_id="990A6", choices=[], answer=["1,200.5"]),
    ]
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = data.read_dataset(f)
    assert [str(e) for e in ds.errors] == [
        f'{f}:1: points: not a number as exams write points (ASCII digits, one decimal point): "1_0"',
        f'{f}:2: points: not a number as exams write points (ASCII digits, one decimal point): "１"',
        f'{f}:3: answer: numeric-entry question (no choices) needs one number, got ["1,,,.."]',
        f'{f}:4: answer: numeric-entry question (no choices) needs one number, got ["２６"]',
    ]
    assert {q.id: (q.points, q.answer) for q in ds.items} == {
        "990A5": (2.5, (("a",),)),
        "990A6": (1.0, (("1,200.5",),)),
    }


def test_invisible_only_text_is_blank_and_bidi_controls_are_warned(tmp_path):
    f = tmp_path / "990-A.jsonl"
    rows = [
        _line(problem_id="990A1", problem_text="\u200b\u200b\u200b"),
        _line(problem_id="990A2", choices=["甲", "甲\u200b", "丙", "丁", "戊"]),
        _line(problem_id="990A3", problem_text="どれか。\u202eかれど"),
    ]
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = checks.validate([f])
    got = [str(data.DataError(**e)) for e in r.errors] + [str(data.DataError(**w)) for w in r.warnings]
    assert any(m.startswith(f"{f}:1: stem: question text is blank") for m in got)  # three zero-width spaces
    assert f"{f}:2: choices: two choices have the same text [expect_column_values_to_be_in_set]" in got
    assert (
        f"{f}:3: problem_text: 990A3: bidi control character(s) U+202E: the text displays in another order "
        "than it is read" in got
    )
    assert not r.success


def test_an_id_and_its_full_width_or_zero_width_variant_are_one_id(tmp_path):
    f = tmp_path / "990-A.jsonl"
    f.write_text(
        "\n".join([_line(), _line(problem_id="９９０Ａ１"), _line(problem_id="990A\u200b1")]) + "\n", encoding="utf-8"
    )
    assert _errors(f) == [
        f'{f}:2: problem_id: duplicate id "９９０Ａ１" (first at line 1)',
        f'{f}:3: problem_id: duplicate id "990A\\u200b1" (first at line 1)',
    ]


def test_a_metadata_row_for_no_question_is_an_error(tmp_path):
    f = tmp_path / "990-A.jsonl"
    f.write_text(_line() + "\n", encoding="utf-8")
    meta = tmp_path / "990-A_metadata.jsonl"
    meta.write_text(
        '{"problem_id": "990A1", "kinki": ["b"]}\n{"problem_id": "990A9", "kinki": ["c"]}\n', encoding="utf-8"
    )
    assert _errors(f) == [f'{meta}:2: problem_id: "990A9" is no question of 990-A.jsonl']


def test_a_csv_naming_a_column_twice_is_an_error_and_cr_only_line_ends_are_read(tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("question,optionA,optionB,optionC,optionD,answer,answer\nq,a,b,c,d,A,B\n", encoding="utf-8")
    assert _errors(twice) == [f"{twice}:1: header: column(s) named twice: answer"]
    mac = tmp_path / "mac.csv"
    mac.write_bytes("question,optionA,optionB,optionC,optionD,answer\r甲はどれか。,甲,乙,丙,丁,A\r".encode())
    ds = data.read_dataset(mac)
    assert ds.errors == [] and [q.answer for q in ds.items] == [(("a",),)]


def test_jmle_fields_that_contradict_the_id_are_an_error(tmp_path):
    f = tmp_path / "jmle.json"
    q = {
        "question_id": "120B-30",
        "block": "A",
        "number": 30,
        "question_type": "multiple_choice",
        "question_text": "30　どれか。\n\na　甲\nb　乙",
        "requires_image": False,
        "answer": ["a"],
    }
    f.write_text(
        json.dumps([q, {**q, "question_id": "120B-31", "block": "B", "number": 3}], ensure_ascii=False),
        encoding="utf-8",
    )
    assert _errors(f) == [
        f'{f}:1: block: 120B-30: block "A" and number 30 contradict the id (block B, number 30)',
        f'{f}:1: number: 120B-31: block "B" and number 3 contradict the id (block B, number 31)',
    ]


def test_igakuqa_ids_with_three_digit_numbers_stay_igakuqa(tmp_path):
    f = tmp_path / "901-A.jsonl"
    f.write_text(_line(problem_id="901A100") + "\n", encoding="utf-8")
    ds = data.read_dataset(f)
    assert (ds.format, ds.errors, [q.id for q in ds.items]) == ("igakuqa", [], ["901A100"])


def test_a_folder_reads_upper_case_extensions_and_names_what_it_cannot_read(tmp_path):
    (tmp_path / "902-A.JSONL").write_text(_line(problem_id="902A1") + "\n", encoding="utf-8")
    (tmp_path / "902-B.jsonl").write_text(_line(problem_id="902B1") + "\n", encoding="utf-8")
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "902-C.jsonl")
    ds = data.read_dataset(tmp_path)
    assert ds.errors == [] and sorted(q.id for q in ds.items) == ["902A1", "902B1"]
    assert [str(w) for w in ds.warnings] == [f"{tmp_path}: 1 entry not read: 902-C.jsonl (a broken link)"]


def test_any_category_name_becomes_a_metric_name_mlflow_takes():
    from mlflow.utils.validation import _validate_metric_name

    from jmed.evaluate import _metrics, category_segment

    names = ["循環器", "x" * 300, "呼吸器/", "..", "a/../b", "心臓:血管", "", "  ", "y" * 300 + "z"]
    summary = {"by_category": {n: {"accuracy": 0.5} for n in names}}
    keys = [k for k in _metrics(summary, {}, 1, 0, 1.0) if k.startswith("eval/category/")]
    for k in keys:
        _validate_metric_name(k)  # raises on a name MLflow refuses
        assert len(k) <= 250
    assert len(set(keys)) == len(names) - 2  # "" and "  " are one blank category, "x"*300 and "y"*300+"z" differ
    assert category_segment("循環器") == "循環器" and category_segment("呼吸器/") == "呼吸器_"
    assert category_segment("x" * 300) != category_segment("x" * 301)


def _warnings(path) -> list[str]:
    return [str(e) for e in data.read_dataset(path).warnings]


def test_a_field_no_reader_knows_is_warned_once_per_file_with_the_closest_name(tmp_path):
    f = tmp_path / "990-A.jsonl"
    rows = [_line(anwser=["a"]), _line(problem_id="990A2", anwser=["b"]), _line(problem_id="990A3")]
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "990-A_metadata.jsonl").write_text('{"problem_id": "990A1", "kinkl": ["a"]}\n', encoding="utf-8")
    ds = data.read_dataset(f)
    assert not ds.errors and len(ds.questions) == 3  # a warning: the questions are read as before
    assert _warnings(f) == [  # the metadata file is read first
        f'{tmp_path / "990-A_metadata.jsonl"}:1: "kinkl": not a field of igakuqa data, ignored '
        "(1 record, first at line 1); did you mean 'kinki'?",
        f"{f}:1: \"anwser\": not a field of igakuqa data, ignored (2 records, first at line 1); did you mean 'answer'?",
    ]
    jmle = tmp_path / "jmle.json"
    q = {
        "question_id": "120A-1",
        "block": "A",
        "number": 1,
        "question_type": "single",
        "question_text": "問1 どれか。\na 甲\nb 乙\nc 丙\nd 丁\ne 戊",
        "requires_image": False,
        "answer": ["a"],
        "num_choice_to_select": 1,
    }
    jmle.write_text(json.dumps([q], ensure_ascii=False), encoding="utf-8")
    [warning] = _warnings(jmle)
    assert "num_choice_to_select" in warning and "did you mean 'num_choices_to_select'?" in warning
    csv = tmp_path / "jmmlu.csv"
    csv.write_text("question,optionA,optionB,optionC,optionD,answer,tagg\nどれか。,甲,乙,丙,丁,A,x\n", encoding="utf-8")
    assert _warnings(csv) == [
        f"{csv}:2: \"tagg\": not a field of jmmlu data, ignored (1 record, first at line 2); did you mean 'tag'?"
    ]
    ins = tmp_path / "ins.jsonl"
    ins.write_text('{"instruction": "答えよ", "imput": "x", "output": "a"}\n', encoding="utf-8")
    assert _warnings(ins) == [
        f"{ins}:1: \"imput\": not a field of instructions data, ignored (1 record, first at line 1); did you mean 'input'?"
    ]


def test_every_registered_readers_own_fixture_has_no_unknown_field():
    from pathlib import Path

    from jmed import readers

    here = Path(__file__).parent
    for name in readers.names():
        folder = here / "fixtures_readers" / name
        ds = data.read_dataset(folder if folder.exists() else here / f"fixtures_{name}", fmt=name)
        assert ds.items, name
        assert not [w for w in ds.warnings if "not a field of" in w.message], name


def test_stems_and_choices_have_one_length_limit_shared_by_validation_the_suite_and_serving(tmp_path):
    from jmed import contract
    from jmed.records import MAX_TEXT_CHARS
    from jmed.suites import load_suite

    assert MAX_TEXT_CHARS == contract.MAX_CHARS == 20_000
    limits = {
        e["kwargs"]["column"]: e["kwargs"]["max_value"]
        for e in load_suite("questions")["expectations"]
        if e["kwargs"].get("column") in ("stem", "longest_choice") and "max_value" in e["kwargs"]
    }
    assert limits == {"stem": MAX_TEXT_CHARS, "longest_choice": MAX_TEXT_CHARS}
    f = tmp_path / "990-A.jsonl"
    rows = [
        _line(problem_text="あ" * MAX_TEXT_CHARS),  # at the limit: read
        _line(problem_id="990A2", problem_text="い" * (MAX_TEXT_CHARS + 1)),
        _line(problem_id="990A3", choices=["甲", "乙" * 300_000, "丙", "丁", "戊"]),
    ]
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = data.read_dataset(f)
    assert [str(e) for e in ds.errors] == [
        f"{f}:2: stem: 20001 characters; at most 20000",
        f"{f}:3: choices[1]: 300000 characters; at most 20000",
    ]
    assert [q.id for q in ds.questions] == ["990A1"]
    report = checks.validate([str(f)])
    assert not report.success and {e["field"] for e in report.errors} == {"stem", "choices[1]"}


def test_predict_refuses_ids_score_could_not_read_back(tmp_path):
    import pytest

    from jmed.registry import read_questions_file

    q = {"question": "どれか。", "choices": ["甲", "乙"]}
    f = tmp_path / "q.jsonl"
    rows = [
        {**q, "id": "a1"},
        {**q, "id": "ａ１"},  # full-width: the same id as line 1
        {**q, "id": ["x"]},
        {**q, "id": True},
        {**q, "problem_id": " "},
        {**q, "id": 7},  # an integer is written as "7"
        q,  # no id: its line number, "7", which line 6 has taken
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        read_questions_file(f)
    assert str(exc.value).splitlines() == [
        "5 bad line(s):",
        f'{f}:2: id: "ａ１" is the id of line 1 too',
        f"{f}:3: id: must be a non-empty string or an integer, got a list",
        f"{f}:4: id: must be a non-empty string or an integer, got a boolean",
        f"{f}:5: problem_id: must be a non-empty string or an integer, got empty",
        f'{f}:7: problem_id: "7" is the id of line 6 too',
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [{**q, "id": 7}, q]) + "\n", encoding="utf-8")
    assert read_questions_file(f)[0] == ["7", "2"]
