"""jmed.metrics: exact values for parsing, set-exact accuracy, exam score, pass/fail, text and loglik."""

import subprocess
import sys
from difflib import SequenceMatcher

import pytest

from jmed import metrics as M
from jmed.data import Question

CH5 = ("肺炎", "心不全", "腎不全", "肝硬変", "敗血症")


def q(id, answer=(("c",),), choices=CH5, points=1.0, block="A", year=2022, **kw):
    kw.setdefault("kinki_known", True)  # as read with IgakuQA's metadata
    return Question(
        id=id,
        stem=kw.pop("stem", "どれか。"),
        choices=choices,
        answer=answer,
        points=points,
        block=block,
        year=year,
        **kw,
    )


def test_module_is_pure():
    code = "import sys, jmed.metrics; bad = {'torch', 'mlflow', 'pandas'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "text, lenient, official",
    [
        ("c", ("c",), ("c",)),
        ("e,c", ("c", "e"), ("c", "e")),
        ("C", ("c",), None),
        ("ｃ", ("c",), None),  # full-width letter
        ("（ｃ）", ("c",), None),
        ("(c)", ("c",), None),
        ("「答え：c」", ("c",), None),
        ("答え: c", ("c",), None),
        ("答えはcとeです。", ("c", "e"), None),
        ("正解は b. 肺炎だから", ("b",), None),
        ("Answer: C", ("c",), None),
        ("c、e", ("c", "e"), None),
        ("c, e", ("c", "e"), None),  # official keeps " e": never equal to gold
        ("  c \n", ("c",), None),
        ("c\n解説: e is wrong because", ("c",), None),
        ("a,a", ("a",), ("a", "a")),  # official keeps duplicates (then wrong)
        ("f", None, None),  # outside a–e
        ("c,f", None, None),
        ("", None, None),
        ("I think so", None, None),
        ("cat", None, None),
        ("ce", ("c", "e"), None),  # written together (IgakuQA119's style)
        ("bde", ("b", "d", "e"), None),
        ("答え：ＣＥ", ("c", "e"), None),
        ("(ce) です", ("c", "e"), None),
        ("ec", None, None),  # together only in ascending order: not a word
        ("bad", None, None),
        ("dead", None, None),
        ("a or d", None, None),  # a hedge is not an answer (it was read as "a")
        ("aまたはd", None, None),
        ("答えは b もしくは c", None, None),
        # marked answers: JMLE2026-Bench's 【回答】 and the forms reasoning models write; the last one that reads
        ("【回答】a", ("a",), None),
        ("【回答】 a,c", ("a", "c"), None),
        ("【答え】c", ("c",), None),
        ("[回答] a", ("a",), None),
        ("［回答］ｂ", ("b",), None),  # full-width brackets and letter
        ("回答：a", ("a",), None),
        ("回答: d", ("d",), None),
        ("答え：e", ("e",), None),
        ("回答：ｂ，ｅ", ("b", "e"), None),
        ("**【回答】** c", ("c",), None),  # markdown emphasis around the mark
        ("答えはaかもしれない。\n【回答】c", ("c",), None),  # the marked answer, not the first guess
        ("回答：a\n見直すと誤りだった。\n【回答】c", ("c",), None),  # the last one
        ("【回答】d\n\n回答：以下に理由を述べる。", ("d",), None),  # a later mark that does not read is passed over
        ("【回答】a または d", None, None),  # a hedge stays unparsed
        ("【回答】f", None, None),  # outside a–e
    ],
)
def test_parse_letters(text, lenient, official):
    assert M.parse_letters(text, 5, "lenient") == lenient
    assert M.parse_letters(text, 5, "official") == official


def test_parse_letters_respects_choice_count():
    assert M.parse_letters("f", 6, "lenient") == ("f",)
    assert M.parse_letters("f", 6, "official") == ("f",)
    assert M.parse_letters("h", 8, "official") == ("h",)
    assert M.parse_letters("e", 4, "lenient") is None
    with pytest.raises(ValueError, match="unknown parsing"):
        M.parse_letters("a", 5, "fuzzy")


def test_is_correct_multi_answer_all_or_nothing():
    two = q("X1", answer=(("d", "e"),))
    assert M.is_correct(two, ("d", "e"))
    assert M.is_correct(two, ("e", "d"))
    assert not M.is_correct(two, ("d",))
    assert not M.is_correct(two, ("c", "d", "e"))
    assert not M.is_correct(two, None)


def test_a_or_d_and_accept_any():
    b30 = q("112B30", answer=(("a",), ("d",)), block="B")
    assert M.is_correct(b30, ("a",)) and M.is_correct(b30, ("d",))
    assert not M.is_correct(b30, ("a", "d")) and not M.is_correct(b30, ("b",))
    a71 = q("116A71", answer=(("b",),), accept_any=True)
    for pred in ("", "zzz", "e", None):
        assert M.is_correct(a71, M.parse_answer(a71, pred, "official"))
        assert M.is_correct(a71, M.parse_answer(a71, pred, "lenient"))


def test_numeric_entry():
    n = q("112C66", answer=(("26",),), choices=())
    assert n.numeric
    assert M.parse_answer(n, "26", "official") == ("26",)
    assert M.parse_answer(n, "２６", "official") == ("２６",)
    assert M.parse_answer(n, " ２６ ", "lenient") == ("26",)
    assert M.parse_answer(n, "", "lenient") is None
    assert M.is_correct(n, M.parse_answer(n, "26", "official"))
    assert not M.is_correct(n, M.parse_answer(n, "２６", "official"))
    assert M.is_correct(n, M.parse_answer(n, "２６", "lenient"))
    assert not M.is_correct(n, M.parse_answer(n, "026", "lenient"))
    dec = q("116F74", answer=(("04",),), choices=())
    assert not M.is_correct(dec, M.parse_answer(dec, "4", "lenient"))


def _exam(year=2022):
    """A small exam: 3 required (B/E) questions worth 1+3+3, 4 general ones (1 each)."""
    return [
        q("R1", block="B", points=1, year=year),
        q("R2", block="B", points=3, year=year, kinki=("a",)),
        q("R3", block="E", points=3, year=year, answer=(("a",), ("d",))),
        q("G1", block="A", year=year, answer=(("d", "e"),), kinki=("b",)),
        q("G2", block="C", year=year, answer=(("26",),), choices=()),
        q("G3", block="D", year=year, accept_any=True),
        q("G4", block="F", year=year, points=0, category="産科"),
    ]


def test_letter_summary_exact_values():
    preds = {"R1": "c", "R2": "a", "R3": "d", "G1": "b,d", "G2": "２６", "G3": ""}  # G4 missing
    s = M.letter_summary(_exam(), preds, "official")
    assert s["questions"] == 7
    assert s["correct"] == 3  # R1, R3 (a or d), G3 (accept_any)
    assert s["accuracy"] == 3 / 7
    assert (s["points"], s["points_total"], s["score"]) == (5, 10, 5 / 10)
    assert (s["required_points"], s["required_total"], s["required_score"]) == (4, 7, 4 / 7)
    assert (s["general_points"], s["general_total"]) == (1, 3)
    assert s["unparsed"] == 1  # "" for G3 (still correct: accept_any); "２６" is read, but wrong
    assert s["missing"] == 1 and s["missing_ids"] == ["G4"]
    assert s["kinki_selected"] == 2  # R2 chose a, G1 chose b
    y = s["by_year"]["2022"]
    assert y["correct"] == 3 and y["passed"] is False and y["general_line"] == 214 / 297
    assert s["by_category"]["産科"] == {
        "questions": 1,
        "correct": 0,
        "accuracy": 0.0,
        "points": 0,
        "points_total": 0,
        "score": 0.0,
    }
    assert s["by_category"]["unknown"]["questions"] == 6

    lenient = M.letter_summary(_exam(), preds, "lenient")
    assert lenient["correct"] == 4 and lenient["unparsed"] == 1  # "２６" → "26" is now correct
    assert lenient["points"] == 6 and lenient["general_points"] == 2


def test_pass_fail_rule():
    exam = _exam(2022)
    perfect = {"R1": "c", "R2": "c", "R3": "a", "G1": "d,e", "G2": "26", "G3": "a", "G4": "c"}
    s = M.letter_summary(exam, perfect, "official")
    assert s["accuracy"] == 1.0 and s["score"] == 1.0 and s["by_year"]["2022"]["passed"] is True
    # required 4/7 < 80 % → fail even with general perfect
    fail_req = dict(perfect, R2="b")
    assert M.letter_summary(exam, fail_req, "official")["by_year"]["2022"]["passed"] is False
    # the rule itself, at its edges (2022 line 214/297)
    assert M.pass_fail(160, 200, 214, 297, 3, 2022)["passed"] is True
    assert M.pass_fail(159, 200, 297, 297, 0, 2022)["passed"] is False
    assert M.pass_fail(200, 200, 213, 297, 0, 2022)["passed"] is False
    assert M.pass_fail(200, 200, 297, 297, 4, 2022)["passed"] is False
    assert M.pass_fail(160, 200, 70, 100, 0, 2030) == {"passed": True, "verdict": "PASS", "general_line": 0.70}
    assert M.pass_fail(160, 200, 69, 100, 0, 2030)["passed"] is False
    assert M.pass_fail(0, 0, 10, 10, 0, 2022)["passed"] is None  # no required section: no verdict
    # without contraindication data: no PASS (0 selected would be a guess); failing on points still fails
    assert M.pass_fail(200, 200, 297, 297, 0, 2022, kinki_known=False)["passed"] is None
    assert M.pass_fail(200, 200, 297, 297, 0, 2022, kinki_known=False)["verdict"].startswith("unknown (no kinki data")
    assert M.pass_fail(159, 200, 297, 297, 0, 2022, kinki_known=False) == {
        "passed": False,
        "verdict": "FAIL (on points; no kinki data)",
        "general_line": 214 / 297,
    }


def test_no_pass_verdict_when_any_question_lacks_kinki_data():
    from dataclasses import replace

    exam = _exam(2022)
    perfect = {"R1": "c", "R2": "c", "R3": "a", "G1": "d,e", "G2": "26", "G3": "a", "G4": "c"}
    exam[0] = replace(exam[0], kinki_known=False)
    year = M.letter_summary(exam, perfect, "official")["by_year"]["2022"]
    assert year["passed"] is None and year["verdict"].startswith("unknown (no kinki data")
    assert M.general_line(2019) == 209 / 296 and M.general_line(2026) == 0.70


def test_kinki_fail_in_summary():
    good = [q(f"G{i}", block="A") for i in range(20)] + [q("R", block="B")]
    kinki = [q(f"K{i}", block="C", kinki=("a", "b")) for i in range(4)]
    preds = {x.id: "c" for x in good} | {f"K{i}": "a,b" for i in range(4)}
    s = M.letter_summary(good + kinki, preds, "lenient")
    assert s["general_score"] == 20 / 24 and s["required_score"] == 1.0
    assert s["kinki_selected"] == 4 and s["by_year"]["2022"]["passed"] is False
    s = M.letter_summary(good + kinki[:3], preds, "lenient")
    assert s["kinki_selected"] == 3 and s["by_year"]["2022"]["passed"] is True


def test_gestalt_is_difflib():
    assert M.gestalt("abcd", "abce") == 0.75
    assert M.gestalt("肺炎", "肺炎球菌") == 2 * 2 / 6
    assert M.gestalt("", "") == 1.0 and M.gestalt("", "a") == 0.0
    a, b = "心不全による肺うっ血", "うっ血性心不全"
    assert M.gestalt(a, b) == SequenceMatcher(None, a, b).ratio()


def test_choice_scores_and_topk_ties():
    # R == "心不全": choice 2 exact; "腎不全" shares 不全 (M=2, T=6); others share nothing
    s = M.choice_scores("心不全", CH5)
    assert s == [0.0, 1.0, 2 * 2 / 6, 0.0, 0.0]
    assert M.topk(s, 1) == (1,)
    assert M.topk(s, 2) == (1, 2)
    assert M.topk([0.5, 0.9, 0.9, 0.1], 1) == (1,)  # tie → earlier
    assert M.topk([0.5, 0.9, 0.9, 0.9], 2) == (1, 2)
    assert M.topk([0.0] * 5, 2) == (0, 1)  # empty output → first choices
    assert M.loglik_pick([-3.0, -1.0, -1.0, -0.5, -9.0], 2) == (1, 3)
    # asymmetry of SequenceMatcher is why the per-choice score averages both directions
    a, b = "abxcd", "abcxd"
    assert M.choice_scores(a, [b]) == [(M.gestalt(b, a) + M.gestalt(a, b)) / 2]


def test_n_select():
    assert M.n_select("正しいのはどれか。2つ選べ。") == 2
    assert M.n_select("どれか。３つ選べ。") == 3  # full-width digit
    assert M.n_select("どれか。二つ選べ。") == 2
    assert M.n_select("どれか。") == 1


COMMA = ("A, B併用", "C", "肺炎.", "D", "E")


def test_text_grade_choice_with_comma():
    two = q("T1", choices=COMMA, answer=(("a", "c"),))
    assert M.gold_indices(two) == ((0, 2),)
    assert M.gold_text(two) == "A, B併用,肺炎"  # "." removed
    g = M.text_grade(two, "### 応答：\nA, B併用,肺炎.")
    assert g["exact"] is True and g["gestalt"] == 1.0
    assert g["pick"] == (0, 2) and g["gestalt_correct"] is True
    one = q("T2", choices=COMMA, answer=(("a",),))
    g = M.text_grade(one, "A, B併用")
    assert g["exact"] is True and g["pick"] == (0,) and g["gestalt_correct"] is True


def test_exact_answer_can_miss_gestalt_accuracy():
    # By definition, a third choice can be closer to the joined gold text than a gold choice
    # (IgakuQA 2022 has 3 such questions).
    x = q("T9", choices=("頭痛", "腹痛", "頭痛と腹痛", "発熱", "咳"), answer=(("a", "b"),))
    assert M.choice_scores("頭痛,腹痛", x.choices) == [4 / 7, 4 / 7, 0.8, 0.0, 0.0]
    g = M.text_grade(x, "頭痛,腹痛")
    assert g["exact"] is True and g["pick"] == (0, 2) and g["gestalt_correct"] is False


def test_text_summary_exact_values():
    qs = [
        q("T1", answer=(("b",),)),  # exact
        q("T2", answer=(("b", "c"),)),  # near: picks b,c
        q("T3", answer=(("a",),)),  # empty output
        q("T4", answer=(("a",), ("d",))),  # "a or d": 肝硬変 → d
        q("T5", answer=(("e",),), accept_any=True),  # missing: wrong even where any answer counts
        q("N1", answer=(("26",),), choices=()),  # numeric: excluded
    ]
    resp = {"T1": "prompt ### 応答：\n心不全。", "T2": "心不全,腎不全", "T3": "", "T4": "肝硬変"}
    s = M.text_summary(qs, resp)
    assert s["questions"] == 5 and s["excluded_numeric"] == 1
    # T1: R = "心不全。" vs "心不全": gestalt 6/7, not exact; pick b (correct)
    # T2: R = "心不全,腎不全" == gold "心不全,腎不全" → exact
    # T3: "" → gestalt 0, pick a (tie → earliest, as the harness) → correct; T4: exact with set (d,);
    # T5: no response at all → wrong in every metric (an empty response is an answer, a missing one is not)
    assert s["exact_correct"] == 2 and s["exact_match"] == 2 / 5
    assert s["gestalt_correct"] == 4 and s["gestalt_accuracy"] == 4 / 5
    assert s["gestalt"] == (6 / 7 + 1.0 + 0.0 + 1.0 + 0.0) / 5
    assert s["missing"] == 1 and s["missing_ids"] == ["T5"]  # T3's empty output is an answer
    assert s["by_year"]["2022"]["questions"] == 5


def test_loglik_summary():
    qs = [
        q("L1", answer=(("b",),)),
        q("L2", answer=(("b", "d"),), stem="どれか。2つ選べ。"),
        q("L3", answer=(("a", "c"),), stem="どれか。"),  # stem lacks 「2つ選べ」
        q("N1", answer=(("26",),), choices=()),
    ]
    scores = {"L1": [-2, -1, -3, -4, -5], "L2": [-9, -1, -3, -1, -5], "L3": [-1, -5, -2, -3, -4]}
    s = M.loglik_summary(qs, scores)
    assert s["protocol"] == "loglik" and s["questions"] == 3 and s["excluded_numeric"] == 1
    assert s["correct"] == 3 and s["accuracy"] == 1.0
    assert s["accuracy_stem_k"] == 2 / 3  # L3 with k=1 picks only a


# Real outputs (verbatim, untuned models, igakuqa letter prompts on the bundled sample and IgakuQA) with
# the answer lenient parsing must read from them. Re-listed choices and letters that begin words are
# not answers; the official parser (unchanged) reads none of these.
REAL_OUTPUTS = [
    # SmolLM2-135M-Instruct
    ("a. 統合失調症の陽性症状\nb. 感", None),  # the choices listed back
    ("a. 胆石\nb. 低カルシウム血症\nc.", None),
    ("1. \na. 急速進行性糸\nb. \nc. 脱水", None),
    ("1. 24時間\n2. 24時間\n3. 24時間", None),  # numbered lines
    ("1. トラネキサム酸\n2. ビタミンK\n3", None),
    ("B群連鎖葉はど", None),  # a letter that begins a word
    ("2つ選べ。\n\n## ビタミンB12欠乏症の", None),
    ("1\n\n答えは1である。\n\nそれは1である。\n", None),
    ("3つ選べ。\n\nそれは、サーシャップバッ", None),
    ("a. 僧帽弁狭窄症の原因として最も", ("a",)),  # one label: read as the answer a
    # tiny (random weights)
    ('\ufffdアトロ"ﾟま@c吸気が途中で止まスタン五区由', None),
    ("\ufffd嘔卵スタン院力障害び、記号で答えてください。最終胱ｋ衝けいれん", None),
    # answers that stay answers
    ("正解は b. 肺炎だから", ("b",)),
    ("答えはcとeです。", ("c", "e")),
    ("cです", ("c",)),
    ("d,e\n", ("d", "e")),
]


@pytest.mark.parametrize("text, expected", REAL_OUTPUTS)
def test_lenient_parsing_of_real_model_outputs(text, expected):
    assert M.parse_letters(text, 5, "lenient") == expected
    assert M.parse_letters(text, 5, "official") is None  # IgakuQA's parser: only bare "x,y" strings


# Outputs in the forms reasoning models (Qwen3, DeepSeek-R1) and JMLE2026-Bench's prompt produce, as
# parse_answer reads them (reasoning removed first): (text, lenient, IgakuQA's reference, JMLE2026-Bench's).
REASONING_OUTPUTS = [
    ("<think>\nまず選択肢を検討する。aは誤り。bも典型的ではない。\n</think>\n\n【回答】c", ("c",), None, ("c",)),
    ("<think>\n答えはaかもしれない。しかし所見からはdが合う。\n</think>\n\n回答：d", ("d",), None, None),
    # the chat template put <think> in the prompt: only the closing tag is in the output
    (
        "患者は高齢で、【回答】aとも考えたが、最終的にはbとeを選ぶ。\n</think>\n\n【回答】b,e",
        ("b", "e"),
        None,
        ("b", "e"),
    ),
    ("a. 誤り\nb. 誤り\nc. 正しい\n</think>\n\nc", ("c",), ("c",), None),  # reference scorer reads "c" too
    ("<think>\naとcで迷う。\n</think>\n\n[回答] a", ("a",), None, None),
    ("<think>\n答えはeだろう。いや", None, None, None),  # cut off while reasoning: no answer
    ("<think>\n【回答】a\n", None, None, None),
]


@pytest.mark.parametrize("text, lenient, official, jmle", REASONING_OUTPUTS)
def test_reasoning_is_removed_before_the_answer_is_read(text, lenient, official, jmle):
    assert M.parse_answer(q("X"), text, "lenient") == lenient
    assert M.parse_answer(q("X"), text, "official") == official
    assert M.parse_answer(q("X", source="jmle2026"), text, "official") == jmle


def test_strip_reasoning():
    assert M.strip_reasoning("<think>\naかも\n</think>\n\n【回答】c\n") == "【回答】c\n"
    assert M.strip_reasoning("<think>a</think>x<think>b</think> c") == "c"  # up to the last closing tag
    assert M.strip_reasoning("aかも\n</think>\nb") == "b"  # no opening tag
    assert M.strip_reasoning("前置き<think>aかも") == "前置き"  # never closed
    assert M.strip_reasoning("  c \n") == "  c \n" and M.strip_reasoning(None) is None  # no tags: unchanged


def test_text_grade_removes_reasoning():
    g = M.text_grade(q("T1", answer=(("b",),)), "<think>\n肺炎か腎不全か。\n</think>\n\n心不全")
    assert g["exact"] is True and g["pick"] == (1,) and g["gestalt_correct"] is True


def test_missing_letter_prediction_is_wrong_even_where_any_answer_counts():
    qs = [q("A", accept_any=True), q("B", accept_any=True)]
    s = M.letter_summary(qs, {"A": "x"}, "official")  # B has no prediction at all
    assert (s["correct"], s["missing"], s["missing_ids"]) == (1, 1, ["B"])


@pytest.mark.parametrize(
    "extraction, expected",
    [
        ("last-block", "心不全\n理由：うっ血がある"),  # as first published: everything after the last header
        ("first-line", "心不全"),  # from July 2024: the first line of the first chunk
    ],
)
def test_harness_extractions_on_a_multi_line_response(extraction, expected):
    from jmed.prompts import extract_response

    response = "  心不全\n理由：うっ血がある\n"
    assert extract_response(response, extraction) == expected
    # a generated second header: last-block reads after it, first-line before it
    twice = "腎不全\n### 応答：\n心不全"
    assert extract_response(twice, extraction) == ("心不全" if extraction == "last-block" else "腎不全")
    qs = [q("T1", answer=(("b",),))]
    s = M.text_summary(qs, {"T1": response}, extraction)
    assert s["exact_match"] == (1.0 if extraction == "first-line" else 0.0) and s["extraction"] == extraction


def test_prompt_states_the_question_s_own_number_of_choices():
    from jmed.prompts import render_prompt

    assert "4つの選択肢" in render_prompt("どれか。", ("a", "b", "c", "d"), "alpaca_med")
    five = render_prompt("どれか。", CH5, "medpalm")
    assert "最終的な答えとして5つの選択肢のうちの1つを出力してください。" in five  # the harness's text exactly


def test_one_shot_medpalm_is_the_harness_template():
    """japanese-lm-med-harness template.py, its 1-shot medpalm_five_choice_cot_ja: one instruction block,
    the example's choices joined by ", " and answered with the choice text, then {{instruction}} {{input}}
    (the question's choices joined by "," as eval_bench.py renders them)."""
    from jmed.prompts import render

    shot = q(
        "S1",
        answer=(("e",),),
        stem="ヒトゲノム・遺伝子解析研究の被験者に対する説明で必須でないのはどれか。",
        choices=("研究の目的", "同意の自由", "匿名化の方法", "参加による不利益", "研究成果還元の保証"),
    )
    main = q("Q1", stem="どれか。")
    assert render(main, "medpalm", [shot]).prompt == (
        "### 指示：\n"
        "以下は医学知識に関する多肢選択問題です。利用可能な情報を要約してから、段階的に解決してください。"
        "最終的な答えとして5つの選択肢のうちの1つを出力してください。\n"
        "### 入力：\n"
        "ヒトゲノム・遺伝子解析研究の被験者に対する説明で必須でないのはどれか。\n"
        "研究の目的, 同意の自由, 匿名化の方法, 参加による不利益, 研究成果還元の保証\n"
        "### 応答：\n"
        "研究成果還元の保証\n"
        "### 入力：\n"
        "どれか。\n"
        "肺炎,心不全,腎不全,肝硬変,敗血症\n"
        "### 応答：\n"
    )


def test_count_mismatch_is_counted():
    """A parsed answer with another number of letters than the question's answer count is counted (a 「2つ選べ」
    answered "a", "a,a,a" read as "a", three letters for one); no answer, numeric and accept-any are not."""
    qs = [
        q("two", answer=(("a", "c"),)),
        q("two-ok", answer=(("a", "c"),)),
        q("one", answer=(("b",),)),
        q("none", answer=(("b",),)),
        q("num", answer=(("25",),), choices=()),
        q("any", answer=(("a",),), accept_any=True),
    ]
    preds = {"two": "a,a,a", "two-ok": "c,a", "one": "a,b,d", "none": "???", "num": "25", "any": "a,b"}
    rows = {r["id"]: r["count_mismatch"] for r in M.letter_rows(qs, preds, M.OFFICIAL)}
    assert rows == {"two": True, "two-ok": False, "one": True, "none": False, "num": False, "any": False}
    assert M.letter_summary(qs, preds, M.OFFICIAL)["count_mismatch"] == 2
