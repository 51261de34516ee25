"""What the terminal shows: aligned step summaries, the lists validate prints, quiet by default."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jmed.console import block, table

JMED = str(Path(sys.executable).parent / "jmed")


def test_block_aligns_names_and_leaves_out_missing_values():
    assert block("train tiny", [("final loss", "1.5"), ("eval loss", None), ("run", "abc")]) == (
        "[jmed] train tiny\n  final loss  1.5\n  run         abc"
    )


def test_table_aligns_columns_under_a_rule():
    assert table(["model", "accuracy"], [["base", "0.0%"], ["adapter", "25.0%"]]).splitlines() == [
        "  model    accuracy",
        "  -------  --------",
        "  base     0.0%",
        "  adapter  25.0%",
    ]


def test_validate_summary_lists_warnings_and_leakage_up_to_a_limit():
    from jmed.checks import Report

    report = Report(
        questions=3,
        warnings=[
            {"file": "a.jsonl", "line": i, "field": "problem_text", "message": f"warning {i}"} for i in range(1, 13)
        ],
        leakage=[
            {
                "train_id": "116A1",
                "test_id": "117A2",
                "score": 97.5,
                "train_file": "t.jsonl",
                "train_line": 1,
                "test_file": "e.jsonl",
                "test_line": 2,
            }
        ],
    )
    lines = report.summary(max_listed=10).splitlines()
    warnings = [ln for ln in lines if ln.startswith("  warning: ")]
    assert warnings[0] == "  warning: a.jsonl:1: problem_text: warning 1" and len(warnings) == 10
    assert "  … and 2 more warnings in report.json (--report PATH writes it)" in lines
    assert "  leakage: train 116A1 ~ test 117A2 (similarity 97.5; t.jsonl:1 ~ e.jsonl:2)" in lines
    assert lines[-1].startswith("  leakage policy warn: near-duplicates (similarity >= 90) are warnings.")
    assert "(--exclude-ids 117A2)" in lines[-1]


def test_evaluate_summary_counts_every_question_left_out_and_the_delta_against_the_base():
    from jmed.config import EvalConfig
    from jmed.evaluate import summary

    cfg = EvalConfig(adapter="runs:/0123456789abcdef/adapter", protocol="letter", prompt_format="igakuqa", shots=0)
    metrics = {
        "eval/questions": 19,
        "eval/accuracy": 0.25,
        "eval/score": 0.3,
        "eval/points": 6,
        "eval/points_total": 20,
        "eval/unparsed": 2,
        "eval/2022/passed": 0.0,
        "eval/truncated": 1,
        "eval/max_new_tokens": 16,
    }
    result = {
        "metrics": metrics,
        "summary": {"by_year": {"2022": {"verdict": "FAIL"}}},
        "left_out": {"beyond --limit 20": 280, "numeric-entry (the text and loglik protocols need choices)": 1},
    }
    text = summary("tiny", cfg, result, {"eval/accuracy": 0.2}, "run1", in_data=300)
    assert text.splitlines() == [
        "[jmed] evaluate tiny adapter of train run 0123456789ab: igakuqa/letter, 0-shot",
        "  questions   19 evaluated of 300 in the data; 280 left out: beyond --limit 20; 1 left out: numeric-entry "
        "(the text and loglik protocols need choices)",
        "  accuracy    25.0% (base 20.0%, +5.0 pt)",
        "  exam score  30.0% (6 of 20 points)",
        "  pass        2022 FAIL",
        "  unparsed    2 of 19",
        "  cut off     1 answers reached max_new_tokens (up to 16)",
        "  run         run1",
    ]


def test_left_out_counts_name_the_filter_that_drops_each_question():
    from jmed.config import DataFilter
    from jmed.data import SAMPLE_TEST, left_out_counts, load_questions

    qs = load_questions(str(SAMPLE_TEST))
    counts = left_out_counts(qs, DataFilter(text_only=True, five_choices=True))
    assert counts == {
        "--text-only (has images)": sum(not q.text_only for q in qs),
        "--five-choices (not 5 choices)": sum(q.text_only and len(q.choices) != 5 for q in qs),
    }
    assert sum(counts.values()) > 0


def test_category_chart_labels_japanese_names_with_a_bundled_font():
    from jmed.evaluate import plot_categories

    fig = plot_categories(
        [
            {"category": "循環器", "correct": True},
            {"category": "循環器", "correct": False},
            {"category": "消化器", "correct": True},
        ]
    )
    labels = fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == ["循環器 (n=2)", "消化器 (n=1)"]
    assert {t.get_fontname() for t in labels} == {"IPAexGothic"}


def _jmed(args, cwd, **env):
    return subprocess.run(
        [JMED, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
            "MLFLOW_LOGGING_LEVEL": "",
            "JMED_VERBOSE": "",
            **env,
        },
    )


@pytest.mark.slow
def test_quiet_by_default_and_verbose_shows_mlflow_and_library_output(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "v").mkdir()
    quiet = _jmed(["runs", "reap"], tmp_path / "q")
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO mlflow" not in quiet.stderr and "Warning" not in quiet.stderr, quiet.stderr
    assert quiet.stdout.startswith("no abandoned runs of this host")
    loud = _jmed(["--verbose", "runs", "reap"], tmp_path / "v")
    assert loud.returncode == 0, loud.stderr
    assert "Creating initial MLflow database tables" in loud.stderr  # MLflow's INFO line, shown when asked


S = Path(__file__).resolve().parent.parent / "jmed" / "sample"
ONE_QUESTION = '{"question": "どれか。", "choices": ["A", "B"], "id": 7}\n'

# Inputs each command's --help allows (a type it accepts, a file or URI that may not exist): each gets a
# one-line error naming the option or the thing, never a traceback. (args, exit code, part of the message)
NO_TRACEBACK = [
    (
        ["validate", "--no-log", str(S / "test.jsonl"), "--against", str(S / "train.jsonl"), "--threshold", "-5"],
        2,
        "-5.0 is not from 0 to 100",
    ),
    (["validate", "--no-log", str(S / "test.jsonl"), "--report", "{tmp}"], 2, "is a folder; name the report file"),
    (
        ["score", "--data", str(S / "test.jsonl"), "--predictions", "{q}", "--years", "abc"],
        2,
        "years: expected an integer, got 'abc'",
    ),
    (
        ["score", "--data", str(S / "test.jsonl"), "--predictions", "{q}", "--protocol", "loglik"],
        2,
        "'loglik' is not one of 'letter', 'text'",
    ),
    (["predict", "{q}", "--batch-size", "0"], 2, "0 is not at least 1"),
    (["predict", "{q}", "--max-new-tokens", "-1"], 2, "-1 is not from 0 to 1024"),
    (["predict", "{q}", "--output", "{tmp}"], 2, "is a folder; name the output file"),
    (["predict", "{q}", "--model-uri", "models:/nope@champion"], 1, "Registered Model with name=nope not found"),
    (
        ["reproduce", "models:/jmed-tiny/99"],
        1,
        "models:/jmed-tiny/99: Model Version (name=jmed-tiny, version=99) not found",
    ),
    (["promote", "--base-model", "nope"], 1, "no evaluated adapter of base model 'nope'"),
    (["study", "--shots", "a"], 2, "expected comma-separated whole numbers"),
    (["study", "--models", ","], 2, "--models and --prompt-formats each need at least one value"),
    (["study", "--protocols", "nope"], 1, "protocol: unknown"),
    (["pipeline", "--protocol", "text"], 1, "protocol 'text' cannot read answers of prompt format 'igakuqa'"),
    (["evaluate", "--ids", "902F1", "--protocol", "loglik"], 1, "all 1 are numeric-entry"),
    # checked when the options are read (--dry-run too), not when training reaches them
    (
        ["train", "--lora-dropout", "1.5", "--seed", "-1", "--dry-run"],
        1,
        "lora_dropout: must be at most 1, got 1.5; seed: must be at least 0, got -1",
    ),
    (
        ["score", "--data", str(S / "test.jsonl"), "--predictions", "{q}", "--blocks", "b"],
        2,
        "blocks: 'b' is lower case; blocks are A, B, … (e.g. B,E)",
    ),
    # the vllm engine: settings that cannot combine, refused before anything starts
    (
        ["evaluate", "--engine", "vllm", "--quantization", "4bit", "--dry-run"],
        1,
        "quantization: 4bit is bitsandbytes in the hf engine",
    ),
    (
        ["evaluate", "--engine-url", "http://127.0.0.1:9/v1", "--dry-run"],
        1,
        "engine_url: a server URL is for --engine vllm",
    ),
    (
        ["evaluate", "--engine", "vllm", "--engine-url", "gpu-node:8000", "--dry-run"],
        1,
        "engine_url: expected http://host:port/v1",
    ),
    (
        ["evaluate", "--engine", "vllm", "--engine-url", "http://127.0.0.1:9/v1", "--limit", "1"],
        1,
        "vLLM engine at http://127.0.0.1:9/v1: cannot list its models",
    ),
    (["serve", "--port", "99999", "--model-uri", "models:/jmed-tiny/1"], 2, "99999 is not from 1 to 65535"),
]


@pytest.mark.parametrize("args,code,message", NO_TRACEBACK, ids=[" ".join(a[:2] + a[-2:]) for a, _, _ in NO_TRACEBACK])
def test_allowed_input_gets_an_error_line_not_a_traceback(args, code, message, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from jmed.cli import main

    q = tmp_path / "q.jsonl"
    q.write_text(ONE_QUESTION, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path, q=q) for a in args])
    assert isinstance(result.exception, SystemExit) or result.exception is None, result.exception
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output
