"""Trust boundaries: nothing read from the tracking store runs as code."""

import os
import pickle
import re
from pathlib import Path

import pytest

from jmed.config import TrainConfig
from jmed.train import TrainError, train

ROOT = Path(__file__).resolve().parent.parent
MARKER = Path("/tmp") / "jmed-planted-pickle-ran"


class Payload:
    """Unpickling this runs a shell command that creates MARKER."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


def test_resume_refuses_a_planted_pickle_and_runs_nothing(tracking, tmp_path):
    import mlflow

    MARKER.unlink(missing_ok=True)
    stopped = train(TrainConfig(batch_size=4, max_steps=6, checkpoint_every=2, stop_after=3))
    client = mlflow.MlflowClient()
    planted = tmp_path / "optimizer.pt"
    planted.write_bytes(pickle.dumps(Payload()))
    client.log_artifact(stopped, str(planted), "checkpoints/step-000003")
    with pytest.raises(
        TrainError,
        match=r"step-000003: it holds pickled state \(optimizer\.pt\), which jmed never "
        r"loads",
    ):
        train(TrainConfig(resume_from=stopped))
    assert not MARKER.exists()  # nothing was unpickled
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(r.info.status != "RUNNING" for r in runs)


def test_checkpoint_state_holds_only_safetensors_and_json(tracking):
    import mlflow

    run = train(TrainConfig(batch_size=4, max_steps=4, checkpoint_every=2))
    files = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run, "checkpoints/step-000002")}
    # plus the completeness marker, a line of plain text uploaded last
    assert files == {"adapter", "state.safetensors", "state.json", "trainer_state.json", "CHECKPOINT_COMPLETE"}


# Source rule: no deserialisation of code and no shell in the package (comments and strings included,
# so that a future use cannot hide). `.eval()` (torch's eval mode) is a method call, not the builtin.
FORBIDDEN = [
    r"\bpickle\b",
    r"\bcloudpickle\b",
    r"weights_only\s*=\s*False",
    r"(?<![\w.])eval\(",
    r"(?<![\w.])exec\(",
    r"shell\s*=\s*True",
    r"\btorch\.load\(",
]


def test_package_source_has_no_pickle_eval_exec_or_shell():
    hits = []
    for path in sorted((ROOT / "jmed").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for pat in FORBIDDEN if re.search(pat, line)]
    assert hits == []


# ---- artifacts are data, never policy ---------------------------------------------------------------


def test_resume_never_takes_trust_remote_code_from_the_checkpoint():
    from jmed.config import flat
    from jmed.train import resumed_config

    planted = {"step": 3, "position": 12, "config": {**flat(TrainConfig()), "trust_remote_code": "true"}}
    cfg = resumed_config(TrainConfig(resume_from="abc"), planted)
    assert cfg.trust_remote_code is False and cfg.resume_from == "abc"


def test_a_path_in_an_mlmodel_file_cannot_leave_the_download_folder(tmp_path):
    from jmed.adapter import _pyfunc_artifact

    outside = tmp_path / "elsewhere"
    (outside / "adapter").mkdir(parents=True)
    model = tmp_path / "model"
    model.mkdir()
    for path in ("../elsewhere/adapter", str(outside / "adapter")):
        (model / "MLmodel").write_text(
            f"flavors:\n  python_function:\n    artifacts:\n      adapter:\n        path: {path}\n"
        )
        with pytest.raises(ValueError, match="(leaves the artifact folder|is not a relative path)"):
            _pyfunc_artifact(model, "adapter", "models:/x/1")
    (model / "artifacts" / "adapter").mkdir(parents=True)
    (model / "MLmodel").write_text(
        "flavors:\n  python_function:\n    artifacts:\n      adapter:\n        path: artifacts/adapter\n"
    )
    assert _pyfunc_artifact(model, "adapter", "models:/x/1") == (model / "artifacts" / "adapter").resolve()


@pytest.mark.slow
def test_reproduce_refuses_trust_remote_code_from_a_tampered_adapter(tracking, capsys):
    import json

    import mlflow

    from jmed.pipeline import main_pipeline
    from jmed.reproduce import ReproduceError, reproduce

    main_pipeline(TrainConfig(max_steps=2, batch_size=4), eval_settings={"sample": 4})
    version = mlflow.MlflowClient().get_model_version_by_alias("jmed-tiny", "champion")
    train_run = version.tags["jmed.train_run"]
    # tamper with the stored artifact in place (a file store: the artifact folder of the train run)
    meta_path = (
        Path(mlflow.MlflowClient().get_run(train_run).info.artifact_uri.removeprefix("file://"))
        / "adapter"
        / "jmed.json"
    )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["config"]["trust_remote_code"] = "true"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ReproduceError, match="sets trust_remote_code=True; reproduce never takes security-relevant"):
        reproduce("models:/jmed-tiny@champion")


# ---- no secret on the terminal or in the store ------------------------------------------------------


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_never_printed_or_logged(tmp_path):
    """A pipeline against a real `mlflow server` reached as http://alice:<password>@…: the password is
    in none of the output, params, tags or artifacts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests
    from mlflow.tracking import MlflowClient

    from jmed.server import free_port

    secret = "s3cretPW-4711"
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
        uri = f"http://alice:{secret}@127.0.0.1:{port}"
        work = tmp_path / "work"
        work.mkdir()
        res = subprocess.run(
            [str(bin_dir / "jmed"), "pipeline", "--max-steps", "2", "--batch-size", "4", "--sample", "4"],
            cwd=work,
            env={**env, "MLFLOW_TRACKING_URI": uri},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert secret not in res.stdout + res.stderr
        bad = subprocess.run(
            [str(bin_dir / "jmed"), "evaluate", "--adapter", "runs:/" + "0" * 32 + "/adapter"],
            cwd=work,
            env={**env, "MLFLOW_TRACKING_URI": uri},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bad.returncode != 0 and "alice:***@" in bad.stdout + bad.stderr
        assert secret not in bad.stdout + bad.stderr
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) >= 5
        for run in runs:
            assert secret not in repr(run.data.params) + repr(run.data.tags)
        for path in (tmp_path / "artifacts").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# ---- every step validates what it reads ---------------------------------------------------------------


def _bad_questions(tmp_path) -> Path:
    """A file `jmed validate` rejects: 「2つ選べ」 with one answer, a blank choice, 30 choices, and a
    50 MB points value."""
    import json

    stem = "次のうち正しいのはどれか。2つ選べ。"
    rows = [
        {
            "problem_id": "990A1",
            "problem_text": stem,
            "choices": ["甲", "乙", "丙", "丁", "戊"],
            "text_only": True,
            "answer": ["a"],
            "points": "1",
        },
        {
            "problem_id": "990A2",
            "problem_text": "どれか。",
            "choices": ["甲", " ", "丙", "丁", "戊"],
            "text_only": True,
            "answer": ["a"],
            "points": "1",
        },
        {
            "problem_id": "990A3",
            "problem_text": "どれか。",
            "choices": [f"選択肢{i}" for i in range(30)],
            "text_only": True,
            "answer": ["a"],
            "points": "1",
        },
        {
            "problem_id": "990A4",
            "problem_text": "どれか。",
            "choices": ["甲", "乙", "丙", "丁", "戊"],
            "text_only": True,
            "answer": ["a"],
            "points": "x" * 50_000_000,
        },
    ]
    path = tmp_path / "990-A.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_train_evaluate_score_and_predict_refuse_what_validate_rejects(tracking, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from jmed import models
    from jmed.cli import main

    bad = _bad_questions(tmp_path)
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"problem_id": "990A1", "prediction": "a"}\n', encoding="utf-8")
    loaded = []
    monkeypatch.setattr(models, "load_base", lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError))
    for args in (
        ["train", "--train-data", str(bad)],
        ["evaluate", "--eval-data", str(bad)],
        ["score", "--data", str(bad), "--predictions", str(pred)],
        ["predict", "--model-uri", "models:/none/1", str(bad)],
    ):
        res = CliRunner().invoke(main, args)
        out = res.output
        assert res.exit_code == 1, (args, out[-500:])
        assert f"{bad}:1: answer: the stem says 2つ選べ" in out or f"{bad}:1:" in out, (args, out[-800:])
        assert f"{bad}:4: points: not a number:" in out and "(50000000 characters)" in out, (args, out[-800:])
        assert len(out) < 20_000  # the 50 MB value is named, not echoed
    assert loaded == []  # no model was loaded for invalid data


def test_json_output_is_always_valid_json_and_infinite_points_are_errors(tmp_path):
    import json

    from click.testing import CliRunner

    from jmed.cli import main, strict_json

    assert json.loads(strict_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}
    q = {
        "problem_id": "990A1",
        "problem_text": "どれか。",
        "choices": ["甲", "乙", "丙", "丁", "戊"],
        "text_only": True,
        "answer": ["a"],
        "points": "Infinity",
    }
    data = tmp_path / "990-A.jsonl"
    data.write_text(json.dumps(q, ensure_ascii=False) + "\n", encoding="utf-8")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"problem_id": "990A1", "prediction": "a"}\n', encoding="utf-8")
    res = CliRunner().invoke(main, ["score", "--data", str(data), "--predictions", str(pred), "--json"])
    assert res.exit_code == 1 and f'{data}:1: points: must be a finite number, 0 or more, got "Infinity"' in res.output
    q["points"] = "1"
    data.write_text(json.dumps(q, ensure_ascii=False) + "\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["score", "--data", str(data), "--predictions", str(pred), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["accuracy"] == 1.0


# ---- the promotion lease on a remote store --------------------------------------------------------------


def _as_remote(monkeypatch):
    from jmed.registry import lease

    monkeypatch.setattr(lease, "_local_store_file", lambda uri: None)  # use the lease tag, as on a server


def test_a_lease_whose_holder_is_gone_is_broken_at_once(tracking, monkeypatch):
    import socket
    import subprocess
    import time

    from mlflow import MlflowClient

    from jmed.registry import LEASE_TAG, promote_lock

    _as_remote(monkeypatch)
    client = MlflowClient()
    client.create_registered_model("jmed-x")
    dead = subprocess.Popen(["true"])
    dead.wait()
    client.set_registered_model_tag(
        "jmed-x", LEASE_TAG, f"abc {time.time() + 600:.0f} {socket.gethostname()} {dead.pid}"
    )
    with promote_lock(client, "jmed-x", timeout=30) as how:  # the dead holder's lease runs 600 s
        assert how == f"lease tag {LEASE_TAG} on jmed-x"
        assert client.get_registered_model("jmed-x").tags[LEASE_TAG].endswith(f"{socket.gethostname()} {os.getpid()}")
    assert LEASE_TAG not in client.get_registered_model("jmed-x").tags
    # a holder that crashed but is not reaped yet (a zombie of its parent) is gone too
    zombie = subprocess.Popen(["true"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited; left unreaped
    client.set_registered_model_tag(
        "jmed-x", LEASE_TAG, f"abc {time.time() + 600:.0f} {socket.gethostname()} {zombie.pid}"
    )
    with promote_lock(client, "jmed-x", timeout=30) as how:
        assert how == f"lease tag {LEASE_TAG} on jmed-x"
    zombie.wait()
    # a live holder (this process, another token) is respected until the timeout
    client.set_registered_model_tag(
        "jmed-x", LEASE_TAG, f"abc {time.time() + 600:.0f} {socket.gethostname()} {os.getpid()}"
    )
    with pytest.raises(TimeoutError, match="held by abc"):
        with promote_lock(client, "jmed-x", timeout=1):
            pass


def test_registry_calls_retry_on_conflicts(monkeypatch):
    from mlflow.exceptions import MlflowException

    from jmed.registry import _retrying

    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise MlflowException("UNIQUE constraint failed: registered_model_tags", error_code="BAD_REQUEST")
        return x * 2

    assert _retrying(flaky, 21) == 42 and len(calls) == 3
    with pytest.raises(MlflowException):
        _retrying(lambda: (_ for _ in ()).throw(MlflowException("gone", error_code="RESOURCE_DOES_NOT_EXIST")))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_terminated_step_ends_killed_not_running(tracking, tmp_path, signame):
    """SIGTERM (kill, systemd, schedulers) or SIGHUP (a closed terminal) during a jmed step: KILLED."""
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient

    code = (
        "import time; from jmed import cli, tracking\n"
        "cli.handle_signals()\n"
        "with tracking.step_run('promote'):\n    print('started', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ}
    )
    assert proc.stdout.readline().strip() == "started"
    sig = getattr(signal, signame)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    client = MlflowClient()
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"


def test_a_50mb_stem_is_named_not_echoed_in_the_report(tmp_path):
    import json

    from jmed import checks

    row = {
        "problem_id": "990A1",
        "problem_text": "x" * 50_000_000,
        "choices": ["甲", "乙", "丙", "丁", "戊"],
        "text_only": True,
        "answer": ["a"],
        "points": "1",
    }
    data = tmp_path / "990-A.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    report = checks.validate([str(data)])
    assert not report.success
    [stem] = [e for e in report.errors if e["field"] == "stem"]
    assert stem["message"] == "50000000 characters; at most 20000" and stem["line"] == 1
    json_path, html_path = report.write(tmp_path / "report.json")
    assert json_path.stat().st_size < 100_000 and html_path.stat().st_size < 100_000
    assert len(report.summary()) < 10_000


def test_runs_of_dead_processes_are_reaped_and_nothing_else(tracking, tmp_path):
    """kill -9 leaves a run RUNNING; `jmed runs reap` (and the next step) ends it KILLED with a tag
    saying why, and leaves live runs and runs of other hosts alone."""
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner
    from mlflow import MlflowClient

    from jmed.cli import main

    code = (
        "import time; from jmed import tracking\n"
        "with tracking.step_run('promote'):\n    print('started', flush=True); time.sleep(120)\n"
    )
    procs = []
    try:
        for _ in range(2):  # one after the other: two processes creating one SQLite store race
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ}
                )
            )
            assert procs[-1].stdout.readline().strip() == "started"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(30)
        client = MlflowClient()
        runs = {r.data.tags["jmed.pid"]: r for r in client.search_runs(["0"])}
        dead, live = runs[str(procs[0].pid)].info.run_id, runs[str(procs[1].pid)].info.run_id
        other = client.create_run("0", tags={"jmed.host": "another-host", "jmed.pid": str(procs[0].pid)}).info.run_id
        res = CliRunner().invoke(main, ["runs", "reap"])
        assert res.exit_code == 0 and f"ended 1 abandoned run(s) KILLED (their process was gone): {dead}" in res.output
        assert client.get_run(dead).info.status == "KILLED"
        assert f"process {procs[0].pid} on " in client.get_run(dead).data.tags["jmed.reaped"]
        assert client.get_run(live).info.status == "RUNNING" and client.get_run(other).info.status == "RUNNING"
        res = CliRunner().invoke(main, ["runs", "reap"])
        assert res.exit_code == 0 and "no abandoned runs of this host" in res.output
    finally:
        for p in procs:
            p.kill()
            p.wait(30)
    client.set_terminated(live, "KILLED")
    client.set_terminated(other, "KILLED")


def test_a_tracking_server_restart_mid_training_loses_nothing(tmp_path):
    """`mlflow server` killed and restarted while `jmed train` logs to it: the run finishes with every
    step's metrics (MLflow's client retries; jmed keeps what it could not send)."""
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from jmed.server import free_port, start_tracking_server, stop_server

    port, db = free_port(), f"sqlite:///{tmp_path / 'server.db'}"
    server, _ = start_tracking_server(db, tmp_path / "artifacts", port, log_path=tmp_path / "server.log")
    uri = f"http://127.0.0.1:{port}"
    train = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jmed"),
            "train",
            "--max-steps",
            "300",
            "--batch-size",
            "2",
            "--max-length",
            "128",
        ],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = MlflowClient(uri)
        deadline = time.time() + 300
        while True:  # the first metrics have arrived: training is under way
            runs = client.search_runs(["0"])
            if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                break
            assert train.poll() is None and time.time() < deadline, "training did not start logging"
            time.sleep(0.2)
        stop_server(server)
        time.sleep(3)  # steps go on while the server is down
        server, _ = start_tracking_server(db, tmp_path / "artifacts", port, log_path=tmp_path / "server.log")
        out, _ = train.communicate(timeout=600)
        assert train.returncode == 0, out[-3000:]
        [run] = client.search_runs(["0"])
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 301))  # every step's loss, none lost, none twice
        assert "adapter" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        if train.poll() is None:
            train.kill()
        stop_server(server)
