"""The medLLM QA benchmark (aistairc/medLLM_QA_benchmark) on small files written here in its layout (never
its data): its igakuqa.jsonl told apart from IgakuQA's block files, its harness's integer ids read by
`jmed score`, and the questions whose answer contradicts the stem refused with the way round it."""

import json
import shutil

import pytest

from jmed import checks, data
from jmed import score as S
from jmed.config import DataFilter
from jmed.data import DataLoadError

CHOICES = ["甲", "乙", "丙", "丁", "戊"]


def _q(pid, answer, stem="どれか。", points="1"):
    return {
        "problem_id": pid,
        "problem_text": stem,
        "choices": CHOICES,
        "text_only": True,
        "answer": answer,
        "points": points,
    }


# IgakuQA's schema, key order and ids: the benchmark's igakuqa.jsonl is IgakuQA's block files joined
IGAKU = [
    _q("112A1", ["e"]),
    _q("112A2", ["b", "c"], "どれか。2つ選べ。"),
    _q("112B30", ["a or d"], points="3"),
    _q("116A71", ["c"]),
]
# as its harness would be answered: NFKC, 「、」 and spaces are its scorer's rules, not IgakuQA's
PREDS = {"112A1": "ｅ", "112A2": "c、 b", "112B30": " d ", "116A71": "a"}


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _preds(path, values):
    return _jsonl(path, [{"problem_id": k, "prediction": v, "explanation": "…"} for k, v in values.items()])


def test_its_igakuqa_file_is_the_benchmark_wherever_it_sits_and_igakuqa_block_files_stay_igakuqa(tmp_path):
    bench = _jsonl(tmp_path / "data" / "ja" / "IgakuQA" / "igakuqa.jsonl", IGAKU)
    copy = tmp_path / "elsewhere" / "IgakuQA.jsonl"  # another folder, another case: the stem decides
    copy.parent.mkdir()
    shutil.copy(bench, copy)
    block = _jsonl(tmp_path / "igakuqa" / "data" / "2018" / "112-A.jsonl", IGAKU)  # same lines, IgakuQA's name
    # an igakuqa.jsonl with IgakuQA's metadata beside it is an IgakuQA file (the metadata is read)
    with_meta = _jsonl(tmp_path / "mine" / "igakuqa.jsonl", IGAKU)
    _jsonl(tmp_path / "mine" / "igakuqa_metadata.jsonl", [{"problem_id": "112A1", "kinki": ["a"]}])
    assert [data.detect_format(p) for p in (bench, bench.parent, copy, block, block.parent, with_meta)] == [
        "medllm",
        "medllm",
        "medllm",
        "igakuqa",
        "igakuqa",
        "igakuqa",
    ]
    ds = data.read_dataset(bench)
    assert (ds.format, ds.errors, len(ds.items)) == ("medllm", [], 4)
    assert [(q.id, q.exam, q.block, q.year, q.exam_kind, q.accept_any) for q in ds.items] == [
        ("112A1", "112", "A", 2018, "medical", False),
        ("112A2", "112", "A", 2018, "medical", False),
        ("112B30", "112", "B", 2018, "medical", False),
        ("116A71", "116", "A", 2022, "medical", True),
    ]
    assert ds.items[2].answer == (("a",), ("d",))  # "a or d": either alone
    assert data.read_dataset(with_meta).items[0].kinki == ("a",)


def test_its_igakuqa_file_is_scored_by_its_own_scorer_rules(tmp_path):
    bench = _jsonl(tmp_path / "IgakuQA" / "igakuqa.jsonl", IGAKU)
    preds = _preds(tmp_path / "out" / "igakuqa.jsonl", PREDS)
    summary, _, rows = S.score(str(bench), str(preds), parsing="official")
    assert [r["correct"] for r in rows] == [True, True, True, True]
    assert (summary["questions"], summary["correct"], summary["points"], summary["points_total"]) == (4, 4, 6, 6)
    # read as IgakuQA, its reference scorer (exact split on ",") reads none of these forms
    summary, _, rows = S.score(str(bench), str(preds), parsing="official", data_format="igakuqa")
    assert [r["correct"] for r in rows] == [False, False, False, True]  # 116A71 is correct for everyone
    assert (summary["correct"], summary["points"]) == (1, 1)


def test_the_harness_output_with_integer_ids_is_scored(tmp_path):
    # MMLU as the benchmark ships it: integer ids; its harness answers questions[5:] (the first 5 are the
    # few-shot examples) and writes each problem_id as the data has it, an integer
    gold = _jsonl(
        tmp_path / "data" / "en" / "MMLU" / "mmlu_en_medical.jsonl",
        [
            {
                "problem_id": i,
                "problem_text": f"Which one ({i})?",
                "choices": ["w", "x", "y", "z"],
                "answer": ["abcd"[i % 4]],
                "points": 1,
                "text_only": True,
            }
            for i in range(8)
        ],
    )
    assert data.detect_format(gold) == "medllm"
    out = tmp_path / "results" / "m" / "en" / "MMLU" / "mmlu_en_medical.jsonl"
    _jsonl(
        out,
        [{"problem_id": i, "prediction": "abcd"[i % 4] if i != 7 else "a", "explanation": "…"} for i in range(5, 8)],
    )
    values, where = S.read_predictions(out)
    assert values == {"5": "b", "6": "c", "7": "a"} and where["5"] == f"{out}:1"
    summary, _, _ = S.score(str(gold), str(out), parsing="official")
    assert (summary["questions"], summary["correct"], summary["missing"]) == (8, 2, 5)  # int 12 is "12"
    # its evaluate_main.py scores only the answered tail (golds[-len(preds):]): leave the shots out to match
    summary, _, _ = S.score(
        str(gold), str(out), parsing="official", filters=DataFilter(exclude_ids=("0", "1", "2", "3", "4"))
    )
    assert (summary["questions"], summary["correct"], summary["missing"]) == (3, 2, 0)


def test_integer_ids_are_ids_but_booleans_floats_and_repeats_are_errors(tmp_path):
    f = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"problem_id": 3, "prediction": "a"},
            {"problem_id": "3", "prediction": "b"},
            {"problem_id": True, "prediction": "a"},
            {"problem_id": 4.0, "prediction": "a"},
            {"problem_id": 0, "prediction": "c"},
        ],
    )
    with pytest.raises(S.ScoreError) as e:
        S.read_predictions(f)
    assert e.value.errors == [
        f"{f}:2: problem_id: 3 is already predicted at {f}:1",
        f"{f}:3: problem_id: missing or not a non-empty string",
        f"{f}:4: problem_id: missing or not a non-empty string",
    ]


def test_denqa_answers_that_contradict_the_stem_are_refused_until_left_out(tmp_path):
    # as 8 DenQA questions upstream: 「2つ選べ」 with a one-letter answer; "NA": no official answer
    den = _jsonl(
        tmp_path / "data" / "ja" / "DenQA" / "denqa.jsonl",
        [
            _q("116A1", ["a"], "どれか。 1つ選べ。"),
            _q("116A35", ["a"], "どれか。2 つ選べ。"),
            _q("116A69", ["b"], "どれか。 3 つ選べ。"),
            _q("116A85", "NA", "どれか。 1つ選べ。"),
        ],
    )
    ds = data.read_dataset(den)
    assert (ds.format, ds.errors, len(ds.items), ds.skipped) == ("medllm", [], 3, {"no_answer": ["116A85"]})
    report = checks.validate([den])
    assert [(e["line"], e["message"]) for e in report.errors] == [
        (2, "stem says 「2 つ選べ」 but the answer has 1 letter(s): a"),
        (3, "stem says 「3 つ選べ」 but the answer has 1 letter(s): b"),
    ]
    preds = _preds(tmp_path / "p.jsonl", {"116A1": "a", "116A35": "a", "116A69": "b,c,e", "116A85": "a"})
    with pytest.raises(DataLoadError, match="leave these out with --exclude-ids 116A35,116A69"):
        S.score(str(den), str(preds), parsing="official")
    summary, _, _ = S.score(
        str(den), str(preds), parsing="official", filters=DataFilter(exclude_ids=("116A35", "116A69"))
    )
    assert (summary["questions"], summary["correct"]) == (1, 1)
    assert summary["set_aside"] == {"116A85": "no_answer"}


def test_jjsimqa_keeps_its_format_and_is_scored_by_the_benchmark_that_publishes_it(tmp_path):
    jj = _jsonl(
        tmp_path / "data" / "ja" / "JJSIMQA" / "jjsimqa.jsonl",
        [
            {**_q("107_64-0", ["d"], "どれか.1つ選べ."), "points": 1.0, "choices_orig": "[甲,乙,丙,丁,戊]"},
            {**_q("107_64-5", ["a", "e"], "どれか.2つ選べ."), "points": 1.0, "choices_orig": "[甲,乙,丙,丁,戊]"},
            {**_q("107_888-26", ["d", ",", "e"], "どれか.2つ選べ."), "points": 1.0, "choices_orig": "[甲,乙,丙,丁,戊]"},
        ],
    )
    assert data.detect_format(jj) == "jjsimqa"
    assert [q.source for q in data.read_dataset(jj).items] == ["jjsimqa"] * 3
    preds = _preds(tmp_path / "p.jsonl", {"107_64-0": "ｄ", "107_64-5": "e、a", "107_888-26": "d, e"})
    summary, _, rows = S.score(str(jj), str(preds), parsing="official")
    # NFKC, 「、」 and spaces as evaluate_main.py; the stray "," of 107_888-26's answer is dropped (d,e), which
    # evaluate_main.py, comparing with [",", "d", "e"], never credits
    assert [r["correct"] for r in rows] == [True, True, True] and summary["correct"] == 3
