"""KokushiMD-10 (github juniorliu95/KokushiMD-10): its reader, its exam kinds and its scorer, on small
original files in its layout (tests/fixtures_kokushimd10/exams/JA/<profession>/<profession>_<year>_<section>.json)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from jmed import data, exams, metrics, readers
from jmed.cli import main
from jmed.readers import kokushimd10 as K

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures_kokushimd10"
JA = FIXTURE / "exams" / "JA"

IDS = [
    "作業_2023_a_1",
    "保健_2024_b_1",
    "助産_2021_a_1",
    "医師_2022_a_1",
    "医師_2022_a_2",
    "医師_2022_a_3",
    "医師_2022_b_1",
    "医師_2022_b_30",
    "歯科_2021_a_1",
    "理学_2022_b_1",
    "看護_2020_a_1",
    "看護_2020_a_2",
    "薬剤_2023_a1_1",
    "薬剤_2023_a1_2",
    "視能_2020_b_1",
    "診療_2024_a_1",
]


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


def record(index="1", answer="B", **extra):
    rec = {
        "index": index,
        "question": "どれか。",
        "a": "甲",
        "b": "乙",
        "c": "丙",
        "d": "丁",
        "e": "戊",
        "answer": answer,
        "points": 1,
        "text_only": True,
        "human_accuracy": 0.5,
    }
    rec.update(extra)
    return rec


def test_its_files_folders_and_checkout_are_detected_and_other_readers_keep_theirs(tmp_path):
    for path in (FIXTURE, FIXTURE / "exams", JA, JA / "医師", JA / "薬剤" / "薬剤_2023_a1.json"):
        assert data.detect_format(path) == "kokushimd10", path
    # renamed: found by its records (the scorer's human_accuracy), then refused for the name it lacks
    renamed = tmp_path / "questions.json"
    renamed.write_bytes((JA / "医師" / "医師_2022_a.json").read_bytes())
    assert data.detect_format(renamed) == "kokushimd10"
    assert [e.message.split(" (")[0] for e in data.read_dataset(renamed).errors] == ["not a KokushiMD-10 file name"]
    # every other reader's fixture is still its own, and a JSON list without its fields is JMLE2026's
    for folder in sorted((Path(__file__).parent / "fixtures_readers").iterdir()):
        if folder.is_dir():
            assert data.detect_format(folder) == folder.name
    jmle = write(tmp_path / "jmle" / "120A.json", [{"question_id": "120A1", "block": "A", "number": 1}])
    assert data.detect_format(jmle) == "jmle2026"
    ranked = [r.name for r in readers.by_priority()]
    assert ranked.index("igakuqa119") < ranked.index("kokushimd10") < ranked.index("jmle2026")


def test_fixtures_read_into_questions_with_ids_answers_kinds_years_and_blocks():
    ds = data.read_dataset(FIXTURE)
    assert (ds.format, ds.errors) == ("kokushimd10", [])
    assert len(ds.files) == 11 and sorted(q.id for q in ds.questions) == sorted(IDS)
    # no answer ("") and 採点除外 (corrected_question_index, outside medicine): excluded and counted
    assert ds.skipped == {"no_answer": ["助産_2021_a_2"], "corrected": ["歯科_2021_a_2"]}
    assert ds.records == 18 and len(ds.warnings) == 2
    qs = {q.id: q for q in ds.questions}
    kinds = {q.id.split("_")[0]: q.exam_kind for q in ds.questions}
    assert kinds == {
        "医師": "medical",
        "歯科": "dental",
        "薬剤": "pharmacist",
        "看護": "nurse",
        "保健": "public_health_nurse",
        "助産": "midwife",
        "理学": "physical_therapist",
        "作業": "occupational_therapist",
        "診療": "radiological_technologist",
        "視能": "orthoptist",
    }
    assert {q.id: q.year for q in ds.questions if q.id.endswith("_1")} == {
        "作業_2023_a_1": 2023,
        "保健_2024_b_1": 2024,
        "助産_2021_a_1": 2021,
        "医師_2022_a_1": 2022,
        "医師_2022_b_1": 2022,
        "歯科_2021_a_1": 2021,
        "理学_2022_b_1": 2022,
        "看護_2020_a_1": 2020,
        "薬剤_2023_a1_1": 2023,
        "視能_2020_b_1": 2020,
        "診療_2024_a_1": 2024,
    }
    # exam numbers where the kind maps them (medical 116th = 2022, nurse 109th = 2020, …)
    assert [
        qs[i].exam
        for i in (
            "医師_2022_a_1",
            "歯科_2021_a_1",
            "薬剤_2023_a1_1",
            "看護_2020_a_1",
            "保健_2024_b_1",
            "助産_2021_a_1",
            "理学_2022_b_1",
        )
    ] == ["116", "114", "108", "109", "110", "104", ""]
    assert qs["医師_2022_a_2"].answer == (("a", "c"),) and qs["医師_2022_a_1"].answer == (("b",),)  # "AC", "B"
    assert [qs[i].block for i in ("医師_2022_a_1", "医師_2022_b_1", "薬剤_2023_a1_1", "視能_2020_b_1")] == [
        "A",
        "B",
        "A",
        "B",
    ]
    assert qs["医師_2022_b_30"].points == 3.0 and not qs["医師_2022_b_30"].text_only
    assert not qs["診療_2024_a_1"].text_only and qs["医師_2022_a_1"].text_only
    assert (qs["医師_2022_b_1"].kinki, qs["医師_2022_b_30"].kinki, qs["歯科_2021_a_1"].kinki) == (
        ("e",),
        ("a",),
        ("e",),
    )
    assert qs["医師_2022_a_1"].kinki_known and not qs["看護_2020_a_1"].kinki_known
    assert len(qs["医師_2022_a_1"].choices) == 5 and qs["看護_2020_a_1"].choices == ("腋窩", "口腔", "直腸", "手掌")
    assert qs["保健_2024_b_1"].choices[0] == "既存資料の収集と分析"  # a `choices` list is read too
    assert qs["看護_2020_a_2"].numeric and qs["看護_2020_a_2"].answer == (("41",),)
    assert (qs["薬剤_2023_a1_1"].category, qs["薬剤_2023_a1_2"].answer) == ("薬理", (("a", "d"),))
    assert {q.source for q in ds.questions} == {"kokushimd10"}


def test_jmed_validate_accepts_the_fixtures():
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false"}
    res = subprocess.run(
        [sys.executable, "-m", "jmed", "validate", str(FIXTURE), "--no-log"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK: 18 questions in 1 dataset(s); 0 error(s), 2 warning(s)")
    assert "no_answer 1, corrected 1" in res.stdout


def _score(tmp_path: Path, data_path: Path, predictions: dict[str, str], name: str) -> dict:
    preds = tmp_path / f"{name}.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"problem_id": k, "prediction": v}, ensure_ascii=False) + "\n" for k, v in predictions.items()
        ),
        encoding="utf-8",
    )
    res = CliRunner().invoke(main, ["score", "--data", str(data_path), "--predictions", str(preds), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_jmed_score_perfect_and_empty_predictions_and_the_medical_verdict(tmp_path):
    qs = data.read_dataset(FIXTURE).questions
    perfect = {q.id: K.answer_text(q) for q in qs}
    assert (perfect["医師_2022_a_2"], perfect["看護_2020_a_2"]) == ("a,c", "41")
    # predictions of the excluded questions are set aside, not unknown
    s = _score(tmp_path, FIXTURE, {**perfect, "助産_2021_a_2": "a", "歯科_2021_a_2": "b"}, "perfect")
    assert (s["questions"], s["correct"], s["accuracy"], s["missing"]) == (16, 16, 1.0, 0)
    assert s["points"] == s["points_total"] == 18 and s["score"] == 1.0
    assert s["set_aside"] == {"助産_2021_a_2": "no_answer", "歯科_2021_a_2": "corrected"}
    empty = _score(tmp_path, FIXTURE, {q.id: "" for q in qs}, "empty")
    assert (empty["correct"], empty["accuracy"], empty["unparsed"], empty["missing"]) == (0, 0, 16, 0)
    # medicine alone is a whole medical exam in the rule's sense (blocks A and B, kinki known): a verdict
    medicine = JA / "医師"
    passed = _score(tmp_path, medicine, {k: v for k, v in perfect.items() if k.startswith("医師")}, "med")
    failed = _score(tmp_path, medicine, {k: "" for k in perfect if k.startswith("医師")}, "med_empty")
    assert (passed["by_year"]["2022"]["verdict"], failed["by_year"]["2022"]["passed"]) == ("PASS", False)


def test_official_parsing_is_its_scorers_normalize_answer(tmp_path):
    qs = {q.id: q for q in data.read_dataset(FIXTURE).questions}
    two, calc = qs["医師_2022_a_2"], qs["看護_2020_a_2"]  # gold "AC"; a numeric entry, "41"
    assert readers.official("kokushimd10") is K.official

    def right(q, text):
        return metrics.is_correct(q, K.official(q, text))

    assert [right(two, t) for t in ("AC", "CA", "a, c", "ca", "答え：AC", "[A][C]")] == [True] * 6
    assert [right(two, t) for t in ("A", "ACD", "Ca", "Answer: AC", "")] == [False] * 5
    assert K.official(two, "Ca") is None  # sorted before upper-casing: "CA", wrong there; never right here
    assert K.official(two, "ACD") == ("a", "c", "d") and K.official(two, "") is None
    assert [right(calc, t) for t in ("41", "14", "41 滴", "42")] == [True, True, True, False]  # digits sorted too
    # numbered choices ("1": …, "2": …) are answered with their numbers, as the scorer compares them
    f = write(
        tmp_path / "看護" / "看護_2021_b.json",
        [
            {
                "index": "5",
                "question": "2つ選べ。",
                "1": "甲",
                "2": "乙",
                "3": "丙",
                "4": "丁",
                "answer": "24",
                "points": 1,
                "text_only": True,
                "human_accuracy": 0.4,
            }
        ],
    )
    ds = data.read_dataset(f)
    assert ds.errors == [] and ds.questions[0].answer == (("b", "d"),)
    q = ds.questions[0]
    assert (K.answer_text(q), right(q, "24"), right(q, "4,2"), right(q, "BD"), K.official(q, "BD")) == (
        "24",
        True,
        True,
        False,
        None,
    )


def test_pass_rules_where_the_scorer_or_mhlw_states_one():
    def rule(kind, points, total, year=2024):
        return exams.get(kind).pass_rule(0, 0, points, total, 0, year)

    assert (
        rule("radiological_technologist", 120, 200)["passed"],
        rule("radiological_technologist", 119, 200)["passed"],
    ) == (True, False)
    assert (rule("orthoptist", 102, 169)["passed"], rule("orthoptist", 101, 169)["passed"]) == (True, False)
    assert (rule("midwife", 87, 145, 2021)["passed"], rule("midwife", 86, 145, 2021)["passed"]) == (True, False)
    # 保健師: MHLW's lines where found (2022: 86/142), else the scorer's 87 of 145
    assert (
        rule("public_health_nurse", 86, 142, 2022)["passed"]
        and not rule("public_health_nurse", 86, 145, 2023)["passed"]
    )
    assert rule("radiological_technologist", 60, 100)["passed"]  # a fraction of the points scored
    assert exams.get("midwife").pass_rule(40, 50, 47, 95, 0, 2020)["passed"]  # both sections are added up
    assert rule("orthoptist", 0, 0) == {"passed": None, "verdict": "none (no scored points)", "general_line": 102 / 169}
    ruled = {k for k in exams.names() if exams.get(k).pass_rule}
    assert ruled == {"medical", "midwife", "orthoptist", "public_health_nurse", "radiological_technologist"}
    assert all("KokushiMD-10" in exams.get(k).pass_source for k in ruled - {"medical"})


def test_exam_kinds_name_their_exam_and_map_their_numbers():
    from jmed.prompts import render_one
    from jmed.records import Question

    assert [
        exams.get(k).title
        for k in (
            "nurse",
            "public_health_nurse",
            "midwife",
            "physical_therapist",
            "occupational_therapist",
            "radiological_technologist",
            "orthoptist",
        )
    ] == [
        "看護師国家試験",
        "保健師国家試験",
        "助産師国家試験",
        "理学療法士国家試験",
        "作業療法士国家試験",
        "診療放射線技師国家試験",
        "視能訓練士国家試験",
    ]
    assert (
        exams.exam_year("113", "nurse"),
        exams.exam_year("110", "public_health_nurse"),
        exams.exam_year("107", "midwife"),
        exams.exam_year("116", "physical_therapist"),
    ) == (2024, 2024, 2024, None)
    q = Question(id="看護_2024_a_1", stem="どれか。", choices=("甲", "乙"), answer=(("a",),), exam_kind="nurse")
    assert render_one(q, "igakuqa").prompt.startswith("以下は看護師国家試験の問題です。")
    assert "以下は看護学知識に関する多肢選択問題です。" in render_one(q, "medpalm").prompt


def test_corrections_follow_the_exam_kind_not_the_dataset(tmp_path):
    write(tmp_path / "医師" / "医師_2022_a.json", [record("71", "C")])  # the 116th's A71: every answer counts
    write(tmp_path / "医師" / "医師_2021_a.json", [record("71", "C")])
    ds = data.read_dataset(tmp_path / "医師")
    assert ds.errors == [] and [(q.id, q.accept_any) for q in ds.questions] == [
        ("医師_2021_a_71", False),
        ("医師_2022_a_71", True),
    ]


@pytest.mark.parametrize(
    "name, records, message",
    [
        ("看護_2020_c.json", [record()], "section 'c' is not one of 看護's: a, b"),
        ("医師_2022_a.json", [record(answer="F")], 'answer: letter "f" outside 5 choices'),
        ("医師_2022_a.json", [record(answer="13")], 'answer: choice numbers "13" for choices labelled a, b, …'),
        ("医師_2022_a.json", [record(answer="A1")], 'answer: "A1" mixes letters and numbers'),
        ("医師_2022_a.json", [record(answer="AA")], 'answer: repeated choice in "AA"'),
        ("医師_2022_a.json", [record(index="第1問")], 'index: "第1問" is not a question number such as "12" or "12-1"'),
        ("医師_2022_a.json", [record(kinki="G")], 'kinki: letter "g" outside 5 choices'),
        ("医師_2022_a.json", [{k: v for k, v in record().items() if k != "text_only"}], "text_only: missing field"),
        ("医師_2022_a.json", [{**record(), "f": "己", "h": "辛"}], "choices: choice labels"),
        (
            "看護_2020_a.json",
            [{"index": "1", "question": "求めよ。", "answer": "B", "points": 1, "text_only": True}],
            'answer: "B": a question without choices needs a number',
        ),
    ],
)
def test_bad_records_are_errors_naming_file_line_and_field(tmp_path, name, records, message):
    path = write(tmp_path / name, records)
    errors = [str(e) for e in data.read_dataset(path).errors]
    assert len(errors) == 1 and message in errors[0], errors
    if "section" not in message:
        assert errors[0].startswith(f"{path}:2: ")  # the line where the record starts


def test_a_checkout_reads_its_japanese_questions_only(tmp_path):
    write(tmp_path / "exams" / "JA" / "医師" / "医師_2022_a.json", [record()])
    write(tmp_path / "exams" / "EN" / "Medicine" / "医師_2022_a.json", [record()])  # the English version
    write(tmp_path / "results" / "openai" / "gpt-4o" / "text" / "医師" / "医師_2022_a_pred.json", [{"pred": "B"}])
    ds = data.read_dataset(tmp_path)
    assert (ds.format, ds.errors, [q.id for q in ds.questions]) == ("kokushimd10", [], ["医師_2022_a_1"])
    assert [w.message for w in ds.warnings] == [
        "2 other file(s) not read as KokushiMD-10 questions (医師_2022_a.json …)"
    ]
    assert "no published layout" in str(data.read_dataset(tmp_path, translate=True).errors[0])


def test_jmed_score_uses_the_registered_scorer_and_pass_rules(tmp_path):
    qs = data.read_dataset(JA / "診療").questions
    own = {q.id: "".join(q.answer[0]).upper() for q in qs}  # the dataset's own style: "C"
    s = _score(tmp_path, JA / "診療", own, "own")
    assert s["correct"] == len(qs) and s["by_year"]["2024"]["passed"] is True
    two = _score(tmp_path, JA / "医師", {"医師_2022_a_2": "AC"}, "two")
    assert two["correct"] == 1
