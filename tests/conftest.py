"""Shared fixtures. Every test runs offline, with telemetry off, in its own tracking store."""

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


# End-to-end modules: every test starts processes, servers or trainings. Elsewhere a test is slow when
# it opens an MLflow store (`tracking`) or is marked by itself. `make test-fast` runs the rest.
E2E_MODULES = {
    "test_options",
    "test_pipeline",
    "test_quickstart",
    "test_real_models",
    "test_registry",
    "test_security",
    "test_serving",
    "test_train",
    "test_train_ddp",
}
SLOW_FIXTURES = {"tracking", "trained"}


def pytest_collection_modifyitems(config, items):
    """Mark end-to-end tests `slow` (by module or fixture), and skip `gpu` tests where CUDA is not:
    one hook, not each test by itself."""
    import importlib.util

    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in E2E_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    cuda = False
    if any(item.get_closest_marker("gpu") for item in items) and importlib.util.find_spec("torch"):
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


SHARED = ROOT.parent / "shared" / "datasets"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/datasets; skips (or fails under JMED_REQUIRE_SHARED=1) when absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"shared dataset {path} is absent (place the shared datasets beside the project)"
        if os.environ.get("JMED_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; JMED_REQUIRE_SHARED=1 requires it")
        pytest.skip(reason)
    return path


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite tracking store and artifact folder for one test; returns the tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@contextlib.contextmanager
def private_store(root: Path):
    """A fresh SQLite tracking store (and working directory) in `root`, for module-scoped fixtures
    that train once and share the result; restores the previous store afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.chdir(root)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mp.undo()
        mlflow.set_tracking_uri(previous)


BROKEN = Path(__file__).parent / "fixtures_broken"
# Every error in fixtures_broken/990-A.jsonl, in order: one message per kind of bad record.
BROKEN_990A_ERRORS = [
    "{f}:2: invalid JSON: Expecting ',' delimiter (column 65)",
    '{f}:3: answer: letter "f" outside 5 choices',
    "{f}:4: answer: missing field",
    "{f}:5: choices: expected a list, got a string",
    '{f}:6: problem_id: duplicate id "990A1" (first at line 1)',
    '{f}:7: points: not a number: "abc"',
]


def broken_990a_errors() -> list[str]:
    f = BROKEN / "990-A.jsonl"
    return [m.format(f=f) for m in BROKEN_990A_ERRORS]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After the whole suite: runs left RUNNING in the SQLite stores the tests created (reliability asks
    for 0). PostgreSQL and server stores are gone by now; their tests assert the same themselves."""
    import sqlite3

    try:
        base = config._tmp_path_factory.getbasetemp()
    except (AttributeError, ValueError):
        return
    stores, left = 0, []
    for db in base.rglob("*.db"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                rows = con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall()
        except sqlite3.Error:
            continue
        stores += 1
        left += [f"{db}: {r[0]}" for r in rows]
    terminalreporter.write_line(
        f"runs left RUNNING in the {stores} SQLite tracking stores of this session: {len(left)}"
    )
    for line in left[:20]:
        terminalreporter.write_line(f"  {line}")
