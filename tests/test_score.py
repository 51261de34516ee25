"""jmed.score and `jmed score`: reading prediction files, errors with file:line, summaries, logging."""

import json

import pytest

from jmed import score as S


def write_jsonl(path, records):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


def test_read_predictions_file_and_folder(tmp_path):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"problem_id": "X1", "prediction": "a", "explanation": "…"}, "", {"problem_id": "X2", "prediction": "d,e"}],
    )
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
    f = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"problem_id": "X1", "prediction": "a"},
            '{"problem_id": "X2", "prediction": ',
            '["X3"]',
            {"prediction": "a"},
            {"problem_id": "X5", "response": "肺炎"},
            {"problem_id": "X6", "prediction": 26},
            {"problem_id": "X1", "prediction": "b"},
        ],
    )
    with pytest.raises(S.ScoreError) as e:
        S.read_predictions(f)
    assert e.value.errors == [
        f"{f}:2: invalid JSON: Expecting value (column 36)",
        f"{f}:3: expected a JSON object, got a list",
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


def test_read_predictions_reasoning_field(tmp_path):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"problem_id": "X1", "prediction": "", "reasoning_content": "…【回答】c"},
            {"problem_id": "X2", "prediction": None, "reasoning": "答えはd"},  # vLLM: content null
            {"problem_id": "X3", "reasoning_content": None, "reasoning": "e"},  # null: the next field is read
            {"problem_id": "X4", "prediction": "a", "reasoning_content": None},
        ],
    )
    reasoning = {}
    values, _ = S.read_predictions(f, reasoning=reasoning)
    assert values == {"X1": "", "X2": "", "X3": "", "X4": "a"}
    assert reasoning == {"X1": "…【回答】c", "X2": "答えはd", "X3": "e"}
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"problem_id": "X1", "prediction": "a", "reasoning": ["b"]}, {"problem_id": "X2", "response": "肺炎"}],
    )
    with pytest.raises(S.ScoreError) as e:
        S.read_predictions(bad)
    assert e.value.errors == [
        f'{bad}:1: reasoning: must be a string, got ["b"]',
        (
            f"{bad}:2: prediction: missing for X2; the letter protocol reads `prediction` "
            "(it has `response`: use --protocol text)"
        ),
    ]


def test_predictions_digest_is_order_independent():
    a = S.predictions_digest({"X1": "a", "X2": "b"})
    assert a == S.predictions_digest({"X2": "b", "X1": "a"})
    assert a != S.predictions_digest({"X1": "a", "X2": "c"})
    assert len(a) == 64


def test_run_metrics_letter():
    summary = {
        "protocol": "letter",
        "accuracy": 0.5,
        "score": 0.25,
        "required_score": 1.0,
        "general_score": 0.0,
        "unparsed": 1,
        "count_mismatch": 1,
        "missing": 2,
        "kinki_selected": 0,
        "correct": 1,
        "points": 1,
        "questions": 2,
        "by_year": {
            "2022": {"accuracy": 0.5, "score": 0.25, "passed": False},
            "2025": {"accuracy": 1.0, "passed": None},
        },
    }
    m = S.run_metrics(summary)
    assert m["eval/accuracy"] == 0.5 and m["eval/unparsed"] == 1.0 and m["eval/count_mismatch"] == 1.0
    assert m["eval/2022/accuracy"] == 0.5 and m["eval/2022/score"] == 0.25
    assert m["eval/2022/passed"] == 0.0 and "eval/2025/passed" not in m


# ---- through the CLI -------------------------------------------------------------------------

import glob  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from conftest import ROOT, shared_path  # noqa: E402

from jmed.cli import main  # noqa: E402
from jmed.data import SAMPLE_TEST  # noqa: E402


def raw(path_glob):
    return [json.loads(line) for f in sorted(glob.glob(str(path_glob))) for line in open(f, encoding="utf-8")]


def cli(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def cli_json(*args):
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_cli_sample_gold_with_missing_questions(tmp_path):
    recs = raw(SAMPLE_TEST)
    dropped = [recs[3]["problem_id"], recs[7]["problem_id"]]
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"problem_id": r["problem_id"], "prediction": ",".join(r["answer"])}
            for r in recs
            if r["problem_id"] not in dropped
        ],
    )
    s = cli_json("--data", SAMPLE_TEST, "--predictions", preds)
    n = len(recs)
    assert s["questions"] == n and s["correct"] == n - 2 and s["accuracy"] == (n - 2) / n
    assert s["missing"] == 2 and s["missing_ids"] == dropped and s["unparsed"] == 0
    for key in (
        "points",
        "points_total",
        "required_points",
        "required_total",
        "by_year",
        "data_digest",
        "predictions_digest",
    ):
        assert key in s
    assert list(s["by_year"]) == ["2025"]
    r = cli("--data", SAMPLE_TEST, "--predictions", preds)
    assert r.exit_code == 0 and f"no prediction (counted wrong): {dropped[0]}, {dropped[1]}" in r.output


def test_cli_unknown_id_and_malformed_line_exit_1(tmp_path):
    first = raw(SAMPLE_TEST)[0]["problem_id"]
    preds = write_jsonl(
        tmp_path / "p.jsonl", [{"problem_id": first, "prediction": "a"}, {"problem_id": "999Z1", "prediction": "a"}]
    )
    r = cli("--data", SAMPLE_TEST, "--predictions", preds)
    assert r.exit_code == 1
    assert f"{preds}:2: problem_id: 999Z1 is not a question of {SAMPLE_TEST}" in r.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem_id": first, "prediction": "a"}, "{oops"])
    r = cli("--data", SAMPLE_TEST, "--predictions", bad)
    assert r.exit_code == 1 and f"{bad}:2: invalid JSON" in r.output
    r = cli("--data", SAMPLE_TEST, "--predictions", preds, "--protocol", "loglik")
    assert r.exit_code == 2 and "'loglik' is not one of 'letter', 'text'" in r.output  # an option error
    r = cli("--data", SAMPLE_TEST)
    assert r.exit_code == 2 and "--predictions is required" in r.output


def test_score_reads_the_answer_from_the_reasoning_field_only_when_the_prediction_has_none(tmp_path):
    # 902A1 e, 902A2 c, 902B1 d, 902B3 c (the bundled sample)
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            # the answer only in the reasoning field (Qwen3-Swallow on 120F-48 answered this way)
            {
                "problem_id": "902A1",
                "prediction": "",
                "reasoning_content": "選択肢を順に検討する。aは否定的。…以上より\n\n【回答】e",
            },
            {"problem_id": "902A2", "prediction": None, "reasoning": "答えはbかもしれないが、cが妥当。\n【回答】c"},
            # a prediction that reads is kept: the reasoning's other letter is not used
            {"problem_id": "902B1", "prediction": "【回答】d", "reasoning_content": "【回答】a"},
            # neither reads: unparsed, and the row shows the prediction
            {"problem_id": "902B3", "prediction": "", "reasoning_content": "所見が足りず決められない"},
        ],
    )
    summary, _, rows = S.score(SAMPLE_TEST, preds, parsing="lenient", filters=None)
    by_id = {r["id"]: r for r in rows}
    assert [(by_id[i]["parsed"], by_id[i]["correct"]) for i in ("902A1", "902A2", "902B1", "902B3")] == [
        ("e", True),
        ("c", True),
        ("d", True),
        (None, False),
    ]
    assert by_id["902A2"]["prediction"] == "答えはbかもしれないが、cが妥当。\n【回答】c"
    assert by_id["902B3"]["prediction"] == "" and by_id["902B3"]["unparsed"] is True
    assert (summary["correct"], summary["unparsed"], summary["predictions_count"]) == (3, 1, 4)


def test_score_does_not_pick_letters_from_think_blocks(tmp_path):
    # 902A1 e, 902A2 c: the reasoning weighs wrong letters, the answer after </think> is read
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "problem_id": "902A1",
                "prediction": "<think>\n答えはaかもしれない。\n【回答】a\nいや、所見はeに合う。\n</think>\n\n【回答】e",
            },
            {"problem_id": "902A2", "prediction": "bとdは否定できる。\n</think>\n\nc"},  # opening tag in the prompt
        ],
    )
    for parsing in ("lenient", "official"):
        _, _, rows = S.score(SAMPLE_TEST, preds, parsing=parsing)
        by_id = {r["id"]: r["parsed"] for r in rows}
        assert (by_id["902A1"], by_id["902A2"]) == (("e", "c") if parsing == "lenient" else (None, "c"))


def test_cli_igakuqa_2022_gold_all_a_and_lenient(tmp_path):
    data = shared_path("igakuqa", "data", "2022")
    recs = raw(data / "116-?.jsonl")
    assert len(recs) == 400
    # one file per block, like IgakuQA's baseline outputs
    folder = tmp_path / "gold"
    folder.mkdir()
    for block in "ABCDEF":
        write_jsonl(
            folder / f"116-{block}.jsonl",
            [
                {"problem_id": r["problem_id"], "prediction": ",".join(r["answer"])}
                for r in recs
                if r["problem_id"].startswith(f"116{block}")
            ],
        )
    s = cli_json("--data", data, "--predictions", folder)
    assert (s["questions"], s["correct"], s["accuracy"], s["score"]) == (400, 400, 1.0, 1.0)
    assert s["points"] == s["points_total"] == sum(int(r["points"]) for r in recs)
    assert s["by_year"]["2022"]["passed"] is True

    # all "a": the reference rule, computed here from the raw JSON (116A71 counts for everyone)
    ok = [r for r in recs if r["answer"] == ["a"] or r["problem_id"] == "116A71"]
    a = write_jsonl(tmp_path / "a.jsonl", [{"problem_id": r["problem_id"], "prediction": "a"} for r in recs])
    s = cli_json("--data", data, "--predictions", a)
    assert s["correct"] == len(ok) == 62
    assert s["points"] == sum(int(r["points"]) for r in ok) == 77
    assert s["accuracy"] == 62 / 400 and s["by_year"]["2022"]["passed"] is False

    # full-width "ａ": unreadable for the reference scorer, read by lenient parsing
    fw = write_jsonl(tmp_path / "fw.jsonl", [{"problem_id": r["problem_id"], "prediction": "答え：ａ"} for r in recs])
    official = cli_json("--data", data, "--predictions", fw)
    numeric = sum(1 for r in recs if not r["choices"])  # compared as strings: read, but wrong
    assert official["correct"] == 1 and official["unparsed"] == 400 - numeric == 397  # 116A71 only
    lenient = cli_json("--data", data, "--predictions", fw, "--parsing", "lenient")
    assert lenient["correct"] == 62 and lenient["unparsed"] == 0


def test_cli_text_protocol_on_2022(tmp_path):
    data = shared_path("igakuqa", "data", "2022")
    recs = raw(data / "116-?.jsonl")
    choice_recs = [r for r in recs if r["choices"]]
    resp = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {
                "problem_id": r["problem_id"],
                "response": "…### 応答：\n" + ",".join(r["choices"]["abcdefgh".index(x)] for x in sorted(r["answer"])),
            }
            for r in choice_recs
        ],
    )
    s = cli_json("--data", data, "--predictions", resp, "--protocol", "text")
    assert s["questions"] == len(choice_recs) == 397 and s["excluded_numeric"] == 3
    # An exact answer is not always a gestalt-correct one: for 3 multi-answer questions (116D71,
    # 116F33, 116F34) a third choice is closer to the joined gold text than one of the gold choices.
    assert (s["exact_match"], s["gestalt"], s["gestalt_accuracy"]) == (1.0, 1.0, 394 / 397)
    assert s["by_year"]["2022"]["exact_match"] == 1.0
    r = cli("--data", data, "--predictions", resp)  # letter protocol reads `prediction`
    assert r.exit_code == 1 and "(it has `response`: use --protocol text)" in r.output


def test_cli_a_or_d_with_filter(tmp_path):
    data = shared_path("igakuqa", "data", "2018")
    for i, (pred, correct) in enumerate((("d", 1), ("a", 1), ("a,d", 0), ("e", 0))):
        p = write_jsonl(tmp_path / f"p{i}.jsonl", [{"problem_id": "112B30", "prediction": pred}])
        s = cli_json("--data", data, "--predictions", p, "--ids", "112B30")
        assert (s["questions"], s["correct"], s["missing"]) == (1, correct, 0)
        assert s["kinki_selected"] == (1 if pred == "e" else 0)  # 112B30's kinki choice is e


def test_cli_log_run(tmp_path, tracking):
    import mlflow

    recs = raw(SAMPLE_TEST)
    preds = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": r["problem_id"], "prediction": "a"} for r in recs])
    s = cli_json("--data", SAMPLE_TEST, "--predictions", preds, "--log", "--name", "baseline-a")
    run = mlflow.get_run(s["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "baseline-a"
    assert run.data.tags["jmed.step"] == "score"
    p = run.data.params
    assert (p["protocol"], p["parsing"], p["name"]) == ("letter", "official", "baseline-a")
    assert p["data"] == str(SAMPLE_TEST) and p["eval_data_digest"] == s["data_digest"]
    assert p["predictions"] == str(preds) and p["predictions_digest"] == s["predictions_digest"]
    m = run.data.metrics
    assert m["eval/accuracy"] == s["accuracy"] and m["eval/score"] == s["score"]
    assert m["eval/2025/accuracy"] == s["by_year"]["2025"]["accuracy"]
    assert m["eval/questions"] == len(recs)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="score.json")
    logged = json.loads(Path(local).read_text(encoding="utf-8"))
    assert logged["correct"] == s["correct"] and logged["missing_ids"] == []
    assert {f.path for f in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)} >= {
        "score.json",
        "predictions.json",
    }
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [s["data_digest"][:36]]


@pytest.mark.slow
def test_mlflow_run_score_entry_point(tmp_path):
    recs = raw(SAMPLE_TEST)
    preds = write_jsonl(
        tmp_path / "p.jsonl", [{"problem_id": r["problem_id"], "prediction": ",".join(r["answer"])} for r in recs]
    )
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    cmd = [
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "score",
        "--env-manager",
        "local",
        "-P",
        f"data={SAMPLE_TEST}",
        "-P",
        f"predictions={preds}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(experiment_ids=["0"])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["jmed.step"] == "score"
    assert run.data.metrics["eval/accuracy"] == 1.0 and run.data.metrics["eval/score"] == 1.0
    p = run.data.params
    assert p["parsing"] == "official" and p["data"] == str(SAMPLE_TEST) and p["predictions"] == str(preds)
    assert len(p["eval_data_digest"]) == 64 and len(p["predictions_digest"]) == 64
