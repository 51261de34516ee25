"""YakugakuQA (EQUES-Inc/pharma-LLM-eval data/) read from small files written here in its layout:
data/<year>/<exam>-<block>.jsonl, metadata_<exam>.jsonl keyed by the exam-wide number, the whole-year
<exam>.jsonl. Question texts are this file's own; ids, answers and the layout are as upstream."""

import json
from pathlib import Path

from click.testing import CliRunner

from jmed import metrics as M
from jmed.data import read_dataset
from jmed.readers import get
from jmed.readers import yakugakuqa as Y

FIVE = ["甲の記述", "乙の記述", "丙の記述", "丁の記述", "戊の記述"]


def _q(pid, answer, stem=None, choices=FIVE, text_only=True):
    stem = f"自作の問{pid}。正しいのはどれか。1つ選べ。" if stem is None else stem
    return {
        "problem_id": pid,
        "problem_text": stem,
        "choices": choices,
        "text_only": text_only,
        "answer": answer,
        "comment": "自作の解説",
        "points": "1",
    }


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _warnings(ds):
    return [(Path(w.file).name, w.line, w.message) for w in ds.warnings]


# one question at the start of every block (and the last of B and F), each with its own category; under the
# block-local number all but block A would take block A's rows (103B001 -> 103001)
CATEGORY_ROWS = {
    "103001": "Physics",
    "103002": "Law",
    "103060": "Biology",
    "103091": "Chemistry",
    "103150": "Pharmacy",
    "103151": "Biology",
    "103196": "Hygiene",
    "103246": "Pharmacology",
    "103285": "Pathology",
    "103286": "Practice",
    "103345": "Pathology",
}
BLOCK_QUESTIONS = {
    "A": ["103A001", "103A002"],
    "B": ["103B001", "103B060"],
    "C": ["103C001"],
    "D": ["103D001"],
    "E": ["103E001"],
    "F": ["103F001", "103F060"],
}
EXPECTED_CATEGORY = {
    "103A001": "Physics",
    "103A002": "Law",
    "103B001": "Chemistry",
    "103B060": "Pharmacy",
    "103C001": "Biology",
    "103D001": "Hygiene",
    "103E001": "Pharmacology",
    "103F001": "Practice",
    "103F060": "Pathology",
}


def test_categories_join_metadata_by_the_exam_wide_number_in_every_block(tmp_path):
    year = tmp_path / "data" / "2018"
    whole = []
    for block, ids in BLOCK_QUESTIONS.items():
        records = [_q(pid, ["2"], stem=f"{pid}の自作問題。1つ選べ。") for pid in ids]
        _jsonl(year / f"103-{block}.jsonl", records)
        offset = Y.BLOCK_OFFSETS[block][0]
        whole += [{**r, "problem_id": f"103{offset + int(r['problem_id'][4:]):03d}"} for r in records]
    _jsonl(year / "103.jsonl", whole)  # the whole year numbers its questions exam-wide
    rows = [{"problem_id": k, "category": v, "note": ""} for k, v in CATEGORY_ROWS.items()]
    _jsonl(year / "metadata_103.jsonl", rows + rows)  # upstream repeats its rows (four times up to the 105th)
    ds = read_dataset(tmp_path / "data")
    assert (ds.format, ds.errors, ds.skipped) == ("yakugakuqa", [], {})
    assert {q.id: q.category for q in ds.items} == EXPECTED_CATEGORY
    assert _warnings(ds) == [
        ("103.jsonl", 0, "whole-year file repeating 6 block files (103-A.jsonl …): skipped, the blocks are read")
    ]
    # every block question's key is the whole-year file's id of the same question
    assert {Y._category_key("103", pid[3], pid[4:]) for pid in EXPECTED_CATEGORY} == {r["problem_id"] for r in whole}
    assert Y.BLOCK_OFFSETS["F"][0] + Y.BLOCK_OFFSETS["F"][1] == 345


def test_metadata_rows_that_disagree_or_are_missing_are_warned_about(tmp_path):
    year = tmp_path / "data" / "2021"
    _jsonl(year / "106-B.jsonl", [_q("106B001", ["1"]), _q("106B002", ["3"])])
    _jsonl(
        year / "metadata_106.jsonl",
        [
            {"problem_id": "106091", "category": "Physics", "note": ""},
            {"problem_id": "106091", "category": "Law", "note": ""},
        ],
    )
    ds = read_dataset(year / "106-B.jsonl")
    assert ds.errors == [] and {q.id: q.category for q in ds.items} == {"106B001": "Physics", "106B002": ""}
    assert _warnings(ds) == [
        ("metadata_106.jsonl", 2, '106091: "Law" where an earlier row says "Physics": the first row is kept'),
        (
            "106-B.jsonl",
            0,
            "1 question(s) without a row in metadata_106.jsonl under their exam-wide number (106B002 …): no category",
        ),
    ]


def _rulings(tmp_path) -> Path:
    """The questions with a ruling, under their upstream ids, with this file's own texts."""
    data = tmp_path / "data"
    _jsonl(
        data / "2015" / "100-B.jsonl",
        [
            _q("100B017", ["1", "6"], stem="反応に用いる化合物はどれか。2つ選べ。", choices="IMAGES", text_only=False),
            _q("100B003", ["7"], choices="IMAGES", text_only=False),
        ],
    )
    _jsonl(data / "2016" / "101-A.jsonl", [_q("101A021", ["1", "2（いずれか一つを選択で正解とする）"])])
    _jsonl(data / "2018" / "103-D.jsonl", [_q("103D029", ["2", "5"], choices="IMAGES", text_only=False)])
    _jsonl(data / "2019" / "104-C.jsonl", [_q("104C040", ["1", "3", "4"], stem="正しいのはどれか。2つ選べ。")])
    _jsonl(data / "2019" / "104-D.jsonl", [_q("104D002", ["解なし（選択肢は不適切であり回答がえられないため）"])])
    _jsonl(
        data / "2020" / "105-A.jsonl",
        [_q("105A049", ["3"], stem=""), _q("105A053", ["4"], stem="", choices="IMAGES", text_only=False)],
    )
    _jsonl(data / "2020" / "105-B.jsonl", [_q("105B019", ["3", "4"], choices="IMAGES", text_only=False)])
    _jsonl(
        data / "2020" / "105-D.jsonl",
        [_q("105D032", ["4", "3"], stem="この患者に関する記述のうち、正しいのはどれか。2つ選べ。")],
    )
    _jsonl(data / "2020" / "105-F.jsonl", [_q("105F014", ["1", "4（いずれか1つを選択で正解とする）"])])
    return data


ANSWERS = {
    "100B017": (("a", "f"),),  # figure choices cover every answer number: six
    "100B003": (("g",),),
    "101A021": (("a",), ("b",)),  # any one of 1, 2
    "103D029": (("b",), ("e",)),  # multiple_correct: 「1つ選べ」, two listed
    "104C040": (("a", "c"), ("a", "d"), ("c", "d")),  # multiple_correct: 「2つ選べ」, three listed
    "105A049": (("c",),),
    "105A053": (("d",),),
    "105B019": (("c",), ("d",)),
    "105D032": (("c", "d"),),  # stored ["4", "3"]: the set {3, 4}
    "105F014": (("a",), ("d",)),
}


def test_every_ruling_reads_as_stated_with_its_warning(tmp_path):
    ds = read_dataset(_rulings(tmp_path))
    assert (ds.format, ds.errors) == ("yakugakuqa", [])
    qs = {q.id: q for q in ds.items}
    assert len(qs) == 10 and ds.records == 11
    assert {i: q.answer for i, q in qs.items()} == ANSWERS
    assert ds.skipped == {"no_answer": ["104D002"]}
    assert {i: len(q.choices) for i, q in qs.items() if len(q.choices) != 5} == {"100B017": 6, "100B003": 7}
    assert {i: q.no_prompt for i, q in qs.items() if q.no_prompt} == {"105A049": "blank_stem", "105A053": "blank_stem"}
    assert {i: q.n_answers for i, q in qs.items()} == {
        "100B017": 2,
        "100B003": 1,
        "101A021": 1,
        "103D029": 1,
        "104C040": 2,
        "105A049": 1,
        "105A053": 1,
        "105B019": 1,
        "105D032": 2,
        "105F014": 1,
    }
    assert _warnings(ds) == [
        (
            "103-D.jsonl",
            1,
            '103D029: multiple_correct: the stem asks for 1 but the answer lists 2 choices ["2", "5"]: '
            "more correct choices than asked (MHLW accepts any 1 of them); read as any 1 of 2, 5",
        ),
        (
            "104-C.jsonl",
            1,
            "104C040: multiple_correct: the stem asks for 2 but the answer lists 3 choices "
            '["1", "3", "4"]: more correct choices than asked (MHLW accepts any 2 of them); read as '
            "any 2 of 1, 3, 4",
        ),
        (
            "104-D.jsonl",
            1,
            '104D002: ["解なし（選択肢は不適切であり回答がえられないため）"]: no correct answer (解なし); excluded',
        ),
        (
            "105-A.jsonl",
            1,
            "105A049: blank_stem: the data has no question text: scored, but left out wherever a prompt is needed",
        ),
        (
            "105-A.jsonl",
            2,
            "105A053: blank_stem: the data has no question text: scored, but left out wherever a prompt is needed",
        ),
        (
            "105-B.jsonl",
            1,
            '105B019: multiple_correct: the stem asks for 1 but the answer lists 2 choices ["3", "4"]: '
            "more correct choices than asked (MHLW accepts any 1 of them); read as any 1 of 3, 4",
        ),
        (
            "105-D.jsonl",
            1,
            '105D032: answer ["4", "3"] stored out of order: read as the set {3, 4}; check.py takes '
            'only "4,3" as right, jmed\'s official parsing both orders',
        ),
    ]


def test_the_rulings_tree_validates_with_no_errors(tmp_path):
    from jmed.cli import main

    res = CliRunner().invoke(main, ["validate", "--no-log", str(_rulings(tmp_path))])
    assert res.exit_code == 0, res.output
    # the reader's 7 warnings, and no "same stem" note for the two blank stems
    assert res.output.startswith(
        "OK: 11 questions in 1 dataset(s); 0 error(s), 7 warning(s); excluded: image 5, "
        "not_five_choices 2, blank_stem 2, no_answer 1"
    ), res.output
    assert "same stem" not in res.output  # two blank stems are not one question twice


def test_official_parsing_is_check_py_s_string_match_and_jmed_s_ascending_numbers(tmp_path):
    ds = read_dataset(_rulings(tmp_path))
    qs = {q.id: q for q in ds.items}
    raw = {}
    for f in sorted((tmp_path / "data").rglob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            raw[obj["problem_id"]] = obj["answer"]

    def right(pid, text):
        return M.is_correct(qs[pid], M.parse_answer(qs[pid], text, "official"))

    # check.py's perfect system: each stored answer joined by "," — every question right
    upstream = {pid: ",".join(raw[pid]) for pid in qs}
    assert upstream["105D032"] == "4,3"
    s = M.letter_summary(list(qs.values()), upstream, "official")
    assert (s["correct"], s["questions"], s["missing"]) == (10, 10, 0)
    # the reader's own gold text is that string too
    reader = get("yakugakuqa")
    assert {pid: reader.answer_text(q) for pid, q in qs.items() if reader.answer_text(q) != ",".join(raw[pid])} == {}
    # an answer stored out of order: the set {3, 4}, written in either order
    assert right("105D032", "3,4") and right("105D032", "4,3") and not right("105D032", "3")
    assert not right("105D032", "4,5")
    # "any one of": each alone; both together only as the stored string check.py compares
    assert right("101A021", "1") and right("101A021", "2") and not right("101A021", "1,2")
    assert right("105F014", "4") and not right("105F014", "2") and not right("105F014", "1,4")
    # multiple_correct: any k of the listed; the stored list itself is check.py's right answer
    assert right("103D029", "2") and right("103D029", "5") and right("103D029", "2,5") and not right("103D029", "3")
    assert right("104C040", "1,3") and right("104C040", "3,4") and right("104C040", "1,3,4")
    assert not right("104C040", "4,3") and not right("104C040", "1,2")
    # figure choices 6 and 7 are choices
    assert right("100B017", "1,6") and right("100B003", "7") and not right("100B017", "1,5")
    # a missing prediction is wrong; a blank-stem question is still graded
    s = M.letter_summary(list(qs.values()), {"105A049": "3", "105A053": "1"}, "official")
    assert (s["correct"], s["missing"]) == (1, 8)


def test_a_repeated_choice_number_is_an_error(tmp_path):
    ds = read_dataset(_jsonl(tmp_path / "data" / "2022" / "107-A.jsonl", [_q("107A001", ["2", "2"])]))
    assert [(e.line, e.field, e.message) for e in ds.errors] == [(1, "answer", 'choice number repeated in ["2", "2"]')]
    assert ds.items == []
