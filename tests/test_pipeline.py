"""The `main` pipeline end to end, step reuse, validation stopping it, `reproduce`, `study` and `compare`."""

import json
import re
import shutil
from pathlib import Path

import pytest

from jmed import data
from jmed.config import TrainConfig

STEPS = ["validate", "train", "evaluate-base", "evaluate-adapter", "promote"]


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _runs(step):
    client = _client()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`jmed.step` = '{step}'")


def _children(parent_id):
    client = _client()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _step_name(run):
    step = run.data.tags["jmed.step"]
    if step == "evaluate":
        return "evaluate-base" if run.data.tags["jmed.adapter_run"] == "none" else "evaluate-adapter"
    return step


@pytest.fixture
def train_file(tmp_path):
    """A copy of the sample's training split (and its metadata) that a test may tamper with."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train.jsonl", "train_metadata.jsonl"):
        shutil.copy(data.SAMPLE_DIR / name, folder / name)
    return folder / "train.jsonl"


CFG = dict(max_steps=12, batch_size=8)


def test_main_pipeline_runs_every_step_then_reuses_them(tracking, train_file):
    from jmed.pipeline import main_pipeline
    from jmed.reproduce import ReproduceError, reproduce

    cfg = TrainConfig(train_data=str(train_file), **CFG)
    parent = main_pipeline(cfg)
    client = _client()
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["jmed.step"] == "pipeline"
    assert run.data.tags["jmed.steps_run"] == ",".join(STEPS)
    assert run.data.tags["jmed.steps_reused"] == ""
    children = _children(parent)
    assert all(c.info.status == "FINISHED" for c in children)
    steps = {_step_name(c): c for c in children}
    assert sorted(steps) == sorted(STEPS)
    assert steps["evaluate-adapter"].data.tags["jmed.adapter_run"] == steps["train"].info.run_id
    assert run.data.tags["jmed.adapter_uri"] == f"runs:/{steps['train'].info.run_id}/adapter"
    assert run.data.tags["jmed.model_uri"] == "models:/jmed-tiny@champion"
    champion = client.get_model_version_by_alias("jmed-tiny", "champion")
    assert champion.tags["jmed.train_run"] == steps["train"].info.run_id

    # Same inputs again: every step is reused, nothing is trained twice, the champion stays.
    again = main_pipeline(cfg)
    run2 = client.get_run(again)
    assert run2.data.tags["jmed.steps_reused"] == ",".join(STEPS)
    assert run2.data.tags["jmed.steps_run"] == ""
    assert run2.data.metrics["pipeline/steps_reused"] == len(STEPS)
    assert len(_runs("train")) == 1
    assert client.get_model_version_by_alias("jmed-tiny", "champion").version == champion.version

    # reproduce: exact on CPU …
    report = reproduce("models:/jmed-tiny@champion")
    assert report.adapter_match and report.match, report.problems
    assert report.metrics["eval/accuracy"][0] == report.metrics["eval/accuracy"][1]
    rep_run = _runs("reproduce")[0]
    assert rep_run.data.tags["jmed.reproduce.match"] == "true"
    # … and a changed training file is named, not silently retrained on.
    lines = train_file.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["answer"] = ["a"] if first["answer"] != ["a"] else ["b"]
    train_file.write_text("\n".join([json.dumps(first, ensure_ascii=False)] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(ReproduceError, match=r"training data changed: .*train\.jsonl"):
        reproduce("models:/jmed-tiny@champion")


def test_force_reruns_steps(tracking, train_file):
    from jmed.pipeline import main_pipeline

    cfg = TrainConfig(train_data=str(train_file), max_steps=2, batch_size=4)
    main_pipeline(cfg)
    forced = main_pipeline(cfg, force=True)
    assert _client().get_run(forced).data.tags["jmed.steps_reused"] == ""
    assert len(_runs("train")) == 2


def test_validation_failure_stops_before_training(tracking, tmp_path):
    from jmed.pipeline import PipelineFailed, main_pipeline

    bad = tmp_path / "bad.jsonl"
    line = json.loads((data.SAMPLE_TRAIN).read_text(encoding="utf-8").splitlines()[0])
    line["answer"] = ["f"]
    bad.write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(PipelineFailed, match=r'bad\.jsonl:1: answer: letter "f"'):
        main_pipeline(TrainConfig(train_data=str(bad), max_steps=2))
    parents = _runs("pipeline")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    report = json.loads(
        Path(_client().download_artifacts(parents[0].info.run_id, "validation_report.json")).read_text(encoding="utf-8")
    )
    assert report["success"] is False
    assert _runs("train") == []
    [child] = _children(parents[0].info.run_id)
    assert child.info.status == "FAILED" and child.data.tags["jmed.step"] == "validate"


def test_leakage_policy_fail_stops_the_pipeline_before_training(tracking, tmp_path):
    """A near-duplicate of an evaluation question in the training data: with leakage=fail the pipeline
    stops at validation, names both questions, and records the policy; nothing is trained."""
    from jmed.pipeline import PipelineFailed, main_pipeline

    test = json.loads(data.SAMPLE_TEST.read_text(encoding="utf-8").splitlines()[0])
    near = {**test, "problem_id": "990Z1", "problem_text": test["problem_text"] + "なお、"}
    train = tmp_path / "train.jsonl"
    train.write_text(
        "\n".join([*data.SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines(), json.dumps(near, ensure_ascii=False)])
        + "\n",
        encoding="utf-8",
    )
    pair = rf"leakage: train 990Z1 ~ test {test['problem_id']} \(similarity"
    with pytest.raises(PipelineFailed, match=pair) as err:
        main_pipeline(TrainConfig(train_data=str(train), max_steps=2), leakage="fail")
    assert "leakage policy fail: near-duplicates (similarity >= 90) are errors" in str(err.value)
    [parent] = _runs("pipeline")
    assert parent.info.status == "FAILED" and parent.data.params["pipeline.leakage"] == "fail"
    assert _runs("train") == []
    [child] = _children(parent.info.run_id)
    assert child.data.params["leakage_policy"] == "fail" and child.data.metrics["data/leakage_pairs"] == 1


@pytest.fixture
def neox_model(tmp_path):
    """A second architecture: a tiny random GPT-NeoX with the tiny model's tokenizer, saved locally."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from jmed.models import tiny_model_dir

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    out = tmp_path / "tiny-neox"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_study_two_architectures_two_formats(tracking, neox_model):
    from jmed.study import COLUMNS, study

    parent, rows = study(["tiny", neox_model], ["alpaca_med", "medpalm"], train_overrides={"max_steps": 4})
    assert len(rows) == 4
    assert {(r["prompt_format"], r["protocol"]) for r in rows} == {("alpaca_med", "text"), ("medpalm", "text")}
    for r in rows:
        for m in ("accuracy", "exact_match", "gestalt"):
            assert r[f"delta_{m}"] == pytest.approx(r[f"tuned_{m}"] - r[f"untuned_{m}"])
    client = _client()
    files = {a.path for a in client.list_artifacts(parent, "comparison")}
    assert files == {"comparison/comparison.md", "comparison/comparison.csv", "comparison/accuracy.png"}
    csv_text = Path(client.download_artifacts(parent, "comparison/comparison.csv")).read_text()
    assert csv_text.splitlines()[0].startswith(",".join(COLUMNS[:4]))
    assert len(csv_text.splitlines()) == 5
    assert len(_runs("train")) == 4 and len(_runs("evaluate")) == 8  # an adapter per model × format

    # `jmed compare` prints the same cells from the existing runs.
    from click.testing import CliRunner

    from jmed.cli import main

    out = CliRunner().invoke(main, ["compare"])
    assert out.exit_code == 0, out.output
    assert out.output.count("alpaca_med") == 2 and out.output.count("medpalm") == 2


def test_main_forwards_filters_sample_and_limit_to_evaluation(tracking, capsys):
    """The evaluation options reach both evaluate steps, key their reuse, and show on the terminal."""
    from jmed.config import DataFilter
    from jmed.pipeline import main_pipeline

    cfg = TrainConfig(max_steps=2, batch_size=4, filters=DataFilter(five_choices=True))
    main_pipeline(cfg, eval_settings={"sample": 6})
    evals = _runs("evaluate")
    assert len(evals) == 2
    for run in evals:
        p = run.data.params
        assert (p["sample"], p["filters.five_choices"], run.data.metrics["eval/questions"]) == ("6", "True", 6.0)
    out = capsys.readouterr().out
    # every step's header, each evaluation's summary with what it left out and why, the final table
    for n, step in enumerate(("validate", "train", "evaluate-base", "evaluate-adapter", "promote"), 1):
        assert f"[jmed] ── step {n}/5 {step}: running" in out
    assert "[jmed] evaluate tiny adapter of train run" in out
    assert "[jmed] train tiny (igakuqa): finished step 2 of 2\n  final loss  " in out
    assert "  tokens/s    " in out and "  adapter     runs:/" in out
    # each step names the data it used, with its count and digest
    assert re.search(r"\n  data +sample train, \d+ records, [0-9a-f]{12}\n", out), out
    assert re.search(r"\n  data +sample test, 6 of 20 questions \(five choices, sample 6\), [0-9a-f]{12}\n", out)
    assert (
        out.count(
            "questions   6 evaluated of 20 in the data; 1 left out: --five-choices (not 5 choices); "
            "13 left out: not in --sample 6"
        )
        == 2
    ), out
    assert "[jmed] promote jmed-tiny: v1 is the new champion: no champion yet" in out
    assert "model                    eval run      on  accuracy  exam score  unparsed  pass" in out
    assert "  A: sample test, 6 of 20 questions (five choices, sample 6), " in out
    assert "champion: this pipeline's own adapter, train run " in out
    # another sample is another evaluation (not reused); training is reused
    parent = main_pipeline(cfg, eval_settings={"sample": 6, "limit": 4})
    tags = _client().get_run(parent).data.tags
    assert tags["jmed.steps_reused"] == "validate,train"
    assert sorted(r.data.metrics["eval/questions"] for r in _runs("evaluate")) == [4.0, 4.0, 6.0, 6.0]


@pytest.mark.slow
def test_mlflow_ui_rest_api_shows_the_parent_run_named_described_and_linked_to_its_version(tracking, tmp_path):
    """What a user sees in the MLflow UI, read through the REST API the UI itself calls: the pipeline's
    parent run has a name from what it did and a description, which links to the registered version; that
    version was created from the evaluate run (its page lists it) and says what it is."""
    import re

    import requests

    from jmed.pipeline import main_pipeline
    from jmed.server import free_port, start_tracking_server, stop_server

    parent = main_pipeline(TrainConfig(max_steps=5, batch_size=4), eval_settings={"limit": 6})
    port = free_port()
    server, _ = start_tracking_server(tracking, tmp_path / "ui-artifacts", port, log_path=tmp_path / "ui.log")
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        run = requests.get(f"{api}/runs/get", params={"run_id": parent}, timeout=30)
        assert run.status_code == 200
        info, tags = run.json()["run"]["info"], {t["key"]: t["value"] for t in run.json()["run"]["data"]["tags"]}
        assert info["run_name"] == "pipeline-tiny-igakuqa"
        note = tags["mlflow.note.content"]
        assert note.startswith("Pipeline for `tiny`, prompt format `igakuqa`")
        assert "Accuracy: base " in note and "Steps: validate, train, evaluate-base, evaluate-adapter, promote." in note
        name, version = re.search(r"\(#/models/([\w-]+)/versions/(\d+)\)", note).groups()
        mv = requests.get(f"{api}/model-versions/get", params={"name": name, "version": version}, timeout=30)
        assert mv.status_code == 200
        mv = mv.json()["model_version"]
        assert mv["run_id"] == tags["jmed.eval_run"]  # the evaluate run's page lists this version
        assert mv["description"].startswith("LoRA adapter for base model tiny")
        assert "Promoted to champion: the first one of this model." in mv["description"]
        found = requests.get(
            f"{api}/model-versions/search", params={"filter": f"run_id='{tags['jmed.eval_run']}'"}, timeout=30
        )
        assert [v["version"] for v in found.json()["model_versions"]] == [version]
        model = requests.get(f"{api}/registered-models/get", params={"name": name}, timeout=30).json()
        assert "--evaluation" in model["registered_model"]["description"]
        evaluation = requests.get(f"{api}/runs/get", params={"run_id": tags["jmed.eval_run"]}, timeout=30).json()
        eval_tags = {t["key"]: t["value"] for t in evaluation["run"]["data"]["tags"]}
        assert eval_tags["mlflow.note.content"].startswith("Evaluated adapter `runs:/")
        trained = requests.get(f"{api}/runs/get", params={"run_id": tags["jmed.train_run"]}, timeout=30).json()
        train_tags = {t["key"]: t["value"] for t in trained["run"]["data"]["tags"]}
        assert train_tags["mlflow.note.content"].startswith("LoRA (r 8, alpha 16) of `tiny`, prompt format `igakuqa`")
    finally:
        stop_server(server)


def test_final_table_marks_each_evaluation_and_measures_the_champion_on_this_one(tracking, capsys):
    """The champion is never shown beside this pipeline's rows on another evaluation unmarked: its own
    ranking evaluation is a row marked B, and it is measured on this pipeline's evaluation (A) too:
    through this pipeline's own (reused) train run, an earlier evaluation there, or a new
    `evaluate-champion` step."""
    from jmed.pipeline import main_pipeline

    cfg = TrainConfig(max_steps=2, batch_size=4)
    main_pipeline(cfg)  # v1, ranked on the whole sample test split
    first_train = _runs("train")[0].info.run_id
    capsys.readouterr()

    # 1. the same training, evaluated on 8 questions: the champion is this pipeline's reused train run
    main_pipeline(cfg, eval_settings={"limit": 8})
    out = capsys.readouterr().out
    table = out[out.index("[jmed] pipeline tiny") :]
    rows = {line.split("  ")[1].strip(): line.split() for line in table.splitlines()[3:7]}
    assert [rows[k][-5] for k in ("base model", "adapter (this pipeline)", "champion jmed-tiny v1")] == ["A"] * 3
    assert rows["champion v1, as ranked"][-5] == "B"
    assert "  A: sample test, 8 of 20 questions (limit 8), " in table
    assert "  B: sample test, 20 questions, " in table
    assert "rows marked differently were measured on different evaluations" in table
    assert f"champion: this pipeline's own adapter, train run {first_train[:12]} (reused)" in table

    # 2. another training on 6 questions: the champion (v1, the first training) was never measured
    # there, so the pipeline evaluates it there, as a step of its own
    main_pipeline(TrainConfig(max_steps=2, batch_size=4, seed=5), eval_settings={"limit": 6})
    out = capsys.readouterr().out
    assert "[jmed] ── step 6/6 evaluate-champion: running" in out
    table = out[out.index("[jmed] pipeline tiny") :]
    assert f"champion: an earlier adapter, train run {first_train[:12]} (models:/jmed-tiny@champion)" in table
    six = [r for r in _runs("evaluate") if r.data.params.get("limit") == "6"]
    [champ] = [r for r in six if r.data.tags["jmed.adapter_run"] == first_train]
    [adapter] = [r for r in six if r.data.tags["jmed.adapter_run"] not in (first_train, "none")]
    assert champ.data.tags["jmed.adapter_run"] == first_train
    for key in ("eval_data_digest", "protocol", "prompt_format", "shots", "engine"):
        assert champ.data.params[key] == adapter.data.params[key]
    assert champ.info.run_id[:12] in table.splitlines()[5] and table.splitlines()[5].split()[-5] == "A"
