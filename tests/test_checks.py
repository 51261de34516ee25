"""Validation checks (jmed/checks.py): GX suites, code checks, leakage, the report."""

import json
from pathlib import Path

from conftest import BROKEN, broken_990a_errors

from jmed import checks, data
from jmed.config import DataFilter
from jmed.data import DataError, Question


def lines_of(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def make(pid, stem="どれか。", choices=("1", "2", "3", "4", "5"), answer=(("a",),), **kw):
    return Question(id=pid, stem=stem, choices=choices, answer=answer, file="f.jsonl", line=kw.pop("line", 1), **kw)


def test_stated_count_forms():
    assert checks.stated_count("正しいのはどれか。2つ選べ。") == 2
    assert checks.stated_count("正しいのはどれか。２つ選べ。") == 2
    assert checks.stated_count("正しいものはどれか.2つ 選べ.") == 2
    assert checks.stated_count("誤っているのはどれか。三つ選べ。") == 3
    assert checks.stated_count("正しいのはどれか。") is None


def test_select_counts_on_file():
    f = BROKEN / "counts.jsonl"
    qs = data.load_questions(f)
    assert [str(e) for e in checks.check_select_counts(qs)] == [
        f"{f}:1: answer: stem says 「2つ選べ」 but the answer has 1 letter(s): c",
        f"{f}:2: answer: stem says 「２つ選べ」 but the answer has 3 letter(s): a,c,e",
    ]
    assert checks.check_select_counts([make("X", stem="どれか。2つ選べ。", accept_any=True)]) == []


def test_answers_inside_choices():
    qs = [make("A"), make("B", answer=(("a",), ("f",))), make("C", choices=(), answer=(("26",),)), make("D", answer=())]
    assert [str(e) for e in checks.check_answers(qs)] == [
        'f.jsonl:1: answer: letter "f" outside 5 choices',
        "f.jsonl:1: answer: no answer",
    ]


def test_same_stem_warnings():
    qs = [
        make("112B20", stem="医師の職業倫理に反するのはどれか。", line=20),
        make("113E1", stem="医師の職業倫理に反するのはどれか。 ", choices=("6", "7", "8", "9", "0"), line=1),
        make("113E9", stem="医師の　職業倫理に反するのはどれか。", line=9),
        make("113E2", stem="別の問題はどれか。", line=2),
    ]
    assert [str(w) for w in checks.check_same_stem(qs)] == [
        "f.jsonl:1: problem_text: same stem as 112B20 (f.jsonl:20) but different choices",
        "f.jsonl:9: problem_text: same stem and choices as 112B20 (f.jsonl:20)",
    ]


def test_leakage_pairs_scores():
    train = [make("T1", stem="ABCDEFGHIJ"), make("T2", stem="まったく別の文章です"), make("T3", stem="ABCDEFGHIJ")]
    test = [make("S1", stem="ABCDEFGHIX", line=7), make("S2", stem="ＡＢＣＤＥＦＧＨＩＪ")]  # NFKC: equal to T1
    pairs = checks.leakage_pairs(train, test, threshold=90)
    # Indel ratio: 2 * 9 common / (10 + 10) = 90.0
    assert [(p["train_id"], p["test_id"], p["score"]) for p in pairs] == [
        ("T1", "S2", 100.0),
        ("T3", "S2", 100.0),
        ("T1", "S1", 90.0),
        ("T3", "S1", 90.0),
    ]
    assert pairs[2]["test_line"] == 7 and pairs[0]["same_choices"] is True
    assert checks.leakage_pairs(train, test, threshold=95) == pairs[:2]
    assert checks.leakage_pairs([], test) == []


def test_gx_suite_errors_name_file_line_field():
    qs = [
        make("A", points=12.0, line=3),
        make("B", answer=(("a", "b", "c", "d", "e", "f"),), choices=("1", "2", "3", "4", "5"), line=4),
        make("C", choices=("1", " ", "3", "4", "5"), line=5),
        make("D", choices=("1", " ", "3", "4", "5"), text_only=False, line=6),
        make("E", choices=("1", "1", "3", "4", "5"), line=7),
        make("F", year=1900, line=8),
    ]
    summary, errors, warnings = checks.run_suite("questions", checks.question_frame(qs))
    assert summary == {
        "suite": "questions",
        "success": False,
        "evaluated": len(checks.load_suite("questions")["expectations"]),
        "unsuccessful": 6,
        "errors": 4,
        "warnings": 2,
    }
    assert sorted(str(e) for e in errors) == [
        "f.jsonl:3: points: points outside 0..10 (got 12.0) [expect_column_values_to_be_between]",
        "f.jsonl:4: answer: more answers than choices [expect_column_pair_values_a_to_be_greater_than_b]",
        "f.jsonl:5: choices: blank choice(s) in a text-only question [expect_column_values_to_be_in_set]",
        "f.jsonl:8: year: exam year outside 1946..2100 (got 1900.0) [expect_column_values_to_be_between]",
    ]
    assert sorted(str(w) for w in warnings) == [
        "f.jsonl:6: choices: blank choice(s) in an image question (the choices are probably in the figure "
        "or the stem) [expect_column_values_to_be_in_set]",
        "f.jsonl:7: choices: two choices have the same text [expect_column_values_to_be_in_set]",
    ]


def test_suites_are_declarative_files():
    names = sorted(p.stem for p in checks.CHECKS_DIR.glob("*.json"))
    assert names == ["instructions", "questions"]
    for name in names:
        spec = checks.load_suite(name)
        assert spec["name"] == name and all(e["type"].startswith("expect_") for e in spec["expectations"])


def test_validate_sample_is_clean():
    report = checks.validate([data.SAMPLE_TRAIN], against=[data.SAMPLE_TEST])
    n_train, n_test = lines_of(data.SAMPLE_TRAIN), lines_of(data.SAMPLE_TEST)
    assert report.success and report.errors == [] and report.leakage == []
    assert report.questions == n_train + n_test
    qs = data.load_questions(data.SAMPLE_TRAIN) + data.load_questions(data.SAMPLE_TEST)
    assert report.excluded == {**data.exclusions(qs), "choices_unparsed": 0}
    assert [(d["role"], d["questions"], d["format"]) for d in report.datasets] == [
        ("data", n_train, "igakuqa"),
        ("against", n_test, "igakuqa"),
    ]
    assert report.datasets[0]["digest"] == data.digest(data.load_questions(data.SAMPLE_TRAIN))
    assert [e["success"] for e in report.expectations] == [True, True]
    inst = checks.validate([data.SAMPLE_INSTRUCTIONS])
    assert inst.success and inst.questions == lines_of(data.SAMPLE_INSTRUCTIONS)
    assert inst.expectations[0]["suite"] == "instructions"


def test_validate_broken_collects_every_error():
    f, counts = BROKEN / "990-A.jsonl", BROKEN / "counts.jsonl"
    report = checks.validate([f, counts, BROKEN / "empty.jsonl"])
    assert not report.success
    assert [str(DataError(**e)) for e in report.errors] == [
        *broken_990a_errors(),
        f"{counts}:1: answer: stem says 「2つ選べ」 but the answer has 1 letter(s): c",
        f"{counts}:2: answer: stem says 「２つ選べ」 but the answer has 3 letter(s): a,c,e",
        f"{BROKEN / 'empty.jsonl'}: empty file (no records)",
    ]
    assert report.questions == 3 + 4 + 0
    assert set(report.errors[0]) == {"file", "line", "field", "message"}


def test_validate_cross_dataset_duplicates_and_identical_leak(tmp_path):
    line = json.dumps(
        {
            "problem_id": "1A1",
            "problem_text": "同じ問題はどれか。",
            "choices": ["1", "2", "3", "4", "5"],
            "text_only": True,
            "answer": ["a"],
            "points": "1",
        },
        ensure_ascii=False,
    )
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(line + "\n", encoding="utf-8")
    b.write_text(line + "\n", encoding="utf-8")
    r = checks.validate([a], against=[b])
    assert [str(DataError(**e)) for e in r.errors] == [
        f'{b}:1: problem_id: duplicate id "1A1" (first at {a}:1)',
        f"{b}:1: problem_text: test question 1A1 is also in the training data as 1A1 ({a}:1)",
    ]
    assert [(p["train_id"], p["test_id"], p["score"]) for p in r.leakage] == [("1A1", "1A1", 100.0)]


def test_jmle_exclusion_counted(tmp_path):
    r = checks.validate([BROKEN / "jmle_broken.json"])
    assert r.excluded["choices_unparsed"] == 1 and r.questions == 3  # counted, and in the data: score grades it
    assert r.excluded["numeric_answer"] == 1 and r.excluded["image"] == 0


def test_report_json_and_html(tmp_path):
    report = checks.validate([BROKEN / "990-A.jsonl"])
    json_path, html_path = report.write(tmp_path / "out" / "report.json")
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert {"success", "questions", "errors", "warnings", "excluded", "leakage", "datasets"} <= set(loaded)
    assert loaded["success"] is False and loaded["questions"] == 3 and len(loaded["errors"]) == 6
    page = html_path.read_text(encoding="utf-8")
    assert html_path.name == "report.html" and "FAILED" in page
    assert "letter &quot;f&quot; outside 5 choices" in page and "990-A.jsonl" in page
    summary = report.summary()
    assert summary.splitlines()[0] == (
        "FAILED: 3 questions in 1 dataset(s); 6 error(s), 0 warning(s); excluded: none; leakage pairs: 0"
    )
    assert f'  error: {BROKEN / "990-A.jsonl"}:3: answer: letter "f" outside 5 choices' in summary


def test_leakage_bound_is_exact_against_bruteforce():
    import random

    rng = random.Random(3)
    stems = [q.stem for q in data.load_questions(data.SAMPLE_TRAIN) + data.load_questions(data.SAMPLE_TEST)]

    def edit(text, n):
        chars = list(text)
        for _ in range(n):
            i = rng.randrange(len(chars))
            chars[i : i + 1] = rng.choice([[], [chr(0x4E00 + rng.randrange(500))], [chars[i], "の"]])
        return "".join(chars) or "。"

    train = [make(f"T{i}", stem=edit(rng.choice(stems), rng.randrange(0, 12))) for i in range(300)]
    test = [make(f"S{i}", stem=edit(rng.choice(stems), rng.randrange(0, 12))) for i in range(120)]
    test.append(make("S-long", stem="長" * 3000))
    train.append(make("T-long", stem="長" * 2900 + "短" * 100))
    for threshold in (98, 90, 80, 60):
        fast = [(p["train_id"], p["test_id"], p["score"]) for p in checks.leakage_pairs(train, test, threshold)]
        assert fast == checks.leakage_pairs_bruteforce(train, test, threshold)
        assert fast, threshold  # every threshold finds pairs here, so the comparison means something


def test_cross_dataset_checks_see_only_the_questions_used(tmp_path):
    """A whole tree trained on with a year filter, tested on one of its years: not a duplicate."""
    import shutil

    from jmed.config import DataFilter

    tree = tmp_path / "tree"
    for year, name in ((2018, "train"), (2022, "test")):
        (tree / str(year)).mkdir(parents=True)
        qs = [json.loads(x) for x in (data.SAMPLE_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        (tree / str(year) / f"{name}.jsonl").write_text(
            "\n".join(json.dumps(q, ensure_ascii=False) for q in qs) + "\n", encoding="utf-8"
        )
        shutil.copy(data.SAMPLE_DIR / f"{name}_metadata.jsonl", tree / str(year) / f"{name}_metadata.jsonl")
    test = tree / "2022"
    unfiltered = checks.validate([tree], against=[test])
    assert not unfiltered.success and any("duplicate id" in e["message"] for e in unfiltered.errors)
    train_years = sorted({q.year for q in data.load_questions(tree / "2018")})
    filtered = checks.validate([tree], against=[test], filters=DataFilter(years=tuple(train_years)))
    assert not any("duplicate id" in e["message"] for e in filtered.errors), filtered.errors[:3]


def test_merged_choices_are_a_warning_naming_the_question():
    from jmed.checks import check_merged_choices
    from jmed.data import Question

    merged = Question(
        id="119A22",
        stem="どれか。",
        choices=("肺炎", "結核 c. 腎炎", "ｄ．肝炎", "敗血症"),
        answer=(("a",),),
        file="119-A.jsonl",
        line=22,
    )
    fine = Question(
        id="113B4",
        stem="どれか。",
        choices=("A型肝炎", "C.difficile", "IgA(immunoglobulin A)血管炎", "ビタミンB12", "T細胞"),
        answer=(("a",),),
    )
    [w] = check_merged_choices([merged, fine])
    assert str(w) == (
        '119-A.jsonl:22: choices[1]: 119A22: choice b holds another choice label ("結核 c. 腎炎"): '
        "choices merged in the source? (4 choices)"
    )


def _near_duplicate(tmp_path):
    def rec(pid, stem):
        return json.dumps(
            {
                "problem_id": pid,
                "problem_text": stem,
                "choices": ["1", "2", "3", "4", "5"],
                "text_only": True,
                "answer": ["a"],
                "points": "1",
            },
            ensure_ascii=False,
        )

    a, b = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    a.write_text(
        rec("1A1", "65歳の男性。3日前からの発熱と咳嗽を主訴に来院した。最も考えられるのはどれか。") + "\n",
        encoding="utf-8",
    )
    b.write_text(
        rec("2B7", "別の問題はどれか。")
        + "\n"
        + rec("2B8", "66歳の男性。3日前からの発熱と咳嗽を主訴に来院した。最も考えられるのはどれか。")
        + "\n",
        encoding="utf-8",
    )
    return a, b


def test_leakage_policy_warn_and_fail(tmp_path):
    """A near-duplicate between training and test data is a decision: `warn` (default) counts a warning at
    the test question's file:line and says what to do; `fail` makes it an error, so validation fails."""
    a, b = _near_duplicate(tmp_path)
    warn = checks.validate([a], against=[b])
    (pair,) = warn.leakage
    assert (pair["train_id"], pair["test_id"], pair["score"] >= 90) == ("1A1", "2B8", True)
    assert warn.success and warn.errors == [] and warn.leakage_policy == "warn"
    assert [(w["file"], w["line"], w["field"]) for w in warn.warnings] == [(str(b), 2, "leakage")]
    text = warn.summary()
    assert "1 warning(s)" in text and f"train 1A1 ~ test 2B8 (similarity {pair['score']:g}; {a}:1 ~ {b}:2)" in text
    assert "--exclude-ids 2B8" in text and "--leakage fail" in text

    fail = checks.validate([a], against=[b], leakage="fail")
    assert not fail.success and fail.warnings == []
    assert [str(DataError(**e)) for e in fail.errors] == [
        f"{b}:2: leakage: test question 2B8 is a near-duplicate of training question 1A1 ({a}:1, similarity "
        f"{pair['score']:g}); --leakage fail"
    ]
    assert "FAILED" in fail.summary() and "near-duplicates (similarity >= 90) are errors" in fail.summary()
    # leaving the question out of the test data is the other way: no pair, nothing to decide
    kept = checks.validate([a], against=[b], leakage="fail", against_filters=DataFilter(exclude_ids=("2B8",)))
    assert kept.success and kept.leakage == []
