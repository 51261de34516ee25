"""The README's two commands: what `make demo` and `make test` run, and the demo itself, for real."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]


@pytest.mark.parametrize("target,expected", [("demo", "-m jmed.demo"), ("test", "-m pytest")])
def test_make_targets_install_then_run(target, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
    out = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.strip().splitlines()
    install = [i for i, line in enumerate(lines) if "pip install -q -e '.[test]'" in line]
    assert "-m venv .venv" in out and "torch==2.13.0" in out and install
    assert expected in lines[-1] and install[0] < len(lines) - 1  # installs first, then runs


def _processes_with(marker: str) -> list[int]:
    """Pids whose environment mentions `marker` (the demo's private tracking store)."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_demo_runs_pipeline_serves_champion_and_stops_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'demo.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [sys.executable, "-m", "jmed.demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "no medical skill" in out
    assert "Question (902" in out and "Served answer: " in out
    assert "The server has been stopped." in out
    assert "POST /v1/completions model=jmed-tiny@champion" in out and "The vLLM server has been stopped." in out
    assert f"--backend-store-uri {uri}" in out
    assert _processes_with(str(tmp_path)) == []

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("jmed-tiny", "champion").version) == "1"
    [parent] = client.search_runs(["0"], "tags.`jmed.step` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["jmed.steps_run"] == "validate,train,evaluate-base,evaluate-adapter,promote"
