"""jmed.score and `jmed score`: reading prediction files, errors with file:line, summaries, logging."""
import json

import pytest

from jmed import score as S


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_read_predictions_file_and_folder(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": "X1", "prediction": "a", "explanation": "…"},
                                           "", {"problem_id": "X2", "prediction": "d,e"}])
    values, where = S.read_predictions(f)
    assert values == {"X1": "a", "X2": "d,e"}
    assert where == {"X1": f"{f}:1", "X2": f"{f}:3"}
    d = tmp_path / "dir"
    d.mkdir()
    write_jsonl(d / "b.jsonl", [{"problem_id": "X2", "response": "肺炎"}])
    write_jsonl(d / "a.jsonl", [{"problem_id": "X1", "response": "心不全"}])
    (d / "notes.txt").write_text("ignored")
    values, where = S.read_predictions(d, "text")
    assert values == {"X1": "心不全", "X2": "肺炎"}
    assert where["X2"] == f"{d / 'b.jsonl'}:1"


def test_read_predictions_errors_name_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"problem_id": "X1", "prediction": "a"},
        '{"problem_id": "X2", "prediction": ',
        '["X3"]',
        {"prediction": "a"},
        {"problem_id": "X5", "response": "肺炎"},
        {"problem_id": "X6", "prediction": 26},
        {"problem_id": "X1", "prediction": "b"},
    ])
    with pytest.raises(S.ScoreError) as e:
        S.read_predictions(f)
    assert e.value.errors == [
        f"{f}:2: not valid JSON (Expecting value at column 36)",
        f"{f}:3: expected a JSON object, got list",
        f"{f}:4: problem_id: missing or not a non-empty string",
        f"{f}:5: prediction: missing for X5; the letter protocol reads `prediction` "
        "(it has `response`: use --protocol text)",
        f"{f}:6: prediction: must be a string, got 26",
        f"{f}:7: problem_id: X1 is already predicted at {f}:1",
    ]
    assert str(e.value).startswith("6 error(s) in the predictions:\n")
    with pytest.raises(S.ScoreError, match="no such file or folder"):
        S.read_predictions(tmp_path / "absent.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(S.ScoreError, match=r"no \*\.jsonl files"):
        S.read_predictions(tmp_path / "empty")


def test_predictions_digest_is_order_independent():
    a = S.predictions_digest({"X1": "a", "X2": "b"})
    assert a == S.predictions_digest({"X2": "b", "X1": "a"})
    assert a != S.predictions_digest({"X1": "a", "X2": "c"})
    assert len(a) == 64


def test_run_metrics_letter():
    summary = {"protocol": "letter", "accuracy": 0.5, "score": 0.25, "required_score": 1.0,
               "general_score": 0.0, "unparsed": 1, "missing": 2, "kinki_selected": 0, "correct": 1,
               "points": 1, "questions": 2,
               "by_year": {"2022": {"accuracy": 0.5, "score": 0.25, "passed": False},
                           "2025": {"accuracy": 1.0, "passed": None}}}
    m = S.run_metrics(summary)
    assert m["eval/accuracy"] == 0.5 and m["eval/unparsed"] == 1.0
    assert m["eval/2022/accuracy"] == 0.5 and m["eval/2022/score"] == 0.25
    assert m["eval/2022/passed"] == 0.0 and "eval/2025/passed" not in m
