"""`jmed validate` and the `validate` MLproject entry point, in temporary tracking stores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jmed import data
from jmed.checks import Report
from jmed.cli import main
from jmed.data import DataError

ROOT = Path(__file__).resolve().parent.parent
BROKEN = Path(__file__).parent / "fixtures_broken"


def lines_of(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def runs(uri):
    import mlflow

    return mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]
    )


def artifacts(uri, run_id) -> list[str]:
    import mlflow

    return sorted(a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id))


def test_validate_sample_logs_one_finished_run(tracking, tmp_path):
    out = CliRunner().invoke(
        main, ["validate", "", "--against", "", "--format", "auto", "--report", str(tmp_path / "r" / "report.json")]
    )
    assert out.exit_code == 0, out.output
    n_train, n_test = lines_of(data.SAMPLE_TRAIN), lines_of(data.SAMPLE_TEST)
    assert out.output.splitlines()[0].startswith(f"OK: {n_train + n_test} questions in 2 dataset(s); 0 error(s)")
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["success"] is True and report["questions"] == n_train + n_test
    assert (tmp_path / "r" / "report.html").exists()

    (run,) = runs(tracking)
    assert run.info.status == "FINISHED" and run.data.tags["jmed.step"] == "validate"
    p = run.data.params
    assert p["data_paths"] == str(data.SAMPLE_TRAIN) and p["against_paths"] == str(data.SAMPLE_TEST)
    assert p["data_format"] == "igakuqa" and p["data_questions"] == str(n_train)
    assert p["data_digest"] == data.digest(data.load_questions(data.SAMPLE_TRAIN))
    assert p["against_digest"] == data.digest(data.load_questions(data.SAMPLE_TEST))
    m = run.data.metrics
    qs = data.load_questions(data.SAMPLE_TRAIN) + data.load_questions(data.SAMPLE_TEST)
    assert m["data/questions"] == n_train + n_test and m["data/errors"] == 0 and m["data/leakage_pairs"] == 0
    assert {k: m[f"data/excluded/{k}"] for k in data.EXCLUSION_REASONS} == data.exclusions(qs)
    inputs = sorted((i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs)
    assert inputs == [
        ("sample/test.jsonl", p["against_digest"][:36], "against"),
        ("sample/train.jsonl", p["data_digest"][:36], "data"),
    ]
    assert artifacts(tracking, run.info.run_id) == ["report.html", "report.json"]


def test_validate_failure_ends_run_failed(tracking):
    f = BROKEN / "990-A.jsonl"
    out = CliRunner().invoke(main, ["validate", str(f)])
    assert out.exit_code == 1
    assert f'  error: {f}:3: answer: letter "f" outside 5 choices' in out.output
    (run,) = runs(tracking)
    assert run.info.status == "FAILED" and run.data.tags["jmed.step"] == "validate"
    assert run.data.tags["jmed.validation"] == "failed"
    assert run.data.tags["mlflow.note.content"].startswith("FAILED: 3 questions in 1 dataset(s); 6 error(s)")
    assert run.data.metrics["data/errors"] == 6
    assert artifacts(tracking, run.info.run_id) == ["report.html", "report.json"]


def test_validate_without_logging_and_bad_format(tracking):
    out = CliRunner().invoke(main, ["validate", "--no-log", str(BROKEN / "empty.jsonl")])
    assert out.exit_code == 1 and f"error: {BROKEN / 'empty.jsonl'}: empty file (no records)" in out.output
    assert runs(tracking) == []
    out = CliRunner().invoke(main, ["validate", "--no-log", "--format", "xml", str(data.SAMPLE_TRAIN)])
    assert out.exit_code == 2 and "choose auto or one of" in out.output


def test_validate_instructions_logs_records(tracking):
    out = CliRunner().invoke(main, ["validate", str(data.SAMPLE_INSTRUCTIONS)])
    assert out.exit_code == 0, out.output
    (run,) = runs(tracking)
    n = lines_of(data.SAMPLE_INSTRUCTIONS)
    assert run.info.status == "FINISHED" and run.data.params["data_format"] == "instructions"
    assert run.data.metrics["data/questions"] == n
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "sample/instructions.jsonl"
    assert inp.dataset.digest == data.digest(data.load_instructions(data.SAMPLE_INSTRUCTIONS))[:36]


def test_python_api_returns_report():
    from jmed.checks import validate

    r = validate(str(data.SAMPLE_TRAIN), against=str(data.SAMPLE_TEST))
    assert isinstance(r, Report) and r.success
    assert [d["role"] for d in r.datasets] == ["data", "against"]


def _mlflow_run(uri: str, tmp_path: Path, *params: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e validate --env-manager local` in the project, into a temporary store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name("validate-test") is None:  # artifacts in tmp_path, not the checkout
        client.create_experiment("validate-test", artifact_location=(tmp_path / "artifacts").as_uri())
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        ".",
        "-e",
        "validate",
        "--env-manager",
        "local",
        "--experiment-name",
        "validate-test",
        *[x for p in params for x in ("-P", p)],
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_validate_entry_point(tracking, tmp_path):
    import mlflow

    def project_mlruns():  # a user's own runs (make demo) may live there; ours must not be added
        return set((ROOT / "mlruns").rglob("*")) if (ROOT / "mlruns").exists() else set()

    before = project_mlruns()
    ok = _mlflow_run(tracking, tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    n = lines_of(data.SAMPLE_TRAIN) + lines_of(data.SAMPLE_TEST)
    assert f"OK: {n} questions in 2 dataset(s); 0 error(s)" in ok.stdout
    bad = _mlflow_run(tracking, tmp_path, f"data={BROKEN / '990-A.jsonl'}", "format=igakuqa")
    assert bad.returncode != 0
    done = sorted(runs(tracking), key=lambda r: r.info.start_time)
    assert [r.info.status for r in done] == ["FINISHED", "FAILED"]
    assert all(r.data.tags["jmed.step"] == "validate" for r in done)
    assert done[0].data.params["data_paths"] == str(data.SAMPLE_TRAIN)
    assert done[1].data.params["data"] == str(BROKEN / "990-A.jsonl") and done[1].data.params["format"] == "igakuqa"
    assert done[1].data.tags["mlflow.note.content"].startswith("FAILED: 3 questions")
    for r in done:
        assert artifacts(tracking, r.info.run_id) == ["report.html", "report.json"]
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=done[1].info.run_id,
                artifact_path="report.json",
                tracking_uri=tracking,
                dst_path=str(tmp_path / "dl"),
            )
        ).read_text(encoding="utf-8")
    )
    assert str(DataError(**report["errors"][1])) == f'{BROKEN / "990-A.jsonl"}:3: answer: letter "f" outside 5 choices'
    assert project_mlruns() == before
