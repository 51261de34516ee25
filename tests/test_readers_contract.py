"""Every registered reader (jmed/readers/<name>.py) through the same steps: detect, read, validate
(the Great Expectations suite, via the CLI), and official scoring of a perfect and an empty prediction
set. A new reader gets this test by being registered and adding `tests/fixtures_readers/<name>/`
(original questions in its upstream layout)."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from jmed import data, exams, metrics, readers  # noqa: E402
from jmed.cli import main  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures_readers"


def fixture(name: str) -> Path:
    for path in (FIXTURES / name, Path(__file__).parent / f"fixtures_{name}"):
        if path.exists():
            return path
    pytest.fail(f"reader {name!r} is registered but has no fixture: add tests/fixtures_readers/{name}/")


@pytest.mark.parametrize("name", readers.names())
def test_every_registered_reader_detects_reads_validates_and_scores(name, tmp_path, tracking):
    reader = readers.get(name)
    path = fixture(name)
    assert data.detect_format(path) == name
    ds = data.read_dataset(path)
    assert (ds.format, ds.errors) == (name, [])
    assert ds.items and ds.records == len(ds.items) + sum(len(v) for v in ds.skipped.values())
    res = CliRunner().invoke(main, ["validate", str(path)])  # against the bundled sample test set
    assert res.exit_code == 0, res.output
    if not reader.questions:
        assert ds.questions == []
        return
    for q in ds.questions:
        assert q.source == name and q.exam_kind in exams.names()
        assert len(q.choices) <= data.MAX_CHOICES
    perfect = {q.id: reader.answer_text(q) for q in ds.questions}
    summary = metrics.letter_summary(ds.questions, perfect, "official")
    assert (summary["correct"], summary["questions"], summary["missing"]) == (len(ds.questions),) * 2 + (0,)
    empty = metrics.letter_summary(ds.questions, {}, "official")
    assert (empty["correct"], empty["missing"]) == (0, len(ds.questions))
    # the same through `jmed score`, from a prediction file as another harness writes it
    preds = tmp_path / "preds.jsonl"
    preds.write_text(
        "".join(json.dumps({"problem_id": k, "prediction": v}, ensure_ascii=False) + "\n" for k, v in perfect.items()),
        encoding="utf-8",
    )
    res = CliRunner().invoke(
        main, ["score", "--data", str(path), "--predictions", str(preds), "--parsing", "official", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["correct"] == len(ds.questions)


def test_formats_kinds_scorers_and_help_come_from_the_registry():
    from jmed.config import EXAM_KINDS

    assert data.FORMATS == readers.names() and set(data.FORMATS) >= {
        "igakuqa",
        "igakuqa119",
        "jmle2026",
        "jjsimqa",
        "jmmlu",
        "medllm",
        "yakugakuqa",
        "instructions",
    }
    assert EXAM_KINDS == exams.names() and {"medical", "dental", "pharmacist", "other"} <= set(EXAM_KINDS)
    assert readers.official("jmle2026") is readers.get("jmle2026").official
    assert readers.official("igakuqa") is None  # IgakuQA's reference rules are metrics' own
    res = CliRunner().invoke(main, ["validate", "--help"])
    assert all(name in " ".join(res.output.split()) for name in readers.names())
    with pytest.raises(ValueError, match="unknown data format 'nope'; choose auto or one of: igakuqa, "):
        data.read_dataset(FIXTURES / "igakuqa", "nope")
    with pytest.raises(ValueError, match="unknown exam kind 'vet'"):
        exams.get("vet")


def test_detection_follows_priority_not_module_order():
    ranked = [r.name for r in readers.by_priority()]
    assert ranked.index("jmmlu") < ranked.index("igakuqa119") < ranked.index("jmle2026") < ranked.index("igakuqa")
    assert ranked[-1] == "igakuqa"  # the JSON-lines fallback is tried last


def test_one_choice_alphabet_for_validation_prompts_serving_and_the_suite(tmp_path):
    from jmed import contract, prompts
    from jmed.checks import load_suite
    from jmed.records import LETTERS, MAX_CHOICES

    assert prompts.LETTERS is LETTERS and contract.MAX_CHOICES == MAX_CHOICES == len(LETTERS) == 26
    limits = {
        e["kwargs"]["column"]: e["kwargs"]["max_value"]
        for e in load_suite("questions")["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] in ("n_choices", "n_answers")
    }
    assert limits == {"n_choices": MAX_CHOICES, "n_answers": MAX_CHOICES}
    # 11 choices: every one is in the prompt (k is the 11th letter), none dropped after j
    eleven = [f"選択肢{i}" for i in range(11)]
    prompt = prompts.render_prompt("どれか。", eleven, "igakuqa")
    assert "k. 選択肢10" in prompt and all(c in prompt for c in eleven)
    # 27 choices: an error where it is read (file, line, field) and where it would be rendered
    bad = tmp_path / "q.jsonl"
    bad.write_text(
        json.dumps(
            {
                "problem_id": "116A1",
                "problem_text": "どれか。",
                "choices": [str(i) for i in range(27)],
                "answer": ["a"],
                "points": "1",
                "text_only": True,
            }
        )
        + "\n",
        encoding="utf-8",
    )
    ds = data.read_dataset(bad)
    assert [str(e) for e in ds.errors] == [f"{bad}:1: choices: 27 choices; at most 26 (labelled a-z)"]
    with pytest.raises(ValueError, match="27 choices; prompts label at most 26"):
        prompts.render_prompt("どれか。", [str(i) for i in range(27)], "igakuqa")


def test_prompts_name_the_question_s_own_exam():
    from jmed.prompts import render_one
    from jmed.records import Question

    q = Question(id="109A1", stem="どれか。", choices=("甲", "乙"), answer=(("a",),), exam_kind="pharmacist")
    assert render_one(q, "igakuqa").prompt.startswith("以下は薬剤師国家試験の問題です。")
    assert "以下は薬学知識に関する多肢選択問題です。" in render_one(q, "medpalm").prompt
    medical = Question(id="116A1", stem="どれか。", choices=("甲", "乙"), answer=(("a",),))
    assert render_one(medical, "igakuqa").prompt.startswith("以下は医師国家試験の問題です。")  # unchanged
