"""Promotion: the pure decision (table-driven), then the real registry on a real sqlite store."""

import pytest
from conftest import private_store

from jmed.registry import Candidate, Champion, decide

E1 = ("d1", "letter", "igakuqa", "0")
E2 = ("d2", "letter", "igakuqa", "0")


def cand(run, train, metric, secondary=None, t=0, evaluation=E1, version=None):
    return Candidate(run, train, evaluation, metric, secondary, t, version)


def champ(version, run, train, metric, evaluation=E1):
    return Champion(version, run, train, evaluation, metric)


# (name, candidates, champion, min_delta, expected action, expected candidate eval run, register, reason part)
CASES = [
    ("nothing", [], None, 0, "none", None, False, "no evaluated adapter"),
    ("no metric", [cand("e1", "t1", None)], None, 0, "none", None, False, "without metric"),
    (
        "first champion",
        [cand("e1", "t1", 0.4), cand("e2", "t2", 0.6)],
        None,
        0,
        "promote",
        "e2",
        True,
        "no champion yet",
    ),
    (
        "first champion already registered",
        [cand("e1", "t1", 0.6, version="3")],
        None,
        0,
        "promote",
        "e1",
        False,
        "no champion yet",
    ),
    (
        "tie -> secondary",
        [cand("e1", "t1", 0.5, 0.7, t=2), cand("e2", "t2", 0.5, 0.8, t=1)],
        None,
        0,
        "promote",
        "e2",
        True,
        "tie",
    ),
    (
        "tie on both -> newer",
        [cand("e1", "t1", 0.5, 0.7, t=1), cand("e2", "t2", 0.5, 0.7, t=2)],
        None,
        0,
        "promote",
        "e2",
        True,
        "tie",
    ),
    (
        "no champion: newest evaluation wins the comparison set",
        [cand("e1", "t1", 0.9, t=1, evaluation=E2), cand("e2", "t2", 0.3, t=5)],
        None,
        0,
        "promote",
        "e2",
        True,
        "another evaluation",
    ),
    (
        "better candidate",
        [cand("e1", "t1", 0.4), cand("e2", "t2", 0.6)],
        champ("1", "e1", "t1", 0.4),
        0,
        "promote",
        "e2",
        True,
        "beats champion v1",
    ),
    (
        "champion already best (idempotent)",
        [cand("e1", "t1", 0.6, version="1"), cand("e2", "t2", 0.4)],
        champ("1", "e1", "t1", 0.6),
        0,
        "keep",
        "e1",
        False,
        "already the best",
    ),
    (
        "equal metric does not move",
        [cand("e1", "t1", 0.6, 0.1), cand("e2", "t2", 0.6, 0.9)],
        champ("1", "e1", "t1", 0.6),
        0,
        "keep",
        "e2",
        True,
        "does not beat",
    ),
    (
        "within min_delta",
        [cand("e1", "t1", 0.5), cand("e2", "t2", 0.55)],
        champ("1", "e1", "t1", 0.5),
        0.1,
        "keep",
        "e2",
        True,
        "min_delta 0.1",
    ),
    (
        "beyond min_delta",
        [cand("e1", "t1", 0.5), cand("e2", "t2", 0.65)],
        champ("1", "e1", "t1", 0.5),
        0.1,
        "promote",
        "e2",
        True,
        "> min_delta 0.1",
    ),
    (
        "worse registered candidate",
        [cand("e2", "t2", 0.3, version="2")],
        champ("1", "e1", "t1", 0.5),
        0,
        "keep",
        "e2",
        False,
        "does not beat",
    ),
    (
        "candidates only on another evaluation: not compared, the switch named",
        [cand("e2", "t2", 0.99, evaluation=E2)],
        champ("1", "e1", "t1", 0.1),
        0,
        "keep",
        None,
        False,
        "`jmed promote --evaluation e2`",
    ),
    (
        "other-evaluation candidates ignored",
        [cand("e2", "t2", 0.99, evaluation=E2), cand("e3", "t3", 0.2)],
        champ("1", "e1", "t1", 0.3),
        0,
        "keep",
        "e3",
        True,
        "1 candidate(s) evaluated on another evaluation",
    ),
    (
        "registered candidate promoted without re-registering",
        [cand("e2", "t2", 0.8, version="2")],
        champ("1", "e1", "t1", 0.5),
        0,
        "promote",
        "e2",
        False,
        "beats champion v1",
    ),
]


@pytest.mark.parametrize("name,cands,champion,min_delta,action,run,register,reason", CASES, ids=[c[0] for c in CASES])
def test_decide(name, cands, champion, min_delta, action, run, register, reason):
    d = decide(cands, champion, "eval/accuracy", min_delta)
    assert d.action == action
    assert (d.candidate.eval_run if d.candidate else None) == run
    assert d.register is register
    assert any(reason in r for r in d.reasons), d.reasons
    assert d == decide(list(reversed(cands)), champion, "eval/accuracy", min_delta)  # order-free, pure


# Ranked on a declared evaluation (E2) while the champion v1 was first measured on E1:
# (name, candidates, expected action, expected candidate, reason part)
SWITCH_CASES = [
    (
        "champion re-evaluated there and beaten",
        [cand("e1", "t1", 0.9), cand("e1b", "t1", 0.3, evaluation=E2), cand("e2", "t2", 0.5, evaluation=E2)],
        "promote",
        "e2",
        "beats champion v1 (0.3)",
    ),
    (
        "champion re-evaluated there and still best",
        [cand("e1b", "t1", 0.6, evaluation=E2), cand("e2", "t2", 0.5, evaluation=E2)],
        "keep",
        "e1b",
        "already the best",
    ),
    (
        "champion not evaluated there: not compared blindly",
        [cand("e2", "t2", 0.99, evaluation=E2)],
        "keep",
        None,
        "`jmed promote --evaluation <an eval run on that data>`",
    ),
]


@pytest.mark.parametrize("name,cands,action,run,reason", SWITCH_CASES, ids=[c[0] for c in SWITCH_CASES])
def test_decide_on_declared_evaluation(name, cands, action, run, reason):
    current = champ("1", "e1", "t1", 0.9)
    d = decide(cands, current, "eval/accuracy", 0.0, evaluation=E2)
    assert d.action == action
    assert (d.candidate.eval_run if d.candidate else None) == run
    assert any(reason in r for r in d.reasons), d.reasons
    assert d == decide(list(reversed(cands)), current, "eval/accuracy", 0.0, evaluation=E2)


# ---- the real registry: a sqlite store, two trained and evaluated tiny adapters -------------------

NAME = "jmed-tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Adapter A (1 step) and adapter B (30 steps), both evaluated on the sample's training questions."""
    import mlflow

    from jmed.config import EvalConfig, TrainConfig
    from jmed.data import SAMPLE_TRAIN
    from jmed.evaluate import evaluate
    from jmed.train import train

    root = tmp_path_factory.mktemp("registry")
    with private_store(root):
        runs = {}
        for key, steps in (("A", 1), ("B", 30)):
            train_run = train(TrainConfig(max_steps=steps, learning_rate=1e-2))
            eval_run = evaluate(
                EvalConfig(adapter=train_run, eval_data=str(SAMPLE_TRAIN), compare_base=False, max_new_tokens=4)
            )
            acc = mlflow.get_run(eval_run).data.metrics["eval/accuracy"]
            runs[key] = {"train": train_run, "eval": eval_run, "accuracy": acc}
        assert runs["A"]["accuracy"] < runs["B"]["accuracy"], runs  # B learned; A did not
        yield root, runs


def fresh_registry():
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().delete_registered_model(NAME)
    except MlflowException:
        pass


def state():
    """(champion version, previous version or None, {version: train run})."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    m = client.get_registered_model(NAME)
    versions = {str(v.version): v.tags["jmed.train_run"] for v in client.search_model_versions(f"name = '{NAME}'")}
    try:
        previous = str(client.get_model_version_by_alias(NAME, "previous").version)
    except MlflowException:
        previous = None
    return str(m.aliases["champion"]), previous, versions


def promote_runs():
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`jmed.step` = 'promote'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )


@pytest.mark.slow
def test_promote_registers_the_better_adapter_and_is_idempotent(store):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlflow
    from mlflow import MlflowClient

    from jmed.registry import promote

    root, runs = store
    fresh_registry()
    [rec] = promote("tiny")
    assert (rec["action"], rec["champion_version"], rec["registered_model"]) == ("promote", "1", NAME)
    champion, previous, versions = state()
    assert (champion, previous, versions) == ("1", None, {"1": runs["B"]["train"]})

    v = MlflowClient().get_model_version(NAME, "1")
    ev = mlflow.get_run(runs["B"]["eval"])
    assert v.tags["jmed.train_run"] == runs["B"]["train"] and v.tags["jmed.eval_run"] == runs["B"]["eval"]
    assert v.tags["jmed.eval_data_digest"] == ev.data.params["eval_data_digest"]
    assert v.tags["jmed.train_data_digest"] == ev.data.params["adapter_train_data_digest"]
    assert v.tags["jmed.base_revision"] == ev.data.params["base_revision"]
    assert (v.tags["jmed.prompt_format"], v.tags["jmed.protocol"], v.tags["jmed.shots"]) == ("igakuqa", "letter", "0")
    assert v.tags["eval/accuracy"] == f"{runs['B']['accuracy']:.6g}"
    assert f"Trained in run {runs['B']['train']}" in v.description
    assert f"Evaluated in run {runs['B']['eval']}" in v.description and "eval/accuracy" in v.description

    [run] = promote_runs()
    assert run.info.status == "FINISHED"
    assert (run.data.tags["jmed.decision.tiny"], run.data.tags["jmed.champion.tiny"]) == ("promote", "1")
    assert "no champion yet" in run.data.tags["jmed.reasons.tiny"]
    assert (run.data.params["metric"], run.data.params["min_delta"]) == ("eval/accuracy", "0.0")
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/promote/decisions.json")
    assert logged["decisions"][0]["candidate"]["eval_run"] == runs["B"]["eval"]

    # again, through the MLproject entry point: nothing changes
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "run",
            str(repo),
            "-e",
            "promote",
            "--env-manager",
            "local",
            "-P",
            "base_model=tiny",
        ],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert state() == ("1", None, {"1": runs["B"]["train"]})
    latest = promote_runs()[0]
    assert latest.info.status == "FINISHED" and latest.data.tags["jmed.decision.tiny"] == "keep"
    assert "already the best" in latest.data.tags["jmed.reasons.tiny"]


@pytest.mark.slow
def test_champion_on_other_evaluation_is_not_compared_blindly(store):
    from jmed.config import EvalConfig
    from jmed.data import SAMPLE_TEST
    from jmed.evaluate import evaluate
    from jmed.registry import promote

    root, runs = store
    fresh_registry()
    promote("tiny", eval_runs=[runs["A"]["eval"]])
    assert state() == ("1", None, {"1": runs["A"]["train"]})
    other = evaluate(
        EvalConfig(adapter=runs["B"]["train"], eval_data=str(SAMPLE_TEST), compare_base=False, max_new_tokens=4)
    )
    [rec] = promote("tiny", eval_runs=[other])
    assert rec["action"] == "keep" and rec["champion_version"] == "1"
    # the message names the command that makes the comparison possible
    assert any(f"`jmed promote --evaluation {other}`" in r for r in rec["reasons"]), rec["reasons"]
    # all candidates: compared on the declared evaluation (the first promotion's) only, where B beats A
    [rec] = promote("tiny")
    assert rec["action"] == "promote"
    assert any("1 candidate(s) evaluated on another evaluation" in r for r in rec["reasons"]), rec["reasons"]
    assert state() == ("2", "1", {"1": runs["A"]["train"], "2": runs["B"]["train"]})
    # the run page of the evaluate run that ranked a version links to it; the version says what it replaced
    from mlflow import MlflowClient

    client = MlflowClient()
    v2 = client.get_model_version(NAME, "2")
    assert v2.run_id == runs["B"]["eval"]
    assert "replacing v1: eval/accuracy" in v2.description
    assert "--evaluation" in client.get_registered_model(NAME).description


@pytest.mark.slow
def test_promote_switches_the_ranking_evaluation_and_reevaluates_the_champion_once(store):
    """`promote --evaluation RUN` declares RUN's evaluation, evaluates the champion's adapter there (once:
    a second switch reuses that run), then compares like for like."""
    import json

    from mlflow import MlflowClient

    from jmed import tracking
    from jmed.config import EvalConfig
    from jmed.data import SAMPLE_TEST
    from jmed.evaluate import evaluate
    from jmed.registry import EVALUATION_TAG, promote

    root, runs = store
    fresh_registry()
    promote("tiny", eval_runs=[runs["A"]["eval"], runs["B"]["eval"]])
    assert state()[0] == "1" and state()[2]["1"] == runs["B"]["train"]
    client = MlflowClient()
    on_train = json.loads(client.get_registered_model(NAME).tags[EVALUATION_TAG])
    other = evaluate(
        EvalConfig(adapter=runs["A"]["train"], eval_data=str(SAMPLE_TEST), compare_base=False, max_new_tokens=4)
    )
    params = client.get_run(other).data.params

    def champion_runs_on_test():
        return [
            r
            for r in tracking.evaluate_runs(client, adapters_only=True)
            if r.data.tags[tracking.ADAPTER_RUN_TAG] == runs["B"]["train"]
            and r.data.params["eval_data_digest"] == params["eval_data_digest"]
        ]

    before = len(champion_runs_on_test())  # an earlier test of this module may have evaluated B there
    [rec] = promote("tiny", evaluation=other)
    declared = json.loads(client.get_registered_model(NAME).tags[EVALUATION_TAG])
    assert declared == [params["eval_data_digest"], "letter", "igakuqa", "0", "hf"] != on_train
    there = champion_runs_on_test()  # the champion's adapter has an evaluation on the new data (made or reused)
    assert len(there) == max(before, 1)
    a, b = client.get_run(other).data.metrics, there[0].data.metrics
    assert rec["action"] == ("promote" if a["eval/accuracy"] > b["eval/accuracy"] else "keep")
    assert params["eval_data_digest"][:12] in " ".join(rec["reasons"])
    promote("tiny", evaluation=other)
    assert len(champion_runs_on_test()) == max(before, 1)  # reused, not evaluated again


@pytest.mark.slow
def test_two_concurrent_promote_processes_never_leave_the_worse_champion(store):
    """B's promoter starts first and A's right after, both pausing 3 s between deciding and applying. With
    neither the lock nor the compare-and-set, A's process also decides "no champion yet" and overwrites B
    (checked by hand with both disabled: champion ended on A)."""
    import os
    import subprocess
    import sys
    import time

    root, runs = store
    fresh_registry()
    env = dict(os.environ)
    # each process pauses 3 s between reading the state (decide) and applying it: a wide race window
    code = (
        "import sys, time; from jmed import registry; decide = registry.decide\n"
        "registry.decide = lambda *a, **k: (time.sleep(3), decide(*a, **k))[1]\n"
        "registry.promote('tiny', eval_runs=[sys.argv[1]])"
    )
    procs = []
    for key in ("B", "A"):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, runs[key]["eval"]],
                env=env,
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        time.sleep(1.0)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    print("\n".join(line for o in outs for line in o.splitlines() if "jmed-tiny" in line or line.startswith("  -")))
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    champion, previous, versions = state()
    assert versions[champion] == runs["B"]["train"]
    assert sorted(versions.values()) == sorted([runs["A"]["train"], runs["B"]["train"]])  # each registered once
    assert previous in (None, *[v for v, t in versions.items() if t == runs["A"]["train"]])
    assert all(r.info.status == "FINISHED" for r in promote_runs())
