"""DDP on CPU: two processes (gloo) under torchrun / accelerate launch write exactly one MLflow run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_ddp_one_run(tmp_path, launcher):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    args = ["-m", "jmed", "train", "--max-steps", "3", "--batch-size", "2", "--checkpoint-every", "2"]
    if launcher == "torchrun":
        cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", *args]
    else:
        # the shipped DDP config; without CUDA every rank runs on CPU with gloo
        cmd = [
            str(VENV_BIN / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "jmed/accelerate/ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29518",
            *args,
        ]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(["0"])
    assert len(runs) == 1  # rank 1 never touches MLflow
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["batch_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "checkpoints", "plots"} <= names
    assert res.stdout.count("train run: ") == 2  # both ranks report the same run id
    assert len({line for line in res.stdout.splitlines() if line.startswith("train run: ")}) == 1
