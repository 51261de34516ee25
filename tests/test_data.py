"""Loaders, digests, filters and splits (jmed/data.py) on the bundled sample and on broken files."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import BROKEN, broken_990a_errors

from jmed import data
from jmed.config import DataFilter
from jmed.data import DataError, DataLoadError, Question


def lines_of(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def errors_of(path, fmt="auto") -> list[str]:
    return [str(e) for e in data.read_dataset(path, fmt).errors]


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def q(pid, answer=("a",), choices=("一", "二", "三", "四", "五"), points="1", text_only=True, stem=None):
    return {
        "problem_id": pid,
        "problem_text": stem or f"{pid}の問題はどれか。",
        "choices": list(choices),
        "text_only": text_only,
        "answer": list(answer),
        "points": points,
    }


# ---- bundled sample ---------------------------------------------------------------------------------


def test_sample_loads_with_exact_counts():
    train = data.load_questions(data.SAMPLE_TRAIN)
    test = data.load_questions(data.SAMPLE_TEST)
    assert len(train) == lines_of(data.SAMPLE_TRAIN)
    assert len(test) == lines_of(data.SAMPLE_TEST)
    assert {q.year for q in train} == {2024} and {q.year for q in test} == {2025}
    assert all(q.id.startswith("901") for q in train) and all(q.id.startswith("902") for q in test)
    meta = [json.loads(x) for x in data.SAMPLE_TRAIN.with_name("train_metadata.jsonl").read_text("utf-8").splitlines()]
    cats = {m["problem_id"]: m["category"] for m in meta}
    assert all(q.category == cats[q.id] for q in train)
    # every code path has a case somewhere in the sample
    both = train + test
    assert {1, 2, 3} <= {q.n_answers for q in both}
    assert any(q.numeric for q in both) and any(not q.text_only for q in both)
    assert any(q.points == 3 for q in both) and any(q.kinki for q in both)


def test_sample_instructions():
    records = data.load_instructions(data.SAMPLE_INSTRUCTIONS)
    assert len(records) == lines_of(data.SAMPLE_INSTRUCTIONS)
    assert all(r.instruction and r.output for r in records)
    assert data.detect_format(data.SAMPLE_INSTRUCTIONS) == "instructions"
    assert data.load_training_items(data.SAMPLE_INSTRUCTIONS) == records
    assert data.load_training_items(data.SAMPLE_TRAIN) == data.load_questions(data.SAMPLE_TRAIN)
    with pytest.raises(DataLoadError, match="no such file or folder"):
        data.load_training_items(data.SAMPLE_DIR / "missing.jsonl")


# ---- IgakuQA reading ------------------------------------------------------------------------------


def test_igakuqa_fields_metadata_and_corrections(tmp_path):
    year = tmp_path / "data" / "2022"
    write_jsonl(
        year / "116-A.jsonl",
        [
            q("116A1", ["c", "a"], stem="正しいのはどれか。2つ選べ。"),
            q("116A71", ["e"]),
            q("116A75", ["04"], choices=(), points="0"),
        ],
    )
    write_jsonl(
        year / "116-A_metadata.jsonl",
        [
            {"problem_id": "116A1", "category": "小児科", "kinki": ["ｂ", "de"]},
            {"problem_id": "116A71", "category": "小児科", "kinki": []},
        ],
    )
    write_jsonl(
        year / "116-A_translate.jsonl",
        [
            {
                "problem_id": "116A1",
                "problem_text_en": "Which?",
                "choices_en": ["1", "2", "3", "4", "5"],
                "answer": ["a"],
            }
        ],
    )
    write_jsonl(tmp_path / "data" / "2021" / "115-B.jsonl", [q("115B30", ["a or d"], points="3")])
    qs = data.load_questions(tmp_path / "data")  # the whole tree; _translate ignored
    assert [x.id for x in qs] == ["115B30", "116A1", "116A71", "116A75"]
    b30, a1, a71, a75 = qs
    assert b30.answer == (("a",), ("d",)) and b30.points == 3.0 and b30.block == "B" and b30.year == 2021
    assert a1.answer == (("a", "c"),) and a1.kinki == ("b", "d", "e") and a1.category == "小児科"
    assert a1.stem == "正しいのはどれか。2つ選べ。" and a1.exam == "116" and a1.year == 2022
    assert a71.accept_any and not a1.accept_any
    assert a75.numeric and a75.answer == (("04",),) and a75.points == 0.0
    english = data.read_dataset(year / "116-A.jsonl", translate=True).questions
    assert english[0].stem == "Which?" and english[0].choices == ("1", "2", "3", "4", "5")


def test_year_precedence(tmp_path):
    # metadata "year" > a 4-digit folder name > exam number (112 -> 2018, 120 -> 2026)
    write_jsonl(tmp_path / "2030" / "a.jsonl", [q("112A1"), q("901A1")])
    write_jsonl(tmp_path / "2030" / "a_metadata.jsonl", [{"problem_id": "112A1", "year": 2024}])
    write_jsonl(tmp_path / "x" / "b.jsonl", [q("112A2"), q("120B3"), q("901A2")])
    by_id = {x.id: x for x in data.load_questions(tmp_path)}
    assert by_id["112A1"].year == 2024 and by_id["901A1"].year == 2030
    assert by_id["112A2"].year == 2018 and by_id["120B3"].year == 2026 and by_id["901A2"].year is None
    assert data.exam_year("116") == 2022 and data.exam_year("901") is None


def test_broken_igakuqa_each_error_named_and_rest_checked():
    f = BROKEN / "990-A.jsonl"
    assert errors_of(f) == broken_990a_errors()
    questions, errors = data.read_questions(f)
    assert [x.id for x in questions] == ["990A1", "990A1", "990A9"]  # lines 1, 6, 9 parse
    with pytest.raises(DataLoadError) as exc:
        data.load_questions(f)
    assert len(exc.value.errors) == 6 and f'{f}:3: answer: letter "f" outside 5 choices' in str(exc.value)


@pytest.mark.parametrize(
    "name,looks,enc",
    [
        ("sjis.jsonl", "Shift_JIS (cp932)", "cp932"),
        ("eucjp.jsonl", "EUC-JP", "euc_jp"),
        ("utf16.jsonl", "UTF-16", "utf-16"),
    ],
)
def test_non_utf8_files_name_the_encoding(name, looks, enc):
    f = BROKEN / name
    ds = data.read_dataset(f)
    assert len(ds.errors) == 1
    err = ds.errors[0]
    assert (err.file, err.line, err.field) == (str(f), 1, "encoding")
    assert err.message.startswith("not UTF-8 (byte 0x")
    assert err.message.endswith(f"it looks like {looks}; convert the file, e.g. iconv -f {enc} -t utf-8")
    # the rest is still checked: both records were read with the guessed encoding
    assert [x.stem for x in ds.questions] == [
        "甲状腺ホルモンの合成に必須の元素はどれか。",
        "Wilson病で蓄積する金属はどれか。",
    ]


def test_one_shift_jis_line_in_a_utf8_file():
    f = BROKEN / "mixed_sjis_line2.jsonl"
    assert errors_of(f) == [
        f"{f}:2: encoding: not UTF-8 (byte 0x95); it looks like Shift_JIS (cp932); "
        "convert the file, e.g. iconv -f cp932 -t utf-8"
    ]


def test_empty_and_missing(tmp_path):
    f = BROKEN / "empty.jsonl"
    assert errors_of(f) == [f"{f}: empty file (no records)"]
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n", encoding="utf-8")
    assert errors_of(blank, "igakuqa") == [f"{blank}: empty file (no records)"]
    assert errors_of(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}: no such file or folder"]
    assert errors_of("") == [": no data path given"]
    with pytest.raises(DataLoadError, match="no data path given"):
        data.load_questions("")


def test_wrong_types_and_kinki(tmp_path):
    f = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {**q("1A1"), "text_only": "yes"},
            {**q("1A2"), "answer": "a"},
            {**q("1A3"), "choices": ["x", 3, "y", "z", "w"]},
            q("1A4", ["26", "27"], choices=()),
            q("1A5", ["a", "a"]),
            ["not", "an", "object"],
        ],
    )
    write_jsonl(tmp_path / "t_metadata.jsonl", [{"problem_id": "1A1", "kinki": "a"}])
    meta = tmp_path / "t_metadata.jsonl"
    assert errors_of(f) == [
        f"{meta}:1: kinki: expected a list of letters, got a string",
        f"{f}:1: text_only: expected a boolean (true/false), got a string",
        f"{f}:2: answer: expected a list, got a string",
        f"{f}:3: choices: choice 2 is a number, expected a string",
        f'{f}:4: answer: numeric-entry question (no choices) needs one number, got ["26", "27"]',
        f"{f}:5: answer: repeated letter in ['a', 'a']",
        f"{f}:6: expected a JSON object, got a list",
    ]


# ---- other formats ----------------------------------------------------------------------------------


def test_jmle2026_choices_from_stem_lines_and_exclusion():
    f = BROKEN / "jmle_broken.json"
    ds = data.read_dataset(f)
    assert ds.format == "jmle2026"
    assert [str(e) for e in ds.errors] == [
        f'{f}:28: answer: letter "g" outside 5 choices',
        f"{f}:43: question_text: missing field",
    ]
    assert ds.skipped == {}
    assert [str(w) for w in ds.warnings] == [
        f"{f}:15: question_text: 990A-2: its choices could not be parsed from the text (a table?): scored, but left "
        "out wherever a prompt is needed"
    ]
    first, table, calc = ds.questions
    assert table.no_prompt == "choices_unparsed" and len(table.choices) == 5  # graded a-e, never prompted
    assert first.id == "990A-1" and first.stem == "甲状腺ホルモンの合成に必須の元素はどれか。"
    assert first.choices == ("鉄", "銅", "亜鉛", "ヨウ素", "セレン") and first.answer == (("d",),)
    assert first.year is None and first.block == "A" and first.points == 1.0
    assert calc.numeric and calc.answer == (("22",),) and calc.stem.startswith("BMIを求めよ。")
    assert ds.records == 3


def test_split_jmle_choices():
    stem, choices = data.split_jmle_choices("12　どれか。\n\n　a　絶　食\n　b　輸液\n\n　c　安静\n")
    assert stem == "どれか。" and choices == ("絶　食", "輸液", "安静")
    assert data.split_jmle_choices("表を示す。\n|a|1|\n|b|2|") is None
    assert data.split_jmle_choices("1　どれか。\na　x\nc　y") is None  # letters must run a, b, c…


def test_jmmlu_csv():
    f = BROKEN / "jmmlu_broken.csv"
    ds = data.read_dataset(f)
    assert ds.format == "jmmlu"
    assert [str(e) for e in ds.errors] == [
        f'{f}:3: answer: letter "E" outside 4 choices (A-D)',
        f"{f}:4: optionB: empty value",
        f"{f}:5: expected 7 columns, got 5",
    ]
    ok, multiline = ds.questions
    assert ok.id == "jmmlu_broken-1" and ok.choices == ("僧帽弁", "三尖弁", "大動脈弁", "肺動脈弁")
    assert ok.answer == (("b",),) and ok.category == "anatomy" and ok.source == "jmmlu"
    assert multiline.line == 6 and multiline.stem == "複数行の\n問題文" and multiline.answer == (("a",),)


def test_jmmlu_missing_column(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("tag,question,optionA,optionB,optionC,answer\nt,q,a,b,c,A\n", encoding="utf-8")
    assert errors_of(f) == [
        f"{f}:1: header: missing column(s) optionD (expected question,optionA,optionB,optionC,optionD,answer)"
    ]


def test_jjsimqa_schema(tmp_path):
    f = write_jsonl(
        tmp_path / "jj.jsonl",
        [
            {**q("107_64-0", ["d"]), "points": 1.0, "choices_orig": "[…]"},
            {**q("107_888-26", ["d", ",", "e"]), "points": 1.0, "choices_orig": "[…]"},
        ],
    )
    ds = data.read_dataset(f)
    assert ds.format == "jjsimqa" and not ds.errors
    assert [x.answer for x in ds.questions] == [(("d",),), (("d", "e"),)]
    assert ds.questions[0].year is None and ds.questions[0].block == "" and ds.questions[0].source == "jjsimqa"
    assert [str(w) for w in ds.warnings] == [f'{f}:2: answer: stray "," in answer ["d", ",", "e"], read as ["d", "e"]']


def test_instructions_errors():
    f = BROKEN / "instructions_broken.jsonl"
    assert errors_of(f) == [
        f"{f}:2: output: missing field",
        f"{f}:3: input: expected a string, got a number",
        f"{f}:4: instruction: empty value",
        f"{f}:5: expected a JSON object, got a list",
    ]
    with pytest.raises(DataLoadError):
        data.load_instructions(f)


def test_detect_and_forced_format(tmp_path):
    assert data.detect_format(BROKEN / "jmle_broken.json") == "jmle2026"
    assert data.detect_format(BROKEN / "jmmlu_broken.csv") == "jmmlu"
    assert data.detect_format(BROKEN / "990-A.jsonl") == "igakuqa"
    write_jsonl(tmp_path / "2018" / "112-A.jsonl", [q("112A1")])
    write_jsonl(
        tmp_path / "2018" / "112-A_metadata.jsonl", [{"problem_id": "112A1", "instruction": "x", "output": "y"}]
    )
    assert data.detect_format(tmp_path) == "igakuqa"  # a folder: its first data file decides
    assert data.detect_format(data.SAMPLE_TEST) == "igakuqa"
    # forcing a format that does not fit gives errors, never a crash
    f = BROKEN / "990-A.jsonl"
    assert errors_of(f, "instructions")[0] == f"{f}:1: instruction: missing field"
    with pytest.raises(ValueError, match="unknown data format 'xml'"):
        data.read_dataset(f, "xml")


# ---- digest, filters, splits, exclusions ------------------------------------------------------------


def test_digest_ignores_order_paths_and_lines(tmp_path):
    a = data.load_questions(data.SAMPLE_TRAIN)
    copy = tmp_path / "elsewhere" / "renamed.jsonl"
    copy.parent.mkdir()
    lines = data.SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()
    copy.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    shutil.copy(data.SAMPLE_TRAIN.with_name("train_metadata.jsonl"), tmp_path / "elsewhere" / "renamed_metadata.jsonl")
    b = data.load_questions(copy)
    assert [x.file for x in a] != [x.file for x in b]
    assert data.digest(a) == data.digest(b) == data.digest(list(reversed(a)))
    assert len(data.digest(a)) == 64
    changed = [Question(**{**x.__dict__, "answer": (("a",),)}) if i == 0 else x for i, x in enumerate(a)]
    assert data.digest(changed) != data.digest(a)


def make(pid, **kw):
    base = dict(id=pid, stem="s", choices=("1", "2", "3", "4", "5"), answer=(("a",),))
    return Question(**{**base, **kw})


def test_filters_splits_exclusions():
    qs = [
        make("A", year=2018, block="A"),
        make("B", year=2019, block="B", text_only=False),
        make("C", year=2020, block="C", choices=(), answer=(("26",),)),
        make("D", year=2021, points=0.0),
        make("E", year=2022, choices=("1", "2", "3", "4")),
        make("F"),
    ]
    ids = lambda xs: [x.id for x in xs]  # noqa: E731
    assert ids(data.apply_filters(qs, DataFilter(text_only=True))) == ["A", "C", "D", "E", "F"]
    assert ids(data.apply_filters(qs, DataFilter(five_choices=True))) == ["A", "B", "D", "F"]
    assert ids(data.apply_filters(qs, DataFilter(scored_only=True))) == ["A", "B", "C", "E", "F"]
    assert ids(data.apply_filters(qs, DataFilter(years=(2018, 2022)))) == ["A", "E"]
    assert ids(data.apply_filters(qs, DataFilter(blocks=("B", "C")))) == ["B", "C"]
    assert ids(data.apply_filters(qs, DataFilter(ids=("F", "A")))) == ["A", "F"]
    assert ids(data.apply_filters(qs, DataFilter(text_only=True, five_choices=True, scored_only=True))) == ["A", "F"]
    assert data.apply_filters(qs, None) == qs and data.apply_filters(qs, DataFilter()) == qs
    train, test = data.split_by_year(qs, [2022])
    assert ids(train) == ["A", "B", "C", "D", "F"] and ids(test) == ["E"]
    assert ids(data.split_by_year(qs, 2019)[1]) == ["B"]
    assert data.exclusions(qs) == {"image": 1, "numeric_answer": 1, "not_scored": 1, "not_five_choices": 2}
    assert data.exclusion_reasons(make("X", text_only=False, choices=(), answer=(("1",),), points=0)) == [
        "image",
        "numeric_answer",
        "not_scored",
        "not_five_choices",
    ]


def test_load_questions_applies_filters():
    everything = data.load_questions(data.SAMPLE_TEST)
    kept = data.load_questions(
        data.SAMPLE_TEST, filters=DataFilter(text_only=True, five_choices=True, scored_only=True)
    )
    expected = [x for x in everything if x.text_only and len(x.choices) == 5 and x.points > 0]
    assert kept == expected and len(kept) < len(everything)


def test_data_error_str():
    assert str(DataError("a.jsonl", 3, "answer", "bad")) == "a.jsonl:3: answer: bad"
    assert str(DataError("a.jsonl", 0, "", "empty file")) == "a.jsonl: empty file"


def test_sample_is_seeded_stable_and_order_free():
    qs = data.load_questions(data.SAMPLE_TRAIN)
    a = data.sample_questions(qs, 10, seed=42)
    assert len(a) == 10 and [q for q in qs if q in a] == a  # kept in the data's order
    b = data.sample_questions(list(reversed(qs)), 10, seed=42)
    assert sorted(q.id for q in a) == sorted(q.id for q in b)  # reading order does not matter
    assert {q.id for q in data.sample_questions(qs, 10, seed=7)} != {q.id for q in a}
    assert data.sample_questions(qs, 0, 42) == qs and data.sample_questions(qs, len(qs) + 5, 42) == qs
    # the same ids on every machine: pinned (random.Random with a string seed is platform-independent)
    assert [q.id for q in data.sample_questions(qs, 3, seed=42)] == EXPECTED_SAMPLE_3


EXPECTED_SAMPLE_3 = ["901C2", "901C5", "901E3"]


def test_symlinked_year_folders_are_followed_and_loops_rejected(tmp_path):
    years = tmp_path / "years"
    years.mkdir()
    (years / "a").mkdir()
    shutil.copy(data.SAMPLE_TRAIN, years / "a" / "train.jsonl")
    shutil.copy(data.SAMPLE_DIR / "train_metadata.jsonl", years / "a" / "train_metadata.jsonl")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "2099").symlink_to(years / "a", target_is_directory=True)
    assert [q.id for q in data.load_questions(tree)] == [q.id for q in data.load_questions(data.SAMPLE_TRAIN)]
    (years / "a" / "back").symlink_to(tree, target_is_directory=True)
    with pytest.raises(DataLoadError, match=r"back: symlink loop \(it leads back to "):
        data.load_questions(tree)
