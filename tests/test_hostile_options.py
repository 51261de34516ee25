"""Hostile options, round two: values Python would take but no user means ("1_0", "nan", "inf", "１"),
and options that would change nothing are refused before any work, with one line naming the option."""

import pytest
from click.testing import CliRunner

from jmed.cli import main
from jmed.config import ConfigError, EvalConfig, TrainConfig, build
from jmed.data import SAMPLE_TEST


@pytest.mark.parametrize(
    "cls, key, value, message",
    [
        (EvalConfig, "limit", "1_0", "limit: expected an integer, got '1_0'"),
        (EvalConfig, "limit", "１０", "limit: expected an integer, got '１０'"),
        (TrainConfig, "seed", "1e23", "seed: expected an integer, got '1e23'"),
        (TrainConfig, "epochs", "inf", "epochs: expected a number, got 'inf'"),
        (TrainConfig, "lora_dropout", "nan", "lora_dropout: expected a number, got 'nan'"),
        (TrainConfig, "learning_rate", "1_0e-4", "learning_rate: expected a number, got '1_0e-4'"),
    ],
)
def test_numbers_in_forms_no_user_writes_are_refused(cls, key, value, message):
    with pytest.raises(ConfigError) as err:
        build(cls, {key: value})
    assert message in str(err.value)


def test_non_finite_numbers_from_presets_or_params_are_refused_and_ordinary_forms_read():
    with pytest.raises(ConfigError, match="lora_dropout: must be a finite number, got nan"):
        TrainConfig(lora_dropout=float("nan"))
    with pytest.raises(ConfigError, match="epochs: must be a finite number, got inf"):
        TrainConfig(epochs=float("inf"), max_steps=0)
    cfg = build(TrainConfig, {"learning_rate": "2e-4", "lora_dropout": ".1", "seed": "+7"})
    assert (cfg.learning_rate, cfg.lora_dropout, cfg.seed) == (2e-4, 0.1, 7)


def test_options_that_cannot_take_effect_are_refused():
    with pytest.raises(ConfigError, match="warmup_steps: 1000000000000 is more than max_steps 60"):
        TrainConfig(warmup_steps=10**12)
    with pytest.raises(ConfigError, match="max_new_tokens: must be at most 1024, got 1000000"):
        EvalConfig(max_new_tokens=1_000_000)  # serving's limit is evaluate's too


def test_ids_sample_and_shots_that_change_nothing_are_errors_before_any_model_loads():
    from jmed.config import DataFilter
    from jmed.evaluate import load_eval_questions

    data = str(SAMPLE_TEST)
    with pytest.raises(ValueError, match=r"--exclude-ids: 990Z1 is no question of .*test.jsonl"):
        load_eval_questions(EvalConfig(eval_data=data, filters=DataFilter(exclude_ids=("990Z1",))))
    with pytest.raises(ValueError, match=r"--ids: nope1, nope2 are no question of"):
        load_eval_questions(EvalConfig(eval_data=data, filters=DataFilter(ids=("nope1", "nope2"))))
    _, qs = load_eval_questions(EvalConfig(eval_data=data))
    with pytest.raises(ValueError, match=rf"--sample 1000: {len(qs)} question\(s\) are left to sample from"):
        load_eval_questions(EvalConfig(eval_data=data, sample=1000))
    with pytest.raises(ValueError, match=rf"--shots 100 needs 100 other questions as examples; {len(qs)} question"):
        load_eval_questions(EvalConfig(eval_data=data, shots=100))
    first = qs[0].id
    full_width = first.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789ABCDEF"})
    _, kept = load_eval_questions(EvalConfig(eval_data=data, filters=DataFilter(exclude_ids=(full_width,))))
    assert [q.id for q in kept] == [q.id for q in qs[1:]]  # an id is compared as NFKC, as duplicates are


def test_the_cli_names_the_option_in_one_line_and_exits_1():
    res = CliRunner().invoke(main, ["evaluate", "--limit", "1_0", "--dry-run"])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: invalid EvalConfig: limit: expected an integer, got '1_0'"


def test_score_refuses_an_exclude_ids_typo(tmp_path):
    import json

    from jmed.config import DataFilter
    from jmed.data import load_questions
    from jmed.score import score

    qs = load_questions(SAMPLE_TEST)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"problem_id": q.id, "prediction": "a"}) + "\n" for q in qs), encoding="utf-8")
    with pytest.raises(ValueError, match="--exclude-ids: 99OA1 is no question of"):
        score(str(SAMPLE_TEST), str(preds), filters=DataFilter(exclude_ids=("99OA1",)))


def test_output_paths_are_checked_before_any_work(tmp_path):
    res = CliRunner().invoke(main, ["validate", "--no-log", "--report", "/proc/nope/report.json"])
    assert res.exit_code == 2 and "Invalid value for --report: cannot create the folder /proc/nope" in res.output
    res = CliRunner().invoke(main, ["validate", "--no-log", "--report", "/sys/report.json"])
    assert res.exit_code == 2 and "Invalid value for --report: /sys/report.json cannot be written" in res.output
    res = CliRunner().invoke(main, ["predict", "--model-uri", "models:/x/1", "-o", "/sys/out.jsonl", str(SAMPLE_TEST)])
    assert res.exit_code == 2 and "Invalid value for --output: /sys/out.jsonl cannot be written" in res.output
    ok = tmp_path / "deep" / "r.json"
    res = CliRunner().invoke(main, ["validate", "--no-log", "--report", str(ok)])
    assert res.exit_code == 0 and ok.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--port", "99999"], "Invalid value for '--port': 99999 is not from 1 to 65535"),
        (["--port", "５０００"], "Invalid value for '--port': expected an integer, got '５０００'"),
        (["--timeout", "0"], "Invalid value for '--timeout': 0 is not at least 1"),
        (["--timeout", "1", "--batch-wait-ms", "1000"], "1 s is not longer than --batch-wait-ms 1000"),
        (["--poll-seconds", "nan"], "Invalid value for '--poll-seconds': expected a number, got 'nan'"),
        (["--batch-wait-ms", "inf"], "Invalid value for '--batch-wait-ms': expected a number, got 'inf'"),
        (["--workers", "1_0"], "Invalid value for '--workers': expected an integer, got '1_0'"),
        (["--max-batch-rows", "0"], "Invalid value for '--max-batch-rows': 0 is not at least 1"),
        (["--batch-tokens", "-5"], "Invalid value for '--batch-tokens': -5 is not at least 1"),
        (["--precision", "int3"], "Invalid value for '--precision': 'int3' is not one of"),
        (
            ["--engine", "vllm", "--precision", "bf16"],
            "Invalid value for --precision: --precision is for the hf engine",
        ),
    ],
)
def test_serve_options_are_checked_before_anything_loads(args, message):
    res = CliRunner().invoke(main, ["serve", *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_serve_names_a_port_in_use_before_the_model_loads():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", "--port", str(port), "--model-uri", "models:/none/1"])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for --port: cannot listen on 127.0.0.1:{port}: Address already in use" in res.output
