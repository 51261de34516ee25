"""Every option of every config-building entry point reaches its resolved config through `mlflow run -P`.

`mlflow run . -e train -P text_only=true` appends `--text_only true`; jmed turns that into click's
`--text-only`. Each test below drives one real `mlflow run` with every option of the entry point set
to a non-default value and `dry_run=true`, and reads the resolved configuration jmed prints.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jmed import cli

ROOT = Path(__file__).resolve().parent.parent
MLFLOW = str(Path(sys.executable).parent / "mlflow")

# option -> (value passed with -P, field in the flat config, value expected there)
TRAIN = {
    "model": ("smollm2-135m", "model", "smollm2-135m"),
    "train_data": ("/data/train", "train_data", "/data/train"),
    "eval_data": ("/data/eval", None, None),  # train: eval loss data; pipeline/study: evaluation data
    "data_format": ("igakuqa", "data_format", "igakuqa"),
    "text_only": ("true", "filters.text_only", True),
    "five_choices": ("true", "filters.five_choices", True),
    "scored_only": ("true", "filters.scored_only", True),
    "years": ("2018,2019", "filters.years", "2018,2019"),
    "blocks": ("A,B", "filters.blocks", "A,B"),
    "ids": ("112A1", "filters.ids", "112A1"),
    "exclude_ids": ("112A2,112A3", "filters.exclude_ids", "112A2,112A3"),
    "prompt_format": ("medpalm", "prompt_format", "medpalm"),
    "shots": ("1", "shots", 1),
    "preset": ("jmedlora-7b", "preset", "jmedlora-7b"),
    "lora_r": ("4", "lora_r", 4),
    "lora_alpha": ("9", "lora_alpha", 9),
    "lora_dropout": ("0.1", "lora_dropout", 0.1),
    "target_modules": ("q_proj,v_proj", "target_modules", "q_proj,v_proj"),
    "quantization": ("4bit", "quantization", "4bit"),
    "learning_rate": ("0.003", "learning_rate", 0.003),
    "lr_schedule": ("linear", "lr_schedule", "linear"),
    "warmup_steps": ("3", "warmup_steps", 3),
    "max_steps": ("7", "max_steps", 7),
    "epochs": ("2.5", "epochs", 2.5),
    "batch_size": ("3", "batch_size", 3),
    "grad_accum": ("2", "grad_accum", 2),
    "max_length": ("300", "max_length", 300),
    "overlength": ("drop", "overlength", "drop"),
    "group_by_length": ("true", "group_by_length", True),
    "max_grad_norm": ("0.5", "max_grad_norm", 0.5),
    "weight_decay": ("0.01", "weight_decay", 0.01),
    "gradient_checkpointing": ("true", "gradient_checkpointing", True),
    "precision": ("fp32", "precision", "fp32"),
    "seed": ("7", "seed", 7),
    "checkpoint_every": ("5", "checkpoint_every", 5),
    "resume_from": ("0123abcd", "resume_from", "0123abcd"),
    "stop_after": ("2", "stop_after", 2),
    "trust_remote_code": ("true", "trust_remote_code", True),
}
# pipeline/study evaluation options -> EvalConfig
EVAL = {
    "eval_years": ("2022", "filters.years", "2022"),
    "eval_blocks": ("C,D", "filters.blocks", "C,D"),
    "eval_ids": ("116C1", "filters.ids", "116C1"),
    "limit": ("30", "limit", 30),
    "sample": ("100", "sample", 100),
    "max_new_tokens": ("64", "max_new_tokens", 64),
    "eval_batch_size": ("4", "batch_size", 4),
    "engine": ("vllm", "engine", "vllm"),
    "engine_url": ("http://gpu-node:8000/v1", "engine_url", "http://gpu-node:8000/v1"),
}
EVALUATE = {
    "model": ("smollm2-135m", "model", "smollm2-135m"),
    "adapter": ("runs:/0123/adapter", "adapter", "runs:/0123/adapter"),
    "eval_data": ("/data/2022", "eval_data", "/data/2022"),
    "data_format": ("igakuqa", "data_format", "igakuqa"),
    "text_only": ("true", "filters.text_only", True),
    "five_choices": ("true", "filters.five_choices", True),
    "scored_only": ("false", "filters.scored_only", False),
    "years": ("2022", "filters.years", "2022"),
    "blocks": ("A", "filters.blocks", "A"),
    "ids": ("116A1,116A2", "filters.ids", "116A1,116A2"),
    "exclude_ids": ("116A3", "filters.exclude_ids", "116A3"),
    "protocol": ("text", "protocol", "text"),
    "prompt_format": ("alpaca_med", "prompt_format", "alpaca_med"),
    "shots": ("1", "shots", 1),
    "parsing": ("official", "parsing", "official"),
    "exam_kind": ("dental", "exam_kind", "dental"),
    "extraction": ("first-line", "extraction", "first-line"),
    "limit": ("20", "limit", 20),
    "sample": ("50", "sample", 50),
    "batch_size": ("2", "batch_size", 2),
    "max_new_tokens": ("40", "max_new_tokens", 40),
    "precision": ("bf16", "precision", "bf16"),
    "quantization": ("none", "quantization", "none"),  # 4bit/8bit are the hf engine's (engine=vllm below)
    "seed": ("3", "seed", 3),
    "compare_base": ("false", "compare_base", False),
    "engine": ("vllm", "engine", "vllm"),
    "engine_url": ("http://gpu-node:8000/v1", "engine_url", "http://gpu-node:8000/v1"),
}


def _options(command) -> set[str]:
    """The names a user passes with -P: each option's long name with underscores (`--max-steps` ->
    max_steps, `--json` -> json), arguments by their own name."""
    import click

    names = set()
    for p in command.params:
        if isinstance(p, click.Option):
            names.add(next(o for o in p.opts if o.startswith("--"))[2:].replace("-", "_"))
        else:
            names.add(p.name)
    return names - {"dry_run"}


def _mlflow_run(entry: str, params: dict, tmp_path) -> dict:
    cmd = [MLFLOW, "run", str(ROOT), "-e", entry, "--env-manager", "local", "-P", "dry_run=true"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # a dry run leaves no run: the one `mlflow run` opened is marked, and the next jmed command deletes it
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    (run,) = client.search_runs(exps)
    assert (run.data.tags["jmed.dry_run"], run.info.run_name, run.info.status) == ("true", "dry-run", "FINISHED")
    assert "is marked" in res.stderr
    reap = subprocess.run([str(Path(sys.executable).parent / "jmed"), "runs", "reap"], env=env, cwd=tmp_path)
    assert reap.returncode == 0 and client.search_runs(exps) == []
    assert run.info.run_id in {r.info.run_id for r in client.search_runs(exps, run_view_type=ViewType.DELETED_ONLY)}
    return json.loads(res.stdout[res.stdout.index("{") :])


def _check(resolved: dict, table: dict) -> None:
    for option, (_, field, want) in table.items():
        if field is not None:
            assert resolved[field] == want, f"{option} -> {field}: {resolved[field]!r} != {want!r}"


def test_every_train_option_reaches_the_config(tmp_path):
    assert set(TRAIN) == _options(cli.main.commands["train"])
    out = _mlflow_run("train", {k: v for k, (v, _, _) in TRAIN.items()}, tmp_path)
    _check(out["train"], TRAIN)
    assert out["train"]["eval_data"] == "/data/eval"


def test_every_evaluate_option_reaches_the_config(tmp_path):
    assert set(EVALUATE) == _options(cli.main.commands["evaluate"])
    out = _mlflow_run("evaluate", {k: v for k, (v, _, _) in EVALUATE.items()}, tmp_path)
    _check(out["evaluate"], EVALUATE)


def test_every_main_option_reaches_train_and_evaluation(tmp_path):
    extra = {"protocol": "loglik", "force": "true", "leakage": "fail"}
    assert set(TRAIN) | set(EVAL) | set(extra) == _options(cli.main.commands["pipeline"])
    out = _mlflow_run("main", {k: v for k, (v, _, _) in (TRAIN | EVAL).items()} | extra, tmp_path)
    _check(out["train"], {k: v for k, v in TRAIN.items()})
    _check(out["evaluate"], EVAL)
    ev = out["evaluate"]
    # the kind-of-question filters carry over to evaluation; the training years/blocks/ids do not
    assert (ev["filters.text_only"], ev["filters.five_choices"], ev["filters.scored_only"]) == (True, True, True)
    assert (ev["eval_data"], ev["protocol"], ev["model"], ev["seed"]) == ("/data/eval", "loglik", "smollm2-135m", 7)
    assert out["pipeline"] == {"force": True, "leakage": "fail"}


def test_every_study_option_reaches_train_and_evaluation(tmp_path):
    own = {
        "models": "tiny,smollm2-135m",
        "prompt_formats": "igakuqa,alpaca_med",
        "shots": "0,1",
        "protocols": "loglik",
        "force": "true",
        "leakage": "fail",
    }
    train = {k: v for k, v in TRAIN.items() if k not in ("model", "prompt_format", "shots")}
    assert set(train) | set(EVAL) | set(own) == _options(cli.main.commands["study"])
    out = _mlflow_run("study", {k: v for k, (v, _, _) in (train | EVAL).items()} | own, tmp_path)
    _check(out["train"], train)
    _check(out["evaluate"], EVAL)
    assert out["study"] == {
        "models": ["tiny", "smollm2-135m"],
        "prompt_formats": ["igakuqa", "alpaca_med"],
        "shots": [0, 1],
        "protocols": ["loglik"],
        "force": True,
        "leakage": "fail",
    }


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--text_only", "true"], ["train", "--text-only"]),
        (["train", "--text_only", "False"], ["train", "--no-text-only"]),
        (["train", "--five-choices=yes", "--lora_r", "4"], ["train", "--five-choices", "--lora-r", "4"]),
        (["score", "--json", "false", "--log"], ["score", "--log"]),
        (["train", "--text-only", "--model", "tiny"], ["train", "--text-only", "--model", "tiny"]),
    ],
)
def test_mlflow_style_booleans_become_click_flags(args, expected):
    assert cli.mlflow_args(args) == expected


def test_a_boolean_flag_with_a_bad_value_is_an_error():
    import click

    with pytest.raises(click.UsageError, match="--text-only: expected true or false, got 'maybe'"):
        cli.mlflow_args(["train", "--text-only=maybe"])


def test_every_validate_score_and_promote_option_reaches_the_step(tmp_path):
    validate = {
        "data": "/data/a,/data/b",
        "against": "/data/test",
        "report": "/tmp/r.json",
        "format": "igakuqa",
        "threshold": "85",
        "leakage": "fail",
        "log": "false",
    }
    assert set(validate) == _options(cli.main.commands["validate"])
    out = _mlflow_run("validate", validate, tmp_path)["validate"]
    assert out == {
        "data": ["/data/a", "/data/b"],
        "against": ["/data/test"],
        "report": "/tmp/r.json",
        "format": "igakuqa",
        "threshold": 85.0,
        "leakage": "fail",
        "log": False,
    }

    score = {
        "data": "/data/2022",
        "predictions": "/p.jsonl",
        "protocol": "text",
        "parsing": "lenient",
        "extraction": "first-line",
        "exam_kind": "dental",
        "format": "jjsimqa",
        "name": "gpt-x",
        "json": "true",
        "text_only": "true",
        "five_choices": "true",
        "scored_only": "true",
        "years": "2022",
        "blocks": "B,E",
        "ids": "116B1",
        "exclude_ids": "116B2",
    }
    assert set(score) | {"log"} == _options(cli.main.commands["score"])
    out = _mlflow_run("score", score, tmp_path)
    assert out["score"] == {
        "data": "/data/2022",
        "predictions": "/p.jsonl",
        "protocol": "text",
        "parsing": "lenient",
        "extraction": "first-line",
        "exam_kind": "dental",
        "format": "jjsimqa",
        "name": "gpt-x",
        "json": True,
        "log": True,
    }  # MLproject's score entry always logs
    assert out["filters"] == {
        "text_only": True,
        "five_choices": True,
        "scored_only": True,
        "years": "2022",
        "blocks": "B,E",
        "ids": "116B1",
        "exclude_ids": "116B2",
    }

    promote = {
        "base_model": "smollm2-135m",
        "metric": "eval/score",
        "min_delta": "0.01",
        "bundle_base": "true",
        "evaluation": "igakuqa-2022.json",
    }
    assert set(promote) == _options(cli.main.commands["promote"])
    out = _mlflow_run("promote", promote, tmp_path)["promote"]
    assert out == {
        "base_model": "smollm2-135m",
        "metric": "eval/score",
        "min_delta": 0.01,
        "bundle_base": True,
        "evaluation": "igakuqa-2022.json",
    }
