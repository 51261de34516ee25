"""Evaluate: inference engines, scoring per protocol, the logged run, adapters and the base delta.

All on the built-in tiny model (CPU). The adapter tests train one tiny LoRA adapter with jmed.train
on the sample's training questions and evaluate it on those same questions: proof that prompt
rendering, loss masking and adapter loading agree between train and evaluate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, private_store, shared_path

from jmed.config import DataFilter, EvalConfig, TrainConfig, flat
from jmed.data import SAMPLE_TEST, SAMPLE_TRAIN, digest, load_questions


@pytest.fixture(scope="module")
def tiny():
    from jmed.models import load_base

    model, tokenizer, info = load_base("tiny", precision="fp32")
    return model.eval(), tokenizer, info


def _mc(path=SAMPLE_TEST):
    return [q for q in load_questions(path) if q.choices]


# ---- engines -------------------------------------------------------------------------------------


def test_loglik_with_shared_prompt_cache_equals_scoring_each_sequence(tiny):
    from jmed import inference as E
    from jmed.prompts import LETTERS, render

    model, tok, _ = tiny
    qs = _mc()[:9]
    for fmt, conts in (
        ("igakuqa", [list(LETTERS[: len(q.choices)]) for q in qs]),
        ("alpaca_med", [list(q.choices) for q in qs]),
    ):
        prompts = [render(q, fmt, (), tok).prompt for q in qs]
        cached = E.loglik(model, tok, prompts, conts, batch_size=4)
        reference = E.loglik_concat(model, tok, prompts, conts, batch_size=3)
        one = E.loglik(model, tok, prompts, conts, batch_size=1)
        assert [len(s) for s in cached] == [len(c) for c in conts]
        for a, b, c in zip(cached, reference, one):
            assert a == pytest.approx(b, abs=1e-4)
            assert a == pytest.approx(c, abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt_neox", "qwen2"])
def test_loglik_cache_sharing_on_other_architectures(tiny, arch):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from jmed import inference as E
    from jmed.prompts import LETTERS, render

    _, tok, _ = tiny
    torch.manual_seed(0)
    if arch == "gpt_neox":  # fused query_key_value, partial rotary
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=len(tok),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                rotary_pct=0.5,
            )
        )
    else:
        model = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tok),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
            )
        )
    model.eval()
    qs = _mc()[:6]
    for fmt in ("igakuqa", "alpaca_med"):
        prompts = [render(q, fmt, (), tok).prompt for q in qs]
        conts = [list(LETTERS[:5]) if fmt == "igakuqa" else list(q.choices) for q in qs]
        for a, b in zip(E.loglik(model, tok, prompts, conts, 4), E.loglik_concat(model, tok, prompts, conts, 3)):
            assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize(
    "protocol,fmt", [("letter", "igakuqa"), ("loglik", "igakuqa"), ("text", "medpalm"), ("loglik", "alpaca_med")]
)
def test_batching_gives_the_same_predictions_as_one_at_a_time(tiny, protocol, fmt):
    from jmed.evaluate import run_questions

    model, tok, _ = tiny
    qs = load_questions(SAMPLE_TEST)[:10]
    one = run_questions(model, tok, qs, protocol, fmt, 0, "lenient", batch_size=1, max_new_tokens=6)
    many = run_questions(model, tok, qs, protocol, fmt, 0, "lenient", batch_size=8, max_new_tokens=6)
    assert [r["parsed"] for r in one["rows"]] == [r["parsed"] for r in many["rows"]]
    assert [r["output"] for r in one["rows"]] == [r["output"] for r in many["rows"]]
    assert one["metrics"]["eval/accuracy"] == many["metrics"]["eval/accuracy"]


def test_generation_is_greedy_and_bounded_by_max_new_tokens(tiny):
    from jmed.inference import generate, generate_ids
    from jmed.prompts import render

    model, tok, _ = tiny
    prompts = [render(q, "igakuqa", (), tok).prompt for q in _mc()[:4]]
    short, cut = generate_ids(model, tok, prompts, batch_size=4, max_new_tokens=2)
    long, _ = generate_ids(model, tok, prompts, batch_size=3, max_new_tokens=8)
    for s, longer in zip(short, long):
        assert len(s) <= 2 and len(longer) <= 8 and longer[: len(s)] == s
        assert tok.eos_token_id not in longer
    assert cut == [len(s) == 2 for s in short]  # cut off by the limit, not ended by EOS
    assert generate(model, tok, prompts, 4, 8) == [tok.decode(t, skip_special_tokens=True) for t in long]
    # one limit per prompt: each row is cut back to its own, whatever it was batched with
    mixed, _ = generate_ids(model, tok, prompts, batch_size=4, max_new_tokens=[2, 8, 2, 8])
    assert mixed == [short[0], long[1], short[2], long[3]]


def test_text_answer_budget_fits_the_longest_gold(tiny):
    from jmed.inference import LETTER_MAX_NEW_TOKENS, TEXT_MARGIN_TOKENS, answer_budget, encode_continuation

    _, tok, _ = tiny
    choices = ["肺", "急性心筋梗塞と急性心筋梗塞", "結", "慢性閉塞性肺疾患の急性増悪と慢性閉塞性肺疾患", "胃"]
    n = len(encode_continuation(tok, choices[3]))
    assert answer_budget(tok, choices, 1, "text") == n + TEXT_MARGIN_TOKENS
    two = len(encode_continuation(tok, f"{choices[3]},{choices[1]}"))
    assert answer_budget(tok, choices, 2, "text") == two + TEXT_MARGIN_TOKENS
    assert answer_budget(tok, choices, 1, "letter") == LETTER_MAX_NEW_TOKENS


def test_numeric_entry_questions_are_skipped_and_counted_in_text_and_loglik(tiny):
    from jmed.evaluate import run_questions

    model, tok, _ = tiny
    qs = load_questions(SAMPLE_TEST)
    numeric = sum(q.numeric for q in qs)
    assert numeric == 1
    for protocol, fmt in (("loglik", "igakuqa"), ("text", "alpaca_med")):
        res = run_questions(model, tok, qs, protocol, fmt, 0, "lenient", 8, 4)
        assert res["metrics"]["eval/skipped_numeric"] == 1
        assert res["metrics"]["eval/questions"] == len(qs) - 1
        assert len(res["rows"]) == len(qs) - 1
    letter = run_questions(model, tok, qs, "letter", "igakuqa", 0, "lenient", 8, 4)
    assert letter["metrics"]["eval/skipped_numeric"] == 0 and len(letter["rows"]) == len(qs)


# ---- real exam data, limit=20, every protocol ----------------------------------------------------

DATASETS = {
    "igakuqa-2022": ("igakuqa", "data", "2022"),
    "jmle2026": ("jmle2026", "jmle2026_dataset.json"),
    "jjsimqa": ("jjsimqa", "jjsimqa.jsonl"),
}


JJSIMQA_BAD = ("107_64-4",)


def test_a_rejected_question_blocks_evaluation_until_excluded():
    from jmed.data import DataLoadError
    from jmed.evaluate import load_eval_questions

    path = shared_path(*DATASETS["jjsimqa"])
    with pytest.raises(
        DataLoadError,
        match=r"jjsimqa.jsonl:5: answer: stem says 「1つ選べ」(.|\n)*"
        r"leave these out with --exclude-ids 107_64-4",
    ):
        load_eval_questions(EvalConfig(eval_data=str(path)))
    _, qs = load_eval_questions(EvalConfig(eval_data=str(path), filters=DataFilter(exclude_ids=JJSIMQA_BAD)))
    assert len(qs) == 459 and "107_64-4" not in {q.id for q in qs}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("protocol,fmt", [("letter", "igakuqa"), ("loglik", "igakuqa"), ("text", "alpaca_med")])
def test_shared_datasets_limit_20(tiny, dataset, protocol, fmt):
    from jmed.evaluate import load_eval_questions, run_questions

    path = shared_path(*DATASETS[dataset])
    # JJSIMQA's one inconsistent question (validate rejects it) is left out by id, as a user would
    _, qs = load_eval_questions(
        EvalConfig(
            eval_data=str(path), limit=20, filters=DataFilter(exclude_ids=JJSIMQA_BAD if dataset == "jjsimqa" else ())
        )
    )
    assert len(qs) == 20
    model, tok, _ = tiny
    res = run_questions(model, tok, qs, protocol, fmt, 0, "lenient", 8, 8)
    m = res["metrics"]
    kept = 20 if protocol == "letter" else sum(not q.numeric for q in qs)
    assert m["eval/questions"] == kept == len(res["rows"])
    assert m["eval/skipped_numeric"] == 20 - kept
    correct = sum(r["correct"] for r in res["rows"])
    assert m["eval/correct"] == correct
    assert m["eval/accuracy"] == correct / kept
    assert m["eval/score"] == sum(r["points"] for r in res["rows"]) / sum(r["max_points"] for r in res["rows"])
    if protocol == "letter":
        assert m["eval/unparsed"] == sum(r["parsed"] == "" for r in res["rows"])
    if protocol == "loglik":
        assert m["eval/unparsed"] == 0 and "eval/accuracy_k_from_stem" in m
    if protocol == "text":
        assert m["eval/gestalt_accuracy"] == m["eval/accuracy"]
        assert 0 <= m["eval/gestalt"] <= 1 and 0 <= m["eval/exact_match"] <= 1


# ---- the logged run ------------------------------------------------------------------------------


def _artifact_text(client, run_id, path):
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return Path(local).read_bytes()


def test_base_evaluation_run_logs_params_metrics_table_and_artifacts(tracking):
    import mlflow

    from jmed.evaluate import evaluate

    run_id = evaluate(EvalConfig(protocol="loglik"))
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["jmed.step"] == "evaluate" and tags["jmed.base_model"] == "tiny"
    assert tags["jmed.adapter_run"] == "none"
    questions = load_questions(SAMPLE_TEST)
    # logged: every setting resolved (unset model, shots and quantization: tiny, 0, none)
    expected = flat(EvalConfig(model="tiny", protocol="loglik", prompt_format="igakuqa", shots=0, quantization="none"))
    for key, value in expected.items():
        assert params[key] == str(value), key
    assert params["eval_data_digest"] == digest(questions)
    assert params["eval_data_path"] == str(SAMPLE_TEST)
    assert params["base_revision"].startswith("sha256:")
    assert params["adapter_train_run"] == ""
    assert "base_eval_run" not in params  # a base model is its own baseline
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == digest(questions)[:36]
    table = json.loads(_artifact_text(client, run_id, "predictions.json"))
    cols = table["columns"]
    assert {"id", "prompt", "output", "parsed", "gold", "correct", "points"} <= set(cols)
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert len(rows) == 19  # 20 questions, one numeric-entry question skipped
    assert metrics["eval/questions"] == 19 and metrics["eval/skipped_numeric"] == 1
    assert metrics["eval/accuracy"] == sum(r["correct"] for r in rows) / 19
    assert metrics["eval/2025/accuracy"] == metrics["eval/accuracy"]  # the sample's test split is 2025
    for key in (
        "eval/score",
        "eval/required_score",
        "eval/unparsed",
        "eval/questions_per_s",
        "eval/accuracy_k_from_stem",
    ):
        assert key in metrics
    assert any(k.startswith("eval/category/") for k in metrics)
    assert _artifact_text(client, run_id, "accuracy_by_category.png")[:8] == b"\x89PNG\r\n\x1a\n"
    summary = _artifact_text(client, run_id, "summary.md").decode()
    assert summary.startswith("# Evaluation: tiny") and f"| accuracy | {metrics['eval/accuracy']:.4f} |" in summary


def test_text_protocol_run_reports_exact_match_and_gestalt(tracking):
    import mlflow

    from jmed.evaluate import evaluate

    run_id = evaluate(EvalConfig(prompt_format="alpaca_med", limit=6, max_new_tokens=8))
    run = mlflow.get_run(run_id)
    assert run.data.params["protocol"] == "text"  # alpaca_med answers with choice text
    m = run.data.metrics
    for key in ("eval/exact_match", "eval/gestalt", "eval/gestalt_accuracy", "eval/2025/gestalt"):
        assert key in m
    assert m["eval/accuracy"] == m["eval/gestalt_accuracy"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"protocol": "letter", "prompt_format": "alpaca_med"}, "cannot read answers"),
        ({"adapter": "not-a-run"}, "expected a train run id"),
    ],
)
def test_bad_settings_are_clear_errors_and_the_run_ends_failed(tracking, overrides, message):
    import mlflow

    from jmed.evaluate import evaluate

    with pytest.raises(ValueError, match=message):
        evaluate(EvalConfig(limit=2, **overrides))
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_bad_values_fail_when_the_config_is_built_all_at_once():
    """A config checks itself: every bad value is named, before any run starts."""
    from jmed.config import ConfigError, build

    with pytest.raises(ConfigError) as err:
        build(
            EvalConfig,
            {
                "protocol": "ranking",
                "prompt_format": "plain",
                "shots": "-1",
                "batch_size": "0",
                "compare_base": "maybe",
                "limit": "ten",
            },
        )
    assert err.value.problems == [
        "compare_base: expected true or false, got 'maybe'",
        "limit: expected an integer, got 'ten'",
        "protocol: unknown protocol 'ranking'; choose one of: letter, text, loglik",
        "prompt_format: unknown prompt format 'plain'; choose one of: igakuqa, alpaca_med, medpalm, "
        "chat-igakuqa, chat-alpaca_med, chat-medpalm, chat",
        "shots: must be at least 0, got -1",
        "batch_size: must be at least 1, got 0",
    ]
    with pytest.raises(ConfigError, match="shots: expected an integer, got True"):
        EvalConfig(shots=True)  # a bool is not a number


# ---- an adapter trained to memorise the training questions ---------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tracking store: a tiny adapter trained on the sample's training questions, evaluated on
    them in the letter and loglik protocols (the base evaluated alongside), and the letter evaluation
    repeated (it must reuse the base run)."""
    from jmed.evaluate import evaluate
    from jmed.train import train

    folder = tmp_path_factory.mktemp("trained")
    with private_store(folder) as uri:
        train_run = train(
            TrainConfig(
                max_steps=100,
                learning_rate=5e-3,
                lora_r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules="all-linear",
            )
        )
        runs = {
            p: evaluate(EvalConfig(adapter=train_run, eval_data=str(SAMPLE_TRAIN), protocol=p))
            for p in ("letter", "loglik")
        }
        runs["again"] = evaluate(
            EvalConfig(adapter=f"runs:/{train_run}/adapter", eval_data=str(SAMPLE_TRAIN), protocol="letter")
        )
        yield {"uri": uri, "folder": folder, "train_run": train_run, "runs": runs}


@pytest.fixture
def store(trained, monkeypatch):
    """Run a test inside the trained fixture's tracking store."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    monkeypatch.chdir(trained["folder"])
    mlflow.set_tracking_uri(trained["uri"])
    return trained


@pytest.mark.parametrize("protocol", ["letter", "loglik"])
def test_memorising_adapter_beats_the_untuned_model_on_its_training_questions(store, protocol):
    import mlflow

    run = mlflow.MlflowClient(store["uri"]).get_run(store["runs"][protocol])
    base = mlflow.MlflowClient(store["uri"]).get_run(run.data.params["base_eval_run"])
    acc, base_acc = run.data.metrics["eval/accuracy"], base.data.metrics["eval/accuracy"]
    # measured: letter 1.00 vs 0.00, loglik 0.84 vs 0.11 (44 questions)
    assert acc >= 0.7 and acc >= base_acc + 0.5, (acc, base_acc)
    assert run.data.metrics["eval/delta/accuracy"] == pytest.approx(acc - base_acc)
    assert run.data.metrics["eval/delta/score"] == pytest.approx(
        run.data.metrics["eval/score"] - base.data.metrics["eval/score"]
    )
    # the base run is a complete evaluate run of its own, with identical settings and data
    assert base.info.status == "FINISHED" and base.data.tags["jmed.adapter_run"] == "none"
    for key in ("model", "base_revision", "eval_data_digest", "protocol", "prompt_format", "shots", "parsing", "limit"):
        assert base.data.params[key] == run.data.params[key], key
    assert base.data.params["adapter"] == ""


def test_adapter_run_records_its_lineage(store):
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    run = client.get_run(store["runs"]["letter"])
    train_run = client.get_run(store["train_run"])
    assert run.data.tags["jmed.adapter_run"] == store["train_run"]
    assert run.data.params["adapter_train_run"] == store["train_run"]
    assert run.data.params["adapter_train_data_digest"] == train_run.data.params["train_data_digest"]
    # protocol, prompt format and shots default to the adapter's own
    assert (run.data.params["prompt_format"], run.data.params["shots"]) == ("igakuqa", "0")


def test_a_matching_base_run_is_reused(store):
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    first = client.get_run(store["runs"]["letter"]).data.params["base_eval_run"]
    again = client.get_run(store["runs"]["again"])
    assert again.data.params["base_eval_run"] == first
    bases = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="tags.`jmed.adapter_run` = 'none' and params.protocol = 'letter'",
    )
    assert [b.info.run_id for b in bases] == [first]
    assert again.data.metrics["eval/accuracy"] == client.get_run(store["runs"]["letter"]).data.metrics["eval/accuracy"]


def test_resolve_adapter_from_run_id_run_uri_and_registered_model(store):
    import mlflow

    from jmed.adapter import resolve as resolve_adapter
    from jmed.registry import log_serving_model

    rid = store["train_run"]
    weights = {
        ref: (resolve_adapter(ref) / "adapter_model.safetensors").read_bytes()
        for ref in (rid, f"runs:/{rid}", f"runs:/{rid}/adapter")
    }
    assert len(set(weights.values())) == 1
    with mlflow.start_run():
        info = log_serving_model(resolve_adapter(rid))
    version = mlflow.register_model(info.model_uri, "jmed-tiny")
    mlflow.MlflowClient().set_registered_model_alias("jmed-tiny", "champion", version.version)
    for ref in (f"models:/jmed-tiny/{version.version}", "models:/jmed-tiny@champion"):
        folder = resolve_adapter(ref)
        assert (folder / "adapter_model.safetensors").read_bytes() == weights[rid]
        assert json.loads((folder / "jmed.json").read_text())["train_run_id"] == rid


def test_cli_evaluates_a_registered_adapter_with_its_own_defaults(store):
    import mlflow
    from click.testing import CliRunner

    from jmed.cli import main

    result = CliRunner().invoke(
        main, ["evaluate", "--adapter", store["train_run"], "--limit", "3", "--compare-base", "false"]
    )
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1].split()[-1]
    run = mlflow.get_run(run_id)
    assert run.data.params["model"] == "tiny" and run.data.params["protocol"] == "letter"
    assert run.data.params["compare_base"] == "False" and "eval/delta/accuracy" not in run.data.metrics
    bad = CliRunner().invoke(main, ["evaluate", "--limit", "x"])
    assert bad.exit_code != 0 and "limit" in bad.output


# ---- the MLproject entry point -------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_evaluate_entry_point(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT),
            "-e",
            "evaluate",
            "-P",
            "limit=3",
            "-P",
            "protocol=loglik",
            "--env-manager",
            "local",
            "--experiment-name",
            "eval-entry",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("eval-entry")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["jmed.step"] == "evaluate"
    assert run.data.params["limit"] == "3" and run.data.params["protocol"] == "loglik"
    assert run.data.metrics["eval/questions"] == 3


def test_a_batch_holds_at_most_its_token_budget_padded_and_a_long_row_alone():
    from jmed.inference import _sorted_batches

    # longest first; (rows + 1) x longest beyond the budget starts a new batch; a row is never split
    assert list(_sorted_batches([4000, 10, 10, 10, 9000], 32, 8000)) == [[4], [0, 1], [2, 3]]
    assert list(_sorted_batches([10] * 5, 2, 8000)) == [[0, 1], [2, 3], [4]]
    assert list(_sorted_batches([100] * 4, 32, 0)) == [[0, 1, 2, 3]]  # 0: jmed.config.MAX_BATCH_TOKENS
    from jmed.engine import HFEngine

    assert HFEngine(None, None).max_batch_tokens == 0


def test_token_budgets_change_no_answer(tiny):
    from jmed.engine import HFEngine
    from jmed.prompts import LETTERS, render

    model, tok, _ = tiny
    qs = load_questions(SAMPLE_TEST)[:8]
    prompts = [render(q, "igakuqa", (), tok).prompt for q in qs]
    conts = [list(LETTERS[:5])] * len(qs)
    whole, alone = HFEngine(model, tok, 8), HFEngine(model, tok, 8, max_batch_tokens=1)  # 1: every row alone
    assert whole.generate(prompts, [6] * 8) == alone.generate(prompts, [6] * 8)
    for a, b in zip(whole.loglik(prompts, conts), alone.loglik(prompts, conts)):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_prompt_over_the_models_context_is_refused_before_inference(tiny):
    from jmed.evaluate import run_questions
    from jmed.inference import prompt_token_limit
    from jmed.records import Question

    model, tok, _ = tiny
    assert prompt_token_limit(model, tok) == 2048  # the tiny model's context, under MAX_PROMPT_TOKENS 8192
    long = Question(id="990A1", stem="あ" * 3000, choices=("甲", "乙", "丙", "丁", "戊"), answer=(("a",),))
    short = load_questions(SAMPLE_TEST)[0]

    with pytest.raises(ValueError) as exc:
        run_questions(model, tok, [short, long], "letter", "igakuqa", 0, "lenient", max_new_tokens=4)
    assert str(exc.value).startswith("1 prompt(s) over 2048 tokens, the longest this model takes: 990A1 (")
