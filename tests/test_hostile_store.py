"""The tracking store, round two: a URI that cannot be a store gets one line naming it (masked), an
unreachable server fails within a stated bound, and a new SQLite store survives several first commands
at once."""

import os
import socket
import subprocess
import sys

import pytest

from jmed.tracking import STORE_TIMEOUT_S, StoreError, check_store


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:///tmp/x.db ", "contains white space"),
        ("ftp://host/x", "ftp:// is no tracking store"),
        ("sqlite:////proc/nope/mlflow.db", "the folder /proc/nope does not exist or is not writable"),
        ("https://alice:s3cret@127.0.0.1:9", "tracking server https://alice:***@127.0.0.1:9 cannot be reached"),
    ],
)
def test_a_uri_that_cannot_be_a_store_is_one_clear_error(uri, message):
    with pytest.raises(StoreError, match=message.replace("*", r"\*").replace("/", "/")) as err:
        check_store(uri)
    assert "s3cret" not in str(err.value)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello", encoding="utf-8")
    with pytest.raises(StoreError, match="is a file, not a store"):
        check_store(str(f))
    with pytest.raises(StoreError, match="is not a SQLite database"):
        check_store(f"sqlite:///{f}")


def test_a_server_that_accepts_but_never_answers_fails_within_the_bound(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts connections, never answers
    monkeypatch.setenv("JMED_TRACKING_TIMEOUT", "1")
    try:
        with pytest.raises(StoreError, match=r"cannot be reached within 1 s: no answer \(timeout\)"):
            check_store(f"http://127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()
    assert STORE_TIMEOUT_S == 30.0


def test_the_cli_prints_one_line_not_a_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "jmed")
    res = subprocess.run(
        [exe, "runs", "reap"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": "ftp://host/x"},
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "Error: tracking URI ftp://host/x: ftp:// is no tracking store; use one of sqlite://, postgresql://, "
        "mysql://, mssql://, http://, https://, databricks://, file://"
    ]


@pytest.mark.slow
def test_four_first_commands_at_once_on_a_new_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import mlflow; from jmed import tracking; tracking.setup(); "
        "mlflow.start_run(); mlflow.log_metric('m', 1); mlflow.end_run()"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-1500:] for e in errs]
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs(["0"])
    assert len(runs) == 4 and {r.data.metrics["m"] for r in runs} == {1.0}
