"""Quiet means quiet: every command a user runs, as a user runs it (a process, no terminal), writes to
stderr only lines of an allow-list: jmed's own messages, and the server log of `jmed serve`. Third-party
warnings (MLflow's type-hint hint, bitsandbytes' kernels-community line, …) show only with --verbose."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmed import data

JMED = str(Path(sys.executable).parent / "jmed")
pytestmark = pytest.mark.slow

# jmed's own lines; uvicorn's server log (jmed serve: started, stopped, one line per request)
ALLOWED = (
    r"\[jmed\] ",
    r"INFO:     ",
)


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not re.match("|".join(ALLOWED), line)]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "JMED_VERBOSE": ""}


def _jmed(env, cwd, *args) -> subprocess.CompletedProcess:
    res = subprocess.run([JMED, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-3000:])
    return res


def test_every_command_keeps_stderr_to_the_allow_list(env, tmp_path):
    quiet = {}
    quiet["validate"] = _jmed(env, tmp_path, "validate")
    train = _jmed(env, tmp_path, "train", "--max-steps", "2", "--batch-size", "4")
    quiet["train"] = train
    run_id = re.search(r"train run: ([0-9a-f]{32})", train.stdout).group(1)
    quiet["evaluate"] = _jmed(env, tmp_path, "evaluate", "--adapter", f"runs:/{run_id}/adapter", "--limit", "4")
    quiet["promote"] = _jmed(env, tmp_path, "promote")
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps(
            {"id": "q1", "question": "正しいのはどれか。2つ選べ。", "choices": list("あいうえお")}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    quiet["predict"] = _jmed(env, tmp_path, "predict", str(questions), "-o", str(tmp_path / "p.jsonl"))
    [line] = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    letters = [a for a in line["prediction"].split(",") if a]
    assert line["n_answers"] == 2 and line["count_mismatch"] == (bool(letters) and len(letters) != 2)
    preds = tmp_path / "sample.jsonl"
    _jmed(env, tmp_path, "predict", str(data.SAMPLE_TEST), "-o", str(preds))
    quiet["score"] = _jmed(env, tmp_path, "score", "--data", str(data.SAMPLE_TEST), "--predictions", str(preds))
    quiet["compare"] = _jmed(env, tmp_path, "compare")
    quiet["pipeline --dry-run"] = _jmed(env, tmp_path, "pipeline", "--dry-run")
    for name, res in quiet.items():
        assert _noise(res.stderr) == [], (name, res.stderr[-3000:])

    # jmed serve, until SIGTERM: a request answered, nothing else on stderr
    from jmed.server import free_port, stop_server

    port = free_port()
    log = tmp_path / "serve.err"
    proc = subprocess.Popen(
        [JMED, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        start_new_session=True,
    )
    try:
        import requests

        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "jmed serve not ready"
            time.sleep(0.2)
        body = {"dataframe_records": [{"question": "正しいのはどれか。2つ選べ。", "choices": list("あいうえお")}]}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["predictions"][0]["n_answers"] == 2
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        stop_server(proc)
    assert _noise(log.read_text()) == [], log.read_text()[-3000:]

    # the same command with --verbose shows what was hidden: the allow-list is not vacuous. Which
    # third-party lines there are depends on the CPU (bitsandbytes' kernels-community line on an AVX-512
    # machine, transformers' FutureWarning on an AVX2 one), so any line off the list will do
    loud = _jmed(env, tmp_path, "--verbose", "predict", str(questions))
    assert _noise(loud.stderr), loud.stderr[-2000:]
