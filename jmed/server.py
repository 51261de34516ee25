"""Server processes: `mlflow models serve` started in its own process group, waited for, and stopped
with everything it started (the mlflow CLI and its uvicorn workers). Used by `jmed serve`, the demo,
tests and benchmarks; knows nothing about the registry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REQUEST_TIMEOUT_S = 120  # seconds per request (`jmed serve --timeout`, `mlflow models serve -t`)
# `jmed serve` stops within this many seconds of SIGTERM: requests in flight get that long to finish,
# then are cancelled, and the served model fails what it still holds (jmed.front, JmedModel.close)
SHUTDOWN_S = 10


def serve_command(
    model_uri: str,
    port: int = 5000,
    host: str = "127.0.0.1",
    workers: int = 1,
    timeout: int = REQUEST_TIMEOUT_S,
    front: bool = False,
) -> list[str]:
    """`mlflow models serve`; with `front`, MLflow's same scoring app behind jmed.front, as `jmed serve`
    runs it (uvicorn, like `mlflow models serve`; the request timeout travels in serve_env)."""
    import shutil
    import sys

    if front:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--timeout-graceful-shutdown",
            str(SHUTDOWN_S),
            "jmed.front:app",
        ]
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    cmd = [exe] if exe else [sys.executable, "-m", "mlflow"]
    return cmd + [
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(workers),
        "-t",
        str(timeout),
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(model_uri: str, extra: dict | None = None) -> dict:
    """The server's environment: this Python's uvicorn first on PATH, and JMED_MODEL_URI so the served
    model knows which registered version (or alias to follow) it serves (jmed.serving)."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if model_uri:
        env["JMED_MODEL_URI"] = model_uri
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def start_server(model_uri: str, port: int, log_path=None, timeout: float = 180.0, env: dict | None = None, **kwargs):
    """Start `mlflow models serve` (front=True: `jmed serve`'s guarded front) in its own process group and
    wait for /ping; returns (process, seconds). `env`: extra environment (JMED_SERVE_POLL_S …). Stop it
    with `stop_server` (kills the whole group: the mlflow CLI and its uvicorn child)."""
    # the front reads the request timeout from the environment (`mlflow models serve -t` sets the same)
    env = serve_env(model_uri, {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": REQUEST_TIMEOUT_S, **(env or {})})
    return start_process(
        serve_command(model_uri, port=port, **kwargs), env, port, "/ping", log_path, timeout, f"server for {model_uri}"
    )


def start_tracking_server(backend_store_uri: str, artifacts: Path, port: int, log_path=None, timeout: float = 180.0):
    """Start `mlflow server` (a team tracking server: PostgreSQL or SQLite backend, proxied artifacts in
    `artifacts`) on 127.0.0.1 in its own process group and wait for /health; returns (process, seconds)."""
    import shutil
    import sys

    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = serve_env("", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job-runner processes
    cmd = [
        exe,
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    return start_process(cmd, env, port, "/health", log_path, timeout, "mlflow server")


def start_process(cmd: list[str], env: dict, port: int, probe: str, log_path, timeout: float, what: str):
    """Start `cmd` in its own process group and wait until `probe` on 127.0.0.1:`port` answers 200;
    returns (process, seconds). On failure or timeout the group is stopped and the error names `what`."""
    import subprocess
    import urllib.request

    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}" + (f"; see {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=2) as r:
                    if r.status == 200:
                        return proc, time.perf_counter() - t0
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.1)
    except BaseException:
        stop_server(proc)
        raise


def group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (non-zombie) member."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_server(proc, grace: float = SHUTDOWN_S + 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after `grace` seconds."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + grace
        while time.time() < deadline and group_alive(proc.pid):
            time.sleep(0.1)
        if not group_alive(proc.pid):
            break
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
