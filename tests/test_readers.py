"""Readers of the newer exam layouts, on small files written here in each layout (never the datasets),
scored with the dataset's own scorer's rules."""

import json

from jmed import metrics as M
from jmed.data import read_dataset

Q119 = [
    {
        "number": "119B1",
        "question": "どれか。 ",
        "choices": ["a. 肺炎", "b. 心不全", "c. 腎不全", "d. 肝硬変", "e. 敗血症"],
        "has_image": False,
    },
    {
        "number": "119B27",
        "question": "2つ選べ。",
        "choices": ["a. 甲", "b. 乙", "c. 丙", "d. 丁", "e. 戊"],
        "has_image": True,
    },
    # merged in the source: label c lost, its text glued to b
    {
        "number": "119B28",
        "question": "どれか。",
        "choices": ["a. 甲", "b. 乙0丙", "d. 丁", "e. 戊"],
        "has_image": False,
    },
    {"number": "119B75", "question": "求めよ。", "choices": [], "has_image": False},
    {"number": "119B76", "question": "どれか。 a甲 b乙 c丙 d丁 e戊", "choices": [], "has_image": False},
]
ANSWERS = "問題番号,解答\n119B1,b\n119B27,ce\n119B28,d\n119B75,600\n119B76,a\n"


def _igakuqa119(tmp_path):
    (tmp_path / "questions").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "questions" / "119B_json.json").write_text(json.dumps(Q119, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "results" / "correct_answers.csv").write_text(ANSWERS, encoding="utf-8")
    # a checkout also holds model answers (JSON too): never read as questions
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "119B_model.json").write_text('{"results": []}', encoding="utf-8")
    return tmp_path


def test_igakuqa119_layout_is_detected_and_read_with_its_points_answers_and_quirks(tmp_path):
    root = _igakuqa119(tmp_path)
    for path in (root, root / "questions", root / "questions" / "119B_json.json"):
        ds = read_dataset(path)
        assert ds.format == "igakuqa119" and ds.errors == [], ds.errors
    qs = {q.id: q for q in ds.items}
    assert list(qs) == ["119B1", "119B27", "119B28", "119B75", "119B76"]
    assert qs["119B1"].choices == ("肺炎", "心不全", "腎不全", "肝硬変", "敗血症")  # "a. " labels removed
    assert (qs["119B1"].points, qs["119B27"].points) == (1.0, 3.0)  # blocks B/E, questions 26-50: 3 points
    assert qs["119B27"].answer == (("c", "e"),) and not qs["119B27"].text_only
    assert qs["119B28"].answer == (("d",),) and qs["119B28"].choices[3] == "丁"  # letters still point right
    assert qs["119B75"].answer == (("600",),) and qs["119B75"].numeric
    assert (qs["119B1"].year, qs["119B1"].exam, qs["119B1"].kinki_known) == (2025, "119", False)
    # choices inside the question text: kept and graded (published totals count it), never prompted
    assert ds.skipped == {} and qs["119B76"].no_prompt == "choices_unparsed" and qs["119B76"].answer == (("a",),)
    assert [q.no_prompt for q in ds.items[:4]] == [""] * 4
    warned = {w.message.split(":")[0] for w in ds.warnings}
    assert warned == {"119B28", "119B76"}


def test_igakuqa119_official_parsing_is_its_own_scorer_and_gives_no_verdict_without_kinki(tmp_path):
    qs = read_dataset(_igakuqa119(tmp_path)).items
    preds = {
        "119B1": "b 確信度(0~1): 0.95",  # its scorer: not "b" → wrong; jmed lenient reads b
        "119B27": "[e, c]",  # brackets, comma, space removed, sorted → "ce": right
        "119B28": "d",
        "119B75": "060",
    }  # it compares sorted characters, numbers too: right
    official = M.letter_summary(qs, preds, "official")
    # 119B76 (choices inside its text) counts in the totals: unanswered here, so wrong
    assert (official["correct"], official["points"], official["points_total"]) == (3, 7, 9)
    assert [r["correct"] for r in M.letter_rows(qs, preds, "official")] == [False, True, True, True, False]
    lenient = M.letter_rows(qs, preds, "lenient")  # "b …" is b; "[e, c]" is c,e; "060" is not 600
    assert [r["correct"] for r in lenient] == [True, True, True, False, False]
    assert official["by_year"]["2025"]["passed"] is None  # one block, no contraindication data


def test_exam_kind_keys_corrections_years_and_pass_rules():
    from jmed.data import Question, exam_year, with_exam_kind

    def q(qid, block, points=1.0):
        return Question(
            id=qid,
            stem="どれか。",
            choices=("甲", "乙", "丙", "丁", "戊"),
            answer=(("b",),),
            points=points,
            block=block,
            exam="116",
            year=exam_year("116"),
            kinki_known=True,
            accept_any=qid == "116A71",
        )

    medical = [q("116A71", "A"), q("116B1", "B")]
    dental = with_exam_kind(medical, "dental")
    assert [x.accept_any for x in dental] == [False, False]  # 116A71's correction is the medical exam's only
    assert (medical[0].year, dental[0].year, with_exam_kind(medical, "pharmacist")[0].year) == (2022, 2023, 2031)
    assert exam_year("109", "pharmacist") == 2024 and exam_year("116", "other") is None
    preds = {"116A71": "a", "116B1": "b"}
    assert M.letter_summary(medical, preds, "official")["correct"] == 2
    s = M.letter_summary(dental, preds, "official")
    assert s["correct"] == 1
    assert s["by_year"]["2023"]["passed"] is None
    assert s["by_year"]["2023"]["verdict"].startswith("no pass rule for this exam (dental)")


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _mc(pid, answer, **extra):
    return {
        "problem_id": pid,
        "problem_text": "Which is it?",
        "choices": ["w", "x", "y", "z"],
        "answer": answer,
        "points": 1,
        "text_only": True,
        **extra,
    }


def test_medllm_benchmark_sets_integer_ids_pubmedqa_context_and_denqa(tmp_path):
    medqa = read_dataset(_jsonl(tmp_path / "en" / "MedQA" / "medqa_en.jsonl", [_mc(0, ["b"]), _mc(1, ["c"])]))
    assert medqa.format == "medllm" and medqa.errors == []
    assert [q.id for q in medqa.items] == ["0", "1"] and {q.exam_kind for q in medqa.items} == {"other"}
    pubmed = read_dataset(
        _jsonl(
            tmp_path / "en" / "PubMedQA" / "pubmedqa.jsonl",
            [
                {
                    **_mc("24507422", ["a"], context="Patients with stroke were studied."),
                    "choices": ["yes", "no", "maybe"],
                    "problem_text": "Does shape analysis help?",
                }
            ],
        )
    )
    [q] = pubmed.items
    assert q.stem == "Patients with stroke were studied.\n\nDoes shape analysis help?"  # the abstract is kept
    den = read_dataset(
        _jsonl(
            tmp_path / "ja" / "DenQA" / "denqa.jsonl",
            [
                {**_mc("116A71", ["b"]), "choices": ["甲", "乙", "丙", "丁", "戊"]},
                {**_mc("116B13", "NA")},
                {**_mc("116B20", ["a"]), "choices": ["甲", "乙", "丙", "丁", "戊"]},
            ],
        )
    )
    assert den.format == "medllm" and den.errors == []
    assert den.skipped == {"no_answer": ["116B13"]}  # "NA": no official answer, excluded and counted
    assert [(q.exam_kind, q.year, q.accept_any) for q in den.items] == [("dental", 2023, False)] * 2
    # its own scorer: NFKC, 「、」 as ",", items stripped and sorted; no medical correction on dental 116A71
    preds = {"116A71": "a", "116B20": " ａ "}
    s = M.letter_summary(den.items, preds, "official")
    assert s["correct"] == 1 and s["by_year"]["2023"]["passed"] is None
    assert s["by_year"]["2023"]["verdict"].startswith("no pass rule for this exam (dental)")
    multi = read_dataset(_jsonl(tmp_path / "zh" / "CMExam" / "cmexam.jsonl", [_mc(5, ["b", "d"])])).items
    assert M.letter_summary(multi, {"5": "d、b"}, "official")["correct"] == 1


def _yaku(pid, answer, choices=("甲", "乙", "丙", "丁", "戊"), text_only=True):
    asked = sum(a.isdigit() for a in answer) if all(a.isdigit() for a in answer) else 1  # the stem asks for them
    return {
        "problem_id": pid,
        "problem_text": f"どれか。{asked}つ選べ。",
        "choices": choices if isinstance(choices, str) else list(choices),
        "text_only": text_only,
        "answer": answer,
        "points": 1,
        "comment": "解説",
    }


def test_yakugakuqa_layout_numbers_images_metadata_and_the_whole_year_file(tmp_path):
    year = tmp_path / "data" / "2018"
    block_a = [_yaku("103A001", ["3"]), _yaku("103A002", ["2", "4"])]
    block_b = [
        _yaku("103B001", ["2", "3"], choices="IMAGES", text_only=False),
        _yaku("103B002", ["1", "2", "3（いずれか2つを選択で正解とする）"]),
        _yaku("103B003", ["解なし"]),
    ]
    _jsonl(year / "103-A.jsonl", block_a)
    _jsonl(year / "103-B.jsonl", block_b)
    _jsonl(year / "103.jsonl", block_a + block_b)  # the whole year again
    _jsonl(year / "metadata_103.jsonl", [{"problem_id": "103001", "category": "Physics", "note": ""}])
    ds = read_dataset(tmp_path / "data")
    assert ds.format == "yakugakuqa" and ds.errors == [], ds.errors
    qs = {q.id: q for q in ds.items}
    assert list(qs) == ["103A001", "103A002", "103B001", "103B002"]  # once each; metadata is not questions
    assert qs["103A001"].answer == (("c",),) and qs["103A002"].answer == (("b", "d"),)  # numbers are choices
    assert qs["103A001"].category == "Physics"  # metadata ids are exam-wide numbers: 103A001 is 103001
    assert not qs["103B001"].text_only and len(qs["103B001"].choices) == 5  # "IMAGES": the numbers still count
    assert qs["103B002"].answer == (("a", "b"), ("a", "c"), ("b", "c"))  # any two of 1, 2, 3
    assert ds.skipped == {"no_answer": ["103B003"]}
    assert any("whole-year file repeating 2 block files" in w.message for w in ds.warnings)
    assert {(q.exam_kind, q.year) for q in qs.values()} == {("pharmacist", 2018)}
    # its scorer: the response is the numbers joined by "," exactly
    preds = {"103A001": "3", "103A002": "2,4", "103B001": "3,2", "103B002": "1,3"}
    rows = M.letter_rows(list(qs.values()), preds, "official")
    assert [r["correct"] for r in rows] == [True, True, False, True]
    s = M.letter_summary(list(qs.values()), preds, "official")
    assert s["by_year"]["2018"]["verdict"].startswith("no pass rule for this exam (pharmacist)")


def test_when_no_reader_fits_one_error_names_every_format_tried_and_why(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text(
        "".join(
            json.dumps(
                {
                    "problem_id": True,
                    "problem_text": "x",
                    "choices": ["p", "q"],
                    "answer": ["a"],
                    "points": 1,
                    "text_only": True,
                }
            )
            + "\n"
            for _ in range(30)
        ),
        encoding="utf-8",
    )
    ds = read_dataset(bad)
    assert len(ds.errors) == 6  # the summary, then the detected reader's first 5 line errors
    head = ds.errors[0].message
    assert head.startswith(
        "no reader fits this data; formats tried: igakuqa: problem_id: expected a string, got "
        "a boolean (30 of 30 errors); igakuqa119: IgakuQA119 answers not found"
    )
    assert "jjsimqa: problem_id: expected a string, got a boolean" in head  # what each reader said, by name
    assert str(ds.errors[1]) == f"{bad}:1: problem_id: expected a string, got a boolean"


def test_score_grades_questions_no_prompt_can_be_made_of_and_evaluate_leaves_them_out(tmp_path):
    from jmed.config import EvalConfig
    from jmed.evaluate import load_eval_questions
    from jmed.score import score

    root = _igakuqa119(tmp_path)
    (root / "questions" / "119B_json.json").write_text(
        json.dumps(
            Q119
            + [
                {
                    "number": "119B2",
                    "question": "  ",
                    "choices": ["a. 甲", "b. 乙", "c. 丙", "d. 丁", "e. 戊"],
                    "has_image": False,
                }
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    (root / "results" / "correct_answers.csv").write_text(ANSWERS + "119B2,e\n", encoding="utf-8")
    preds = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"problem_id": "119B1", "prediction": "b"},
            {"problem_id": "119B76", "prediction": "a"},
            {"problem_id": "119B2", "prediction": "e"},
        ],
    )
    summary, questions, _ = score(str(root), str(preds))  # the checkout as published: no --exclude-ids
    assert summary["set_aside"] == {} and len(questions) == 6
    assert (summary["correct"], summary["missing"], summary["questions"]) == (3, 3, 6)
    assert {q.id: q.no_prompt for q in questions if q.no_prompt} == {
        "119B76": "choices_unparsed",
        "119B2": "blank_stem",
    }
    left: dict = {}
    _, evaluated = load_eval_questions(EvalConfig(eval_data=str(root)), left)
    assert [q.id for q in evaluated] == ["119B1", "119B27", "119B28", "119B75"]
    assert left == {"no prompt (choices_unparsed)": 1, "no prompt (blank_stem)": 1}


def test_a_folder_mixing_formats_is_one_clear_error():
    from jmed.data import SAMPLE_DIR

    ds = read_dataset(SAMPLE_DIR)  # the bundled sample: exam questions and instruction records side by side
    assert [str(e) for e in ds.errors] == [
        f"{SAMPLE_DIR}: this folder mixes formats: igakuqa (test.jsonl, train.jsonl); instructions "
        "(instructions.jsonl); pass the files (or --format) separately"
    ]


def test_jmle2026_official_parsing_is_the_bench_s_own_scorer():
    from jmed.data import Question

    def q(answer, choices=("甲", "乙", "丙", "丁", "戊")):
        return Question(id="120A1", stem="どれか。", choices=choices, answer=answer, source="jmle2026")

    two = q((("b", "d"),))
    assert M.parse_answer(two, "理由…\n【回答】 **b**, D\n以上", "official") == ("b", "d")  # marks removed, case folded
    assert M.parse_answer(two, "【回答】b、d", "official") == ("b", "d")
    assert M.parse_answer(two, "b,d", "official") is None  # no 【回答】 line: its parse failure (lenient reads it)
    assert M.parse_answer(two, "b,d", "lenient") == ("b", "d")
    calc = q((("26",),), choices=())
    assert M.is_correct(calc, M.parse_answer(calc, "【回答】 26", "official"))


def test_jmed_s_own_picks_are_read_the_same_on_every_dataset():
    """A dataset's own scorer is for predictions made elsewhere; log-likelihood and gestalt picks ("b,d")
    are jmed's and are read alike whatever the source (YakugakuQA's scorer would want "2,4")."""
    from jmed.data import Question

    qs = [
        Question(
            id=f"{src}-1",
            stem="どれか。2つ選べ。",
            choices=("甲", "乙", "丙", "丁", "戊"),
            answer=(("b", "d"),),
            source=src,
        )
        for src in ("igakuqa", "igakuqa119", "jmle2026", "yakugakuqa", "medllm")
    ]
    scores = {q.id: [0.0, 0.9, 0.1, 0.8, 0.2] for q in qs}
    s = M.loglik_summary(qs, scores)
    assert (s["correct"], s["unparsed"]) == (5, 0)
