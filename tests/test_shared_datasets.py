"""Every loader and check on the real data in ../shared/datasets, with the exact counts of its README.

Skipped with a reason when the folder is absent; failing under JMED_REQUIRE_SHARED=1.
"""

import collections
import json

import pytest
from conftest import shared_path

from jmed import checks, data
from jmed.config import DataFilter
from jmed.data import DataError


def test_igakuqa_2018_2022_exact_counts():
    root = shared_path("igakuqa", "data")
    report = checks.validate([root])
    assert report.success is True and report.errors == []
    assert report.questions == 2000
    assert report.excluded == {
        "image": 529,
        "numeric_answer": 12,
        "not_scored": 11,
        "not_five_choices": 16,
        "choices_unparsed": 0,
    }
    qs = data.load_questions(root)
    assert collections.Counter(q.year for q in qs) == {2018: 400, 2019: 400, 2020: 400, 2021: 400, 2022: 400}
    assert collections.Counter(q.n_answers for q in qs if not q.numeric) == {1: 1690, 2: 243, 3: 55}
    assert collections.Counter(q.points for q in qs) == {1.0: 1741, 3.0: 248, 0.0: 11}
    assert collections.Counter(len(q.choices) for q in qs) == {5: 1984, 0: 12, 6: 2, 8: 2}
    assert sum(1 for q in qs if q.kinki) == 135
    assert all(q.kinki_known for q in qs)  # every question has its metadata row: pass verdicts are possible
    assert not [w for w in report.warnings if w["field"].startswith("choices[")]  # no merged-choice false alarm
    assert {q.block for q in qs if q.points == 3} == {"B", "E"}
    assert len(data.apply_filters(qs, DataFilter(text_only=True, five_choices=True))) == 1455
    by_id = {q.id: q for q in qs}
    assert by_id["112B30"].answer == (("a",), ("d",)) and by_id["116A71"].accept_any
    assert [q.id for q in qs if q.accept_any] == ["116A71"]
    assert by_id["116F74"].answer == (("04",),) and by_id["114F75"].answer == (("130",),)
    # the same stem with different choices across years: warnings, not errors (e.g. 112B20 / 113E1)
    same = [w for w in report.warnings if w["field"] == "problem_text"]
    assert len(same) == 7 and any("same stem as 112B20" in w["message"] for w in same)


def test_igakuqa_folders_and_files():
    for year, exam in zip(range(2018, 2023), range(112, 117)):
        folder = shared_path("igakuqa", "data", str(year))
        qs = data.load_questions(folder)
        assert len(qs) == 400 and {q.exam for q in qs} == {str(exam)} and {q.year for q in qs} == {year}
        assert sorted({q.block for q in qs}) == list("ABCDEF")
    f = shared_path("igakuqa", "data", "2018", "112-A.jsonl")
    lines = sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    qs = data.load_questions(f)
    assert len(qs) == lines and all(q.category for q in qs)  # metadata joined
    assert data.detect_format(f) == "igakuqa"


@pytest.mark.slow
def test_igakuqa_leakage_between_years_matches_exact_stems():
    root = shared_path("igakuqa", "data")
    train = [root / str(y) for y in (2018, 2019, 2020, 2021)]
    report = checks.validate(train, against=[root / "2022"])
    assert report.success and report.questions == 2000
    test_qs = data.load_questions(root / "2022")
    train_qs = [q for p in train for q in data.load_questions(p)]
    test_stems = collections.defaultdict(list)
    for b in test_qs:
        test_stems[checks.norm_stem(b.stem)].append(b.id)
    exact = {(a.id, b) for a in train_qs for b in test_stems.get(checks.norm_stem(a.stem), [])}
    assert exact == {("113B18", "116D2"), ("113E2", "116B10")}
    assert {(p["train_id"], p["test_id"]) for p in report.leakage if p["score"] == 100} == exact
    assert all(p["score"] >= 90 and not p["same_choices"] for p in report.leakage)
    for threshold in (90, 70):  # the fast bound finds exactly what scoring every pair finds
        fast = [(p["train_id"], p["test_id"], p["score"]) for p in checks.leakage_pairs(train_qs, test_qs, threshold)]
        assert fast == checks.leakage_pairs_bruteforce(train_qs, test_qs, threshold)


def test_jmle2026_exact_counts():
    f = shared_path("jmle2026", "jmle2026_dataset.json")
    raw = json.loads(f.read_text(encoding="utf-8"))
    assert len(raw) == 400
    report = checks.validate([f])
    assert report.success and report.questions == 400
    assert report.excluded["choices_unparsed"] == 2 and report.excluded["numeric_answer"] == 3
    ds = data.read_dataset(f)
    assert ds.skipped == {}
    qs = ds.questions
    assert [q.id for q in qs if q.no_prompt] == ["120C-71", "120F-14"]  # choices in a table: graded, not prompted
    assert len(qs) == 400 and {q.year for q in qs} == {2026}
    assert collections.Counter(len(q.choices) for q in qs) == {5: 397, 0: 3}
    raw_by_id = {r["question_id"]: r for r in raw}
    assert report.excluded["image"] == sum(1 for q in qs if raw_by_id[q.id]["requires_image"])
    assert all(q.n_answers == raw_by_id[q.id]["num_choices_to_select"] for q in qs)
    assert all(q.n_answers == checks.stated_count(q.stem) for q in qs if checks.stated_count(q.stem))
    assert collections.Counter(q.points for q in qs if q.block in "BE") == {1.0: 50, 3.0: 50}


def test_jmle2026_published_totals_count_every_question(tmp_path):
    """The leaderboard's denominators: 400 questions and 500 points, table-choice questions included."""
    from jmed import readers
    from jmed.score import score

    f = shared_path("jmle2026", "jmle2026_dataset.json")
    qs = data.load_questions(f)
    preds = tmp_path / "perfect.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"problem_id": q.id, "prediction": readers.get("jmle2026").answer_text(q)}, ensure_ascii=False)
            + "\n"
            for q in qs
        ),
        encoding="utf-8",
    )
    summary, _, _ = score(str(f), str(preds), parsing="official")
    assert (summary["questions"], summary["correct"], summary["points"], summary["points_total"]) == (
        400,
        400,
        500,
        500,
    )
    assert (summary["required_total"], summary["general_total"]) == (200, 300)
    wrong_tables = preds.read_text(encoding="utf-8").replace(
        '"problem_id": "120C-71", "prediction": "【回答】', '"problem_id": "120C-71", "prediction": "【回答】x'
    )
    preds.write_text(wrong_tables, encoding="utf-8")
    summary, _, _ = score(str(f), str(preds), parsing="official")
    assert (summary["correct"], summary["points"]) == (399, 499)  # 120C-71 is graded like any other


def test_jjsimqa_exact_counts_and_its_one_inconsistency():
    f = shared_path("jjsimqa", "jjsimqa.jsonl")
    raw = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(raw) == 460
    assert collections.Counter(len(r["answer"]) for r in raw) == {1: 253, 2: 205, 3: 1, 4: 1}  # README
    assert sum(1 for r in raw if "2つ選べ" in r["problem_text"]) == 202
    ds = data.read_dataset(f)
    assert ds.format == "jjsimqa" and ds.errors == [] and len(ds.questions) == 460
    # 107_888-26 has answer ["d", ",", "e"]: read as d,e with a warning
    assert collections.Counter(q.n_answers for q in ds.questions) == {1: 253, 2: 206, 4: 1}
    assert {type(q.points) for q in ds.questions} == {float} and ds.questions[0].id == "107_64-0"
    report = checks.validate([f])
    assert report.questions == 460 and report.success is False
    assert [str(DataError(**e)) for e in report.errors] == [
        f"{f}:5: answer: stem says 「1つ選べ」 but the answer has 4 letter(s): a,b,c,d"
    ]


def test_jmmlu_med_exact_counts():
    for name, n in (("jmmlu_med.csv", 100), ("JMMLU-Med-all.csv", 681)):
        f = shared_path("jmmlu-med", name)
        report = checks.validate([f])
        assert report.success and report.questions == n
        assert report.excluded["not_five_choices"] == n
        qs = data.load_questions(f)
        assert len(qs) == n and {len(q.choices) for q in qs} == {4}
        if n == 100:
            assert collections.Counter(q.answer[0][0] for q in qs) == {"a": 25, "b": 25, "c": 25, "d": 25}
            assert collections.Counter(q.category for q in qs)["anatomy"] == 20
